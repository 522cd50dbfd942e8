"""The fetch method (p2pd.control.methods) with the daemon's real history and fake members' answers.

Every fetch leaves an outcome in the history, also one refused before any
transfer exists; a folder with one unsafe name is refused whole; progress
notifications come only when the call asks for them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from p2pcommon.models import Member, SharedFile
from p2pd.config import PeerSettings
from p2pd.control import jsonrpc
from p2pd.control.jsonrpc import LineBuffer, RpcError
from p2pd.control.methods import Rpc
from p2pd.control.server import ControlServer
from p2pd.fetch.downloads import Downloads, Transfer
from p2pd.fetch.history import History
from p2pd.fetch.model import Outcome, Progress, Queued
from p2pd.fetch.swarming import Candidate
from p2pd.peer.client import PeerUnreachable
from p2pd.peer.listing import MemberListing
from tests.p2pd.live_registry import LiveRegistry, live_registry
from tests.support import make_cert_pem

OWN = "o" * 52
BOB = "b" * 52
SHA = "a" * 64


def shared(path: str, size: int = 3) -> SharedFile:
    # model_construct: a listing as a hostile or buggy member could mean it,
    # past the parser's own path check.
    return SharedFile.model_construct(path=path, size=size, mtime=0.0, sha256=SHA)


class FakePool:
    """The members' answers to GET /files."""

    def __init__(self, files: list[SharedFile] | None = None, down: bool = False) -> None:
        self.files = files or []
        self.down = down

    async def listing(self, member: Member) -> MemberListing:
        if self.down:
            raise PeerUnreachable(f"{member.name} at 127.0.0.1:1: connection refused")
        return MemberListing.of(1, self.files)


class QuickDownloads(Downloads):
    """Transfers that finish by themselves after ``seconds``, without a member."""

    seconds = 1.2
    nursery: trio.Nursery
    started: list[str]

    async def start(
        self,
        member: Member,
        entry: SharedFile,
        candidates: list[Candidate] | None = None,
        *,
        name: str = "",
    ) -> Transfer:
        self.started.append(entry.path)
        queued = Queued(f"{len(self.started):08x}", member.id, member.name, entry.path, SHA, 3, 0)
        transfer = Transfer(queued, Path("/tmp") / entry.path, Progress(3))

        async def finish() -> None:
            await trio.sleep(self.seconds)
            transfer.outcome = Outcome(
                queued.id, str(transfer.dest), entry.path, member.id, member.name,
                SHA, 3, "ok", None, 0, 1, 3.0,
            )  # fmt: skip
            transfer.done.set()

        self.nursery.start_soon(finish)
        return transfer


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rpc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def registry() -> AsyncIterator[LiveRegistry]:
    """A real registry listing bob and zed (whose id also starts with b)."""
    listed = [
        Member(id=BOB, name="bob", addresses=["127.0.0.1:1"], cert=make_cert_pem(), last_seen=0),
        Member(id="bz" + "c" * 50, name="zed", addresses=[], cert=make_cert_pem(), last_seen=0),
    ]
    async with live_registry(listed) as registry:
        yield registry


def make_rpc(
    registry: LiveRegistry, folder: Path, pool: FakePool, history: History | None = None
) -> Rpc:
    members = registry.directory(OWN)
    history = history or History(folder / "history.sqlite3")
    settings = PeerSettings.model_construct(
        name="me", share_dir=folder / "share", download_dir=folder / "downloads"
    )
    downloads = QuickDownloads(cast(Any, pool), members, folder / "downloads", history)
    downloads.started = []
    return Rpc(
        OWN,
        lambda: settings,
        members,
        cast(Any, None),  # share, server, link: no fetch touches them
        cast(Any, None),
        cast(Any, None),
        cast(Any, pool),
        downloads,
        history,
        clock=lambda: 1000.0,
    )


async def no_notify(name: str, params: dict[str, Any]) -> None:
    raise AssertionError(f"unasked notification {name}")


async def refused_fetch(rpc: Rpc, peer: str, path: str) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await rpc.rpc_fetch({"peer": peer, "path": path}, no_notify)
    return caught.value


