"""A file's Merkle tree as BitTorrent v2 lays it out (BEP 52): pieces root, piece layer. Pure.

The tree's leaves are the SHA-256 of each 16 KiB block of the file (the last
block may be shorter and is hashed as it is); the leaf layer is padded to a
power of two with 32 zero bytes; a parent is SHA-256(left ‖ right).  Its root
is BEP 52's ``pieces root``: it depends on the bytes only, not on the piece
size, so a file's root equals the one any BitTorrent v2 client computes.  An
empty file has no root (``None``).

A piece is ``piece_size`` bytes (a power of two, at least one block); the
*piece layer* is the layer of the tree whose nodes cover one piece each,
holding only as many hashes as the file has pieces (the nodes that cover
only padding are left out).  A file of one piece or less has no piece layer
(``b""``): its root is then the hash of its only piece.  A downloader that
holds the root (from the listing) checks a member's piece layer with
:func:`verify_piece_layer` and then each piece as it arrives with
:meth:`Pieces.verify`.

Hashing every block costs about as much as hashing the whole file once more.
:class:`MerkleBuilder` is fed the same buffers as the whole-file sha256; each
``update`` call hashes its blocks with the GIL released (hashlib releases it
for buffers over 2 KiB), so a second thread can run it beside the whole-file
hash of the same buffer: see ``bench/merkle_cost.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

BLOCK_SIZE = 16 * 1024
HASH_SIZE = 32
#: Answers under 1 MiB keep p2pd's HTTP connections alive; a piece is one answer.
MAX_PIECE_SIZE = 512 * 1024
#: piece_size_for() picks the smallest piece size that keeps a file within this many pieces.
TARGET_PIECES = 2048

Bytes = bytes | bytearray | memoryview

_sha256 = hashlib.sha256


def _zero_roots(levels: int) -> tuple[bytes, ...]:
    """The root of 2**k zero leaves, for every k < levels: the pad hash of layer k."""
    roots = [bytes(HASH_SIZE)]
    for _ in range(levels - 1):
        roots.append(_sha256(roots[-1] + roots[-1]).digest())
    return tuple(roots)


#: Enough levels for 2**63 leaves: every size a file can have.
PAD = _zero_roots(64)


class BadPieceLayer(ValueError):
    """A piece layer (or a piece size) that does not fit a file's size and root."""


def is_valid_piece_size(piece_size: int) -> bool:
    """True for a power of two of at least one block (16 KiB), as BEP 52 requires."""
    return piece_size >= BLOCK_SIZE and piece_size & (piece_size - 1) == 0


