"""download_dir, reached without following any link (docs/protocol.md §5).

Whoever may write in download_dir can plant a symbolic link, a hard link or
a FIFO at any name p2pd is about to use: the partial file's, a subfolder's,
the final one.  So every path is walked one folder at a time from a
descriptor of download_dir, each step with ``O_NOFOLLOW``; folders are
created with ``mkdir`` relative to their parent's descriptor; the partial
file is used only if it is a regular file of ours with no other name, and is
replaced otherwise; placing links the very inode that was verified (through
its descriptor), under a name that ``link(2)`` refuses if it is taken, by a
link or anything else.  A name that holds a link is never opened through it.

Blocking calls: run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from pathlib import Path

from p2pd.fetch.names import numbered

log = logging.getLogger("p2pd.downloads")

ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Non-blocking: a FIFO planted at the name cannot stall the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PARTIAL_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: A partial file is ours alone until it is verified; placing gives it the usual mode.
PARTIAL_MODE = 0o600
#: Linking an open file by its descriptor (linkat of /proc/self/fd/N, following it).
_PROC_FD = Path("/proc/self/fd")


class LinkInTheWay(OSError):
    """Something other than a folder (a symbolic link, a file) where a folder must be."""


def open_root(download_dir: Path) -> int:
    """A descriptor of download_dir itself (the configured folder; links to it are the admin's)."""
    return os.open(download_dir, ROOT_FLAGS)


def open_folder(root_fd: int, download_dir: Path, folder: str, *, create: bool) -> int:
    """A new descriptor of ``folder`` ('' for download_dir) walked without following links.

    ``create``: missing folders are made (relative to their parent's descriptor).
    FileNotFoundError when one is missing and not ``create``; LinkInTheWay,
    naming it, when one is a link or no folder.
    """
    fd = os.dup(root_fd)
    walked = download_dir
    for part in folder.split("/") if folder else ():
        walked = walked / part
        try:
            try:
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                # Made meanwhile (another transfer)?  Then open what is there now.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LinkInTheWay(
                    exc.errno,
                    f"{walked} is a symbolic link or not a folder: p2pd follows no link "
                    "inside download_dir; remove or rename it, then fetch again",
                ) from None
            raise
        finally:
            os.close(fd)
        fd = inner
    return fd


def same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_partial(root_fd: int, name: str) -> int:
    """The partial file ``name`` in download_dir, open read-write: the one there if it
    is a regular file of ours with no other name, else a new one in its place."""
    try:
        fd = os.open(name, PARTIAL_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return create_partial(root_fd, name)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        log.warning("%s was a symbolic link: removed (its target untouched)", name)
        return create_partial(root_fd, name)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid():
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    log.warning("%s was not a partial file of ours: removed (nothing else touched)", name)
    return create_partial(root_fd, name)


def create_partial(root_fd: int, name: str) -> int:
    """A new, empty partial file ``name``; whatever had the name loses it (only the name)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        try:
            return os.open(name, flags, PARTIAL_MODE, dir_fd=root_fd)
        except FileExistsError:
            os.unlink(name, dir_fd=root_fd)  # never follows a link: removes the name only


def discard(root_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=root_fd)


@functools.cache
def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o077  # unknown: the strictest, a file for its owner only


def link_into(fd: int, root_fd: int, name: str, parent_fd: int, target: str) -> None:
    """Give the open file ``fd`` (also named ``name`` in download_dir) the name ``target``
    in ``parent_fd``; FileExistsError if ``target`` is taken, by anything."""
    if _PROC_FD.is_dir():
        # The inode itself, by its descriptor: whatever ``name`` is by now.
        try:
            os.link(f"{_PROC_FD}/{fd}", target, dst_dir_fd=parent_fd, follow_symlinks=True)
        except FileNotFoundError:
            if os.fstat(fd).st_nlink == 0:  # a file without a name cannot get one back
                raise OSError(errno.ESTALE, f"{name} was removed while being placed") from None
            raise
        return
    os.link(name, target, src_dir_fd=root_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
    if not same_inode(os.stat(target, dir_fd=parent_fd, follow_symlinks=False), os.fstat(fd)):
        # ``name`` was swapped between our checks and the link: not our bytes.
        os.unlink(target, dir_fd=parent_fd)
        raise OSError(errno.ESTALE, f"{name} was replaced while being placed")


def place_fd(fd: int, root_fd: int, name: str, download_dir: Path, dest: str) -> str:
    """Link the verified file ``fd`` at the first free name among ``dest``, ``dest (1)``, …
    (relative to download_dir), then drop its partial name ``name``; the name used."""
    folder, _, base = dest.rpartition("/")
    os.fchmod(fd, 0o666 & ~_umask())
    parent_fd = open_folder(root_fd, download_dir, folder, create=True)
    try:
        number = 0
        while True:
            target = numbered(Path(base), number).name
            try:
                link_into(fd, root_fd, name, parent_fd, target)
                break
            except FileExistsError:
                number += 1  # taken (a file, a link, anything): the next one
        try:
            if same_inode(os.stat(name, dir_fd=root_fd, follow_symlinks=False), os.fstat(fd)):
                os.unlink(name, dir_fd=root_fd)
        except FileNotFoundError:
            pass
        os.fsync(parent_fd)
        if folder:
            os.fsync(root_fd)  # where the partial name was removed
    finally:
        os.close(parent_fd)
    return f"{folder}/{target}" if folder else target