@pytest.mark.parametrize(
    ("peer", "path", "pool", "peer_id", "peer_name", "remote_path", "dest"),
    [
        ("carol", "/a.txt", FakePool(), "", "carol", "a.txt", "a.txt"),
        ("b", "a.txt", FakePool(), "", "b", "a.txt", "a.txt"),  # ambiguous
        ("bob", "a.txt", FakePool(down=True), BOB, "bob", "a.txt", "a.txt"),
        ("bob", "docs/", FakePool([shared("a.txt")]), BOB, "bob", "docs/", "docs"),
        ("bob", "../x", FakePool([shared("../x")]), BOB, "bob", "../x", ""),
    ],
    ids=["unknown peer", "ambiguous peer", "unreachable", "not shared", "unsafe path"],
)
async def test_a_fetch_refused_before_any_transfer_is_in_the_history(
    registry: LiveRegistry,
    folder: Path,
    peer: str,
    path: str,
    pool: FakePool,
    peer_id: str,
    peer_name: str,
    remote_path: str,
    dest: str,
) -> None:
    rpc = make_rpc(registry, folder, pool)
    error = await refused_fetch(rpc, peer, path)
    assert error.code == jsonrpc.OPERATION_FAILED
    (record,) = await rpc.rpc_history({}, no_notify)
    assert record == {
        "id": record["id"],
        "path": str(folder / "downloads" / dest) if dest else str(folder / "downloads"),
        "remote_path": remote_path,
        "peer_id": peer_id,
        "peer_name": peer_name,
        "sha256": "",
        "size": 0,
        "status": "failed",
        "error": error.message,  # what the user was told
        "started_at": 1000.0,
        "finished_at": 1000.0,
        "bytes_per_second": 0.0,
        "already_there": False,
        "sources": [],  # no member sent anything
    }
    # The call's error carries the same record: `p2pctl --json fetch` prints it.
    assert error.data["outcome"] == record
    assert len(record["id"]) == 8
    assert rpc.downloads.active == {}


async def test_a_folder_with_an_unsafe_name_is_refused_whole(
    registry: LiveRegistry, folder: Path
) -> None:
    files = [shared("docs/a.txt"), shared("docs/.hidden"), shared("docs/b.txt")]
    files.append(shared("docs/c\x1b.txt"))
    rpc = make_rpc(registry, folder, FakePool(files))
    error = await refused_fetch(rpc, "bob", "docs/")
    assert "'docs/.hidden'" in error.message and "'docs/c\\x1b.txt'" in error.message
    assert "docs/a.txt" not in error.message
    assert "nothing was fetched (2 of 4 files refused)" in error.message
    downloads = cast(QuickDownloads, rpc.downloads)
    assert downloads.started == []  # no transfer began, not even of the good files
    assert rpc.history.file.queued() == []
    (record,) = await rpc.rpc_history({}, no_notify)
    assert (record["status"], record["remote_path"], record["error"]) == (
        "failed",
        "docs/",
        error.message,
    )


async def test_a_refusal_is_kept_in_memory_while_the_history_fails(
    registry: LiveRegistry, folder: Path
) -> None:
    broken = History(folder / "missing" / "history.sqlite3")  # no such folder: cannot open
    rpc = make_rpc(registry, folder, FakePool(), broken)
    error = await refused_fetch(rpc, "carol", "a.txt")
    (kept,) = rpc.history.unrecorded
    assert (kept.status, kept.error, kept.peer_name) == ("failed", error.message, "carol")
    assert rpc.history.error is not None


async def read_until_answer(stream: trio.SocketStream) -> list[dict[str, Any]]:
    buffer, got = LineBuffer(), list[dict[str, Any]]()
    while not got or "id" not in got[-1]:
        data = await stream.receive_some(65536)
        assert data, "the server closed the connection"
        got += [json.loads(line) for line in buffer.feed(data)]
    return got


