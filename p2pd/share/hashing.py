"""One read of a file gives its sha256, its pieces root and its piece layer. Blocking.

The scan reads each file once, in 1 MiB blocks.  The whole-file sha256 and
the BEP 52 Merkle leaves (p2pd.share.merkle) each cost about one pass of
SHA-256 over the bytes; hashlib releases the interpreter's lock for buffers
over 2 KiB, so for a large file the reading thread hashes the whole file
while a helper thread feeds the MerkleBuilder the same buffers, and the two
run on two cores (bench/merkle_cost.py measured the recipes).  The buffers
go round a ring and are reused: a fresh 1 MiB buffer a read is mapped and
unmapped by malloc each time, and with two threads every unmap interrupts the
other core.  A small file is hashed both ways by the reading thread: handing
its one block over costs more than it saves.

One helper thread serves a whole scan (``FileHasher`` is a context manager:
the thread ends with it); the scan itself runs in a trio worker thread.
"""

from __future__ import annotations

import hashlib
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from p2pd.share.merkle import BLOCK_SIZE, MerkleBuilder, Pieces, piece_size_for

HASH_BLOCK = 1024 * 1024
#: Files from this size on are hashed by two threads.
TWO_THREADS_FROM = 4 * HASH_BLOCK
#: Buffers in the ring: the reader may be this many blocks (less one) ahead of the helper.
RING = 5


@dataclass(frozen=True, slots=True)
class Hashed:
    """What the index keeps of a file's bytes: sha256 and pieces root (lowercase hex, the
    root None for an empty file) and the piece size the root's piece layer is cut at."""

    sha256: str
    root: str | None
    piece_size: int


def hashed_of(sha256: str, pieces: Pieces) -> Hashed:
    return Hashed(sha256, None if pieces.root is None else pieces.root.hex(), pieces.piece_size)


class FileHasher:
    """Hashes files as the scan opens them; holds one helper thread while it is open."""

    def __init__(self) -> None:
        self._helper: ThreadPoolExecutor | None = None
        self._ring: list[bytearray] = []

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the helper thread (once it has finished what it was given)."""
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None

    def hash_fd(
        self, fd: int, size: int, check: Callable[[], None] | None = None
    ) -> tuple[Hashed, bytes]:
        """The file's hashes and piece layer, read from ``fd``'s current offset to its end.

        ``size`` (from fstat) chooses the piece size; ``check`` is called between
        blocks and may raise to stop (the scan's cancellation).
        """
        first = b""
        if size <= BLOCK_SIZE:
            # One block or none: its leaf is the root, and the leaf is the file's sha256.
            first = os.read(fd, HASH_BLOCK)
            if len(first) <= BLOCK_SIZE and not (more := os.read(fd, HASH_BLOCK)):
                sha256 = hashlib.sha256(first).hexdigest()
                return Hashed(sha256, sha256 if first else None, piece_size_for(len(first))), b""
            first += more  # it grew meanwhile (the scan holds it back): hashed as it is
        builder = MerkleBuilder(piece_size_for(size))
        if size < TWO_THREADS_FROM:
            digest = hashlib.sha256(first)
            builder.update(first)
            while block := os.read(fd, HASH_BLOCK):
                digest.update(block)
                builder.update(block)
                if check is not None:
                    check()
        else:
            digest = self._two_threads(fd, builder, check)
        pieces = builder.finish()
        return hashed_of(digest.hexdigest(), pieces), pieces.layer

    def _two_threads(
        self, fd: int, builder: MerkleBuilder, check: Callable[[], None] | None
    ) -> hashlib._Hash:
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merkle-leaves")
            self._ring = [bytearray(HASH_BLOCK) for _ in range(RING)]
        free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for buffer in self._ring:
            free.put(buffer)
        handed: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()

        def feed() -> None:
            failure: BaseException | None = None
            while (item := handed.get()) is not None:
                buffer, length = item
                if failure is None:
                    try:
                        builder.update(memoryview(buffer)[:length])
                    except BaseException as exc:  # said once the reader is done
                        failure = exc
                free.put(buffer)  # always: the reader never waits for a buffer forever
            if failure is not None:
                raise failure

        digest = hashlib.sha256()
        fed: Future[None] = self._helper.submit(feed)
        try:
            while True:
                buffer = free.get()
                length = os.readv(fd, [buffer])
                if not length:
                    break
                digest.update(memoryview(buffer)[:length])
                handed.put((buffer, length))
                if check is not None:
                    check()
        finally:
            handed.put(None)  # the helper ends once it has fed what it was handed
            fed.result()
        return digest
