"""The partial file and the final name: blocking file work, run in worker threads.

A download's bytes go to a hidden partial file named by their sha256 (so a
resume may come from any member with the same bytes); once verified (exactly
the listed size on disk, and the listed sha256), the partial file is linked
to a free name beside its destination, so nothing unverified is ever at a
final name and no existing file is overwritten.  Every name in download_dir
is reached without following links (``p2pd.fetch.downloaddir``); the partial file
is used through one descriptor from its opening to its placing.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import stat
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from p2pcommon.lifecycle import unwrap_group
from p2pd.fetch.attempts import verified
from p2pd.fetch.downloaddir import (
    READ_FLAGS,
    create_partial,
    discard,
    open_folder,
    open_partial,
    open_root,
    place_fd,
    same_inode,
)
from p2pd.fetch.names import layer_name, numbered, partial_name

log = logging.getLogger("p2pd.partial")

HASH_BLOCK = 1024 * 1024
#: Files up to this size are received whole into memory, then written, fsynced,
#: verified and placed by one worker thread (``store_small``): one thread hop
#: instead of three, and none to look for a partial file to resume.
SMALL_FILE = 256 * 1024
#: Bytes handed to the writer thread at once.
WRITE_BLOCK = 1024 * 1024


class TooManyBytes(Exception):
    """The member sent more body bytes than the listing and its answer said."""


@dataclass
class Partial:
    """An open partial file: its descriptor, and the hash and length of what it holds."""

    fd: int
    digest: Any
    offset: int


def hash_fd(fd: int, limit: int) -> tuple[Any, int]:
    """SHA-256 of the first ``limit`` bytes of ``fd`` (fewer if it is shorter)."""
    digest = hashlib.sha256()
    done = 0
    while done < limit and (block := os.pread(fd, min(HASH_BLOCK, limit - done), done)):
        digest.update(block)
        done += len(block)
    return digest, done


def resume_state(download_dir: Path, sha256: str, size: int) -> Partial:
    """The partial file of ``sha256``, open, with the hash state of the bytes in it.

    Bytes past the listed ``size`` (left by an older p2pd that let a member
    send more) are cut off first: a resume never keeps them.
    """
    root = open_root(download_dir)
    try:
        fd = open_partial(root, partial_name(sha256))
    finally:
        os.close(root)
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
        digest, offset = hash_fd(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return Partial(fd, digest, offset)


def restart(partial: Partial) -> None:
    """Empty the partial file (the member ignored Range): it is written from 0 again."""
    os.ftruncate(partial.fd, 0)
    partial.digest, partial.offset = hashlib.sha256(), 0


def verify(fd: int, size: int, sha256: str, digest: Any) -> None:
    """The file is exactly the listed one: ``size`` bytes on disk, hashed to ``sha256``
    (``digest`` has hashed every byte written to it, in order).  Retry if not."""
    verified(size, sha256, os.fstat(fd).st_size, digest.hexdigest())


def place(download_dir: Path, partial: Partial, sha256: str, size: int, dest: str) -> str:
    """Verify the partial file, then link it at a free name beside ``dest`` (relative to
    download_dir); the name used.  Bytes that do not verify are discarded (Retry)."""
    root = open_root(download_dir)
    try:
        name = partial_name(sha256)
        try:
            verify(partial.fd, size, sha256, partial.digest)
        except BaseException:
            discard(root, name)  # never resume from bytes that hash wrong
            raise
        return place_fd(partial.fd, root, name, download_dir, dest)
    finally:
        os.close(root)


def store_small(
    download_dir: Path, sha256: str, size: int, blocks: Iterable[bytes], dest: str
) -> str:
    """A small file's bytes: written to a new partial file, fsynced, verified (Retry,
    the partial file removed, if they are not the listed ones) and placed at a free
    name beside ``dest``; the name used.  Blocking: one worker thread."""
    root = open_root(download_dir)
    try:
        name = partial_name(sha256)
        fd = create_partial(root, name)
        try:
            digest = hashlib.sha256()
            at = 0
            for block in blocks:
                _write_all(fd, block, at)
                digest.update(block)
                at += len(block)
            os.fsync(fd)
            try:
                verify(fd, size, sha256, digest)
            except BaseException:
                discard(root, name)
                raise
            return place_fd(fd, root, name, download_dir, dest)
        finally:
            os.close(fd)
    finally:
        os.close(root)


def discard_partial(download_dir: Path, sha256: str) -> None:
    """The partial file, and the piece layer kept beside it if it was filled by pieces."""
    root = open_root(download_dir)
    try:
        discard(root, partial_name(sha256))
        discard(root, layer_name(sha256))
    finally:
        os.close(root)


def existing_copy(download_dir: Path, dest: str, sha256: str, size: int) -> str | None:
    """``dest`` or one of its numbered siblings (relative to download_dir), if it already
    holds these bytes.  A link at one of the names counts as taken, never as a copy:
    nothing is read through it."""
    folder, _, base = dest.rpartition("/")
    root = open_root(download_dir)
    try:
        try:
            dir_fd = open_folder(root, download_dir, folder, create=False)
        except FileNotFoundError:
            return None
    finally:
        os.close(root)
    try:
        for number in itertools.count():
            name = numbered(Path(base), number).name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if stat.S_ISREG(st.st_mode) and st.st_size == size and _holds(dir_fd, name, st, sha256):
                return f"{folder}/{name}" if folder else name
    finally:
        os.close(dir_fd)
    raise AssertionError("unreachable")


def _holds(dir_fd: int, name: str, st: os.stat_result, sha256: str) -> bool:
    """Whether the regular file ``name`` (still the one ``st`` describes) hashes to ``sha256``."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False  # swapped for a link meanwhile, unreadable: not a copy we can vouch for
    try:
        if not same_inode(os.fstat(fd), st):
            return False
        digest, _ = hash_fd(fd, st.st_size)
        return bool(digest.hexdigest() == sha256)
    except OSError:
        return False
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, at: int) -> None:
    written = 0
    with memoryview(data) as view:
        while written < len(view):
            written += os.pwrite(fd, view[written:], at + written)


