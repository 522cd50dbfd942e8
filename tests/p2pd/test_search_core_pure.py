"""The search and ClientHello cores are pure: importing them loads no I/O, thread or clock."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "sqlite3", "trio", "subprocess"}


@pytest.mark.parametrize(
    "module", ["p2pd.peer.search", "p2pd.peer.search_groups", "p2pd.peer.clienthello"]
)
def test_the_module_imports_nothing_that_does_io(module: str) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert module in loaded
    assert FORBIDDEN.isdisjoint(loaded), FORBIDDEN.intersection(loaded)
