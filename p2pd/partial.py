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
from pathlib import Path
from typing import Any

from p2pd.transfer import free_name, numbered

log = logging.getLogger("p2pd.partial")

HASH_BLOCK = 1024 * 1024


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
