"""The real p2pctl against a control server with canned answers."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pd.control.jsonrpc import RpcError
from p2pd.control.server import ControlServer, Notify
from tests.support import VENV_BIN

BOB = {"id": "b" * 52, "name": "bob", "addresses": ["10.0.0.2:7070"], "last_seen": 1.0}
FILES = [{"path": "docs/a.txt", "size": 1536, "mtime": 1.0, "sha256": "c" * 64}]
STATUS = {
    "id": "a" * 52,
    "name": "alice",
    "registered": False,
    "registry_error": "not registered: connection refused",
    "registry": None,
    "listen": "0.0.0.0:7070",
    "shared_files": 3,
    "version": "0.1.0",
    "peers": 1,
    "warning": None,
}


async def status(params: dict[str, Any], notify: Notify) -> Any:
    return STATUS


async def peers(params: dict[str, Any], notify: Notify) -> Any:
    # The daemon filters (p2pd.control.methods): here, only that the pattern arrives.
    return [BOB] if params.get("pattern") in (None, "bo*") else []


async def ls(params: dict[str, Any], notify: Notify) -> Any:
    if params["peer"] == "b":
        raise RpcError(
            1,
            "'b' matches 2 members",
            {"candidates": [{"id": "b" * 52, "name": "bob"}, {"id": "bz" + "a" * 50, "name": "x"}]},
        )
    return FILES


async def shared(params: dict[str, Any], notify: Notify) -> Any:
    return []


@pytest.fixture
def socket_path() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cli-", dir="/tmp"))
    yield folder / "control.sock"
    shutil.rmtree(folder, ignore_errors=True)


async def p2pctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [str(VENV_BIN / "p2pctl"), "--socket", str(socket_path), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_commands_json_and_human(socket_path: Path) -> None:
    methods = {"status": status, "peers": peers, "ls": ls, "shared": shared}
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, methods).run)
        result = await p2pctl(socket_path, "--json", "peers")
        assert (result.returncode, json.loads(result.stdout)) == (0, [BOB])
        result = await p2pctl(socket_path, "--json", "peers", "bo*")
        assert (result.returncode, json.loads(result.stdout)) == (0, [BOB])
        result = await p2pctl(socket_path, "--json", "peers", "carol")
        assert (result.returncode, json.loads(result.stdout)) == (0, [])
        result = await p2pctl(socket_path, "--json", "ls", "bob")
        assert json.loads(result.stdout) == FILES
        result = await p2pctl(socket_path, "--json", "status")
        assert json.loads(result.stdout) == STATUS
        result = await p2pctl(socket_path, "--json", "shared")
        assert (result.stdout, result.returncode) == (b"[]\n", 0)

        human = (await p2pctl(socket_path, "peers")).stdout.decode()
        assert human.splitlines()[0].split() == ["ID", "NAME", "ADDRESSES", "SEEN"]
        assert "bbbbbbb  bob" in human and "b" * 8 not in human
        human = (await p2pctl(socket_path, "ls", "bob")).stdout.decode()
        assert "1.5 KiB" in human and "docs/a.txt" in human
        human = (await p2pctl(socket_path, "status")).stdout.decode()
        assert "not registered: connection refused" in human
        empty = await p2pctl(socket_path, "shared")
        assert b"shares no files" in empty.stderr

        ambiguous = await p2pctl(socket_path, "ls", "b")
        assert ambiguous.returncode == 1
        assert b"matches 2 members" in ambiguous.stderr and b"bzaaaaa" in ambiguous.stderr
        assert ambiguous.stdout == b""
        # With --json, a failure is still exactly one JSON document on stdout.
        failed = await p2pctl(socket_path, "--json", "ls", "b")
        assert failed.returncode == 1
        assert json.loads(failed.stdout) == {
            "error": json.loads(failed.stdout)["error"],
            "exit_status": 1,
        }
        assert "matches 2 members" in json.loads(failed.stdout)["error"]
        unknown = await p2pctl(socket_path, "downloads")
        assert unknown.returncode == 1
        nursery.cancel_scope.cancel()


async def test_exit_codes_for_usage_and_unreachable_daemon(socket_path: Path) -> None:
    usage = await p2pctl(socket_path, "ls")
    assert usage.returncode == 2
    down = await p2pctl(socket_path, "status")
    assert down.returncode == 3
    down_json = await p2pctl(socket_path, "--json", "status")
    assert down_json.returncode == 3 and json.loads(down_json.stdout)["exit_status"] == 3
    assert str(socket_path).encode() in down.stderr
    # A socket of a p2pd run by hand: its advice is that p2pd, not the service.
    assert b"`p2pd --config FILE`" in down.stderr and b"P2PD_SOCKET" in down.stderr
    assert b"systemctl" not in down.stderr


def test_the_advice_for_an_unreachable_daemon_fits_its_socket() -> None:
    from p2pctl.main import DEFAULT_SOCKET, unreachable

    service = str(unreachable(DEFAULT_SOCKET, FileNotFoundError(2, "No such file")))
    assert "no such socket" in service and "sudo systemctl start p2pd" in service
    by_hand = str(unreachable("/tmp/alice/control.sock", ConnectionRefusedError(111, "refused")))
    assert "nothing is listening" in by_hand and "systemctl" not in by_hand
    assert 'control_socket = "/tmp/alice/control.sock"' in by_hand
    assert "--socket" in by_hand and "P2PD_SOCKET" in by_hand and DEFAULT_SOCKET in by_hand


def test_human_output_escapes_control_characters_and_json_stays_exact() -> None:
    from p2pctl.output import show_files, show_status

    hostile = [{"path": "a\x1b[31mred\nfake row", "size": 1, "mtime": 0, "sha256": "c" * 64}]
    shown = show_files(hostile)
    assert "\x1b" not in shown and len(shown.splitlines()) == 2
    assert "\\x1b[31mred\\nfake row" in shown
    status = {**STATUS, "skipped_count": 1, "skipped": {"bad\x1bname": "not UTF-8"}}
    assert "\x1b" not in show_status(status)


async def test_fetch_asks_for_progress_and_ctrl_c_cancels_the_transfer(socket_path: Path) -> None:
    asked: list[dict[str, Any]] = []
    cancelled: list[str] = []
    notified = trio.Event()

    async def fetch(params: dict[str, Any], notify: Notify) -> Any:
        # As the daemon does: progress only for a call that asks for it.
        asked.append(params)
        if params.get("detach"):
            return {"id": "1234abcd"}
        sent = 0
        while not cancelled:
            if params.get("progress") is True:
                update = {"id": "1234abcd", "size": 10, "bytes_done": sent, "rate": 1}
                await notify("progress", update)
                sent += 1
                if sent == 3:
                    notified.set()
            await trio.sleep(0.05)
        return {"id": "1234abcd", "status": "cancelled", "error": "cancelled by the user"}

    async def cancel(params: dict[str, Any], notify: Notify) -> Any:
        cancelled.append(params["id"])
        return {"id": params["id"], "cancelled": True}

    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, {"fetch": fetch, "cancel": cancel}).run)
        detached = await p2pctl(socket_path, "--json", "fetch", "--detach", "bob", "a.txt")
        assert json.loads(detached.stdout) == {"id": "1234abcd"}
        assert "progress" not in asked[-1]  # nothing to wait for, nothing to show

        process = await trio.lowlevel.open_process(
            [str(VENV_BIN / "p2pctl"), "--socket", str(socket_path), "fetch", "bob", "a.txt"],
            stderr=subprocess.PIPE,
        )
        with trio.fail_after(10):
            await notified.wait()
            await trio.sleep(0.2)  # p2pctl reads the updates: it knows the transfer id
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 1
        assert process.stderr is not None
        stderr = await process.stderr.receive_some(65536)
        await process.stderr.aclose()
        assert asked[-1] == {"peer": "bob", "path": "a.txt", "detach": False, "progress": True}
        assert cancelled == ["1234abcd"]
        assert b"cancelled transfer 1234abcd" in stderr
        nursery.cancel_scope.cancel()


async def test_small_things_a_user_notices(socket_path: Path) -> None:
    rows = [
        {
            "path": f"/srv/f{i}",
            "remote_path": f"f{i}",
            "peer_id": "b" * 52,
            "peer_name": "bob",
            "sha256": "c" * 64,
            "size": 1,
            "status": "ok",
            "error": None,
            "finished_at": 1.0,
        }
        for i in range(5000)
    ]

    async def history(params: dict[str, Any], notify: Notify) -> Any:
        return rows

    async def cancel(params: dict[str, Any], notify: Notify) -> Any:
        return {"id": params["id"], "cancelled": True}

    methods = {"history": history, "cancel": cancel}
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, methods).run)
        # `p2pctl history | head -1`: no BrokenPipeError traceback.
        piped = await trio.run_process(
            f"{VENV_BIN / 'p2pctl'} --socket {socket_path} history | head -1",
            shell=True,
            capture_stdout=True,
            capture_stderr=True,
        )
        assert b"Traceback" not in piped.stderr and b"BrokenPipe" not in piped.stderr
        assert piped.stdout.startswith(b"WHEN")
        cancelled = await p2pctl(socket_path, "cancel", "abcd1234")
        assert cancelled.stdout == b"cancelled transfer abcd1234\n"
        nursery.cancel_scope.cancel()
    empty = await p2pctl(socket_path, "fetch", "bob", "")
    assert empty.returncode == 2 and b"FILE must not be empty" in empty.stderr


def test_downloads_and_history_show_each_members_part_and_name_the_liar() -> None:
    from p2pctl.output import show_downloads, show_history

    sources = [
        {"id": "a" * 52, "name": "anna", "bytes": 3 * 1024 * 1024, "bad_pieces": 0,
         "wasted_bytes": 0, "liar": False, "rate": 2 * 1024 * 1024, "state": "active"},
        {"id": "b" * 52, "name": "bert\x1b[2J", "bytes": 0, "bad_pieces": 2,
         "wasted_bytes": 32768, "liar": True, "rate": 0, "state": "dropped"},
    ]  # fmt: skip
    transfer = {"id": "1234abcd", "state": "downloading", "bytes_done": 3 * 1024 * 1024,
                "size": 8 * 1024 * 1024, "rate": 2 * 1024 * 1024, "remote_path": "big.bin",
                "sources": sources}  # fmt: skip
    shown = show_downloads([transfer])
    assert "anna 3.0 MiB at 2.0 MiB/s" in shown, shown
    assert "LIAR (2 bad pieces)" in shown and "\x1b" not in shown
    outcome = {"finished_at": None, "status": "ok", "size": 8 * 1024 * 1024, "path": "big.bin",
               "peer_id": "a" * 52, "peer_name": "anna", "sources": sources}  # fmt: skip
    assert "LIAR" in show_history([outcome])
    # One member that kept its word: just its name, as before.
    alone = {**outcome, "sources": sources[:1]}
    assert "anna" in show_history([alone]) and "3.0 MiB" not in show_history([alone])
