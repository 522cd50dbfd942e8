"""p2pd entry point (the daemon lands with issue 4)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("p2pd: the peer daemon is not built yet (issue 4); registryd is.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
