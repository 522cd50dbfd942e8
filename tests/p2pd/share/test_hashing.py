"""One read gives a file's sha256, pieces root and piece layer (p2pd.share.hashing).

Checked against p2pd.share.merkle (itself checked against libtorrent 2.0) on
real files of awkward sizes, on one thread and on two (from TWO_THREADS_FROM).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from p2pd.share.hashing import TWO_THREADS_FROM, FileHasher
from p2pd.share.merkle import BLOCK_SIZE, MerkleBuilder, merkle_root, piece_size_for

SIZES = [
    0,
    1,
    BLOCK_SIZE - 1,
    BLOCK_SIZE,
    BLOCK_SIZE + 1,
    100_000,
    TWO_THREADS_FROM - 1,
    TWO_THREADS_FROM,
    9 * 1024 * 1024 + 5,
]


@pytest.mark.parametrize("size", SIZES)
def test_one_read_gives_the_sha256_the_root_and_the_layer(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    builder = MerkleBuilder(piece_size_for(size))
    builder.update(data)
    pieces = builder.finish()
    root = merkle_root(data)
    with FileHasher() as hasher:
        fd = os.open(path, os.O_RDONLY)
        try:
            hashed, layer = hasher.hash_fd(fd, size)
        finally:
            os.close(fd)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert hashed.root == (root.hex() if root is not None else None)
    assert hashed.piece_size == piece_size_for(size)
    assert layer == pieces.layer


def test_the_helper_thread_serves_many_files_and_stops_with_the_hasher(tmp_path: Path) -> None:
    files = [os.urandom(TWO_THREADS_FROM + n) for n in range(3)]
    hasher = FileHasher()
    for n, data in enumerate(files):
        (tmp_path / f"{n}").write_bytes(data)
        fd = os.open(tmp_path / f"{n}", os.O_RDONLY)
        try:
            hashed, _ = hasher.hash_fd(fd, len(data))
        finally:
            os.close(fd)
        assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    hasher.close()
    assert hasher._helper is None


def test_a_stop_between_blocks_leaves_no_thread_waiting(tmp_path: Path) -> None:
    data = os.urandom(TWO_THREADS_FROM * 2)
    (tmp_path / "f").write_bytes(data)
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # as trio.from_thread.check_cancelled raises Cancelled

    with FileHasher() as hasher:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            with pytest.raises(KeyboardInterrupt):
                hasher.hash_fd(fd, len(data), check)
            os.lseek(fd, 0, os.SEEK_SET)
            hashed, _ = hasher.hash_fd(fd, len(data))  # the ring is whole again
        finally:
            os.close(fd)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
