"""The dependency lock: what a fresh machine installs is what CI tested.

`scripts/lock.py check` (run by `make test`) fails when pyproject.toml changed
since requirements/*.txt were made; `make venv` installs exactly the lock.
Each case runs the real script on a copy of the repository's files.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Declared for what they run, not for an import: the linters, the type checker,
#: pytest's plugins (configured in pyproject.toml) and the resolver behind `make lock`.
TOOLS = {"ruff", "mypy", "pytest-timeout", "pytest-trio", "uv"}
#: Import names that differ from their distribution's.
DISTRIBUTION_OF = {
    "pydantic_settings": "pydantic-settings",
    "http_message_signatures": "http-message-signatures",
    "prometheus_client": "prometheus-client",
    "tomli_w": "tomli-w",
    "pytest_trio": "pytest-trio",
}
SHIPPED = {"p2pd", "p2pctl", "p2pcommon", "registryd"}
FIRST_PARTY = SHIPPED | {"tests", "bench", "__future__"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_of_repo(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "scripts/lock.py", "requirements"):
        source, target = REPO / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return tmp_path


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts/lock.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_committed_lock_matches_pyproject() -> None:
    result = check(REPO)
    assert result.returncode == 0, result.stderr


def test_a_dependency_added_without_locking_fails_the_check(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('"h11>=0.14,<0.17",', '"h11>=0.14,<0.17",\n    "rich>=13",'))
    result = check(root)
    assert result.returncode == 1
    assert "requirements/main.txt was made from another pyproject.toml" in result.stderr
    assert "does not pin rich" in result.stderr
    assert "make lock" in result.stderr


def test_a_range_that_excludes_the_pin_fails_the_check(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"trio>=0.27,<0.40"', '"trio>=0.27,<0.28"'))
    result = check(root)
    assert result.returncode == 1
    assert re.search(r"pins trio==[\d.]+, outside <0\.28,>=0\.27", result.stderr), result.stderr


def test_a_pin_without_a_hash_fails_the_check(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    lock = root / "requirements/main.txt"
    lines = lock.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("h11=="))
    end = start + 1
    while lines[end].startswith("    --hash"):
        end += 1
    lines[start:end] = [lines[start].rstrip(" \\")]
    lock.write_text("\n".join(lines) + "\n")
    result = check(root)
    assert result.returncode == 1
    assert "has no hash for h11" in result.stderr


def test_this_environment_holds_exactly_the_dev_lock() -> None:
    """What `make venv` made: every locked version, and nothing the lock lacks."""
    lock_text = (REPO / "requirements/dev.txt").read_text()
    locked = {
        normalize(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", lock_text, re.M)
    }
    installed = {
        normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    assert {name: installed.get(name) for name in installed.keys() & locked.keys()} == {
        name: locked[name] for name in installed.keys() & locked.keys()
    }
    unlocked = installed.keys() - locked.keys() - {"pip", "setuptools", "p2pd"}
    assert not unlocked, f"installed but not in the lock: {sorted(unlocked)}"


def imported_distributions(folders: set[str]) -> set[str]:
    """The third-party distributions that the code in ``folders`` imports."""
    names: set[str] = set()
    for path in REPO.glob("*/**/*.py"):
        if path.parts[len(REPO.parts)] not in folders:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    names.add(normalize(DISTRIBUTION_OF.get(top, top)))
    return names


def declared(requirements: list[str]) -> set[str]:
    return {normalize(re.split(r"[<>=!~ ;\[]", text)[0]) for text in requirements}


def test_runtime_dependencies_are_what_the_shipped_code_imports() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        runtime = declared(tomllib.load(f)["project"]["dependencies"])
    imported = imported_distributions(SHIPPED)
    assert not runtime - imported, f"declared, imported nowhere: {sorted(runtime - imported)}"
    assert not imported - runtime, f"imported, not declared: {sorted(imported - runtime)}"


def test_dev_dependencies_are_what_tests_bench_and_scripts_import() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    runtime = declared(project["dependencies"])
    dev = declared(project["optional-dependencies"]["dev"])
    imported = imported_distributions({"tests", "bench", "scripts"})
    unused = dev - imported - TOOLS
    assert not unused, f"dev dependencies imported nowhere: {sorted(unused)}"
    missing = imported - runtime - dev
    assert not missing, f"imported, not declared: {sorted(missing)}"
