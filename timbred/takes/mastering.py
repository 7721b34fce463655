"""Mastering chains: effects from pedalboard, then loudness and a true-peak ceiling.

A chain is a TOML file named ``<name>.toml``. Timbre ships ``streaming``, ``club``, ``tape``
and ``none`` in ``timbred/mastering/``; the user's own live in a directory the caller passes
(the daemon passes ``<config dir>/mastering``) and override a shipped chain of the same name.
The format, documented for editors in ``schemas/mastering.schema.json``::

    name = "warm"                 # optional; if given, the file's name without .toml
    description = "Warm and loud" # one line
    input_lufs = -18.0            # optional: the level the effects are set for (see below)

    [[effects]]                   # applied in order; settings left out take their defaults
    type = "compressor"           # highpass | lowshelf | highshelf | peak | compressor |
    threshold_db = -20.0          # saturation | gain (see EFFECTS for settings and ranges)
    ratio = 2.0

    [target]                      # optional: without it there is no level stage at all
    loudness_lufs = -14.0         # optional: without it the level is kept, only peaks capped
    true_peak_dbtp = -1.0         # default -1.0
    clip_db = 18.0                # default 18: how deep the soft clipper may go (0: never)

A malformed file raises InvalidParams (``param="master"``) whose message names the file, the
key and what was expected; ``data`` carries ``path`` and ``key`` too. Every file is checked
against the schema and then again against :data:`EFFECTS`, the one registry of effect types
(the second check also refuses ``nan``, which TOML allows and JSON Schema lets through). No
NotFound-family error fits an unknown chain (PresetNotFound says "preset"), so that is an
InvalidParams on ``master`` too, listing the known chains.

How a take is mastered (:func:`master`): it is brought by a plain gain to ``input_lufs``
(BS.1770), because a compressor's threshold or a saturation's drive only means something
at a known level: without it, a quiet take would pass the compressor untouched and a hot one
be squashed. Then the effects run (pedalboard plugins, float32, in order), then the level
stage (:func:`level_stage`) brings the result to the target loudness with the true peak at
or below the ceiling.

``saturation`` is pedalboard's ``Distortion`` (``tanh`` after ``drive_db`` of gain) followed
by ``Gain(-drive_db)``: a soft clip that leaves quiet passages at their level and rounds off
the peaks, adding odd harmonics. Shelf and peak frequencies above the Nyquist frequency of
the take's sample rate are clamped there by pedalboard (JUCE).

The level stage was chosen by measurement (``python -m bench.mastering``: 10 s stereo at
44.1 kHz; four synthetic signals, a dense mix, sparse drums, struck chords like the tests'
``pulse`` fixture and a quiet pad, each through streaming, club and tape; an independent
meter, pyloudnorm and a 4x ``resample_poly`` true peak; criteria from the issue: within
0.5 LU of the target, true peak at most the ceiling + 0.1 dB). "Flat" counts samples within
0.01 dB of the output's peak, the flat tops a hard clipper leaves:

=================================  ===========  ===========  ============  ==============
level stage                        meets both   worst error  worst flat    ms per 10 s
=================================  ===========  ===========  ============  ==============
(a) ``loudness.normalise``         9 of 12      -4.24 LU     21            260 - 1,590
(b) pedalboard ``Limiter``, x8     11 of 12     -2.57 LU     120,820       250 - 690
(c) (a) + adaptive soft clip       12 of 12     -0.20 LU     39,900        280 - 2,830
=================================  ===========  ===========  ============  ==============

No stage ever left the true peak over the ceiling. (a), Timbre's hand-written true-peak
look-ahead limiter, is exact and clean where the target is reachable, but misses it on
material whose peaks stand far above its loudness (drums -2.6 LU for streaming and -4.2 for
club, struck chords -0.65 for club): its gain stays down 50 ms around each peak and it
pushes at most 6 dB. (b) gets closer only by clipping: JUCE's limiter ends in a hard clip
at 0 dBFS whose inter-sample overs reach 4-5 dB over the ceiling, so each pass needs a
static trim, and on the drums at club level 14 % of the samples come out flat-topped
(still 2.6 LU short). So the level stage is (a), and only where (a) falls short by more
than :data:`CLIP_TOLERANCE_LU`, a soft clipper ahead of it cuts the peaks as little as
reaches the target (c): here the drums (streaming, club) and the struck chords (club); the
mix and the pad never reach it. Its cost is two or three more passes of (a) on those takes
only (2.2 - 2.8 s for 10 s), and at club level the sparse drums need the full 24 dB of
clipping (5 % of samples near-flat). The report's ``limiter`` names (a) and ``clip_db``
says how deep the clipper went.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import math
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pedalboard
from jsonschema.exceptions import ValidationError

from timbred.errors import InvalidParams
from timbred.protocol import schema
from timbred.takes.audio import F64, Audio, as_audio, check_rate
from timbred.takes.loudness import LoudnessReport, integrated_loudness, normalise, true_peak_dbtp
from timbred.takes.options import MASTER_NAME
from timbred.tomlfiles import Listed, listing, scan, shown

__all__ = [
    "EFFECTS",
    "LIMITER",
    "Chain",
    "ChainInfo",
    "Effect",
    "EffectType",
    "MasterReport",
    "Setting",
    "Source",
    "Target",
    "apply_effects",
    "level_stage",
    "list_chains",
    "load_chain",
    "master",
    "shipped_dir",
]

#: Where a chain came from: a shipped file, a user's file, or a recorded ``to_dict()``.
Source = Literal["shipped", "user", "recorded"]

SCHEMA_FILE: Final = "mastering.schema.json"
#: The name :class:`MasterReport` gives the level stage's limiter (see the module docstring).
LIMITER: Final = "lookahead"
_MAX_FILE_BYTES: Final = 64 * 1024
_PARAM: Final = "master"


# --- the registry of effect types -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of an effect type: its default and its inclusive range."""

    default: float
    minimum: float
    maximum: float


