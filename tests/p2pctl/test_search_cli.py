"""p2pctl search on a terminal: matches as they arrive, then the table and the counts."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pd.control.server import ControlServer, Notify
from tests.support import VENV_BIN

HEX = "ab" * 32
FOUND = {"id": "b" * 52, "name": "bob", "path": "iso/debian.iso", "size": 2048, "sha256": HEX}
RESULT = {
    "results": [
        {
            "sha256": HEX,
            "size": 2048,
            "names": ["debian.iso", "d.iso"],
            "members": [
                {"id": "b" * 52, "name": "bob", "path": "iso/debian.iso"},
                {"id": "c" * 52, "name": "carol", "path": "d.iso"},
            ],
            "count": 2,
        }
    ],
    "members": 3,
    "asked": 2,
    "answered": 2,
    "silent": 0,
    "refused": 0,
    "partial": True,
    "more": 0,
    "left_out": 0,
}


@pytest.fixture
def socket_path() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cli-", dir="/tmp"))
    yield folder / "control.sock"
    shutil.rmtree(folder, ignore_errors=True)


async def test_on_a_terminal_matches_show_as_they_arrive_then_the_table(
    socket_path: Path,
) -> None:
    asked: list[dict[str, Any]] = []

    async def search(params: dict[str, Any], notify: Notify) -> Any:
        asked.append(params)
        counts = {"members": 3, "asked": 1, "answered": 1, "silent": 0, "refused": 0}
        await notify("search", {**counts, "partial": False, "found": [FOUND]})
        return RESULT

    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, {"search": search}).run)
        controller, terminal = pty.openpty()
        command = [str(VENV_BIN / "p2pctl"), "--socket", str(socket_path), "search", "debian"]
        process = await trio.lowlevel.open_process(
            [*command, "iso", "--timeout", "2"], stdout=subprocess.PIPE, stderr=terminal
        )
        os.close(terminal)
        assert process.stdout is not None
        stdout = b""
        with trio.fail_after(30):
            while chunk := await process.stdout.receive_some(65536):
                stdout += chunk
            assert await process.wait() == 0
        shown = await trio.to_thread.run_sync(os.read, controller, 65536)
        os.close(controller)
        nursery.cancel_scope.cancel()
    assert asked == [{"progress": True, "timeout": 2.0, "pattern": "debian iso"}]
    live = shown.decode()
    assert "2.0 KiB  iso/debian.iso  (bob)" in live
    assert "asked 1 of 3 members: 1 answered, 0 silent, 0 refused" in live
    assert "\x1b[1F\x1b[J" in live  # the live lines are taken away for the table
    lines = stdout.decode().splitlines()
    assert lines[0].split() == ["SOURCES", "SIZE", "SHA256", "NAME", "MEMBERS"]
    assert lines[1].split() == ["2", "2.0", "KiB", HEX[:12], "debian.iso", "(+1", "names)"] + [
        "bob,",
        "carol",
    ]
    assert lines[2].startswith("asked 2 of 3 members: 2 answered, 0 silent, 0 refused; partial:")
    assert "before 1 were asked" in lines[2]
