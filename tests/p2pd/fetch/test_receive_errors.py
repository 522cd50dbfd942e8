"""A file error while receiving comes out as itself, whatever the writer was doing."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pd.fetch.partial import WRITE_BLOCK, TooManyBytes, receive


async def blocks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * WRITE_BLOCK


async def test_a_failing_write_is_reported_not_a_broken_channel(tmp_path: Path) -> None:
    # The first write fails (a file open for reading only) while the receiving
    # side already waits to hand over the next block: the report must be the
    # file's error (what the history tells the user, e.g. "disk full"), not the
    # hand-over's.
    (tmp_path / ".partial").write_bytes(b"")
    fd = os.open(tmp_path / ".partial", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as caught:
            await receive(
                blocks(8),
                fd,
                0,
                8 * WRITE_BLOCK,
                hashlib.sha256(),
                on_chunk=lambda count: None,
                on_written=lambda done: None,
            )
    finally:
        os.close(fd)
    assert caught.value.errno == errno.EBADF


async def test_a_chunk_past_the_listed_end_is_refused_unwritten(tmp_path: Path) -> None:
    """However the answer was framed, no byte past the listed size reaches the file."""
    fd = os.open(tmp_path / ".partial", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(TooManyBytes, match="more than the 5242879 bytes"):
            await receive(
                blocks(8),
                fd,
                1,
                5 * WRITE_BLOCK,
                hashlib.sha256(),
                on_chunk=lambda count: None,
                on_written=lambda done: None,
            )
        assert os.fstat(fd).st_size <= 5 * WRITE_BLOCK
    finally:
        os.close(fd)
