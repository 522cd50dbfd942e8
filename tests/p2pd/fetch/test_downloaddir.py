"""Names in download_dir, reached without following links (p2pd/fetch/downloaddir.py)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pd.fetch import downloaddir
from p2pd.fetch.downloaddir import LinkInTheWay, open_folder, open_partial, open_root, place_fd
from p2pd.fetch.partial import existing_copy, resume_state

NAME = ".partial"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "downloads").mkdir()
    (tmp_path / "outside").mkdir()
    fd = open_root(tmp_path / "downloads")
    yield fd
    os.close(fd)


def test_a_partial_file_of_ours_is_resumed(tmp_path: Path, root: int) -> None:
    (tmp_path / "downloads" / NAME).write_bytes(b"so far")
    fd = open_partial(root, NAME)
    try:
        assert os.pread(fd, 100, 0) == b"so far"
    finally:
        os.close(fd)


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo", "dangling"])
def test_anything_else_at_the_partial_name_loses_the_name_only(
    tmp_path: Path, root: int, planted: str
) -> None:
    partial = tmp_path / "downloads" / NAME
    target = tmp_path / "outside" / "precious"
    target.write_bytes(b"precious")
    if planted == "symlink":
        partial.symlink_to(target)
    elif planted == "dangling":
        partial.symlink_to(tmp_path / "outside" / "created-through-the-link")
    elif planted == "hardlink":
        os.link(target, partial)
    else:
        os.mkfifo(partial)
    fd = open_partial(root, NAME)
    try:
        os.pwrite(fd, b"ours", 0)
    finally:
        os.close(fd)
    assert partial.read_bytes() == b"ours" and not partial.is_symlink()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    assert target.read_bytes() == b"precious" and target.stat().st_nlink == 1
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["precious"]


def test_a_folder_on_the_way_that_is_a_link_is_refused_naming_it(tmp_path: Path, root: int) -> None:
    downloads = tmp_path / "downloads"
    (downloads / "a").mkdir()
    (downloads / "a" / "b").symlink_to(tmp_path / "outside")
    with pytest.raises(LinkInTheWay) as caught:
        open_folder(root, downloads, "a/b/c", create=True)
    assert str(downloads / "a" / "b") in str(caught.value.strerror)
    assert "symbolic link" in str(caught.value.strerror)
    assert list((tmp_path / "outside").iterdir()) == []
    fd = open_folder(root, downloads, "a/new/deeper", create=True)  # made as it goes
    os.close(fd)
    assert (downloads / "a" / "new" / "deeper").is_dir()


@pytest.mark.parametrize("by_descriptor", [True, False])
def test_placing_links_the_verified_inode_never_what_its_name_became(
    tmp_path: Path, root: int, monkeypatch: pytest.MonkeyPatch, by_descriptor: bool
) -> None:
    """The partial file renamed and a link put at its name after verification: the file
    placed is still ours (by its descriptor), or, without /proc, the placing is refused
    and undone."""
    if not by_descriptor:
        monkeypatch.setattr(downloaddir, "_PROC_FD", tmp_path / "no-proc")
    downloads = tmp_path / "downloads"
    secret = tmp_path / "outside" / "identity.key"
    secret.write_bytes(b"the key")
    fd = open_partial(root, NAME)
    try:
        os.pwrite(fd, b"verified bytes", 0)
        (downloads / NAME).rename(downloads / "moved")
        (downloads / NAME).symlink_to(secret)
        if by_descriptor:
            assert place_fd(fd, root, NAME, downloads, "sub/file.bin") == "sub/file.bin"
            assert (downloads / "sub" / "file.bin").read_bytes() == b"verified bytes"
        else:
            with pytest.raises(OSError, match="was replaced while being placed"):
                place_fd(fd, root, NAME, downloads, "sub/file.bin")
            assert not (downloads / "sub" / "file.bin").exists()
    finally:
        os.close(fd)
    assert secret.read_bytes() == b"the key"
    assert (downloads / NAME).is_symlink()  # not ours: left alone


def test_a_partial_file_removed_before_its_placing_is_reported(tmp_path: Path, root: int) -> None:
    downloads = tmp_path / "downloads"
    fd = open_partial(root, NAME)
    try:
        (downloads / NAME).unlink()
        with pytest.raises(OSError, match="removed while being placed"):
            place_fd(fd, root, NAME, downloads, "file.bin")
    finally:
        os.close(fd)
    assert sorted(p.name for p in downloads.iterdir()) == []


def test_existing_copy_never_reads_through_a_link(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    outside = tmp_path / "same bytes"
    outside.write_bytes(b"content")
    sha = hashlib.sha256(b"content").hexdigest()
    (downloads / "a.txt").symlink_to(outside)
    assert existing_copy(downloads, "a.txt", sha, 7) is None  # taken, but not a copy
    (downloads / "a (1).txt").write_bytes(b"content")
    assert existing_copy(downloads, "a.txt", sha, 7) == "a (1).txt"
    assert existing_copy(downloads, "a.txt", sha, 8) is None  # another size: not even read
    (downloads / "sub").symlink_to(tmp_path)
    with pytest.raises(LinkInTheWay):
        existing_copy(downloads, "sub/same bytes", sha, 7)


def test_a_resume_cuts_what_lies_past_the_listed_size(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    sha = "ab" * 32
    (downloads / f".{sha}.p2pd-partial").write_bytes(b"0123456789" + b"junk" * 1000)
    partial = resume_state(downloads, sha, 10)
    try:
        assert partial.offset == 10 and os.fstat(partial.fd).st_size == 10
        assert partial.digest.hexdigest() == hashlib.sha256(b"0123456789").hexdigest()
    finally:
        os.close(partial.fd)
