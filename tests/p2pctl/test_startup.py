"""p2pctl starts quickly (issue 14) and, doing so, behaves as it did.

Each command is a process, so what p2pctl imports at the top and how it is
launched is most of a `p2pctl status` (bench/cli.py measures it).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pctl import wirejson
from p2pctl.arguments import parser
from p2pctl.main import quick_args
from tests.p2pctl.test_cli import STATUS, status
from tests.support import VENV_BIN

REPO = Path(__file__).resolve().parents[2]
#: What `p2pctl status` does without: each costs milliseconds at every start.
LAZY = {
    "argparse",
    "contextlib",
    "dataclasses",
    "enum",
    "inspect",
    "json",
    "pathlib",
    "re",
    "selectors",
    "socket",
    "typing",
    "urllib.parse",
}


def test_importing_p2pctl_imports_none_of_the_lazy_modules() -> None:
    # -S: with site, the editable install's import hook loads pathlib itself.
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import p2pctl.main; print(*sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "p2pctl.main" in loaded
    assert LAZY.isdisjoint(loaded)


async def test_the_common_calls_import_none_of_them(tmp_path: Path) -> None:
    from p2pd.control.server import ControlServer

    socket_path = tmp_path / "control.sock"
    calls = [["status"], ["--json", "status"], ["--json", "ls", "bob"]]  # ls: refused
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from p2pctl.main import main\n"
        f"for call in {calls!r}:\n"
        "    try:\n"
        f"        main(['--socket', {str(socket_path)!r}, *call])\n"
        "    except SystemExit:\n"  # the refused call's exit status 1
        "        pass\n"
        "print(*sys.modules, file=sys.stderr)"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, {"status": status}).run)
        done = await trio.run_process(
            [sys.executable, "-I", "-S", "-c", code], capture_stdout=True, capture_stderr=True
        )
        nursery.cancel_scope.cancel()
    human, rest = done.stdout.decode().split("\n{\n", 1)
    assert "name:         alice (aaaaaaa)" in human
    documents = "{\n" + rest
    document, end = json.JSONDecoder().raw_decode(documents)
    assert document == STATUS
    assert "(is p2pd older than this p2pctl?)" in json.loads(documents[end:])["error"]
    loaded = done.stderr.decode().split()
    assert "p2pctl.main" in loaded
    assert LAZY.isdisjoint(loaded)


def argparse_reads(argv: list[str]) -> dict[str, object] | None:
    """What the full parser makes of ``argv``; None where it refuses."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(parser().parse_args(argv))
        except SystemExit:
            return None


WORDS = st.sampled_from(
    ["--json", "--socket", "--socket=", "--socket=/s", "--so", "--js", "-h", "--help", "--"]
    + ["status", "peers", "shared", "rescan", "downloads", "history", "ls", "fetch", "doctor"]
    + ["cancel", "--detach", "--det", "bob", "a b.txt", "/run/x.sock", "", "-", "-1", "st"]
    + ["status=", "--json=1"]
)


@settings(max_examples=400)
@given(st.lists(WORDS, max_size=7))
@example(["--socket", "status", "status"])
@example(["--socket", "--json", "status"])
@example(["--socket=--json", "status"])
@example(["status", "--json"])
@example(["fetch", "bob", "--detach", "a.txt"])
@example(["--json", "fetch", "--detach", "bob", "a.txt", "--detach"])
@example(["ls", "bob", "bob"])
@example(["cancel", "-1"])
@example(["peers", "bob"])
@example(["--json", "peers", "bob", "bob"])
def test_the_quick_parser_reads_only_what_argparse_reads_the_same(argv: list[str]) -> None:
    quick = quick_args(argv)
    if quick is not None:
        assert vars(quick) == argparse_reads(argv)


def test_the_quick_parser_takes_the_common_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PD_SOCKET", "/elsewhere.sock")
    common = [
        ["status"],
        ["--json", "peers"],
        ["peers", "bo*"],
        ["--socket", "/s", "history"],
        ["ls", "bob"],
        ["fetch", "bob", "docs/a.txt"],
        ["--json", "fetch", "--detach", "bob", "many/"],
        ["cancel", "1234abcd"],
    ]
    for argv in common:
        quick = quick_args(argv)
        assert quick is not None and vars(quick) == argparse_reads(argv)
    assert quick_args(["status"]) is not None
    assert vars(quick_args(["status"]) or {})["socket"] == "/elsewhere.sock"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def outcome(function: Callable[[], object]) -> tuple[str, str]:
    """What a call gives, as text: its value in JSON, or its exception."""
    try:
        return ("value", json.dumps(function()))  # NaN != NaN, but their texts are equal
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


def test_the_c_functions_are_in_use_here() -> None:
    assert wirejson._FAST is not None


@given(JSON, st.sampled_from(["", " ", "\n", " \t\r\n"]))
def test_wirejson_writes_and_reads_as_json(value: object, space: str) -> None:
    assert wirejson.dumps(value) == json.dumps(value)
    text = (space + json.dumps(value, ensure_ascii=False) + space).encode()
    assert outcome(lambda: wirejson.loads(text)) == outcome(lambda: json.loads(text))


@given(JSON | st.lists(JSON).map(tuple))
def test_wirejson_indents_as_json(value: object) -> None:
    assert wirejson.dumps_indented(value) == json.dumps(value, indent=2, ensure_ascii=False)


@given(st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode()[:-1]))
@example(b"\xef\xbb\xbf[1]")
@example("[1]".encode("utf-16"))
@example(b'"\x01"')
def test_wirejson_refuses_what_json_refuses_with_its_words(data: bytes) -> None:
    assert outcome(lambda: wirejson.loads(data)) == outcome(lambda: json.loads(data))


PIPS_SCRIPT = "import sys; from p2pctl.main import main; sys.exit(main())"


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Path]:
    """The launcher scripts/install.sh writes, here for the dev venv."""
    path = tmp_path / "p2pctl"
    subprocess.run([str(VENV_BIN / "python"), "-m", "p2pctl.launcher", str(path)], check=True)
    assert path.read_text().startswith(f"#!{VENV_BIN / 'python'} -IS\n")
    yield path


async def test_the_launcher_behaves_as_pips_script(launcher: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "control.sock"
    calls = [
        ["status"],
        ["--json", "status"],
        ["--json", "ls", "bob"],  # unknown to this server: an error
        ["ls"],  # usage
        ["--help"],
        ["doctor", "--config", str(tmp_path / "none.toml")],  # the doctor's libraries
    ]
    from p2pd.control.server import ControlServer

    seen = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(socket_path, {"status": status}).run)
        for call in calls:
            ours = await trio.run_process(
                [str(launcher), "--socket", str(socket_path), *call],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            # What pip's console script runs (the dev venv's p2pctl is the launcher too).
            pips = await trio.run_process(
                [str(VENV_BIN / "python"), "-c", PIPS_SCRIPT, "--socket", str(socket_path), *call],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            seen.append((ours.returncode, ours.stdout, ours.stderr))
            assert seen[-1] == (pips.returncode, pips.stdout, pips.stderr), call
        nursery.cancel_scope.cancel()
    assert json.loads(seen[1][1]) == STATUS
    assert [code for code, _, _ in seen] == [0, 0, 1, 2, 0, 1]
