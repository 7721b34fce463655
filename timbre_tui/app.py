"""``timbre``: the full-screen studio.

The studio (issue 5) is not built yet. Until it is, this entry point says so plainly and points
at the commands that exist, rather than pretending.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("timbre: the full-screen studio is not available in this version yet.\n"
          "Use timbrectl meanwhile: `timbrectl status`, `timbrectl --help`.", file=sys.stderr)
    return 2
