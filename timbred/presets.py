"""Presets: genre templates of generation parameters, export settings and prompt wrapping.

A preset is a TOML file named ``<name>.toml``. Timbre ships a few in ``timbred/presets/``;
the user's own live in ``<config dir>/presets/`` (``platformdirs.user_config_dir("timbre")``,
so ``~/.config/timbre/presets/`` on Linux) and override a shipped preset of the same name.
The format, documented for editors in ``schemas/preset.schema.json``::

    description = "Mellow lo-fi hip hop"      # one line, shown by `timbrectl presets`
    prompt_prefix = "lo-fi hip hop"            # put before the user's prompt
    prompt_suffix = "vinyl crackle, 80 bpm"    # put after it

    [params]                  # defaults for generate.submit; all optional
    model = "musicgen-small"  # a model alias, repo or local directory
    duration = 30             # seconds, 0 < x <= 600
    temperature = 1.0         # 0..10
    top_k = 250               # integer 0..2048
    top_p = 0.0               # 0..1
    guidance = 3.0            # 0..30
    variations = 1            # integer 1..16
    keep_alive = 300          # seconds, >= -1

    [export]                  # how takes are written; all optional
    format = "wav"            # wav | flac | mp3 | ogg
    wav_subtype = "PCM_16"    # PCM_16 | PCM_24 | FLOAT
    mp3_bitrate_kbps = 320    # 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320
    ogg_quality = 0.6         # 0..1
    loudness_target_lufs = -14.0   # -60..0, or false to keep the model's level
    true_peak_ceiling_dbtp = -1.0  # -20..0

Every key is optional and unknown keys are refused, so a typo never passes silently. A
malformed file raises :class:`PresetInvalid` naming the file, the key and what was expected.

Applying a preset (:func:`apply`): values given explicitly in the request win over the
preset's (a ``None`` counts as not given). The prompt becomes prefix + prompt + suffix: each
part is stripped and empty parts are dropped; neighbours are joined with ", " unless the
right part starts with punctuation (``,;:.!?``: it brings its own, joined as is) or the left
one ends with it (joined with a space). So ("lo-fi hip hop", "rainy night", "vinyl crackle")
gives "lo-fi hip hop, rainy night, vinyl crackle", and a request without a prompt gets the
preset's prefix and suffix alone. The preset's name is recorded as ``params["preset"]``.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jsonschema
import platformdirs

from timbred.errors import InvalidParams, PresetInvalid, PresetNotFound
from timbred.protocol import schema
from timbred.takes import options
from timbred.tomlfiles import Listed, listing, scan, shown

__all__ = [
    "EXPORT_KEYS",
    "PARAM_KEYS",
    "Preset",
    "PresetInfo",
    "Source",
    "apply",
    "compose_prompt",
    "default_user_dir",
    "list_presets",
    "load",
    "shipped_dir",
]

Source = Literal["shipped", "user"]

SCHEMA_FILE: Final = "preset.schema.json"
#: The generation parameters a preset may set (``[params]``).
PARAM_KEYS: Final = frozenset(
    {"model", "duration", "temperature", "top_k", "top_p", "guidance", "steps", "negative",
     "sampler", "variations", "keep_alive"}
)
#: The export settings a preset may set (``[export]``): every export option (the names are
#: written once, in :mod:`timbred.takes.options`); the same names in a request win.
EXPORT_KEYS: Final = frozenset(options.EXPORT_KEYS)
_INTEGER_KEYS: Final = frozenset({"top_k", "steps", "variations", "mp3_bitrate_kbps"})
_MAX_FILE_BYTES: Final = 64 * 1024
_PUNCTUATION: Final = ",;:.!?"


# --- records ----------------------------------------------------------------------------------


#: One entry of :func:`list_presets` (a malformed file is listed with its ``problem``).
PresetInfo = Listed


@dataclass(frozen=True, slots=True)
class Preset:
    """A loaded, validated preset. ``params`` and ``export`` are read-only mappings."""

    name: str
    description: str
    prompt_prefix: str
    prompt_suffix: str
    params: Mapping[str, Any]
    export: Mapping[str, Any]
    source: Source
    path: Path

    def to_dict(self) -> dict[str, Any]:
        """The preset as plain JSON types."""
        return {"name": self.name, "description": self.description,
                "prompt_prefix": self.prompt_prefix, "prompt_suffix": self.prompt_suffix,
                "params": dict(self.params), "export": dict(self.export),
                "source": self.source, "path": str(self.path)}


# --- where presets live -----------------------------------------------------------------------


def shipped_dir() -> Path:
    """The directory of the shipped presets, inside the installed package."""
    # timbred is installed as plain files (a wheel, or editable), never zipped.
    return Path(str(importlib.resources.files("timbred").joinpath("presets")))


def default_user_dir() -> Path:
    """``platformdirs.user_config_dir("timbre")/presets``, whether it exists or not."""
    return Path(platformdirs.user_config_dir("timbre")) / "presets"


def _candidates(user_dir: Path | None) -> tuple[dict[str, Path], dict[str, Path]]:
    return scan(shipped_dir()), scan(default_user_dir() if user_dir is None else user_dir)


# --- reading and validating -------------------------------------------------------------------


def _number(value: object) -> str:
    return json.dumps(value)


def _describe(sub: Mapping[str, Any]) -> str:
    """What a (sub)schema of the preset schema accepts, in words."""
    if "anyOf" in sub:
        return ", or ".join(_describe(alt) for alt in sub["anyOf"])
    if "const" in sub:
        return json.dumps(sub["const"])
    if "enum" in sub:
        return "one of " + ", ".join(json.dumps(v) for v in sub["enum"])
    noun = {"string": "a string", "number": "a number", "integer": "an integer",
            "object": "a table", "boolean": "true or false"}.get(sub.get("type", ""), "a value")
    lo = sub.get("minimum")
    hi = sub.get("maximum")
    if "exclusiveMinimum" in sub:
        bounds = f" > {_number(sub['exclusiveMinimum'])}"
        if hi is not None:
            bounds += f" and <= {_number(hi)}"
    elif lo is not None and hi is not None:
        bounds = f" from {_number(lo)} to {_number(hi)}"
    elif lo is not None:
        bounds = f" >= {_number(lo)}"
    elif hi is not None:
        bounds = f" <= {_number(hi)}"
    else:
        bounds = ""
    if "maxLength" in sub:
        bounds += f" of at most {sub['maxLength']} characters"
    return noun + bounds


def _invalid(path: Path, error: jsonschema.ValidationError) -> PresetInvalid:
    where = [str(part) for part in error.absolute_path]
    sub = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = sorted(sub.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        key = ".".join([*where, unknown[0]]) if unknown else ".".join(where)
        close = difflib.get_close_matches(unknown[0], known, n=1) if unknown else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return PresetInvalid(str(path), key, f"one of the known keys ({', '.join(known)}){hint}")
    key = ".".join(where) or "(top level)"
    return PresetInvalid(str(path), key,
                         f"{_describe(sub)}, got {shown(error.instance)}")


def _read(name: str, path: Path, source: Source) -> Preset:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PresetInvalid(str(path), "(file)",
                            f"a readable file ({exc.strerror or exc})") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise PresetInvalid(str(path), "(file)", f"at most {_MAX_FILE_BYTES // 1024} KiB")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PresetInvalid(str(path), "(file)", f"UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PresetInvalid(str(path), "(syntax)", f"valid TOML: {exc}") from exc
    errors = sorted(schema.validator(SCHEMA_FILE).iter_errors(doc),
                    key=lambda e: [str(part) for part in e.absolute_path])
    if errors:
        raise _invalid(path, errors[0])

    def section(key: str) -> types.MappingProxyType[str, Any]:
        table: dict[str, Any] = dict(doc.get(key, {}))
        for k in _INTEGER_KEYS & table.keys():
            table[k] = int(table[k])  # the schema lets 320.0 pass as an integer
        return types.MappingProxyType(table)

    return Preset(
        name=name,
        description=doc.get("description", ""),
        prompt_prefix=doc.get("prompt_prefix", ""),
        prompt_suffix=doc.get("prompt_suffix", ""),
        params=section("params"),
        export=section("export"),
        source=source,
        path=path,
    )


# --- the API ----------------------------------------------------------------------------------


def list_presets(user_dir: Path | None = None) -> list[PresetInfo]:
    """Every preset by name: shipped ones, overridden by user ones of the same name.

    ``user_dir`` defaults to :func:`default_user_dir`; a missing directory has no presets.
    A malformed file is listed with its ``problem`` instead of failing the whole listing.
    """
    return listing(shipped_dir(), default_user_dir() if user_dir is None else user_dir,
                   lambda name, path, source: _read(name, path, source).description)


def load(name: str, user_dir: Path | None = None) -> Preset:
    """The preset called ``name``: the user's file if there is one, else the shipped one.

    Raises PresetNotFound (with close names, or the available ones, as a hint) and
    PresetInvalid naming the file, the key and what was expected.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParams(f"a preset name must be a non-empty string, got {name!r}",
                            param="preset")
    shipped, user = _candidates(user_dir)
    if name in user:
        return _read(name, user[name], "user")
    if name in shipped:
        return _read(name, shipped[name], "shipped")
    names = sorted(shipped.keys() | user.keys())
    folded = {n.casefold(): n for n in names}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(folded[c]) for c in close) + "?"
    else:
        where = default_user_dir() if user_dir is None else user_dir
        hint = (f"available presets: {', '.join(names) or 'none'}; add your own as "
                f"{where / (name + '.toml')}")
    raise PresetNotFound(name, hint)


