#!/usr/bin/env python3
"""The dependency lock: what every install of p2pd gets, exactly, checked by hash.

    scripts/lock.py compile [--upgrade]       make lock: resolve requirements/*.txt with uv
    scripts/lock.py check                     the lock agrees with pyproject.toml (offline)
    scripts/lock.py install VENV LOCK... [--wheelhouse DIR] [--project SRC [--editable]]
                                              put exactly the lock into VENV (make venv, install.sh)
    scripts/lock.py wheelhouse DIR            wheels of the runtime lock and of p2pd, for offline
                                              installs (make wheelhouse)

The lock is three pip requirements files with a hash for every file, resolved
by uv for every platform and every Python from 3.11 (``--universal``):
``requirements/main.txt`` (what the daemons import), ``requirements/dev.txt``
(that, plus the tests' and the linters'), ``requirements/build.txt`` (pip and
the build backend that installs the project).  uv resolves (fast, universal,
reproducible); plain pip installs, so a production host needs nothing but
``python3-venv``.  Each file starts with the SHA-256 of the pyproject.toml
sections it was made from: ``check`` fails when they changed since.

Only ``compile`` and ``check`` need the dev tools (uv, packaging); ``install``
runs on the standard library, as root on a fresh host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
MAIN, DEV, BUILD = (LOCK_DIR / name for name in ("main.txt", "dev.txt", "build.txt"))
#: The oldest Python the project supports: the universal resolution covers it and every newer one.
PYTHON = "3.11"
#: The installer itself is pinned too, so that every install runs the pip that CI ran.
INSTALLER = "pip"
INPUTS_LINE = "# inputs: sha256="
#: Distributions an install keeps besides the lock's: the installer's and the project's own.
KEPT = {"pip", "setuptools", "p2pd"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


class LockError(Exception):
    """The lock and pyproject.toml disagree, or an install failed; the text says what to do."""


def normalize(name: str) -> str:
    """PEP 503: the one spelling of a distribution's name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project(root: Path = ROOT) -> dict[str, object]:
    with (root / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def inputs(pyproject: dict[str, object]) -> dict[str, list[str]]:
    """What each lock file is resolved from."""
    proj = pyproject["project"]
    assert isinstance(proj, dict)
    runtime = list(proj.get("dependencies", []))
    dev = list(proj.get("optional-dependencies", {}).get("dev", []))
    build = list(pyproject.get("build-system", {}).get("requires", []))  # type: ignore[attr-defined]
    python = [f"requires-python {proj.get('requires-python', '')}"]
    return {"main": runtime + python, "dev": runtime + dev + python, "build": build + [INSTALLER]}


def inputs_digest(pyproject: dict[str, object]) -> str:
    canonical = json.dumps(inputs(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pins(lock: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (version, marker) of every package pinned in a lock file."""
    found: dict[str, tuple[str, str | None]] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            found[normalize(match[1])] = (match[2], match[3])
    return found


# -- compile (make lock) ----------------------------------------------------------


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else "uv"


def _compile(sources: list[str], output: Path, *, upgrade: bool, extra: list[str]) -> None:
    command = [
        _uv(),
        "pip",
        "compile",
        *sources,
        "--universal",
        "--python-version",
        PYTHON,
        "--generate-hashes",
        "--quiet",
        "--no-config",
        "--custom-compile-command",
        "make lock",
        "--output-file",
        str(output),
        *extra,
    ]
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, check=True, cwd=ROOT)


def compile_lock(upgrade: bool) -> None:
    """Resolve the three files anew; keep earlier pins that still fit unless ``upgrade``."""
    pyproject = project()
    LOCK_DIR.mkdir(exist_ok=True)
    _compile(["pyproject.toml"], MAIN, upgrade=upgrade, extra=[])
    # The dev lock holds the runtime pins as they are: the tests run what production runs.
    dev_extra = ["--extra", "dev", "--constraint", str(MAIN)]
    _compile(["pyproject.toml"], DEV, upgrade=upgrade, extra=dev_extra)
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp) / "build.in"
        wanted.write_text("\n".join(inputs(pyproject)["build"]) + "\n")
        _compile([str(wanted)], BUILD, upgrade=upgrade, extra=[])
    stamp = f"{INPUTS_LINE}{inputs_digest(pyproject)} (pyproject.toml; refresh: make lock)\n"
    for lock in (MAIN, DEV, BUILD):
        text = lock.read_text()
        # uv names the temporary input it was given: say where it comes from instead.
        text = re.sub(r"# via -r \S*build\.in", "# via pyproject.toml (build-system, pip)", text)
        lock.write_text(stamp + text)
    check()


# -- check ------------------------------------------------------------------------


def check(root: Path = ROOT) -> None:
    """LockError unless every lock file was made from pyproject.toml as it is now,
    pins each requirement it lists within its range, and hashes every file."""
    from packaging.requirements import Requirement

    pyproject = project(root)
    digest = inputs_digest(pyproject)
    wanted = inputs(pyproject)
    problems: list[str] = []
    for name in ("main", "dev", "build"):
        lock = root / "requirements" / f"{name}.txt"
        if not lock.exists():
            problems.append(f"{lock.relative_to(root)} is missing")
            continue
        first = lock.read_text().partition("\n")[0]
        if not first.startswith(INPUTS_LINE) or first[len(INPUTS_LINE) :][:64] != digest:
            problems.append(
                f"{lock.relative_to(root)} was made from another pyproject.toml "
                "(dependencies, optional dependencies, build requirements or requires-python "
                "changed since)"
            )
        pinned = pins(lock)
        for text in wanted[name]:
            if text.startswith("requires-python"):
                continue
            requirement = Requirement(text)
            pin = pinned.get(normalize(requirement.name))
            if pin is None:
                problems.append(f"{lock.relative_to(root)} does not pin {requirement.name}")
            elif not requirement.specifier.contains(pin[0], prereleases=True):
                problems.append(
                    f"{lock.relative_to(root)} pins {requirement.name}=={pin[0]}, "
                    f"outside {requirement.specifier}"
                )
        unhashed = _unhashed(lock)
        if unhashed:
            problems.append(f"{lock.relative_to(root)} has no hash for {', '.join(unhashed)}")
    if problems:
        raise LockError(
            "the lock does not match pyproject.toml:\n  "
            + "\n  ".join(problems)
            + "\nrun `make lock` and commit requirements/"
        )


def _unhashed(lock: Path) -> list[str]:
    """Pinned packages with no ``--hash`` line after them."""
    missing: list[str] = []
    current: str | None = None
    hashed = True
    for line in lock.read_text().splitlines() + [""]:
        match = _PIN.match(line)
        if match or not line.startswith(" "):
            if current is not None and not hashed:
                missing.append(current)
            current, hashed = (match[1], False) if match else (None, True)
        elif "--hash=sha256:" in line:
            hashed = True
    return missing


# -- install (make venv, install.sh) ----------------------------------------------


def _pip(venv: Path, *args: str) -> None:
    command = [str(venv / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*command, *args])
    if result.returncode != 0:
        raise LockError(f"pip {' '.join(args[:3])} … failed in {venv} (exit {result.returncode})")


def installed(venv: Path) -> set[str]:
    listing = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] or '' "
            "for d in m.distributions()))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {normalize(name) for name in listing.split() if name}


def install(
    venv: Path,
    locks: list[Path],
    *,
    wheelhouse: Path | None = None,
    source: Path | None = None,
    editable: bool = False,
) -> None:
    """Make ``venv`` hold exactly ``locks`` (+ the installer and the project), hashes checked.

    The installer and build backend come first (from build.txt), then the lock
    without dependency resolution (it is complete; ``pip check`` proves it),
    then the project without its dependencies and without build isolation, so
    that no unpinned build requirement is fetched.  Anything else installed
    in the venv (left by an older lock) is removed.
    """
    index = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else []
    _pip(venv, "install", *index, "--require-hashes", "-r", str(BUILD))
    files = [arg for lock in locks for arg in ("-r", str(lock))]
    _pip(venv, "install", *index, "--require-hashes", "--no-deps", "--no-build-isolation", *files)
    if source is not None:
        target = ["-e", str(source)] if editable else [str(source)]
        # Forced: the same version number may be other code (a newer checkout).
        _pip(
            venv,
            "install",
            *index,
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
            *target,
        )
    elif wheelhouse is not None:
        _pip(venv, "install", *index, "--no-deps", "--force-reinstall", "p2pd")
    wanted = KEPT | {name for lock in [BUILD, *locks] for name in pins(lock)}
    extra = sorted(installed(venv) - wanted)
    if extra:
        _pip(venv, "uninstall", "--yes", *extra)
    _pip(venv, "check")


# -- wheelhouse (make wheelhouse) -------------------------------------------------

#: The hosts a wheelhouse is for: Linux, CPython from 3.11.0 on.  A marker that
#: holds for any of them (async-timeout below 3.11.3: Debian 12 has 3.11.2) is in.
_TARGETS = [
    {
        "python_version": f"3.{minor}",
        "python_full_version": f"3.{minor}.{micro}",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
    }
    for minor, micro in ((11, 0), (11, 3), (12, 0), (13, 0), (14, 0))
]


def wheelhouse(directory: Path) -> None:
    """The files of the runtime and build locks and a wheel of p2pd itself, for
    ``make install WHEELHOUSE=DIR`` on a host of the same architecture."""
    from packaging.markers import Marker

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for lock in (BUILD, MAIN):
            kept: list[str] = []
            block: list[str] = []
            for line in lock.read_text().splitlines() + [""]:
                match = _PIN.match(line)
                if match or not line.startswith(" "):
                    kept += block
                    block = []
                    if match:
                        marker = match[3]
                        if marker is None or any(Marker(marker).evaluate(t) for t in _TARGETS):
                            block = [f"{match[1]}=={match[2]} \\"]
                elif block:
                    block.append(line)
            plain = Path(tmp) / lock.name
            plain.write_text("\n".join(kept) + "\n")
            # Downloaded as locked, an sdist as an sdist: a wheel built here would not
            # have the locked hash.  The install builds it offline with build.txt's setuptools.
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--require-hashes",
                    "--no-deps",
                    "--dest",
                    str(directory),
                    "-r",
                    str(plain),
                ],
                check=True,
            )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(directory),
            str(ROOT),
        ],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lock.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compile_ = sub.add_parser("compile", help="resolve requirements/*.txt (make lock)")
    compile_.add_argument("--upgrade", action="store_true", help="newest versions in range")
    sub.add_parser("check", help="the lock agrees with pyproject.toml")
    install_ = sub.add_parser("install", help="exactly the lock into a venv")
    install_.add_argument("venv", type=Path)
    install_.add_argument("locks", nargs="+", choices=["main", "dev"])
    install_.add_argument("--wheelhouse", type=Path)
    install_.add_argument("--project", type=Path, help="the source tree to install")
    install_.add_argument("--editable", action="store_true")
    house = sub.add_parser("wheelhouse", help="wheels for an offline install")
    house.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "compile":
            compile_lock(args.upgrade)
        elif args.command == "check":
            check()
        elif args.command == "install":
            install(
                args.venv,
                [LOCK_DIR / f"{name}.txt" for name in args.locks],
                wheelhouse=args.wheelhouse,
                source=args.project,
                editable=args.editable,
            )
        else:
            wheelhouse(args.directory)
    except LockError as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"lock: {exc.cmd[0]} failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.umask(0o022)  # an install as root must leave the venv readable by the services
    sys.exit(main())
