"""A file error while receiving comes out as itself, whatever the writer was doing."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pd.partial import WRITE_BLOCK, receive


async def blocks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * WRITE_BLOCK


async def test_a_failing_write_is_reported_not_a_broken_channel(tmp_path: Path) -> None:
    # The first write fails (no such folder) while the receiving side already
    # waits to hand over the next block: the report must be the file's error
    # (what the history tells the user, e.g. "disk full"), not the hand-over's.
    partial = tmp_path / "missing" / ".partial"
    with pytest.raises(OSError) as caught:
        await receive(
            blocks(8),
            partial,
            0,
            hashlib.sha256(),
            on_chunk=lambda count: None,
            on_written=lambda done: None,
        )
    assert caught.value.errno == errno.ENOENT
