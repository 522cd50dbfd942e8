"""p2pd/share/merkle.py: BEP 52 trees, checked against libtorrent 2.0 and by their algebra."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from functools import cache
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2pd.share.merkle import (
    BLOCK_SIZE,
    HASH_SIZE,
    MAX_PIECE_SIZE,
    BadPieceLayer,
    MerkleBuilder,
    Pieces,
    layer_problem,
    leaf_hashes,
    merkle_root,
    piece_count,
    piece_hash,
    piece_layer_from_leaves,
    piece_range,
    piece_size_for,
    verify_piece_layer,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SYSTEM_PYTHON = "/usr/bin/python3"

# Runs under the system's python3 (python3-libtorrent), not the project's venv: a v2-only
# torrent of every file in a folder; prints each file's pieces root and piece layer.
LIBTORRENT_SCRIPT = r"""
import json, os, sys
import libtorrent as lt
folder, piece_size = sys.argv[1], int(sys.argv[2])
files = lt.file_storage()
lt.add_files(files, folder)
creator = lt.create_torrent(files, piece_size, lt.create_torrent.v2_only)
lt.set_piece_hashes(creator, os.path.dirname(folder))
torrent = creator.generate()
assert torrent[b"info"][b"piece length"] == piece_size
layers = torrent.get(b"piece layers", {})
found = {}
for name, node in torrent[b"info"][b"file tree"].items():
    leaf = node[b""]
    root = leaf.get(b"pieces root")
    found[name.decode()] = {
        "length": leaf[b"length"],
        "root": root.hex() if root else None,
        "layer": layers.get(root, b"").hex() if root else "",
    }