@dataclass(frozen=True, slots=True)
class EffectType:
    """An effect a chain may name: the pedalboard plugin that runs it and its settings.

    ``plugin`` is called with every setting as a keyword argument. ``makeup`` names a dB
    setting whose gain is taken back by a ``pedalboard.Gain`` right after the plugin (the
    saturation's drive), or is ``None``.
    """

    plugin: Callable[..., pedalboard.Plugin]
    settings: Mapping[str, Setting]
    makeup: str | None = None


def _filter(cutoff_hz: float) -> Mapping[str, Setting]:
    # Shelves and the bell share their settings; only the default frequency differs.
    return {"cutoff_frequency_hz": Setting(cutoff_hz, 20.0, 20000.0),
            "gain_db": Setting(0.0, -18.0, 18.0),
            "q": Setting(0.7071, 0.1, 10.0)}


#: Every effect type by the name a chain's ``type`` gives it. schemas/mastering.schema.json
#: states the same settings, defaults and ranges (a test checks that they agree).
EFFECTS: Final[Mapping[str, EffectType]] = types.MappingProxyType({
    "highpass": EffectType(pedalboard.HighpassFilter,
                           {"cutoff_frequency_hz": Setting(30.0, 10.0, 1000.0)}),
    "lowshelf": EffectType(pedalboard.LowShelfFilter, _filter(100.0)),
    "highshelf": EffectType(pedalboard.HighShelfFilter, _filter(8000.0)),
    "peak": EffectType(pedalboard.PeakFilter, _filter(1000.0)),
    "compressor": EffectType(pedalboard.Compressor, {
        "threshold_db": Setting(-18.0, -60.0, 0.0),
        "ratio": Setting(2.0, 1.0, 20.0),
        "attack_ms": Setting(10.0, 0.1, 1000.0),
        "release_ms": Setting(150.0, 1.0, 5000.0),
    }),
    "saturation": EffectType(pedalboard.Distortion, {"drive_db": Setting(6.0, 0.0, 36.0)},
                             makeup="drive_db"),
    "gain": EffectType(pedalboard.Gain, {"gain_db": Setting(0.0, -24.0, 24.0)}),
})

