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
from pathlib import Path

from p2pd.fetch.downloaddir import READ_FLAGS, create_partial, discard, open_partial, open_root
from p2pd.fetch.names import partial_name
from p2pd.fetch.partial import Partial, hash_fd, place
from p2pd.peer.pieces import MAX_LAYER, BadPieceLayer, Pieces

LAYER_SUFFIX = ".p2pd-layer"


def layer_name(sha256: str) -> str:
    return f".{sha256}{LAYER_SUFFIX}"


def open_pieces_file(download_dir: Path, sha256: str) -> int:
    """The partial file of ``sha256``, open read-write (a new one if none is usable)."""
    root = open_root(download_dir)
    try:
        return open_partial(root, partial_name(sha256))
    finally:
        os.close(root)


def read_layer(
    download_dir: Path, sha256: str, size: int, piece_size: int, root: bytes
) -> Pieces | None:
    """The piece layer kept beside the partial file, if it is there and checks out
    against ``root`` at ``piece_size``; else None (and a bad one is removed)."""
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
            layer = os.pread(fd, MAX_LAYER + 1, 0)
        finally:
            os.close(fd)
        try:
            return Pieces.checked(size, piece_size, root, layer)
        except BadPieceLayer:
            discard(root_fd, name)
            return None
    finally:
        os.close(root_fd)


def write_layer(download_dir: Path, sha256: str, layer: bytes) -> None:
    """Keep ``layer`` beside the partial file (whatever had the name loses it)."""
    root_fd = open_root(download_dir)
    try:
        fd = create_partial(root_fd, layer_name(sha256))
        try:
            written = 0
            while written < len(layer):
                written += os.pwrite(fd, layer[written:], written)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


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
