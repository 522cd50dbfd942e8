"""A local attacker who may write in download_dir plants links, and p2pd fetches.

No link in download_dir is followed (docs/protocol.md §5): nothing outside it
is written, read or truncated, not even the daemon's own key, whether the link
sits at the partial file's name, at a subfolder's or at the final name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from watchdog.events import (
    FileClosedEvent,
    FileModifiedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from tests.hostile.attacker import assert_serving, ctl, poll, sha256_file
from tests.support import RunningPeer, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
MIB = 1024 * 1024
SMALL = os.urandom(30_000)  # received in memory, then written in one go
BIG = os.urandom(3 * MIB)  # streamed to the partial file, resumable
SUB = os.urandom(50_000)


@dataclass
class Scene:
    carol: RunningPeer  # the victim
    dave: RunningPeer  # a good member
    outside: Path  # somewhere the attacker would like carol to write


@pytest.fixture(scope="module")
def scene(module_dir: Path) -> Iterator[Scene]:
    share = module_dir / "dave" / "share"
    (share / "sub").mkdir(parents=True)
    (share / "small.bin").write_bytes(SMALL)
    (share / "big.bin").write_bytes(BIG)
    (share / "sub" / "file.bin").write_bytes(SUB)
    outside = module_dir / "outside"
    outside.mkdir()
    with (
        run_registryd(module_dir, {"REGISTRYD_PEER_TTL": "600"}) as registry,
        run_p2pd(module_dir, "carol", [registry.url], extra_config=FAST) as carol,
        run_p2pd(module_dir, "dave", [registry.url], extra_config=FAST) as dave,
    ):
        poll(
            lambda: "dave" in ctl(carol.socket_path, "peers").stdout,
            timeout=30,
            what="carol to see dave",
        )
        yield Scene(carol, dave, outside)


@dataclass(eq=False)
class Opens(FileSystemEventHandler):
    """Every file opened, and every one written, in the watched folders (inotify), by anyone."""

    seen: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self.lock:
            if isinstance(event, FileOpenedEvent):
                self.seen.append(Path(str(event.src_path)))
            elif isinstance(event, FileModifiedEvent | FileClosedEvent):
                self.written.append(Path(str(event.src_path)))

    def opened(self, path: Path) -> bool:
        return bool(self.of(path))

    def of(self, path: Path) -> list[Path]:
        with self.lock:
            return [p for p in self.seen if p == path]

    def writes_of(self, path: Path) -> list[Path]:
        with self.lock:
            return [p for p in self.written if p == path]


@contextmanager
def watching(*folders: Path) -> Iterator[Opens]:
    """The opens in ``folders`` while the block runs (set up what it opens itself before).

    On the way out a marker is opened in each folder and its event awaited, so
    that every open of the block has been seen.
    """
    opens = Opens()
    observer = Observer()
    for folder in folders:
        observer.schedule(opens, str(folder))
    observer.start()
    try:
        yield opens
        for marker in [folder / ".marker" for folder in folders]:
            marker.write_bytes(b"")
            poll(functools.partial(opens.opened, marker), timeout=30, what=f"{marker} opened")
            marker.unlink()
    finally:
        observer.stop()
        observer.join()


@pytest.fixture(autouse=True)
def clean(scene: Scene) -> Iterator[None]:
    """Each test starts with an empty download_dir and outside folder, and leaves carol well."""
    yield
    for folder in (scene.carol.download_dir, scene.outside):
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    assert_serving(scene.carol.process, scene.carol.socket_path, scene.carol.log())


def fetch(scene: Scene, path: str) -> tuple[int, dict[str, object]]:
    result = ctl(scene.carol.socket_path, "--json", "fetch", "dave", path, timeout=120)
    outcome = json.loads(result.stdout)
    return result.returncode, outcome


def identity_key(scene: Scene) -> Path:
    return scene.carol.state_dir / "identity.key"


@pytest.mark.parametrize("name,data", [("small.bin", SMALL), ("big.bin", BIG)])
@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_something_planted_at_the_partial_name_is_not_ours(
    scene: Scene, name: str, data: bytes, planted: str
) -> None:
    """A link to the daemon's key (or a hard link to a file outside, or a FIFO) at the
    partial file's name: the fetch succeeds with its own new file; the key is untouched."""
    download_dir = scene.carol.download_dir
    partial = download_dir / f".{hashlib.sha256(data).hexdigest()}.p2pd-partial"
    target = identity_key(scene) if planted == "symlink" else scene.outside / "precious"
    if planted == "symlink":
        partial.symlink_to(target)
    elif planted == "hardlink":
        target.write_bytes(b"precious bytes of someone else")
        os.link(target, partial)
    else:
        os.mkfifo(partial)
    before = target.read_bytes() if planted != "fifo" else b""
    with watching(scene.outside, scene.carol.state_dir) as opens:
        code, outcome = fetch(scene, name)
    assert opens.writes_of(target) == [], f"{target} was written"
    if target.parent == scene.outside:
        # (carol itself reads its key now and then: loading it for a TLS context.)
        assert opens.of(target) == [], f"{target} was opened"
    assert code == 0, outcome
    assert outcome["status"] == "ok" and sha256_file(Path(str(outcome["path"]))) == sha(data)
    if planted != "fifo":
        assert target.read_bytes() == before, f"{target} was written through the partial name"
        assert target.stat().st_nlink == 1
    assert not partial.exists() and not partial.is_symlink()


def test_a_subfolder_that_links_outside_is_refused(scene: Scene) -> None:
    """download_dir/sub → a folder outside, holding a file of the fetched name."""
    decoy = scene.outside / "file.bin"
    decoy.write_bytes(b"the attacker's decoy")
    (scene.carol.download_dir / "sub").symlink_to(scene.outside)
    with watching(scene.outside) as opens:
        code, outcome = fetch(scene, "sub/file.bin")
    assert opens.of(decoy) == [], "a file outside download_dir was read"
    assert code == 1, outcome
    error = str(outcome["error"])
    assert "sub" in error and "symbolic link" in error, error
    assert sorted(p.name for p in scene.outside.iterdir()) == ["file.bin"]
    assert decoy.read_bytes() == b"the attacker's decoy"


def test_a_final_name_that_links_outside_is_a_taken_name(scene: Scene) -> None:
    """download_dir/small.bin → a file outside with the very bytes: not "already there"
    (that would read outside), the file lands beside it, the link and its target untouched."""
    decoy = scene.outside / "copy"
    decoy.write_bytes(SMALL)
    link = scene.carol.download_dir / "small.bin"
    link.symlink_to(decoy)
    with watching(scene.outside) as opens:
        code, outcome = fetch(scene, "small.bin")
    assert opens.of(decoy) == [], "a file outside download_dir was read"
    assert code == 0, outcome
    assert outcome["already_there"] is False
    assert outcome["path"] == str(scene.carol.download_dir / "small (1).bin")
    assert sha256_file(Path(str(outcome["path"]))) == sha(SMALL)
    assert link.is_symlink() and decoy.read_bytes() == SMALL


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
