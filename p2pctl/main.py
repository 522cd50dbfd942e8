"""p2pctl entry point (the commands land with issue 4)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("p2pctl: not built yet (issue 4).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
