"""Named TOML files in a shipped folder and a user's folder: presets and mastering chains.

Both are found the same way (a user's file overrides a shipped one of the same name) and
report a bad value the same way; this is that one way.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["scan", "shown"]


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
