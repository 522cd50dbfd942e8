"""One content from many members at once, every piece verified (docs/protocol.md §5.2).

The I/O around p2pd.fetch.swarm's scheduler: the sources are the members
whose listings name the content (same sha256 and size) with the same pieces
root; the piece layer comes from one of them (checked against the root) or
from beside the partial file; the pieces the partial file holds already are
checked and kept; then each member is asked for the pieces the scheduler
gives it, one Range request of one piece each, a few at once on kept-alive
connections, each piece verified before it is written at its offset.

- A member whose piece (or piece layer) fails verification is a liar: named
  in the log, in ``p2pctl downloads`` and in the history (``bad_pieces``,
  ``liar``), dropped, and avoided for that content for an hour (AvoidList).
- Members that list another root for the same sha256 are not used: roots
  are a function of the bytes, so one side lies.  The root of the member the
  user named is taken (else the root most members list); if the file that
  its pieces make does not have the listed sha256, every member that listed
  that root is named and avoided, and the next round uses the others.
- A member that appears during the transfer (a listing fetched meanwhile)
  joins it.

``SwarmContext.attempt`` raises Retry when the round cannot finish (every
source failed), Fatal for a local error, as one-member attempts do.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2pcommon.models import Member
from p2pd.fetch.attempts import Retry, fatal_os_error
from p2pd.fetch.avoid import AvoidList
from p2pd.fetch.model import State
from p2pd.fetch.names import partial_path
from p2pd.fetch.piecefile import (
    discard_layer,
    has_layer,
    keep_prefix,
    keep_verified_prefix,
    open_pieces_file,
    place_pieces,
    read_layer,
    verified_pieces,
    write_layer,
)
from p2pd.fetch.swarm_run import PieceRun
from p2pd.fetch.transfer import Transfer
from p2pd.peer.client import PeerPool, PeerUnavailable
from p2pd.peer.pieces import (
    MAX_PIECE_SIZE,
    BadPieceLayer,
    Pieces,
    fetch_layer,
    is_valid_piece_size,
    piece_count,
)

log = logging.getLogger("p2pd.downloads")


@dataclass(frozen=True)
class Candidate:
    """A member that lists the content: its path for it and the root it listed."""

    member: Member
    path: str
    root: str | None
    piece_size: int | None


def swarmable(size: int, candidates: list[Candidate]) -> bool:
    """Whether a many-source transfer applies: a file of more than one piece (at a piece
    size whose answers keep connections alive) that two members or more list."""
    usable = [c for c in candidates if c.root is not None]
    sizes = [c.piece_size for c in usable if c.piece_size is not None]
    if len(candidates) < 2 or not usable or not sizes:
        return False
    piece_size = min(sizes)
    return (
        is_valid_piece_size(piece_size)
        and piece_size <= MAX_PIECE_SIZE
        and piece_count(size, piece_size) > 1
    )


def choose_root(
    candidates: list[Candidate], preferred: str
) -> tuple[str, list[Candidate], list[Candidate]]:
    """(root, the members listing it or none, the members listing another root).

    The root of ``preferred`` (the member the user named) if it listed one,
    else the one most members list.  Members that list no root (an older
    p2pd) may still send pieces: each is checked against the layer.
    """
    roots = Counter(c.root for c in candidates if c.root is not None)
    mine = [c.root for c in candidates if c.member.id == preferred and c.root is not None]
    root = mine[0] if mine else roots.most_common(1)[0][0]
    same = [c for c in candidates if c.root in (root, None)]
    other = [c for c in candidates if c.root not in (root, None)]
    return root, same, other


@dataclass
class SwarmContext:
    """What many-source attempts share: the pool, download_dir, the avoid list."""

    pool: PeerPool
    download_dir: Path
    avoid: AvoidList = field(default_factory=AvoidList)
    #: Each verified piece's bytes as they land: the transfer's progress and metrics.
    on_received: Callable[[Transfer, int], None] = lambda transfer, count: None

    def avoided(self, sha256: str, member_id: str) -> bool:
        return self.avoid.avoided(sha256, member_id, trio.current_time())

    def name_liar(self, transfer: Transfer, member: Member, what: str) -> None:
        """Log, avoid for an hour, and show in the transfer's sources."""
        queued = transfer.queued
        self.avoid.avoid(queued.sha256, member.id, trio.current_time())
        entry = transfer.source_entry(member.id, member.name)
        entry["liar"] = True
        entry["state"] = "dropped"
        entry["reason"] = what
        log.warning(
            "transfer %s: %s %s: dropped from this transfer and not asked for %s for an hour",
            queued.id,
            member.name,
            what,
            queued.remote_path,
        )

    async def attempt(
        self,
        transfer: Transfer,
        candidates: list[Candidate],
        more: Callable[[], Awaitable[list[Candidate]]] | None = None,
    ) -> None:
        """One many-source round: the file placed, or Retry saying why not."""
        queued = transfer.queued
        root, same, other = choose_root(candidates, queued.peer_id)
        for candidate in other:
            log.warning(
                "transfer %s: %s lists another pieces root (%s…) than %s (%s…) for the same "
                "sha256: one of them lies; not used in this round",
                queued.id,
                candidate.member.name,
                (candidate.root or "")[:12],
                ", ".join(c.member.name for c in same if c.root == root),
                root[:12],
            )
        transfer.state = State.CONNECTING
        pieces = await self._pieces(transfer, same, bytes.fromhex(root))
        try:
            fd = await trio.to_thread.run_sync(open_pieces_file, self.download_dir, queued.sha256)
        except OSError as exc:
            raise fatal_os_error(exc, partial_path(self.download_dir, queued.sha256)) from None
        try:
            verified = await trio.to_thread.run_sync(verified_pieces, fd, pieces)
            run = PieceRun(self, transfer, pieces, fd, verified)
            for candidate in same:
                run.join(candidate)
            try:

                async def joining() -> list[Candidate]:
                    found = [] if more is None else await more()
                    return [c for c in found if c.root in (root, None)]

                await run.until_complete(joining)
            except Retry:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(keep_prefix, fd, pieces, run.verified())
                raise
            transfer.state = State.PLACING
            try:
                placed = await trio.to_thread.run_sync(
                    place_pieces,
                    self.download_dir,
                    fd,
                    queued.sha256,
                    queued.size,
                    queued.dest_name or queued.remote_path,
                )
            except Retry:
                self._root_lied(transfer, [c for c in same if c.root == root], root)
                raise
            except OSError as exc:
                raise fatal_os_error(exc, transfer.dest) from None
            transfer.dest = self.download_dir / placed
        finally:
            await trio.to_thread.run_sync(os.close, fd)

    def _root_lied(self, transfer: Transfer, listed: list[Candidate], root: str) -> None:
        for candidate in listed:
            self.name_liar(
                transfer,
                candidate.member,
                f"listed the pieces root {root[:12]}… for {transfer.queued.remote_path}, but "
                "the pieces that verify against it do not make the listed sha256",
            )

    async def _pieces(self, transfer: Transfer, same: list[Candidate], root: bytes) -> Pieces:
        """The piece layer: kept beside the partial file, else from a member (checked)."""
        queued = transfer.queued
        with_size = [c for c in same if c.root is not None and c.piece_size is not None]
        piece_size = min(c.piece_size for c in with_size if c.piece_size is not None)
        kept = await trio.to_thread.run_sync(
            read_layer, self.download_dir, queued.sha256, queued.size, piece_size, root
        )
        if kept is not None:
            return kept
        reasons = []
        # The member the user named first, then the others, at the smallest piece size.
        ordered = sorted(
            with_size, key=lambda c: (c.piece_size != piece_size, c.member.id != queued.peer_id)
        )
        for candidate in ordered:
            if candidate.piece_size != piece_size:
                break
            try:
                pieces = await fetch_layer(
                    self.pool, candidate.member, candidate.path, queued.size, root, piece_size
                )
            except BadPieceLayer as exc:
                self.name_liar(transfer, candidate.member, f"sent a bad piece layer ({exc})")
                reasons.append(str(exc))
                continue
            except PeerUnavailable as exc:
                reasons.append(str(exc))
                continue
            try:
                await trio.to_thread.run_sync(write_layer, self.download_dir, queued.sha256, pieces)
            except OSError as exc:
                raise fatal_os_error(exc, self.download_dir) from None
            return pieces
        raise Retry(f"no member sent the piece layer: {'; '.join(reasons) or 'none has it'}")

    async def was_swarming(self, sha256: str) -> bool:
        """Whether a many-source transfer of ``sha256`` left its piece layer here."""
        return await trio.to_thread.run_sync(has_layer, self.download_dir, sha256)

    async def settle_for_one(self, transfer: Transfer) -> None:
        """Before a one-member attempt: a partial file that many members filled piece by
        piece keeps only its verified prefix (a one-member download appends to it)."""
        queued = transfer.queued
        if not await self.was_swarming(queued.sha256):
            return
        try:
            kept = await trio.to_thread.run_sync(
                keep_verified_prefix, self.download_dir, queued.sha256, queued.size
            )
        except OSError as exc:
            raise fatal_os_error(exc, partial_path(self.download_dir, queued.sha256)) from None
        log.info(
            "transfer %s: the pieces already verified up to byte %d are kept for one member",
            queued.id,
            kept,
        )

    async def forget_layer(self, sha256: str) -> None:
        """The partial file is gone (placed, or discarded): so is what checked its pieces."""
        await trio.to_thread.run_sync(discard_layer, self.download_dir, sha256)
