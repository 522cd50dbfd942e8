"""Write the ``p2pctl`` command: pip's console script, without ``site``.

Every p2pctl command is a new interpreter, and p2pctl needs nothing of what
``site`` does at start-up: add the user's site-packages, run every ``.pth``
file of the venv (setuptools' distutils hack; in an editable install, an
import hook that costs ~14 ms) and look for sitecustomize. bench/cli.py: in
the installed layout this saves ~1 ms of a ~17 ms `p2pctl status`, in the
dev venv half of it. The launcher runs ``python -IS`` and puts on
``sys.path`` only the folders p2pctl and its libraries came from; ``-I``
also keeps PYTHONPATH and the current directory out, as befits a system
command.

    /opt/p2pd/bin/python -m p2pctl.launcher /opt/p2pd/bin/p2pctl

(scripts/install.sh, after pip: the venv's python, so that the folders are its.)
"""

from __future__ import annotations

import os
import sys
import sysconfig

import p2pctl

TEMPLATE = """#!{python} -IS
# Written by `python -m p2pctl.launcher`: see there why not pip's script.
import sys

sys.path += {paths!r}
from p2pctl.main import main

sys.exit(main())
"""


def launcher(python: str) -> str:
    """The script, for the venv of ``python`` (the interpreter running this)."""
    # Where p2pctl came from first: an editable install finds it through a
    # .pth file, which -S skips. Then the venv's site-packages, for the doctor's
    # libraries (the same folder in a regular install).
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(p2pctl.__file__)))]
    for name in ("purelib", "platlib"):
        path = sysconfig.get_path(name)
        if path not in paths:
            paths.append(path)
    return TEMPLATE.format(python=python, paths=paths)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m p2pctl.launcher TARGET", file=sys.stderr)
        return 2
    target = args[0]
    temporary = f"{target}.new"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(launcher(sys.executable))
    os.chmod(temporary, 0o755)
    # In one step: a p2pctl starting meanwhile runs the old script or the new one.
    os.replace(temporary, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
