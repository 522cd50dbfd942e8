"""The partial file and the final name: blocking file work, run in worker threads.

A download's bytes go to a hidden partial file named by their sha256 (so a
resume may come from any member with the same bytes); once verified, the
partial file is linked to a free name beside its destination, so nothing
unverified is ever at a final name and no existing file is overwritten.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pcommon.service import unwrap_group
from p2pd.transfer import free_name, numbered

log = logging.getLogger("p2pd.partial")

HASH_BLOCK = 1024 * 1024
#: Files up to this size are received whole into memory, then written, fsynced,
#: verified and placed by one worker thread (``store_small``): one thread hop
#: instead of three, and none to look for a partial file to resume.
SMALL_FILE = 256 * 1024
#: Bytes handed to the writer thread at once.
WRITE_BLOCK = 1024 * 1024


def hash_file(path: Path, limit: int) -> tuple[Any, int]:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while done < limit and (block := f.read(min(HASH_BLOCK, limit - done))):
            digest.update(block)
            done += len(block)
    return digest, done


def resume_state(partial: Path, size: int) -> tuple[Any, int]:
    """The hash state and length of the bytes already in the partial file."""
    if not partial.exists():
        return hashlib.sha256(), 0
    return hash_file(partial, size)


def close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except OSError as exc:  # a failed flush: the attempt already failed, or fails at verify
        log.warning("closing %s: %s", handle.name, exc.strerror or exc)


def same_content(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and hash_file(path, path.stat().st_size)[0].hexdigest() == sha256
    except OSError:
        return False


def existing_copy(dest: Path, sha256: str) -> Path | None:
    """``dest`` or one of its numbered siblings, if it already holds these bytes."""
    for number in itertools.count():
        candidate = numbered(dest, number)
        if not candidate.exists():
            return None
        if same_content(candidate, sha256):
            return candidate
    raise AssertionError("unreachable")


def place(partial: Path, dest: Path) -> Path:
    """Link the verified partial file to a free name next to ``dest``; never overwrite."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = free_name(dest, lambda p: p.exists() or p.is_symlink())
        try:
            os.link(partial, target)
        except FileExistsError:
            continue  # taken since we looked: take the next one
        partial.unlink()
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return target


def store_small(
    partial: Path, blocks: list[bytes], dest: Path, check: Callable[[str], None]
) -> Path:
    """A small file's bytes: written to ``partial`` from its start, fsynced, checked
    by their sha256 (``check`` raises to refuse them, and the partial file is then
    removed), and placed at a free name beside ``dest``.  Blocking: one worker thread."""
    digest = hashlib.sha256()
    with open(partial, "wb") as handle:
        for block in blocks:
            handle.write(block)
            digest.update(block)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        check(digest.hexdigest())
    except BaseException:
        partial.unlink(missing_ok=True)  # never resume from bytes that hash wrong
        raise
    return place(partial, dest)


async def receive(
    chunks: AsyncIterable[bytes],
    partial: Path,
    offset: int,
    digest: Any,
    *,
    on_chunk: Callable[[int], None],
    on_written: Callable[[int], None],
) -> None:
    """Write ``chunks`` at ``offset``, hashing them; the file is opened by the first write.

    ``on_chunk(length)`` sees every chunk as it arrives (and may raise to end
    the attempt); ``on_written(bytes in the file)`` follows the writes.  An
    OSError of the file comes out as itself.

    Double-buffered: while a worker thread hashes and writes one block
    (both release the GIL), this task decrypts the next, so that receiving
    costs max(decrypt, hash + write) rather than their sum; at most two
    1 MiB blocks are held.  A small file costs one thread hop for opening,
    writing, fsync and closing.
    """
    handle: Any = None
    done = offset
    pending: list[bytes] = []
    pending_size = 0

    def write(blocks: list[bytes], at: int, last: bool) -> None:
        nonlocal handle
        if handle is None:
            handle = open(partial, "r+b" if offset else "wb")  # noqa: SIM115
        handle.seek(at)
        # Block by block: joining them first would double the memory held.
        for block in blocks:
            handle.write(block)
            digest.update(block)
        if last:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            handle = None

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
    finally:
        if handle is not None:
            # Shielded: a handle left open in a cancelled scope leaks until GC.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close_quietly, handle)
