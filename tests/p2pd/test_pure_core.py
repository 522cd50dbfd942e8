"""The swarm core is pure: no socket, file, thread, trio, sqlite or clock (time comes as now)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pd

PURE = ["share/merkle.py", "fetch/swarm.py", "fetch/swarm_members.py", "fetch/avoid.py"]
IMPURE = {
    "asyncio",
    "concurrent",
    "datetime",
    "io",
    "os",
    "pathlib",
    "select",
    "shutil",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "threading",
    "time",
    "trio",
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_imports_nothing_that_does_io_or_reads_a_clock(module: str) -> None:
    path = Path(p2pd.__file__).parent / module
    assert not imported(path) & IMPURE