def compose_prompt(prefix: str, prompt: str, suffix: str) -> str:
    """``prefix + prompt + suffix`` with the spacing and commas described in the module doc."""
    parts = [p.strip() for p in (prefix, prompt, suffix)]
    out = ""
    for part in parts:
        if not part:
            continue
        if not out or part[0] in _PUNCTUATION:
            out += part
        elif out[-1] in _PUNCTUATION:
            out += " " + part
        else:
            out += ", " + part
    return out


def apply(preset: Preset, request: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge ``preset`` under ``request``; return ``(params, export)`` for the job.

    ``request`` is a flat mapping of generate.submit's params; keys in :data:`EXPORT_KEYS`
    go to ``export``, all others to ``params``. Explicit values win; ``None`` values count as
    absent. ``params["prompt"]`` is the composed prompt and ``params["preset"]`` the preset's
    name. Values are not validated here (the request's schema does that). Raises
    InvalidParams naming ``prompt`` when the prompt is not a string, or when neither the
    request nor the preset gives any prompt text.
    """
    prompt = request.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidParams(f"prompt must be a string, got {prompt!r}", param="prompt")
    params: dict[str, Any] = dict(preset.params)
    export: dict[str, Any] = dict(preset.export)
    for key, value in request.items():
        if value is None:
            continue
        (export if key in EXPORT_KEYS else params)[key] = value
    nested = request.get("options")
    if isinstance(nested, Mapping):
        # A backend parameter given in options is as explicit as one given flat: the
        # preset's own value gives way rather than count as the same parameter given twice.
        for key in nested:
            if key not in request:
                params.pop(key, None)
        own = preset.params.get("options")
        params["options"] = {**(own if isinstance(own, Mapping) else {}), **nested}
    composed = compose_prompt(preset.prompt_prefix, prompt, preset.prompt_suffix)
    if not composed:
        raise InvalidParams(f"a prompt is required: preset {preset.name!r} adds no text of "
                            "its own", param="prompt")
    params["prompt"] = composed
    params["preset"] = preset.name
    return params, export
