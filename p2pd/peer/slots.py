"""Waiting for an upload slot: the rules of ``p2pd.peer.uploads``, with trio's wait."""

from __future__ import annotations

import trio

from p2pd.peer.uploads import SlotCount


class UploadSlots(SlotCount):
    """The slots, and the requests that wait for one a little while."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._freed = trio.lowlevel.ParkingLot()

    async def acquire(self, member: str, wait: float) -> str | None:
        """Take a slot for ``member`` within ``wait`` seconds: None, or the refusal."""
        if self.refusal(member) is not None:
            self.waiting += 1
            try:
                with trio.move_on_after(wait):
                    while self.refusal(member) is not None:
                        await self._freed.park()
            finally:
                self.waiting -= 1
            refusal = self.refusal(member)
            if refusal is not None:
                self.last_refused = trio.current_time()
                return refusal
        self.take(member)
        return None

    def release(self, member: str) -> None:
        self.give_back(member)
        self._freed.unpark_all()  # each waiter looks again whether it may take it