def _levels_per_piece(piece_size: int) -> int:
    if not is_valid_piece_size(piece_size):
        raise ValueError(
            f"piece size {piece_size} is not a power of two of at least {BLOCK_SIZE} bytes"
        )
    return (piece_size // BLOCK_SIZE).bit_length() - 1


def piece_size_for(size: int) -> int:
    """The piece size p2pd uses for a file of ``size`` bytes.

    The smallest power of two from 16 KiB that keeps the file within
    TARGET_PIECES pieces, at most 512 KiB (1 GiB → 512 KiB; larger files have
    more pieces: 4 GiB → 8192).
    """
    if size < 0:
        raise ValueError(f"a file size cannot be negative ({size})")
    wanted = -(-size // TARGET_PIECES)
    piece_size = BLOCK_SIZE
    while piece_size < wanted and piece_size < MAX_PIECE_SIZE:
        piece_size *= 2
    return piece_size


def piece_count(size: int, piece_size: int) -> int:
    """How many pieces a file of ``size`` bytes has (0 for an empty file)."""
    _levels_per_piece(piece_size)
    return -(-size // piece_size)


def piece_range(index: int, size: int, piece_size: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` of piece ``index``; the last piece may be shorter."""
    if not 0 <= index < piece_count(size, piece_size):
        raise IndexError(f"piece {index} is outside a file of {size} bytes")
    start = index * piece_size
    return start, min(start + piece_size, size)


def leaf_hashes(data: Bytes) -> list[bytes]:
    """The leaves over ``data``: SHA-256 of each 16 KiB block, the last one as long as it is."""
    view = memoryview(data)
    return [_sha256(view[at : at + BLOCK_SIZE]).digest() for at in range(0, len(view), BLOCK_SIZE)]


def _fold(hashes: Sequence[bytes], level: int, levels: int) -> list[bytes]:
    """Go ``levels`` layers up from ``hashes`` (on layer ``level``), padding odd layers."""
    layer = list(hashes)
    for up in range(level, level + levels):
        if len(layer) % 2:
            layer.append(PAD[up])
        layer = [_sha256(layer[at] + layer[at + 1]).digest() for at in range(0, len(layer), 2)]
    return layer


def _root(hashes: Sequence[bytes], level: int) -> bytes:
    """The root over ``hashes`` (layer ``level``), the layer padded to a power of two."""
    return _fold(hashes, level, (len(hashes) - 1).bit_length())[0]


def merkle_root(data: Bytes) -> bytes | None:
    """The pieces root of a file whose bytes are ``data``; None when it is empty."""
    if not len(data):
        return None
    return _root(leaf_hashes(data), 0)


def piece_hash(data: Bytes, piece_size: int) -> bytes:
    """The piece-layer hash of one piece of a file of more than one piece.

    The last piece may be shorter: its leaves are padded to a whole piece.  (A
    file of one piece has no piece layer: check it against the root, which
    :meth:`Pieces.verify` does.)
    """
    levels = _levels_per_piece(piece_size)
    if not 0 < len(data) <= piece_size:
        raise ValueError(f"a piece has 1 to {piece_size} bytes, not {len(data)}")
    return _fold(leaf_hashes(data), 0, levels)[0]


def split_layer(layer: Bytes) -> list[bytes]:
    """A piece layer's hashes, one per piece."""
    if len(layer) % HASH_SIZE:
        raise BadPieceLayer(f"a piece layer of {len(layer)} bytes is not whole 32-byte hashes")
    view = memoryview(layer)
    return [bytes(view[at : at + HASH_SIZE]) for at in range(0, len(view), HASH_SIZE)]


def piece_layer_from_leaves(leaves: Sequence[bytes], piece_size: int) -> bytes:
    """The piece layer over a file's leaves: b"" for a file of one piece or less."""
    levels = _levels_per_piece(piece_size)
    per_piece = 1 << levels
    if len(leaves) <= per_piece:
        return b""
    return b"".join(
        _fold(leaves[at : at + per_piece], 0, levels)[0] for at in range(0, len(leaves), per_piece)
    )


def root_from_piece_layer(layer: Bytes, piece_size: int) -> bytes:
    """The root the hashes of a piece layer fold up to (padding with BEP 52's pad hashes)."""
    hashes = split_layer(layer)
    if not hashes:
        raise BadPieceLayer("an empty piece layer has no root")
    return _root(hashes, _levels_per_piece(piece_size))


def layer_problem(layer: Bytes, root: bytes | None, size: int, piece_size: int) -> str | None:
    """Why ``layer`` is not the piece layer of a file of ``size`` bytes with ``root``, or None.

    A file of one piece or less must have an empty layer (its root is checked
    against the piece itself).
    """
    if not is_valid_piece_size(piece_size):
        return f"piece size {piece_size} is not a power of two of at least {BLOCK_SIZE} bytes"
    if size < 0:
        return f"size {size} is negative"
    if (root is None) != (size == 0):
        return "an empty file has no root, and every other file has one"
    if root is not None and len(root) != HASH_SIZE:
        return f"a root has {HASH_SIZE} bytes, not {len(root)}"
    count = piece_count(size, piece_size)
    wanted = HASH_SIZE * count if count > 1 else 0
    if len(layer) != wanted:
        return f"the piece layer has {len(layer)} bytes where {count} pieces need {wanted}"
    if wanted and root_from_piece_layer(layer, piece_size) != root:
        return "the piece layer does not fold up to the root"
    return None


def verify_piece_layer(layer: Bytes, root: bytes | None, size: int, piece_size: int) -> bool:
    """True when ``layer`` is exactly the piece layer of that file (see layer_problem)."""
    return layer_problem(layer, root, size, piece_size) is None


@dataclass(frozen=True)
class Pieces:
    """One file's pieces and their hashes, as listed (root) and served (layer)."""

    size: int
    piece_size: int
    root: bytes | None
    layer: bytes

    @classmethod
    def checked(cls, size: int, piece_size: int, root: bytes | None, layer: Bytes) -> Pieces:
        """The pieces of a file, once ``layer`` is checked against ``root``; else BadPieceLayer."""
        problem = layer_problem(layer, root, size, piece_size)
        if problem is not None:
            raise BadPieceLayer(f"{problem}: ask another member for this file's piece layer")
        return cls(size, piece_size, root, bytes(layer))

    @property
    def count(self) -> int:
        return piece_count(self.size, self.piece_size)

    def range(self, index: int) -> tuple[int, int]:
        """The bytes ``[start, end)`` of piece ``index``."""
        return piece_range(index, self.size, self.piece_size)

    def expected(self, index: int) -> bytes:
        """The hash piece ``index`` must have: its piece-layer entry, or the root for one piece."""
        self.range(index)
        if not self.layer:
            assert self.root is not None
            return self.root
        return self.layer[index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def verify(self, index: int, data: Bytes) -> bool:
        """True when ``data`` is exactly piece ``index``."""
        start, end = self.range(index)
        if len(data) != end - start:
            return False
        if not self.layer:
            return merkle_root(data) == self.root
        return piece_hash(data, self.piece_size) == self.expected(index)


class MerkleBuilder:
    """The pieces root and piece layer of a file fed in buffers of any size, in order.

    It keeps the leaves of one piece and the piece layer (32 bytes a piece),
    not the whole tree.  Not thread-safe: one thread at a time feeds it (which
    may be another thread than the one computing the whole-file sha256).
    """

    def __init__(self, piece_size: int) -> None:
        self._levels = _levels_per_piece(piece_size)
        self._piece_size = piece_size
        self._per_piece = 1 << self._levels
        self._partial = bytearray()
        self._leaves: list[bytes] = []
        self._layer = bytearray()
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def update(self, data: Bytes) -> None:
        """Feed the next bytes of the file."""
        if self._done:
            raise RuntimeError("this MerkleBuilder is finished: make a new one for another file")
        view = memoryview(data).cast("B")
        self._size += len(view)
        if self._partial:
            taken = BLOCK_SIZE - len(self._partial)
            self._partial += view[:taken]
            view = view[taken:]
            if len(self._partial) < BLOCK_SIZE:
                return
            self._add_leaf(_sha256(self._partial).digest())
            self._partial.clear()
        whole = len(view) - len(view) % BLOCK_SIZE
        for at in range(0, whole, BLOCK_SIZE):
            self._add_leaf(_sha256(view[at : at + BLOCK_SIZE]).digest())
        if whole < len(view):
            self._partial += view[whole:]

    def _add_leaf(self, leaf: bytes) -> None:
        self._leaves.append(leaf)
        if len(self._leaves) == self._per_piece:
            self._layer += _fold(self._leaves, 0, self._levels)[0]
            self._leaves.clear()

    def finish(self) -> Pieces:
        """The file's pieces; the builder takes no more bytes."""
        if self._done:
            raise RuntimeError("this MerkleBuilder is already finished")
        self._done = True
        if self._partial:
            self._leaves.append(_sha256(self._partial).digest())
            self._partial.clear()
        if self._size == 0:
            return Pieces(0, self._piece_size, None, b"")
        if not self._layer:
            # One piece, not a whole one: BEP 52 pads its leaves to a power of two only.
            return Pieces(self._size, self._piece_size, _root(self._leaves, 0), b"")
        if self._leaves:
            self._layer += _fold(self._leaves, 0, self._levels)[0]
            self._leaves.clear()
        layer = bytes(self._layer)
        if len(layer) == HASH_SIZE:
            return Pieces(self._size, self._piece_size, layer, b"")
        return Pieces(
            self._size, self._piece_size, root_from_piece_layer(layer, self._piece_size), layer
        )
