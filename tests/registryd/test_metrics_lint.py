"""A real registryd's /metrics pass the rules of `promtool check metrics`."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.promlint import lint
from tests.support import run_registryd


def test_a_real_registryd_s_metrics_pass_promtool_s_lint_rules(tmp_path: Path) -> None:
    with run_registryd(tmp_path) as registry:
        httpx.get(f"{registry.url}/clients", timeout=10)  # a refused request: counted
        text = httpx.get(f"{registry.url}/metrics", timeout=10).text
    assert "registry_" in text
    assert lint(text) == []
