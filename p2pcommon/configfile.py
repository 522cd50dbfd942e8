"""Writing a first config file: commented, valid TOML, never over an existing one.

``p2pd config init`` and ``registryd config init`` share this: each key is
written by tomli-w (so quoting and escaping are TOML's own), preceded by a
comment that says what it means; keys left at their default are written
commented out, so the file doubles as the reference of what can be set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import Settings


@dataclass(frozen=True)
class Key:
    name: str
    comment: str
    #: The value to write; None writes ``example`` as a commented-out line.
    value: Any = None
    example: Any = None


def render(title: str, keys: Sequence[Key]) -> str:
    lines = [
        f"# {title}",
        "# Every key can also be set as an environment variable; see the README.",
    ]
    for key in keys:
        lines.append("")
        lines.extend(f"# {line}" for line in key.comment.splitlines())
        if key.value is not None:
            lines.append(tomli_w.dumps({key.name: key.value}).rstrip("\n"))
        elif key.example is not None:
            example = tomli_w.dumps({key.name: key.example}).rstrip("\n")
            lines.extend(f"# {line}" for line in example.splitlines())
    return "\n".join(lines) + "\n"


def check_and_write(
    text: str, settings_cls: type[Settings], output: str, *, force: bool, mode: int = 0o644
) -> None:
    """Validate ``text`` as ``settings_cls`` and write it to ``output`` ('-' is stdout).

    The file is written whole or not at all (temporary file + rename), and an
    existing file is kept unless ``force``: it may hold an administrator's work.
    """
    import tomllib

    from pydantic import ValidationError

    try:
        settings_cls.model_validate(tomllib.loads(text))
    except ValidationError as exc:  # a bad --option value: say which
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"key '{key}': {first['msg'].removeprefix('Value error, ')}") from None
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already: edit it, or pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    print(f"wrote {path}", file=sys.stderr)


def add_init_command(commands: Any, default_output: str) -> argparse.ArgumentParser:
    """``config init`` under ``commands``, with the options every daemon's has."""
    name = Path(default_output).name
    config = commands.add_parser("config", help="configuration files")
    config_commands = config.add_subparsers(dest="action", required=True)
    init: argparse.ArgumentParser = config_commands.add_parser(
        "init", help=f"write a first, commented {name}"
    )
    init.add_argument(
        "--output",
        "-o",
        default=default_output,
        metavar="FILE",
        help=f"where to write (default {default_output}; - for stdout)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    return init


def run_admin(prog: str, action: Callable[[], None]) -> int:
    """Run an administration command; its errors become a message and an exit status."""
    try:
        action()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {exc.filename or ''}: {exc.strerror} (run as root?)", file=sys.stderr)
        return 1
    return 0
