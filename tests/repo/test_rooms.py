"""The house's map holds (docs/architecture.md): pure modules stay pure, rooms import
downwards only, and packages cost nothing to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Modules whose rules are tested without a network, a disk or a clock: they decide,
#: others act.  Importing one loads no socket, database, event loop or thread.  Each
#: module whose docstring calls it pure is here.
PURE = [
    "p2pd.fetch.model",
    "p2pd.fetch.attempts",
    "p2pd.fetch.schedule",
    "p2pd.fetch.names",
    "p2pd.fetch.swarm",
    "p2pd.fetch.swarm_members",
    "p2pd.fetch.avoid",
    "p2pd.share.merkle",
    "p2pd.peer.files",
    "p2pd.peer.uploads",
    "p2pd.peer.buckets",
    "p2pd.peer.search",
    "p2pd.peer.search_groups",
    "p2pd.tls.clienthello",
    "p2pd.share.index",
    "p2pd.control.jsonrpc",
    "registryd.table",
    "registryd.guards",
    "registryd.health",
    "p2pcommon.paths",
    "p2pcommon.backoff",
    "p2pcommon.lifecycle",
    "p2pcommon.http.events",
    "p2pcommon.http.connections",
    "p2pcommon.signing.signer",
    "p2pcommon.signing.shape",
    "p2pcommon.signing.refusals",
    "p2pcommon.signing.member_proof",
]
#: What a pure module must not bring: sockets, SQLite, trio, threads, processes (and
#: their C parts).
IO = [
    "socket",
    "_socket",
    "ssl",
    "select",
    "selectors",
    "sqlite3",
    "_sqlite3",
    "trio",
    "threading",
    "subprocess",
]

#: Each room of p2pd and the rooms it may import (below it); the top-level modules
#: wire them (main, daemon, prepare, metrics), and only the configuration's
#: (options, config) may be imported from a room.
ROOMS: dict[str, set[str]] = {
    "share": set(),
    "tls": set(),
    "membership": set(),
    "peer": {"share", "tls", "membership"},
    "fetch": {"peer", "tls", "membership"},
    "control": {"fetch", "peer", "membership", "share"},
    "ops": set(),
}
CONFIGURATION = {"p2pd.options", "p2pd.config"}

#: Run in a fresh interpreter for each module: what importing it loaded of IO.
PROBE = "import importlib, sys; importlib.import_module(sys.argv[1]); print(*sorted(sys.modules))"


def test_the_pure_modules_load_no_socket_database_loop_or_thread() -> None:
    assert "threading" not in sys.builtin_module_names  # or the check would say nothing
    loaded = {}
    for module in PURE:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, module],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert module in result.stdout.split()
        loaded[module] = sorted(set(IO) & set(result.stdout.split()))
    assert {module: found for module, found in loaded.items() if found} == {}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever in it (a function's import counts too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_each_room_of_p2pd_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for room, below in ROOMS.items():
        for path in sorted((REPO / "p2pd" / room).glob("*.py")):
            for name in sorted(imported(path)):
                parts = name.split(".")
                if parts[0] != "p2pd" or len(parts) < 2 or parts[1] == room:
                    continue
                if parts[1] in ROOMS:
                    if parts[1] not in below:
                        wrong.append(f"{path.relative_to(REPO)} imports {name}")
                elif name not in CONFIGURATION and ".".join(parts[:2]) not in CONFIGURATION:
                    wrong.append(f"{path.relative_to(REPO)} imports {name} (the wiring)")
    assert wrong == []
    assert {p.name for p in (REPO / "p2pd").iterdir() if (p / "__init__.py").exists()} == set(ROOMS)


def test_p2pcommon_imports_none_of_the_programs_it_serves() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "p2pcommon").rglob("*.py"))
        for name in sorted(imported(path))
        if name.split(".")[0] in ("p2pd", "registryd", "p2pctl")
    ]
    assert wrong == []


def test_the_packages_inside_cost_nothing_to_import() -> None:
    # `import p2pd.daemon` must load what the daemon uses and nothing else
    # (tests/p2pd/test_light_start.py): a package's __init__ holds no code.
    inits = [
        path for package in ("p2pd", "p2pcommon") for path in (REPO / package).glob("*/__init__.py")
    ]
    assert len(inits) >= 9
    assert [str(p.relative_to(REPO)) for p in inits if p.read_text()] == []
