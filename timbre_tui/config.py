"""The studio's own settings: ``tui.toml`` in the platformdirs config directory.

```toml
[keys]              # action = "key" (or a list of keys; "" unbinds)
play_pause = "c-space"
newline = ["escape enter", "c-j"]

[theme]
name = "high-contrast"   # or "default"; --theme overrides

[preview]
enabled = false          # default true: stream a prompt's take while it is made, and play it
```

Problems are :class:`timbred.errors.ConfigError` naming the file, the key and what was expected,
raised at start-up before the screen is taken over.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from timbre_tui.key_bindings import DEFAULT_KEYS, KeyMap, parse_key_sequence
from timbre_tui.style import THEMES
from timbred.errors import ConfigError

CONFIG_FILE_NAME = "tui.toml"


@dataclass(frozen=True)
class TuiConfig:
    """What ``tui.toml`` says (defaults where it is silent or absent)."""

    path: Path | None
    keys: KeyMap
    theme: str
    #: Submit with a streaming preview and play it as it arrives (:mod:`timbre_tui.preview`).
    preview: bool = True


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("timbre")) / CONFIG_FILE_NAME


def load_config(path: Path | None = None) -> TuiConfig:
    """Read ``path`` (must exist) or the default file (may be absent)."""
    explicit = path is not None
    path = path or default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(str(path), "(file)", "an existing file (from --config)")
        return TuiConfig(None, dict(DEFAULT_KEYS), "default")
    source = str(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(file)", f"valid TOML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(source, "(file)", f"a readable file ({exc.strerror})") from exc
    for section, table in doc.items():
        if section not in ("keys", "theme", "preview"):
            raise ConfigError(source, section, "a known section (keys, theme, preview)")
        if not isinstance(table, dict):
            raise ConfigError(source, section, "a table ([section])", table)
    keys = parse_keymap(doc.get("keys", {}), source)
    theme_table: dict[str, Any] = doc.get("theme", {})
    for name in theme_table:
        if name != "name":
            raise ConfigError(source, f"theme.{name}", "a known key (name)")
    theme = theme_table.get("name", "default")
    if theme not in THEMES:
        raise ConfigError(source, "theme.name", f"one of {', '.join(THEMES)}", theme)
    preview_table: dict[str, Any] = doc.get("preview", {})
    for name in preview_table:
        if name != "enabled":
            raise ConfigError(source, f"preview.{name}", "a known key (enabled)")
    preview = preview_table.get("enabled", True)
    if not isinstance(preview, bool):
        raise ConfigError(source, "preview.enabled", "true or false", preview)
    return TuiConfig(path, keys, theme, preview)


def parse_keymap(table: dict[str, Any], source: str) -> KeyMap:
    """The default key map with ``table``'s overrides, validated."""
    keys = dict(DEFAULT_KEYS)
    for action, value in table.items():
        where = f"keys.{action}"
        if action not in DEFAULT_KEYS:
            raise ConfigError(source, where,
                              f"a known action ({', '.join(sorted(DEFAULT_KEYS))})")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(source, where, "a key string or a list of key strings", value)
        parsed: list[str] = []
        for v in values:
            if not v.strip():
                continue
            try:
                parsed.append(" ".join(parse_key_sequence(v)))
            except ValueError as exc:
                raise ConfigError(source, where, str(exc), v) from None
        keys[action] = tuple(parsed)
    seen: dict[str, str] = {}
    for action, sequences in keys.items():
        for seq in sequences:
            if seq in seen and seen[seq] != action:
                raise ConfigError(source, f"keys.{action}",
                                  f"a key not already bound (\"{seq}\" is bound to "
                                  f"{seen[seq]})")
            seen[seq] = action
    return keys
