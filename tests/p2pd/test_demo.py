"""`make demo`, the first command a newcomer runs, works from a clone (README: Two commands)."""

from __future__ import annotations

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
