"""Print the digest of what the lock is resolved from, for the ``# inputs:`` line of the lock.

scripts/lock.sh writes it into requirements/app.txt and dev.txt; tests/test_packaging.py
recomputes it, so a change to pyproject.toml's dependencies (or to requirements/*.in or the
overrides) that was not followed by ./scripts/lock.sh fails the suite instead of going
unnoticed. Only the inputs count: editing pyproject.toml's tool settings does not.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("requirements/torch.in", "requirements/build.in", "requirements/overrides.txt")


def digest() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    inputs = {"requires-python": project.get("requires-python"),
              "dependencies": project.get("dependencies", []),
              "optional-dependencies": project.get("optional-dependencies", {}),
              **{name: (ROOT / name).read_text(encoding="utf-8") for name in FILES}}
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


if __name__ == "__main__":
    sys.stdout.write(f"{digest()}\n")
