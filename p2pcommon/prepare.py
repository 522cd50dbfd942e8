"""Start-up work in a short child process, so that what it imports never loads in the daemon.

A Python process keeps every module it imported until it exits.  Reading the
configuration takes pydantic-settings (with the asyncio, argparse and dotenv
it imports: ≈ 4 MiB resident), creating p2pd's identity takes cryptography
(≈ 8 MiB); a running daemon needs neither.  So ``python -m <daemon>.prepare``
does that work, at start and at each reload, and hands its outcome back as
one JSON document; the daemon builds its options from it
(``p2pcommon.options``).

The child's stdin is empty and its stdout and stderr are the daemon's: its log
lines reach the same journal, ``--help`` the same terminal.  Its answer
travels on a pipe of its own, whose descriptor is the child's first
argument; the second names what to prepare (``start`` or ``reload``), the
rest are the daemon's own arguments.  An answer is either the outcome or
``{"error": "config" | "startup", "message": …}``; a child that ends without
one (``--help``, ``--version``, a usage error) gives its exit status.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from p2pcommon.lifecycle import ConfigError, StartupError, exit_status
from p2pcommon.logs import setup_logging

if TYPE_CHECKING:
    import argparse

#: Seconds the child gets: an interpreter, the configuration, maybe a new key.
DEADLINE = 60.0
#: Bytes of an answer (a configuration, a certificate or two).
MAX_ANSWER = 1024 * 1024

Answer = dict[str, Any]


class Child:
    """A start-up child at work: started at once, its answer collected with ``answer()``.

    The daemon loads its own modules meanwhile (on another core), so that the
    child costs its start little more than the longer of the two.
    """

    def __init__(self, module: str, what: str, words: Sequence[str], deadline: float) -> None:
        command = [sys.executable, "-m", module]
        self._shown = f"{' '.join(command[1:])} {what}"
        self._deadline = deadline
        self._ends = time.monotonic() + deadline
        # The daemon is the service's main process: only it speaks to systemd.
        env = {name: value for name, value in os.environ.items() if name != "NOTIFY_SOCKET"}
        self._read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [*command, str(write_end), what, *words],
                stdin=subprocess.DEVNULL,
                pass_fds=(write_end,),
                env=env,
            )
        except OSError as exc:
            os.close(self._read_end)
            raise StartupError(f"cannot start {self._shown}: {exc}") from None
        finally:
            os.close(write_end)

    def answer(self) -> Answer | int:
        """What the child answered, or its exit status if it gave no answer.

        ConfigError for an answer that blames the configuration; StartupError
        for another error answer, a child killed by a signal, an answer that is
        too long or not JSON, and one that took longer than the deadline (the
        child is killed then).
        """
        child = self._process
        try:
            data = _read_answer(self._read_end, self._ends, self._shown)
            child.wait(timeout=max(0.0, self._ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise StartupError(
                f"{self._shown} did not finish within {self._deadline:g} s: is the machine "
                "overloaded, or the configuration or state_dir on a file system that does "
                "not answer?"
            ) from None
        finally:
            os.close(self._read_end)
            if child.poll() is None:
                child.kill()
                child.wait()
        if child.returncode < 0:
            raise StartupError(f"{self._shown} was killed by signal {-child.returncode}")
        if not data:
            return child.returncode
        return _parse(data, self._shown)


#: Given the start-up child at work, loads the daemon's modules and answers its trio
#: main function, ready to run; or the exit status the child gave instead of an answer.
Daemon = Callable[[Child], Callable[[], Awaitable[object]] | int]


def daemon_main(prog: str, words: Sequence[str], daemon: Daemon) -> int:
    """A daemon's command: ``python -m <prog>.prepare start`` started first, so that it
    reads the arguments and the configuration while ``daemon`` loads the daemon's own
    modules (on another core); then the daemon runs.  The exit status: 0 after a
    clean stop, else what ``p2pcommon.lifecycle.exit_status`` says."""
    try:
        child = Child(f"{prog}.prepare", "start", words, DEADLINE)
        run = daemon(child)
        if isinstance(run, int):  # --help, --version, a usage error: the child said it
            return run
        import trio

        setup_logging()
        trio.run(run)
    except BaseException as exc:
        return exit_status(prog, exc)
    return 0


def run_child(
    module: str, what: str, words: Sequence[str], *, deadline: float = DEADLINE
) -> Answer | int:
    """``python -m module`` started and its answer collected (``Child.answer``)."""
    return Child(module, what, words, deadline).answer()


def _read_answer(fd: int, deadline: float, shown: str) -> bytes:
    """Everything written to ``fd`` until the child closes it; TimeoutExpired at ``deadline``."""
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(shown, 0)
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise StartupError(f"{shown} answered more than {MAX_ANSWER} bytes")
            chunks.append(chunk)


def _parse(data: bytes, shown: str) -> Answer:
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise StartupError(f"{shown} answered something that is not a JSON object")
    if "error" in answer:
        failure = ConfigError if answer["error"] == "config" else StartupError
        raise failure(str(answer.get("message")))
    return answer


def config_error(message: str) -> Answer:
    """The answer of a child whose configuration is at fault."""
    return {"error": "config", "message": message}


def startup_error(message: str) -> Answer:
    """The answer of a child that cannot prepare the start for another reason."""
    return {"error": "startup", "message": message}


def daemon_arguments(
    prog: str,
    description: str,
    default_config: str,
    argv: list[str],
    commands: Sequence[tuple[str, str]] = (),
) -> argparse.Namespace:
    """The command line every daemon here shares: --config and --version; then logging.

    ``commands`` (usage, what it does) are the administration commands that
    ``main`` handles before this parser sees them: ``--help`` lists them.
    """
    import argparse

    from p2pcommon import __version__

    epilog = None
    if commands:
        lines = [f"  {prog} {usage}\n      {what}" for usage, what in commands]
        epilog = "other commands (each has its own --help):\n" + "\n".join(lines)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help=f"TOML config (default {default_config})")
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    args = parser.parse_args(argv)
    setup_logging()
    return args


def child_main(prepare: Callable[[str, list[str]], Answer]) -> int:
    """The child's side: ``prepare(what, words)`` answered on the descriptor given first."""
    fd, what, *words = sys.argv[1:]
    answer = prepare(what, words)
    with os.fdopen(int(fd), "w", encoding="utf-8") as out:
        json.dump(answer, out)
    return 0
