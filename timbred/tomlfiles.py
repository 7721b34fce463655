"""Named TOML files in a shipped folder and a user's folder: presets and mastering chains.

Both are found the same way (a user's file overrides a shipped one of the same name) and
report a bad value the same way; this is that one way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from timbred.errors import TimbreError

__all__ = ["Listed", "listing", "scan", "shown"]

Origin = Literal["shipped", "user"]


@dataclass(frozen=True, slots=True)
class Listed:
    """One named file of a listing (``presets list``, the mastering chains).

    ``problem`` holds the error's message when the file is malformed (the listing shows
    broken files rather than hiding them); ``description`` is then empty.
    """

    name: str
    description: str
    source: Origin
    path: Path
    overrides_shipped: bool = False
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as plain JSON types."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "path": str(self.path), "overrides_shipped": self.overrides_shipped,
                "problem": self.problem}


def listing(shipped: Path | None, user: Path | None,
            describe: Callable[[str, Path, Origin], str]) -> list[Listed]:
    """Every name in ``shipped`` and ``user`` (a user's file overriding a shipped one), each
    with ``describe(name, path, source)``, or the TimbreError it raised as its problem."""
    found, own = scan(shipped), scan(user)
    out = []
    for name in sorted(found.keys() | own.keys()):
        source: Origin = "user" if name in own else "shipped"
        path = own[name] if name in own else found[name]
        try:
            description, problem = describe(name, path, source), None
        except TimbreError as exc:
            description, problem = "", exc.message
        out.append(Listed(name=name, description=description, source=source, path=path,
                          overrides_shipped=source == "user" and name in found,
                          problem=problem))
    return out


def scan(directory: Path | None) -> dict[str, Path]:
    """name -> file, for the visible ``*.toml`` files of ``directory`` (none if it is
    missing, or None)."""
    if directory is None:
        return {}
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {p.stem: p for p in entries
            if p.suffix == ".toml" and not p.name.startswith(".") and p.is_file()}


def shown(value: object) -> str:
    """A value from a file, as an error message quotes it: JSON, cut to 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)  # a TOML date or time, or nan
    return text if len(text) <= 60 else text[:57] + "..."