async def test_progress_is_sent_only_to_a_fetch_that_asks(
    registry: LiveRegistry, folder: Path
) -> None:
    rpc = make_rpc(registry, folder, FakePool([shared("a.txt")]))
    socket_path = folder / "control.sock"
    async with trio.open_nursery() as nursery:
        cast(QuickDownloads, rpc.downloads).nursery = nursery
        await nursery.start(ControlServer(socket_path, rpc.methods()).run)
        stream = await trio.open_unix_socket(str(socket_path))
        async with stream:
            await stream.send_all(jsonrpc.request(1, "fetch", {"peer": "bob", "path": "a.txt"}))
            (answer,) = await read_until_answer(stream)  # the answer first and only
            assert (answer["id"], answer["result"]["status"]) == (1, "ok")
            params = {"peer": "bob", "path": "a.txt", "progress": True}
            await stream.send_all(jsonrpc.request(2, "fetch", params))
            *progress, answer = await read_until_answer(stream)
            assert len(progress) >= 2
            assert {p["method"] for p in progress} == {"progress"}
            assert progress[0]["params"]["remote_path"] == "a.txt"
            assert answer["result"]["status"] == "ok"
        nursery.cancel_scope.cancel()


async def test_a_folder_named_without_its_slash_says_how_to_fetch_it(
    registry: LiveRegistry, folder: Path
) -> None:
    rpc = make_rpc(registry, folder, FakePool([shared("docs/a.txt"), shared("docs/b.txt")]))
    error = await refused_fetch(rpc, "bob", "docs")
    assert error.message == "'docs' is a folder: fetch `docs/` to get all its files"


async def test_cancel_answers_when_the_transfer_has_ended_within_a_bound(
    registry: LiveRegistry, folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rpc = make_rpc(registry, folder, FakePool())
    queued = Queued("0000cafe", BOB, "bob", "a.txt", SHA, 3, 0)
    ending = Transfer(queued, folder / "downloads" / "a.txt", Progress(3))
    rpc.downloads.active[queued.id] = ending

    async def ends_after_a_second() -> None:
        await trio.sleep(1)
        ending.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ends_after_a_second)
        asked = trio.current_time()
        answer = await rpc.rpc_cancel({"id": queued.id}, no_notify)
        assert answer == {"id": queued.id, "cancelled": True}
        assert trio.current_time() - asked >= 1 and ending.cancel_scope.cancel_called

    stuck = Transfer(Queued("0000dead", BOB, "bob", "b.txt", SHA, 3, 0), folder, Progress(3))
    rpc.downloads.active["0000dead"] = stuck
    with pytest.raises(RpcError, match="cancelled but still stopping after 10 s"):
        await rpc.rpc_cancel({"id": "0000dead"}, no_notify)


async def test_peers_lists_every_other_member_by_name_and_filters_by_pattern(
    registry: LiveRegistry, folder: Path
) -> None:
    await registry.add(
        Member(id=OWN, name="me", addresses=[], cert=make_cert_pem(), last_seen=0),
        *(
            Member(
                id="k" + "abcdefghijklm"[n] + "k" * 50,
                name=f"kim{n}",
                addresses=["10.0.0.1:7070"],
                cert=make_cert_pem(),
                last_seen=0,
            )
            for n in range(12)
        ),
    )
    rpc = make_rpc(registry, folder, FakePool())
    everyone = await rpc.rpc_peers({}, no_notify)
    names = [p["name"] for p in everyone]
    assert names == sorted(names) and len(names) == 14  # bob, zed and the kims; not me
    assert set(everyone[0]) == {"id", "name", "addresses", "last_seen"}  # no certificate
    assert everyone[0]["last_seen"] > 0  # the member's last register or heartbeat
    assert [p["name"] for p in await rpc.rpc_peers({"pattern": "Z"}, no_notify)] == ["zed"]
    assert [p["name"] for p in await rpc.rpc_peers({"pattern": "kim1?"}, no_notify)] == [
        "kim10",
        "kim11",
    ]
    assert [p["name"] for p in await rpc.rpc_peers({"pattern": BOB}, no_notify)] == ["bob"]
    assert await rpc.rpc_peers({"pattern": "nobody*"}, no_notify) == []
    with pytest.raises(RpcError, match="pattern"):
        await rpc.rpc_peers({"pattern": 3}, no_notify)
