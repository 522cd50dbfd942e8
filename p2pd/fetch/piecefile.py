"""The partial file of a many-source download, piece by piece: blocking file work.

Pieces land at their own offsets (``pwrite``), each verified before it is
written, into the same hidden partial file a one-member download uses
(p2pd.fetch.partial), reached without following links
(p2pd.fetch.downloaddir).  Beside it, ``.<sha256>.p2pd-layer`` keeps the
piece layer the pieces were checked against, so that after a crash or a
``kill -9`` the pieces on disk are checked again and only the others are
fetched; the layer itself is checked against the listed root when read back
(it is our own state, read as strictly as a member's answer).  Run these in
worker threads.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from pathlib import Path

from p2pd.fetch.downloaddir import READ_FLAGS, create_partial, discard, open_partial, open_root
from p2pd.fetch.names import layer_name, partial_name
from p2pd.fetch.partial import Partial, hash_fd, place
from p2pd.peer.pieces import MAX_LAYER, BadPieceLayer, Pieces


def open_pieces_file(download_dir: Path, sha256: str) -> int:
    """The partial file of ``sha256``, open read-write (a new one if none is usable)."""
    root = open_root(download_dir)
    try:
        return open_partial(root, partial_name(sha256))
    finally:
        os.close(root)


#: The kept layer's head: the piece size (8 bytes, big-endian) and the root it was
#: checked against, so that a restarted p2pd checks its pieces before any listing.
_HEAD = struct.Struct(">Q32s")


def read_layer(
    download_dir: Path,
    sha256: str,
    size: int,
    piece_size: int | None = None,
    root: bytes | None = None,
) -> Pieces | None:
    """The piece layer kept beside the partial file, if it is there and checks out
    against the root kept with it (and is the one of ``root`` at ``piece_size`` when
    given); else None (and a bad one, or another root's, is removed)."""
    root_fd = open_root(download_dir)
    try:
        name = layer_name(sha256)
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=root_fd)
        except OSError:
            return None  # none, or a link planted at the name: never read through it
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
                return None
            kept = os.pread(fd, _HEAD.size + MAX_LAYER + 1, 0)
        finally:
            os.close(fd)
        try:
            if len(kept) < _HEAD.size:
                raise BadPieceLayer("the kept piece layer is cut short")
            kept_size, kept_root = _HEAD.unpack_from(kept)
            if (piece_size, root) != (None, None) and (piece_size, root) != (kept_size, kept_root):
                raise BadPieceLayer("the kept piece layer is another root's")
            return Pieces.checked(size, kept_size, kept_root, kept[_HEAD.size :])
        except BadPieceLayer:
            discard(root_fd, name)
            return None
    finally:
        os.close(root_fd)


def write_layer(download_dir: Path, sha256: str, pieces: Pieces) -> None:
    """Keep ``pieces``' layer (with its root) beside the partial file (whatever had the
    name loses it)."""
    assert pieces.root is not None
    data = _HEAD.pack(pieces.piece_size, pieces.root) + pieces.layer
    root_fd = open_root(download_dir)
    try:
        fd = create_partial(root_fd, layer_name(sha256))
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def has_layer(download_dir: Path, sha256: str) -> bool:
    root_fd = open_root(download_dir)
    try:
        os.stat(layer_name(sha256), dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(root_fd)
    return True


def keep_verified_prefix(download_dir: Path, sha256: str, size: int) -> int:
    """Cut the partial file of a many-source transfer to its verified prefix (to nothing
    when its kept layer does not check out), for a one-member download that appends to
    it; the layer stays, for a later many-source round.  The bytes kept."""
    pieces = read_layer(download_dir, sha256, size)
    fd = open_pieces_file(download_dir, sha256)
    try:
        if pieces is None:
            os.ftruncate(fd, 0)
            return 0
        return keep_prefix(fd, pieces, verified_pieces(fd, pieces))
    finally:
        os.close(fd)


def discard_layer(download_dir: Path, sha256: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        root_fd = open_root(download_dir)
        try:
            discard(root_fd, layer_name(sha256))
        finally:
            os.close(root_fd)


def verified_pieces(fd: int, pieces: Pieces) -> set[int]:
    """The pieces the partial file holds already, each checked against its hash."""
    on_disk = os.fstat(fd).st_size
    found: set[int] = set()
    for index in range(pieces.count):
        start, end = pieces.range(index)
        if end > on_disk:
            break
        if pieces.verify(index, os.pread(fd, end - start, start)):
            found.add(index)
    return found


def verify_and_write(fd: int, pieces: Pieces, index: int, data: bytes) -> bool:
    """Write piece ``index`` at its offset if ``data`` is exactly it; False (nothing
    written) if it is not."""
    if not pieces.verify(index, data):
        return False
    start, _ = pieces.range(index)
    written = 0
    with memoryview(data) as view:
        while written < len(view):
            written += os.pwrite(fd, view[written:], start + written)
    return True


def keep_prefix(fd: int, pieces: Pieces, verified: set[int]) -> int:
    """Cut the partial file after its first missing piece, so that a one-member
    download resumes from there (it appends, and trusts the bytes before); the
    bytes kept."""
    end = 0
    for index in range(pieces.count):
        if index not in verified:
            break
        end = pieces.range(index)[1]
    os.ftruncate(fd, end)
    return end


def place_pieces(download_dir: Path, fd: int, sha256: str, size: int, dest: str) -> str:
    """Every piece is in: fsync, check the whole file's sha256 (Retry, the partial file
    and its layer removed, if it is not the listed one) and link it into place."""
    os.fsync(fd)
    digest, _ = hash_fd(fd, size)
    try:
        return place(download_dir, Partial(fd, digest, size), sha256, size, dest)
    finally:
        discard_layer(download_dir, sha256)
