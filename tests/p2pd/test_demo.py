"""`make demo`, the first command a newcomer runs, works from a clone (README: Two commands)."""

from __future__ import annotations

import shlex
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]


async def test_the_demo_runs_the_whole_system_and_exits_0() -> None:
    with trio.fail_after(240):
        result = await trio.run_process(
            ["bash", str(REPO / "scripts" / "demo.sh")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-3000:]
    at_bob = [line for line in output.splitlines() if line.startswith("sha256 at bob:")]
    at_alice = [line for line in output.splitlines() if line.startswith("sha256 at alice:")]
    assert at_bob and at_alice and at_bob[0].split()[-1] == at_alice[0].split()[-1]
    # Every command it shows can be pasted into a shell: the non-ASCII name too.
    shown = [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("$ ")]
    assert ["alice", "fetch", "bob", "notes – Grüße.txt"] in shown
    (stands_for,) = [line for line in output.splitlines() if "'alice' stands for: " in line]
    program, option, socket_path = shlex.split(stands_for.split("stands for: ")[1][:-1])
    assert program.endswith("/.venv/bin/p2pctl") and option == "--socket"
    assert socket_path.endswith("/alice/control.sock")
