"""Worker threads that move a body, watched from trio (p2pd.tls.bodypump's jobs).

The jobs run in threads of their own and look at a shared ``stop`` event at
least every slice of theirs; trio reports their progress meanwhile, and a
cancellation or a failed progress check sets ``stop`` so that they return
within a moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial

import trio

from p2pcommon.lifecycle import unwrap_group

#: Seconds between progress reports to the trio side.
PROGRESS_EVERY = 0.1


async def in_threads(
    jobs: Sequence[Callable[[], None]],
    stop: threading.Event,
    done: Callable[[], int],
    on_progress: Callable[[int], None],
    complete: Callable[[], bool],
) -> None:
    """Run each job in a worker thread and wait for all; report progress as it goes.

    ``on_progress(count)`` gets the growth of ``done()`` every PROGRESS_EVERY
    seconds and at the end; it may raise to end the work.  That, or a
    cancellation, sets ``stop``; the jobs then return within a slice of
    theirs or one block, and the error (or Cancelled) comes out.  The jobs have a
    thread limiter of their own: they never wait for one another's thread
    (the hasher for its reader) nor take the threads the rest of the
    daemon shares (history, file opens).
    """
    limiter = trio.CapacityLimiter(len(jobs))
    reported = 0

    def report() -> None:
        nonlocal reported
        now_done = done()
        if now_done > reported:
            count, reported = now_done - reported, now_done
            on_progress(count)

    async def watch() -> None:
        try:
            while True:
                await trio.sleep(PROGRESS_EVERY)
                report()
        finally:
            stop.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as workers:
                for job in jobs:
                    workers.start_soon(partial(trio.to_thread.run_sync, job, limiter=limiter))
            if not complete():
                # Stopped short: by watch() ending, whose error or cancellation
                # is on its way; never return as if the work were done.
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_failure(group) from None
    report()


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What to report of several failures at once (a progress check and a cut
    connection, say): the first that is not a cancellation, else the group."""
    leaves = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    failures = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    return failures[0] if failures else unwrap_group(group)
