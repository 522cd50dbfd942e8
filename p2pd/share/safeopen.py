"""Opening a shared file without following any link (docs/protocol.md §4, §8).

A path is walked one folder at a time from a descriptor of the share's
root, every step with ``O_NOFOLLOW``: a folder swapped for a symbolic link,
or a file swapped for one, fails the open instead of leading out of the
share.  The file is opened non-blocking (a FIFO put in its place cannot
stall us) and is then checked against what the index recorded: a regular
file, same device, inode, size and modification time.  Blocking calls: run
in a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from p2pcommon.paths import UnsafePath, check_relpath
from p2pd.share.index import FileEntry

ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileChanged(OSError):
    """The path names another file than the one that was indexed (or no regular file)."""


def open_root(root: Path) -> int:
    """A descriptor of the share's root (the configured folder, resolved at start)."""
    return os.open(root, ROOT_FLAGS)


def open_folder(root_fd: int, folder: str) -> int:
    """A new descriptor of ``folder`` ('' for the root), reached without following links."""
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    for part in folder.split("/") if folder else ():
        try:
            inner = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = inner
    return fd


def open_file(root: Path, relative: str) -> tuple[int, os.stat_result]:
    """An open descriptor of the regular file ``relative`` in the share, and its fstat."""
    try:
        check_relpath(relative)
    except UnsafePath as exc:
        raise FileChanged(f"{relative!r} is not a shareable path: {exc}") from None
    folder, _, name = relative.rpartition("/")
    root_fd = open_root(root)
    try:
        dir_fd = open_folder(root_fd, folder)
    finally:
        os.close(root_fd)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChanged(f"{relative} is no longer a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def matches(entry: FileEntry, st: os.stat_result) -> bool:
    """Whether ``st`` is exactly the file that ``entry`` was indexed from."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
        entry.dev,
        entry.ino,
        entry.size,
        entry.mtime_ns,
    )


def open_indexed(root: Path, entry: FileEntry) -> BinaryIO:
    """The indexed file, open for reading; FileChanged if it is not the one indexed."""
    fd, st = open_file(root, entry.path)
    if not matches(entry, st):
        os.close(fd)
        raise FileChanged(f"{entry.path} changed since it was indexed")
    return open(fd, "rb", buffering=0, closefd=True)  # noqa: SIM115 - the caller closes it