print(json.dumps(found))
"""


@cache
def libtorrent_problem() -> str | None:
    try:
        probe = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError as exc:
        return f"{SYSTEM_PYTHON} cannot run ({exc}): install python3 and python3-libtorrent"
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} has no libtorrent: apt-get install python3-libtorrent"
    if not probe.stdout.startswith("2."):
        return f"libtorrent {probe.stdout.strip()} is not 2.x (BEP 52 needs libtorrent 2.0)"
    return None


def libtorrent_hashes(folder: Path, piece_size: int) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", LIBTORRENT_SCRIPT, str(folder), str(piece_size)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found: dict[str, dict[str, object]] = json.loads(done.stdout)
    return found


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(f"{seed}:{size}").randbytes(size)


def built(data: bytes, piece_size: int, chunk: int = MiB) -> Pieces:
    builder = MerkleBuilder(piece_size)
    for at in range(0, len(data), chunk):
        builder.update(data[at : at + chunk])
    return builder.finish()


def awkward_sizes(piece_size: int) -> list[int]:
    sizes = {0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 4 * MiB, 5 * MiB + 12345}
    sizes |= {piece_size - 1, piece_size, piece_size + 1, 3 * piece_size, 3 * piece_size + 5}
    return sorted(sizes)


@pytest.mark.parametrize("piece_size", [16 * KiB, 64 * KiB, MAX_PIECE_SIZE])
def test_roots_and_piece_layers_equal_libtorrents(tmp_path: Path, piece_size: int) -> None:
    problem = libtorrent_problem()
    if problem is not None:
        pytest.skip(problem)
    folder = tmp_path / "files"
    folder.mkdir()
    sizes = awkward_sizes(piece_size)
    for size in sizes:
        (folder / f"f{size}").write_bytes(content(size))
    theirs = libtorrent_hashes(folder, piece_size)
    assert sorted(theirs) == sorted(f"f{size}" for size in sizes)
    for size in sizes:
        data = content(size)
        ours = built(data, piece_size)
        expected = theirs[f"f{size}"]
        assert expected["length"] == size
        assert (ours.root.hex() if ours.root else None) == expected["root"], size
        assert ours.layer.hex() == expected["layer"], size
        assert merkle_root(data) == ours.root
        assert piece_layer_from_leaves(leaf_hashes(data), piece_size) == ours.layer
        assert verify_piece_layer(ours.layer, ours.root, size, piece_size)
        checked = Pieces.checked(size, piece_size, ours.root, ours.layer)
        assert checked.count == piece_count(size, piece_size)
        for index in range(checked.count):
            start, end = checked.range(index)
            assert checked.verify(index, data[start:end]), (size, index)


def test_the_root_does_not_depend_on_the_piece_size() -> None:
    data = content(3 * MiB + 7)
    roots = {built(data, piece_size).root for piece_size in (16 * KiB, 128 * KiB, 4 * MiB)}
    assert roots == {merkle_root(data)}


def test_small_files_and_the_empty_file() -> None:
    assert built(b"", 64 * KiB) == Pieces(0, 64 * KiB, None, b"")
    one_block = content(BLOCK_SIZE)
    assert merkle_root(one_block) == built(one_block, 64 * KiB).root
    assert built(one_block, 64 * KiB).root == hashlib.sha256(one_block).digest()


def test_a_whole_file_of_one_piece_is_padded_to_its_own_blocks_not_to_the_piece() -> None:
    data = content(3 * BLOCK_SIZE)  # three blocks (four leaves) in a piece of eight
    pieces = built(data, 128 * KiB)
    assert pieces.layer == b""
    assert pieces.root == merkle_root(data)
    assert pieces.root != piece_hash(data, 128 * KiB)
    assert pieces.expected(0) == pieces.root
    assert pieces.verify(0, data)


def test_the_last_piece_of_a_longer_file_is_padded_within_the_piece() -> None:
    piece_size = 64 * KiB
    data = content(piece_size + BLOCK_SIZE + 1)  # piece 1: a block and a byte
    pieces = built(data, piece_size)
    assert pieces.count == 2
    assert pieces.expected(1) == piece_hash(data[piece_size:], piece_size)
    assert pieces.verify(1, data[piece_size:])
    assert not pieces.verify(1, data[piece_size:-1])
    assert not pieces.verify(0, data[piece_size:])


@pytest.mark.parametrize(
    ("size", "piece_size"),
    [
        (0, 16 * KiB),
        (1, 16 * KiB),
        (32 * MiB, 16 * KiB),
        (32 * MiB + 1, 32 * KiB),
        (100 * MiB, 64 * KiB),
        (GiB, 512 * KiB),
        (GiB + 1, 512 * KiB),
        (40 * GiB, 512 * KiB),
    ],
)
def test_piece_sizes(size: int, piece_size: int) -> None:
    assert piece_size_for(size) == piece_size


@given(st.integers(0, 1 << 42))
def test_piece_size_is_the_smallest_power_of_two_within_2048_pieces_up_to_512_kib(
    size: int,
) -> None:
    piece_size = piece_size_for(size)
    assert piece_size & (piece_size - 1) == 0
    assert BLOCK_SIZE <= piece_size <= MAX_PIECE_SIZE
    if piece_size < MAX_PIECE_SIZE:
        assert piece_count(size, piece_size) <= 2048
    if piece_size > BLOCK_SIZE:
        assert piece_count(size, piece_size // 2) > 2048


def test_piece_ranges() -> None:
    assert piece_count(0, BLOCK_SIZE) == 0
    assert piece_count(100_000, 32 * KiB) == 4
    assert piece_range(0, 100_000, 32 * KiB) == (0, 32 * KiB)
    assert piece_range(3, 100_000, 32 * KiB) == (96 * KiB, 100_000)
    with pytest.raises(IndexError, match="piece 4 is outside a file of 100000 bytes"):
        piece_range(4, 100_000, 32 * KiB)
    with pytest.raises(IndexError):
        piece_range(-1, 100_000, 32 * KiB)


@pytest.mark.parametrize("piece_size", [0, 1, 8 * KiB, 48 * KiB, -16 * KiB])
def test_piece_sizes_that_are_not_a_power_of_two_of_blocks_are_refused(piece_size: int) -> None:
    with pytest.raises(ValueError, match="not a power of two of at least 16384 bytes"):
        MerkleBuilder(piece_size)
    assert not verify_piece_layer(b"", None, 0, piece_size)


def test_a_finished_builder_takes_no_more_bytes() -> None:
    builder = MerkleBuilder(BLOCK_SIZE)
    builder.update(b"x")
    builder.finish()
    with pytest.raises(RuntimeError, match="finished"):
        builder.update(b"y")
    with pytest.raises(RuntimeError, match="finished"):
        builder.finish()


def test_layer_problems_say_what_is_wrong() -> None:
    data = content(5 * BLOCK_SIZE)
    pieces = built(data, BLOCK_SIZE)
    root, layer = pieces.root, pieces.layer
    assert root is not None
    assert layer_problem(layer, root, len(data), BLOCK_SIZE) is None
    assert layer_problem(layer[:-HASH_SIZE], root, len(data), BLOCK_SIZE) == (
        "the piece layer has 128 bytes where 5 pieces need 160"
    )
    assert layer_problem(layer, bytes(32), len(data), BLOCK_SIZE) == (
        "the piece layer does not fold up to the root"
    )
    assert layer_problem(b"", None, len(data), BLOCK_SIZE) is not None
    assert layer_problem(layer, root[:31], len(data), BLOCK_SIZE) is not None
    with pytest.raises(BadPieceLayer, match="ask another member"):
        Pieces.checked(len(data), BLOCK_SIZE, root, layer[:-1])
    # A file of one piece has no layer: a layer sent for it is refused.
    assert not verify_piece_layer(layer[:32], root, BLOCK_SIZE, BLOCK_SIZE)


sizes = st.integers(0, 300_000)
small_piece_sizes = st.sampled_from([16 * KiB, 32 * KiB, 64 * KiB])


@settings(max_examples=60, deadline=None)
@given(sizes, small_piece_sizes, st.lists(st.integers(0, 300_000), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_tree(
    size: int, piece_size: int, cuts: list[int]
) -> None:
    data = content(size, seed=7)
    builder = MerkleBuilder(piece_size)
    bounds = [0, *sorted(min(cut, size) for cut in cuts), size]
    for start, end in zip(bounds, bounds[1:], strict=False):
        builder.update(memoryview(data)[start:end])
    assert builder.size == size
    pieces = builder.finish()
    assert pieces.root == merkle_root(data)
    assert pieces.layer == piece_layer_from_leaves(leaf_hashes(data), piece_size)
    assert verify_piece_layer(pieces.layer, pieces.root, size, piece_size)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300_000), small_piece_sizes, st.data())
def test_a_flipped_byte_changes_its_piece_hash_and_the_root(
    size: int, piece_size: int, draw: st.DataObject
) -> None:
    data = content(size, seed=11)
    position = draw.draw(st.integers(0, size - 1))
    bit = draw.draw(st.integers(0, 7))
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    pieces = built(data, piece_size)
    index = position // piece_size
    start, end = pieces.range(index)
    assert not pieces.verify(index, damaged[start:end])
    assert merkle_root(damaged) != pieces.root
    if pieces.count > 1:
        assert piece_hash(damaged[start:end], piece_size) != pieces.expected(index)
        assert built(bytes(damaged), piece_size).layer != pieces.layer


def layer_of(size: int, piece_size: int) -> Pieces:
    pieces = built(content(size, seed=3), piece_size)
    assert pieces.count > 1
    return pieces


many_pieces = st.integers(2 * BLOCK_SIZE + 1, 40 * BLOCK_SIZE)


@given(many_pieces, st.data())
def test_layer_verification_refuses_a_changed_hash(size: int, draw: st.DataObject) -> None:
    pieces = layer_of(size, BLOCK_SIZE)
    position = draw.draw(st.integers(0, len(pieces.layer) - 1))
    changed = bytearray(pieces.layer)
    changed[position] ^= 1 << draw.draw(st.integers(0, 7))
    assert not verify_piece_layer(changed, pieces.root, size, BLOCK_SIZE)


@given(many_pieces, st.data())
def test_layer_verification_refuses_a_missing_or_extra_hash(size: int, draw: st.DataObject) -> None:
    pieces = layer_of(size, BLOCK_SIZE)
    hashes = [pieces.layer[at : at + HASH_SIZE] for at in range(0, len(pieces.layer), HASH_SIZE)]
    missing = list(hashes)
    del missing[draw.draw(st.integers(0, len(hashes) - 1))]
    assert not verify_piece_layer(b"".join(missing), pieces.root, size, BLOCK_SIZE)
    extra = list(hashes)
    added = draw.draw(st.one_of(st.sampled_from(hashes), st.binary(min_size=32, max_size=32)))
    extra.insert(draw.draw(st.integers(0, len(hashes))), added)
    assert not verify_piece_layer(b"".join(extra), pieces.root, size, BLOCK_SIZE)
    # Even the hash of one more padding piece: the count comes from the size.
    padded = b"".join(hashes) + bytes(HASH_SIZE)
    assert not verify_piece_layer(padded, pieces.root, size, BLOCK_SIZE)


@given(many_pieces, st.data())
def test_layer_verification_refuses_reordered_hashes(size: int, draw: st.DataObject) -> None:
    pieces = layer_of(size, BLOCK_SIZE)
    hashes = [pieces.layer[at : at + HASH_SIZE] for at in range(0, len(pieces.layer), HASH_SIZE)]
    reordered = draw.draw(st.permutations(hashes))
    assume(reordered != hashes)
    assert not verify_piece_layer(b"".join(reordered), pieces.root, size, BLOCK_SIZE)