async def receive(
    chunks: AsyncIterable[bytes],
    fd: int,
    offset: int,
    end: int,
    digest: Any,
    *,
    on_chunk: Callable[[int], None],
    on_written: Callable[[int], None],
) -> None:
    """Write ``chunks`` into ``fd`` from ``offset``, hashing them, then fsync.

    ``end`` is where the listed file ends: a chunk that would go past it is
    refused (TooManyBytes) before any of it is written.  ``on_chunk(length)``
    sees every chunk as it arrives (and may raise to end the attempt);
    ``on_written(bytes in the file)`` follows the writes.  An OSError of the
    file comes out as itself.

    Double-buffered: while a worker thread hashes and writes one block
    (both release the GIL), this task decrypts the next, so that receiving
    costs max(decrypt, hash + write) rather than their sum; at most two
    1 MiB blocks are held.
    """
    done = offset
    pending: list[bytes] = []
    pending_size = 0

    def write(blocks: list[bytes], at: int, last: bool) -> None:
        # Block by block: joining them first would double the memory held.
        for block in blocks:
            _write_all(fd, block, at)
            digest.update(block)
            at += len(block)
        if last:
            os.fsync(fd)

    # Capacity 0: a block is handed over only when the writer is free.
    to_writer, for_writer = trio.open_memory_channel[tuple[list[bytes], int, bool]](0)

    async def writer() -> None:
        async with for_writer:
            async for blocks, at, last in for_writer:
                await trio.to_thread.run_sync(write, blocks, at, last)
                on_written(at + sum(map(len, blocks)))

    async def hand_over(blocks: list[bytes], at: int, last: bool) -> None:
        try:
            await to_writer.send((blocks, at, last))
        except trio.BrokenResourceError:
            # The writer failed (e.g. disk full) and closed its end before the
            # nursery cancelled us: its error, not this one, says what happened.
            await trio.sleep_forever()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async with to_writer:
                async for chunk in chunks:
                    if done + pending_size + len(chunk) > end:
                        raise TooManyBytes(f"sent more than the {end - offset} bytes announced")
                    pending.append(chunk)
                    pending_size += len(chunk)
                    on_chunk(len(chunk))
                    if pending_size >= WRITE_BLOCK:
                        await hand_over(pending, done, False)
                        done += pending_size
                        pending, pending_size = [], 0
                await hand_over(pending, done, True)
    except BaseExceptionGroup as group:
        # One task failed and the other was cancelled: the failure itself.
        raise unwrap_group(group) from None