#: ``input_lufs`` and ``target.loudness_lufs`` (LUFS; both optional, so the default is only
#: what the shipped chains use for ``input_lufs``), ``target.true_peak_dbtp`` (dBTP) and
#: ``target.clip_db``, the deepest the level stage's soft clipper may cut peaks (dB).
LOUDNESS: Final = Setting(-18.0, -60.0, 0.0)
CEILING: Final = Setting(-1.0, -20.0, 0.0)
CLIP: Final = Setting(18.0, 0.0, 24.0)

#: The soft clipper's knee: it starts rounding peaks this far under its own ceiling.
CLIP_KNEE_DB: Final = 3.0
#: How close under the target a clipped take must land (the issue's criterion is 0.5 LU).
CLIP_TOLERANCE_LU: Final = 0.25
#: How much peak reduction the clipper leaves to the limiter at first (dB).
CLIP_ROOM_DB: Final = 1.0
_CLIP_RESOLUTION_DB: Final = 0.25
_CLIP_PASSES: Final = 3


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    """One effect of a chain: its type (a key of :data:`EFFECTS`) and every setting."""

    type: str
    settings: Mapping[str, float]

    def plugins(self) -> list[pedalboard.Plugin]:
        """The pedalboard plugins that run this effect, in order."""
        spec = EFFECTS[self.type]
        plugin = spec.plugin(**self.settings)
        if spec.makeup is None:
            return [plugin]
        return [plugin, pedalboard.Gain(gain_db=-self.settings[spec.makeup])]

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., <every setting>: ...}``, as a chain file writes it."""
        return {"type": self.type, **self.settings}


@dataclass(frozen=True, slots=True)
class Target:
    """The level stage: the loudness to reach (``None``: keep the level), the true-peak
    ceiling, and how deep (dB) the soft clipper may cut peaks when the limiter alone cannot
    reach the loudness (0: never clip; the take then stays under the target)."""

    loudness_lufs: float | None
    true_peak_dbtp: float
    clip_db: float = CLIP.default

    def to_dict(self) -> dict[str, Any]:
        """Every field, ``None`` as is."""
        return {"loudness_lufs": self.loudness_lufs, "true_peak_dbtp": self.true_peak_dbtp,
                "clip_db": self.clip_db}


@dataclass(frozen=True, slots=True)
class Chain:
    """A loaded, validated mastering chain, every setting filled in.

    ``input_lufs`` is the level the effects are set for (``None``: the take as it is);
    ``target`` is ``None`` for no level stage at all. ``source`` and ``path`` say where it
    was read from (``path`` is ``None`` for a chain rebuilt by :meth:`from_dict`); they are
    not part of :meth:`to_dict`, so the same settings record the same way wherever they live.
    """

    name: str
    description: str
    input_lufs: float | None
    effects: tuple[Effect, ...]
    target: Target | None
    source: Source = "recorded"
    path: Path | None = None

    def plugins(self) -> list[pedalboard.Plugin]:
        """Fresh pedalboard plugins running the effects in order (a compressor keeps state:
        a new set for each run)."""
        return [p for effect in self.effects for p in effect.plugins()]

    def to_dict(self) -> dict[str, Any]:
        """Name, description, input level, every effect with every setting, and the target:
        what a sidecar records so that :meth:`from_dict` masters a take identically. It is
        valid against ``schemas/mastering.schema.json``."""
        return {"name": self.name, "description": self.description,
                "input_lufs": self.input_lufs,
                "effects": [effect.to_dict() for effect in self.effects],
                "target": None if self.target is None else self.target.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chain:
        """The chain :meth:`to_dict` recorded (or a chain file's table); InvalidParams
        naming the key when it is malformed, as for a file."""
        if not isinstance(data, Mapping):
            raise InvalidParams(f"a recorded mastering chain must be an object, got "
                                f"{type(data).__name__}", param=_PARAM)
        name = data.get("name")
        if not isinstance(name, str):
            raise InvalidParams(f"recorded mastering chain: name: expected a string, got "
                                f"{shown(name)}", param=_PARAM, path=None, key="name")
        return _build(dict(data), name, "recorded mastering chain", "recorded", None)


#: One entry of :func:`list_chains` (a malformed file is listed with its ``problem``).
ChainInfo = Listed


@dataclass(frozen=True, slots=True)
class MasterReport:
    """What :func:`master` measured and did.

    Loudness (LUFS) and true peak (dBTP) are ``None`` where they cannot be measured (shorter
    than 400 ms, silent: see :mod:`timbred.takes.loudness`). ``input_gain_db`` brought the
    take to the chain's ``input_lufs``; ``gain_db`` is the level stage's static gain and
    ``clip_db`` how deep its soft clipper cut the peaks (0: not at all); ``limiter`` names
    the level stage's limiter (``None`` when the chain has no target) and ``limited`` says
    whether the clipper or the limiter changed the audio.
    """

    chain: str
    before_lufs: float | None
    after_lufs: float | None
    true_peak_after_dbtp: float | None
    input_gain_db: float
    gain_db: float
    clip_db: float
    limiter: str | None
    limited: bool

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# --- where chains live ------------------------------------------------------------------------


def shipped_dir() -> Path:
    """The directory of the shipped chains, inside the installed package."""
    # timbred is installed as plain files (a wheel, or editable), never zipped.
    return Path(str(importlib.resources.files("timbred").joinpath("mastering")))


# --- reading and validating -------------------------------------------------------------------


def _key(path: Sequence[object]) -> str:
    """``effects[1].ratio`` for the path ``("effects", 1, "ratio")``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def _bad(where: str, key: str, message: str, path: Path | None) -> InvalidParams:
    return InvalidParams(f"{where}: {key}: {message}", param=_PARAM,
                         path=None if path is None else str(path), key=key)


def _describe(sub: Mapping[str, Any]) -> str:
    """What a (sub)schema of the chain schema accepts, in words."""
    if "const" in sub:
        return json.dumps(sub["const"])
    if "enum" in sub:
        return "one of " + ", ".join(json.dumps(v) for v in sub["enum"])
    noun = {"string": "a string", "number": "a number", "object": "a table",
            "array": "a list", "null": "nothing"}.get(sub.get("type", ""), "a value")
    if "minimum" in sub and "maximum" in sub:
        noun += f" from {sub['minimum']:g} to {sub['maximum']:g}"
    if "pattern" in sub:
        noun += " of lower-case letters, digits, - and _ (at most 64)"
    if "maxLength" in sub:
        noun += f" of at most {sub['maxLength']} characters"
    if "maxItems" in sub:
        noun += f" of at most {sub['maxItems']} items"
    return noun


def _schema_error(where: str, error: ValidationError, path: Path | None) -> InvalidParams:
    while error.context:
        # anyOf (a table or null, a number or null): follow the branch whose type the value
        # has; when it has none of them, name the types a TOML file can give (not null).
        typed = [e for e in error.context if e.validator != "type"]
        if not typed:
            wanted = [_describe(e.schema) for e in error.context
                      if isinstance(e.schema, Mapping) and e.schema.get("type") != "null"]
            return _bad(where, _key(list(error.absolute_path)),
                        f"expected {' or '.join(wanted)}, got {shown(error.instance)}", path)
        error = max(typed, key=lambda e: len(e.absolute_path))
    sub = error.schema if isinstance(error.schema, Mapping) else {}
    at = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = sorted(sub.get("properties", {}))
        unknown = sorted(str(k) for k in error.instance if k not in known)
        close = difflib.get_close_matches(unknown[0], known, n=1) if unknown else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return _bad(where, _key([*at, *unknown[:1]]),
                    f"unknown key; expected one of {', '.join(known)}{hint}", path)
    if error.validator == "required":
        present = error.instance if isinstance(error.instance, Mapping) else {}
        missing = next((k for k in sub.get("required", ()) if k not in present), "?")
        return _bad(where, _key([*at, missing]), "is required", path)
    return _bad(where, _key(at), f"expected {_describe(sub)}, got {shown(error.instance)}",
                path)


def _number(where: str, key: str, value: object, setting: Setting, path: Path | None) -> float:
    """``value`` as a float within ``setting``'s range (the schema's own check misses nan)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not setting.minimum <= value <= setting.maximum:
        raise _bad(where, key, f"expected a number from {setting.minimum:g} to "
                   f"{setting.maximum:g}, got {shown(value)}", path)
    return float(value)


def _build(doc: dict[str, Any], name: str, where: str, source: Source,
           path: Path | None) -> Chain:
    """Validate a parsed chain (schema, then the registry's ranges) and build it."""
    errors = sorted(schema.validator(SCHEMA_FILE).iter_errors(doc),
                    key=lambda e: _key(list(e.absolute_path)))
    if errors:
        raise _schema_error(where, errors[0], path)
    if not MASTER_NAME.fullmatch(name):
        raise _bad(where, "name", "a chain's name must be lower-case letters, digits, - and _ "
                   f"(at most 64, starting with a letter or digit), got {shown(name)}", path)
    if doc.get("name", name) != name:
        raise _bad(where, "name", f"expected {name!r} (the file's name), got "
                   f"{shown(doc['name'])}", path)
    effects = []
    for i, raw in enumerate(doc.get("effects", [])):
        spec = EFFECTS[raw["type"]]
        settings = {k: _number(where, f"effects[{i}].{k}", raw.get(k, s.default), s, path)
                    for k, s in spec.settings.items()}
        effects.append(Effect(raw["type"], types.MappingProxyType(settings)))
    input_lufs = doc.get("input_lufs")
    if input_lufs is not None:
        input_lufs = _number(where, "input_lufs", input_lufs, LOUDNESS, path)
    target: Target | None = None
    raw_target = doc.get("target")
    if raw_target is not None:
        loudness = raw_target.get("loudness_lufs")
        target = Target(
            None if loudness is None else
            _number(where, "target.loudness_lufs", loudness, LOUDNESS, path),
            _number(where, "target.true_peak_dbtp",
                    raw_target.get("true_peak_dbtp", CEILING.default), CEILING, path),
            _number(where, "target.clip_db", raw_target.get("clip_db", CLIP.default), CLIP,
                    path))
    return Chain(name=name, description=doc.get("description", ""), input_lufs=input_lufs,
                 effects=tuple(effects), target=target, source=source, path=path)


def _read(name: str, path: Path, source: Source) -> Chain:
    where = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _bad(where, "(file)", f"cannot be read: {exc.strerror or exc}", path) from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise _bad(where, "(file)", f"larger than {_MAX_FILE_BYTES // 1024} KiB", path)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(where, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                   path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise _bad(where, "(syntax)", f"not valid TOML: {exc}", path) from exc
    return _build(doc, name, where, source, path)


# --- the API ----------------------------------------------------------------------------------


def list_chains(user_dir: Path | None = None) -> list[ChainInfo]:
    """Every chain by name: the shipped ones, overridden by the ``*.toml`` files of
    ``user_dir`` of the same name (``None`` or a missing directory: shipped chains only).
    A malformed file is listed with its ``problem`` instead of failing the whole listing."""
    return listing(shipped_dir(), user_dir,
                   lambda name, path, source: _read(name, path, source).description)


def load_chain(name: str, user_dir: Path | None = None) -> Chain:
    """The chain called ``name``: ``user_dir``'s file if there is one, else the shipped one.

    Raises InvalidParams naming ``master``: for an unknown name (with close names, or the
    known ones, and where to add it), and for a malformed file (naming the file and the key).
    """
    if not isinstance(name, str) or not MASTER_NAME.fullmatch(name):
        raise InvalidParams("a mastering chain's name must be lower-case letters, digits, - "
                            f"and _ (at most 64), got {shown(name)}", param=_PARAM)
    shipped, user = scan(shipped_dir()), scan(user_dir)
    if name in user:
        return _read(name, user[name], "user")
    if name in shipped:
        return _read(name, shipped[name], "shipped")
    # No NotFound-family error fits a chain (PresetNotFound says "preset"): the request's
    # `master` parameter is what is wrong, with the choices in the message and the data.
    known = sorted(shipped.keys() | user.keys())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = f"; add your own as {user_dir / (name + '.toml')}" if user_dir is not None else ""
    raise InvalidParams(f"no mastering chain {name!r}: {hint}known chains: {', '.join(known)}"
                        f"{where}", param=_PARAM, known=known)


def apply_effects(audio: npt.ArrayLike, sample_rate: int, chain: Chain) -> Audio:
    """The chain up to its level stage: the gain to ``input_lufs``, then the effects.
    ``(channels, samples)`` float32 of the same shape."""
    x, rate = as_audio(audio, allow_empty=True), check_rate(sample_rate)
    return _effects(x, rate, chain, integrated_loudness(x, rate))[0]


def _effects(x: F64, rate: int, chain: Chain, before: float | None) -> tuple[Audio, float]:
    """The effects' output and the input gain (dB) that brought ``x`` (at ``before`` LUFS)
    to ``input_lufs``."""
    gain_db = 0.0
    if chain.input_lufs is not None and before is not None:
        gain_db = chain.input_lufs - before
    y = np.ascontiguousarray(x * 10.0 ** (gain_db / 20.0), dtype=np.float32)
    if y.shape[1]:
        for plugin in chain.plugins():
            y = np.ascontiguousarray(plugin.process(y, float(rate), reset=True),
                                     dtype=np.float32)
    return y, gain_db


def master(audio: npt.ArrayLike, sample_rate: int, chain: Chain) -> tuple[Audio, MasterReport]:
    """``(channels, samples)`` audio through ``chain``: to ``input_lufs``, the effects, then
    the target loudness with the true peak at or below the ceiling (see the module doc).

    Returns finite float32 audio of the same shape and a :class:`MasterReport`. A chain with
    no ``input_lufs``, no effects and no target (``none``) returns the audio unchanged.
    """
    if not isinstance(chain, Chain):
        raise InvalidParams(f"chain must be a mastering Chain, got {type(chain).__name__}",
                            param="chain")
    rate = check_rate(sample_rate)
    x = as_audio(audio, allow_empty=True)
    before = integrated_loudness(x, rate)
    y, input_gain_db = _effects(x, rate, chain, before)
    if chain.target is None:
        report = MasterReport(chain=chain.name, before_lufs=before,
                              after_lufs=integrated_loudness(y, rate),
                              true_peak_after_dbtp=true_peak_dbtp(y),
                              input_gain_db=input_gain_db, gain_db=0.0, clip_db=0.0,
                              limiter=None, limited=False)
        return y, report
    out, level, clip_db = level_stage(y, rate, chain.target)
    report = MasterReport(chain=chain.name, before_lufs=before, after_lufs=level.after_lufs,
                          true_peak_after_dbtp=level.true_peak_after_dbtp,
                          input_gain_db=input_gain_db, gain_db=level.gain_db, clip_db=clip_db,
                          limiter=LIMITER, limited=level.limited or clip_db > 0)
    return out, report


def _soft_clip(y: F64, ceiling: float) -> F64:
    """``y`` with peaks rounded off towards ``ceiling`` (linear): unchanged up to the knee
    :data:`CLIP_KNEE_DB` under it, then a tanh curve that meets it with the slope still 1 at
    the knee, so nothing is squared off below the ceiling and nothing passes above it."""
    knee = ceiling * math.pow(10.0, -CLIP_KNEE_DB / 20.0)
    width = ceiling - knee
    magnitude = np.abs(y)
    over = magnitude > knee
    out = y.copy()
    out[over] = np.sign(y[over]) * (knee + width * np.tanh((magnitude[over] - knee) / width))
    return out


def _clip_ceiling(peak: float, depth_db: float) -> float:
    return peak * math.pow(10.0, -depth_db / 20.0)


def _clip_depth(y: F64, rate: int, peak: float, most_db: float, want_db: float) -> float:
    """The shallowest depth (within :data:`_CLIP_RESOLUTION_DB`, at most ``most_db``) at which
    the clipped audio's true peak stands at most ``want_db`` above its loudness."""
    def excess(depth: float) -> float:
        clipped = _soft_clip(y, _clip_ceiling(peak, depth))
        loudness, tp = integrated_loudness(clipped, rate), true_peak_dbtp(clipped)
        if loudness is None or tp is None:
            return -math.inf
        return tp - loudness - want_db

    if excess(most_db) > 0:
        return most_db
    low, high = 0.0, most_db
    while high - low > _CLIP_RESOLUTION_DB:
        middle = (low + high) / 2.0
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return high


def level_stage(audio: npt.ArrayLike, sample_rate: int, target: Target
                ) -> tuple[Audio, LoudnessReport, float]:
    """The chain's last stage: ``audio`` to the target loudness under the true-peak ceiling.

    :func:`~timbred.takes.loudness.normalise` does it alone when it can. Material whose
    peaks stand far above its loudness (struck chords, sparse drums) it leaves short of the
    target: its limiter holds the gain down around each peak and pushes at most
    :data:`~timbred.takes.loudness.MAX_LIMITER_PUSH_DB` into it. Then a soft clipper
    (:func:`_soft_clip`) cuts the peaks first, as little as needed: just deep enough (found
    by bisection, at most ``target.clip_db``) that the true peaks stand no more than the
    room the target leaves (ceiling minus loudness) plus :data:`CLIP_ROOM_DB` above the
    loudness, so that the limiter has only that last bit to do. When normalise still falls
    short, the limiter's share shrinks by 1.5 times the shortfall and the clipper goes
    deeper, at most :data:`_CLIP_PASSES` times. Returns the audio, normalise's report of the
    kept try (the first that reaches the target, else the closest), and the clipper's depth
    in dB (0 when the limiter alone did it or the chain allows no clipping).
    """
    rate = check_rate(sample_rate)
    y = as_audio(audio, allow_empty=True)
    out, report = normalise(y, rate, target_lufs=target.loudness_lufs,
                            ceiling_dbtp=target.true_peak_dbtp)
    if target.loudness_lufs is None or report.after_lufs is None or target.clip_db <= 0 or \
            target.loudness_lufs - report.after_lufs <= CLIP_TOLERANCE_LU:
        return out, report, 0.0
    goal = target.loudness_lufs
    peak = float(np.abs(y).max())
    kept = (goal - report.after_lufs, 0.0, out, report)
    room = CLIP_ROOM_DB
    for _ in range(_CLIP_PASSES):
        depth = _clip_depth(y, rate, peak, target.clip_db,
                            target.true_peak_dbtp - goal + room)
        out, report = normalise(_soft_clip(y, _clip_ceiling(peak, depth)), rate,
                                target_lufs=goal, ceiling_dbtp=target.true_peak_dbtp)
        short = math.inf if report.after_lufs is None else goal - report.after_lufs
        if short < kept[0] or short <= CLIP_TOLERANCE_LU:
            kept = (short, depth, out, report)
        if short <= CLIP_TOLERANCE_LU or depth >= target.clip_db:
            break
        room -= 1.5 * short
    return kept[2], kept[3], kept[1]
