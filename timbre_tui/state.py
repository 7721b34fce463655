"""The studio's one state object.

Everything the studio shows about the daemon (jobs, takes, progress, models, device, queue) is a
copy of what the daemon said, loaded by RPC and kept current by events; nothing here is
persisted. The only state of the studio's own is the editing state of this window: the
parameters for the next prompt (with undo and redo), the lyrics to sing with it, the
selection, the open view and the message line. Mutators are plain methods so the whole
object can be tested without a terminal.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from timbred.backends import ace_step, musicgen
from timbred.hosted.names import PROVIDERS, split
from timbred.request import DEFAULT_DURATION_S, DEFAULT_VARIATIONS

JOB_RANK = {"queued": 0, "loading": 1, "generating": 2, "encoding": 3,
            "done": 4, "failed": 4, "cancelled": 4, "interrupted": 4}
ACTIVE_STATES = ("queued", "loading", "generating", "encoding")
RETRYABLE_STATES = ("failed", "cancelled", "interrupted")
FORMATS = ("wav", "flac", "ogg", "mp3")
SEED_MAX = 2**63 - 1
HISTORY_LIMIT = 200

Connection = Literal["connecting", "connected", "disconnected"]
View = Literal["timeline", "library"]
Level = Literal["info", "error"]

#: A value of a family's own parameter (a JSON Schema number, integer, enum member or string).
ParamValue = bool | int | float | str
#: A family's parameters as ``backends.list`` gives them: JSON Schema properties by name.
ParamSchema = Mapping[str, Mapping[str, Any]]

#: What the panel offers before the daemon has said which families it drives (or when it is
#: older than ``backends.list``): MusicGen's parameters, read from the one place they are
#: declared (the daemon's torch-free spec), never written out again here.
FALLBACK_FAMILY = musicgen.SPEC.name
FALLBACK_PARAMS: ParamSchema = musicgen.SPEC.params
#: What that family can do, by the same rule (it does not sing).
FALLBACK_FEATURES: frozenset[str] = musicgen.SPEC.capabilities.features
#: The tracks /extract and /add offer when the family's schema does not list its own.
TRACKS: tuple[str, ...] = ace_step.TRACKS

#: The common :class:`Params` fields a daemon preset's ``[params]`` table can fill; the
#: family's own parameters are filled by their schema (:func:`apply_preset`). The table's
#: other keys, such as ``keep_alive``, still reach the daemon through the preset's name.
PRESET_FIELDS: dict[str, Callable[[Any], Any]] = {
    "model": str, "duration": float, "variations": int,
}


@dataclass(frozen=True)
class Preset:
    """A daemon preset as ``/preset`` offers it (``presets.list`` and ``presets.show``).

    ``problem`` is set for a preset file the daemon could not read; it cannot be chosen.
    """

    name: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    #: The preset's ``[export]`` table (its ``format`` fills the panel's format).
    export: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for completion menus: the description, else the parameters."""
        if self.problem:
            return f"broken: {self.problem}"
        return self.description or ", ".join(f"{k} {v}" for k, v in self.params.items())


@dataclass(frozen=True)
class HostedModel:
    """A model that runs at a hosted provider, as ``models.list``'s ``hosted`` names it.

    ``key`` is where the daemon finds the provider's key (``env``, ``client``, ``keyring``;
    None: nowhere, so ``needs_key``); ``price`` is the daemon's one line for people. A hosted
    name the daemon did not list (a pinned Replicate version typed in) is described by its
    provider alone (:meth:`StudioState.hosted_model`): no summary, no price.
    """

    name: str
    provider: str
    summary: str = ""
    key: str | None = None
    needs_key: bool = False
    deterministic: bool = False
    price: str = ""

    @classmethod
    def from_listing(cls, entry: Mapping[str, Any]) -> HostedModel:
        key = entry.get("key")
        return cls(name=str(entry["name"]), provider=str(entry["provider"]),
                   summary=str(entry.get("summary") or ""),
                   key=key if isinstance(key, str) else None,
                   needs_key=bool(entry.get("needs_key")),
                   deterministic=bool(entry.get("deterministic")),
                   price=str(entry.get("price") or ""))

    @property
    def title(self) -> str:
        """The provider as people name it: ``Replicate``."""
        known = PROVIDERS.get(self.provider)
        return known.title if known is not None else self.provider

    @property
    def env_var(self) -> str:
        known = PROVIDERS.get(self.provider)
        return known.env_var if known is not None else ""

    def sends_key(self, environ: Mapping[str, str]) -> bool:
        """Whether the daemon has no key but ``environ`` (the studio's) does, so the studio
        sends it with each job (``generate.submit``'s ``credentials``)."""
        return self.needs_key and bool(self.env_var and environ.get(self.env_var, "").strip())

    def key_missing(self, environ: Mapping[str, str]) -> bool:
        """Whether neither the daemon nor the studio has a key: its jobs would fail."""
        return self.needs_key and not self.sends_key(environ)

    def key_note(self, environ: Mapping[str, str]) -> str | None:
        """What is in the way of using it (``needs a key — timbrectl auth set replicate``),
        or where its key comes from when the studio sends it; None when the daemon has
        one."""
        if self.sends_key(environ):
            return f"key sent from your ${self.env_var}"
        if self.needs_key:
            return f"needs a key — timbrectl auth set {self.provider}"
        return None

    def about(self, environ: Mapping[str, str]) -> str:
        """One line for completion menus and messages: where it runs, the key, the price."""
        parts = [f"hosted at {self.title}", self.key_note(environ), self.price or None]
        return " · ".join(p for p in parts if p)


@dataclass(frozen=True)
class Cost:
    """What a hosted job cost (its recipe's ``cost``): the provider's own figure, or an
    estimate from its published price."""

    usd: float
    estimate: bool = False
    basis: str = ""

    @classmethod
    def from_record(cls, record: Any) -> Cost | None:
        """A recipe's or job's ``cost`` (``{"usd", "estimate", "basis"}``); None for a local
        job's (null) or one that does not read."""
        if not isinstance(record, Mapping):
            return None
        usd = record.get("usd")
        if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd):
            return None
        return cls(float(usd), bool(record.get("estimate")), str(record.get("basis") or ""))

    def text(self) -> str:
        """``$0.05``, ``<$0.01``, ``$0.05 (estimate)``."""
        amount = f"${self.usd:.2f}" if self.usd == 0 or self.usd >= 0.005 else "<$0.01"
        return amount + (" (estimate)" if self.estimate else "")


def provider_title(provider: str) -> str:
    """``Replicate`` for ``replicate``; an unknown provider's name as it is."""
    known = PROVIDERS.get(provider)
    return known.title if known is not None else provider


def hosted_provider(model: str | None, recipe: Mapping[str, Any] | None = None) -> str | None:
    """The provider a take or job was made at: its recipe's word (``provider``, or its
    ``hosted`` or ``cost`` table's), else the model's name (``replicate:meta/musicgen``);
    None for a local one."""
    for table in (recipe or {}, (recipe or {}).get("hosted"), (recipe or {}).get("cost")):
        if isinstance(table, Mapping) and isinstance(table.get("provider"), str):
            return str(table["provider"])
    named = split(model) if model else None
    return named[0] if named is not None else None


def schema_defaults(schema: ParamSchema) -> dict[str, ParamValue]:
    """The defaults a family's schema declares (a parameter without one is left to the
    daemon)."""
    return {name: prop["default"] for name, prop in schema.items() if "default" in prop}


@dataclass(frozen=True)
class Params:
    """The parameters of the next prompt. ``model`` None means the daemon's default.

    The common ones are fields; the model family's own (MusicGen's temperature, a diffusion
    model's steps) are in ``options`` by name, as its schema names them, and read as
    attributes too (``params.top_k``) since their names are as stable as the fields'.
    """

    model: str | None = None
    duration: float = DEFAULT_DURATION_S
    seed: int = 0
    seed_locked: bool = False
    variations: int = DEFAULT_VARIATIONS
    format: str = "wav"
    #: Whether the format was chosen in the panel (/format): only then is it sent, and it
    #: wins over the preset's; otherwise the preset or the daemon's output.format decides.
    format_chosen: bool = False
    preset: str | None = None
    #: The family's own parameters by name (see :meth:`StudioState.param_specs`).
    options: Mapping[str, ParamValue] = field(
        default_factory=lambda: schema_defaults(FALLBACK_PARAMS))

    def __getattr__(self, name: str) -> ParamValue:
        # Only reached when no field has the name. Read options through __dict__: during
        # construction and unpickling it may not be set yet, and self.options would recurse.
        options = self.__dict__.get("options")
        if options is not None and name in options:
            value: ParamValue = options[name]
            return value
        raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")

    def submit_params(self, prompt: str, *, flat: bool = False) -> dict[str, Any]:
        """The ``generate.submit`` params (seed only when locked, model and preset only when
        chosen).

        The panel's values are always sent, so they win over the preset's own (the daemon's
        rule: explicit values first); the preset still wraps the prompt and sets the export.
        The family's own parameters go in ``options``, MusicGen's too: one way for every
        family, and no clash if a family names one like a common parameter. ``flat`` is for a
        daemon older than ``options`` (one without ``backends.list``), which knows MusicGen's
        four flat only.
        """
        out: dict[str, Any] = {"prompt": prompt, "duration": self.duration,
                               "variations": self.variations}
        if flat:
            out.update(self.options)
        elif self.options:
            out["options"] = dict(self.options)
        if self.model:
            out["model"] = self.model
        if self.seed_locked:
            out["seed"] = self.seed
        if self.preset:
            out["preset"] = self.preset
        if self.format_chosen:
            out["format"] = self.format
        return out


@dataclass(frozen=True)
class ParamSpec:
    """One editable parameter: its label, its slash command and how it steps and parses."""

    name: str
    label: str
    kind: Literal["float", "int", "seed", "model", "choice", "preset", "text"]
    help: str
    minimum: float = 0.0
    maximum: float = 0.0
    step: float = 1.0
    choices: tuple[str, ...] = ()
    #: True for the model family's own parameters (kept in :attr:`Params.options`).
    option: bool = False
    #: An enum's members as the schema gives them (``choices`` holds them as typed).
    values: tuple[ParamValue, ...] = ()
    default: ParamValue | None = None

    @property
    def command(self) -> str:
        return self.label


#: The parameters every family shares: the panel shows the family's own between
#: :data:`LEADING_SPECS` and :data:`TRAILING_SPECS`.
LEADING_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "model", "model", "model name or path (empty: the daemon's default)"),
    ParamSpec("duration", "duration", "float", "seconds of audio", 0.5, 600.0, 1.0),
    ParamSpec("seed", "seed", "seed", "a number locks the seed; 'random' unlocks it",
              0, SEED_MAX, 1),
)
TRAILING_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("variations", "variations", "int", "takes per prompt, in one pass", 1, 16, 1),
    ParamSpec("format", "format", "choice", "format of new takes (and /export)",
              choices=FORMATS),
    ParamSpec("preset", "preset", "preset",
              "a daemon preset: fills the panel; wraps the prompt and sets the export"),
)


def family_specs(schema: ParamSchema) -> tuple[ParamSpec, ...]:
    """A family's own parameters as panel entries, in its schema's order."""
    return tuple(option_spec(name, prop) for name, prop in schema.items())


def option_spec(name: str, prop: Mapping[str, Any]) -> ParamSpec:
    """One schema property as a panel entry: number -> float, integer -> int, enum or
    boolean -> choice, anything else -> free text (the daemon checks what the panel cannot).

    The slash command is the name with dashes (``pitch_hz`` -> ``/pitch-hz``).
    """
    label = name.replace("_", "-")
    about = str(prop.get("description") or name).rstrip(".")
    about = about[:1].lower() + about[1:]
    default = prop.get("default")
    kind = prop.get("type")
    if isinstance(kind, list):  # ["number", "null"]: the panel always holds a value
        kind = next((k for k in kind if k != "null"), None)
    members: list[Any] | None = prop.get("enum")
    if members is None and kind == "boolean":
        members = [False, True]
    if members is not None:
        return ParamSpec(name, label, "choice", about, option=True, default=default,
                         choices=tuple(_as_typed(v) for v in members), values=tuple(members))
    if kind in ("number", "integer"):
        low = float(prop.get("minimum", -math.inf))
        high = float(prop.get("maximum", math.inf))
        integer = kind == "integer"
        return ParamSpec(name, label, "int" if integer else "float", about, low, high,
                         _step(prop, low, high, integer), option=True, default=default)
    return ParamSpec(name, label, "text", about, option=True, default=default)


def _as_typed(value: Any) -> str:
    """An enum member as a user types it: strings bare, the rest as JSON (``true``, ``3``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _step(prop: Mapping[str, Any], low: float, high: float, integer: bool) -> float:
    """The panel's increment: the schema's ``multipleOf``, else about a twentieth of the range
    rounded down to 1, 2 or 5 times a power of ten (temperature 0..10 steps by 0.5, top-p
    0..1 by 0.05): fine enough to tune, few enough presses to cross the range."""
    multiple = prop.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0:
        return float(multiple)
    step = 1.0
    if math.isfinite(high - low) and high > low:
        raw = (high - low) / 20
        power = 10.0 ** math.floor(math.log10(raw))
        step = next(round(m * power, 12) for m in (5, 2, 1)
                    if m * power <= raw * (1 + 1e-9))
    return float(max(1, round(step))) if integer else step


#: The panel before the daemon has said anything: the common parameters and MusicGen's.
DEFAULT_SPECS: tuple[ParamSpec, ...] = (
    *LEADING_SPECS, *family_specs(FALLBACK_PARAMS), *TRAILING_SPECS)


def spec_for(name_or_label: str, specs: Iterable[ParamSpec] = DEFAULT_SPECS) -> ParamSpec:
    """The spec named ``name_or_label`` (``top_k`` or ``top-k``) among ``specs`` (the panel
    before the daemon has spoken, by default); KeyError when unknown."""
    for spec in specs:
        if name_or_label in (spec.name, spec.label):
            return spec
    raise KeyError(name_or_label)


def range_text(spec: ParamSpec) -> str:
    """``between 0 and 10`` / ``at least 0`` / ``at most 1`` / empty, as the bounds allow."""
    low, high = math.isfinite(spec.minimum), math.isfinite(spec.maximum)
    if low and high:
        return f"between {spec.minimum:g} and {spec.maximum:g}"
    if low:
        return f"at least {spec.minimum:g}"
    return f"at most {spec.maximum:g}" if high else ""


def valid_value(spec: ParamSpec, value: Any) -> bool:
    """Whether ``value`` (kept from another family, or a preset's) fits ``spec``."""
    if spec.kind == "choice":
        return any(value == v and type(value) is type(v)
                   for v in (spec.values or spec.choices))
    if spec.kind == "text":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if spec.kind == "int" and not isinstance(value, int):
        return False
    return spec.minimum <= value <= spec.maximum


def parse_duration(text: str) -> float:
    """``10``, ``10s``, ``1:30``, ``2m`` → seconds; ValueError otherwise."""
    t = text.strip().lower()
    if m := re.fullmatch(r"(\d+):([0-5]?\d(?:\.\d+)?)", t):
        return int(m[1]) * 60 + float(m[2])
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min)?", t):
        return float(m[1]) * (60 if m[2] in ("m", "min") else 1)
    raise ValueError(f"duration: {text!r} is not a duration (try 10, 10s, 1:30 or 2m)")


def parse_value(spec: ParamSpec, text: str) -> Any:
    """Parse ``text`` for ``spec``; ValueError naming the parameter and what it accepts."""
    t = text.strip()
    if spec.kind == "model":
        return t or None
    if spec.kind == "preset":  # which names exist is the daemon's to say (set_param checks)
        return None if t in ("", "none") else t
    if spec.kind == "choice":
        if t not in spec.choices:
            raise ValueError(f"{spec.label}: {t!r} is not one of {', '.join(spec.choices)}")
        return spec.values[spec.choices.index(t)] if spec.values else t
    if spec.kind == "text":
        return t
    if spec.kind == "seed":
        if t in ("random", "unlock", "off"):
            return "random"
        try:
            value = int(t)
        except ValueError:
            raise ValueError(f"seed: expected a whole number or 'random', got {t!r}") from None
        if not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed: must be between 0 and {SEED_MAX}")
        return value
    number: float
    try:
        number = parse_duration(t) if spec.name == "duration" else float(t)
    except ValueError:
        what = ("seconds (10, 10s, 1:30 or 2m)" if spec.name == "duration"
                else "a whole number" if spec.kind == "int" else "a number")
        bounds = range_text(spec)
        raise ValueError(f"{spec.label}: expected {what}{' ' + bounds if bounds else ''}, "
                         f"got {t!r}") from None
    if spec.kind == "int":
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{spec.label}: expected a whole number, got {t!r}")
        number = int(number)
    if not (spec.minimum <= number <= spec.maximum) or math.isnan(number):
        raise ValueError(f"{spec.label}: must be {range_text(spec)}, got {t}")
    return number


def format_value(params: Params, spec: ParamSpec, last_seed: int | None = None) -> str:
    """How the panel shows one parameter."""
    if spec.option:
        value = params.options.get(spec.name)
        if value is None:
            return "(daemon default)"
        return _as_typed(value) if spec.kind == "choice" else (
            f"{value:g}" if isinstance(value, float) else str(value))
    value = getattr(params, spec.name)
    if spec.name == "model":
        return short_model(value) if value else "(daemon default)"
    if spec.name == "seed":
        if params.seed_locked:
            return f"{params.seed} (locked)"
        return "random" + (f" (last {last_seed})" if last_seed is not None else "")
    if spec.name == "duration":
        return f"{value:g}s"
    if spec.name == "preset":
        return value or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_model(model: str) -> str:
    """A model as the user thinks of it: a catalogue name or the last part of a path/repo; a
    hosted one whole (``replicate:meta/musicgen``: its owner is part of its name), a pinned
    version cut to its first 8 characters."""
    hosted = split(model)
    if hosted is not None:
        provider, rest = hosted
        name, sep, version = rest.partition(":")
        return f"{provider}:{name}{sep}{version[:8]}{'…' if len(version) > 8 else ''}"
    return model.rstrip("/").rsplit("/", 1)[-1] if "/" in model else model


@dataclass(frozen=True)
class Take:
    """One audio file a done job wrote. ``loudness`` is LUFS when the record carries it."""

    job_id: str
    index: int
    path: str
    duration_s: float
    prompt: str
    seed: int | None
    model: str
    created_at: float
    loudness: float | None = None
    rating: str | None = None
    tags: tuple[str, ...] = ()
    #: The words it sang (its recipe's ``params.lyrics``), None when it has none.
    lyrics: str | None = None
    #: The model family that made it (None: not recorded; jobs before the registry were
    #: MusicGen's).
    backend: str | None = None
    #: The hosted provider that made it (None: made here).
    provider: str | None = None
    #: What the job that made it cost at its provider (all its takes together).
    cost: Cost | None = None
    #: How many takes the job made (its cost is for them all).
    job_takes: int = 1
    #: The measured tempo and key ("Am"), when the history has them.
    bpm: float | None = None
    musical_key: str | None = None
    #: The stem the file holds (``drums``) when a stems job wrote it; None for a take.
    stem: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.index)

    @property
    def label(self) -> str:
        """How a line names it: ``take 2``, or a stem's name (``drums``)."""
        return self.stem or f"take {self.index}"

    @property
    def name(self) -> str:
        return Path(self.path).name


#: A job's ``params.kind`` when it separates a take into stems (``takes.stems``) instead of
#: making one (a generation's params have no ``kind``).
STEMS_KIND = "stems"


def is_stems_job(job: Mapping[str, Any]) -> bool:
    """Whether ``job`` separates a take into stems: its ``params.prompt`` is then the source
    take's, ``params.take`` the source's id, and its outputs are stem files."""
    return (job.get("params") or {}).get("kind") == STEMS_KIND


def stem_names(job: Mapping[str, Any]) -> list[str]:
    """The stem each output of a stems job holds, in order (empty for any other job): its
    recipe's ``stems``, else the file name's last ``-`` part (``take-1-drums.flac``: drums),
    since the recipe is only written once the job is done."""
    if not is_stems_job(job):
        return []
    named = (job.get("recipe") or {}).get("stems") or []
    out: list[str] = []
    for i, path in enumerate(job.get("outputs") or []):
        name = named[i] if i < len(named) else None
        out.append(name if isinstance(name, str) and name
                   else Path(path).stem.rsplit("-", 1)[-1])
    return out


def job_activity(job: Mapping[str, Any]) -> str:
    """What a running job is doing, in one word: ``separating`` or ``generating``."""
    return "separating" if is_stems_job(job) else "generating"


def job_prompt(job: Mapping[str, Any]) -> str:
    """The prompt a job shows under: its own, or for a stems job ``stems of: `` the source
    take's."""
    prompt = str((job.get("params") or {}).get("prompt", ""))
    return f"stems of: {prompt}" if is_stems_job(job) else prompt


def _said(tables: Iterable[Mapping[str, Any]], *names: str) -> Any:
    """The first value that is not None under any of ``names`` in ``tables``, in order."""
    return next((t[n] for t in tables for n in names if t.get(n) is not None), None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def takes_of(job: dict[str, Any],
             records: Mapping[str, Mapping[str, Any]] | None = None) -> list[Take]:
    """The takes of one job record (empty unless it wrote files), each with what
    ``records`` (``takes.show`` answers by path) add: the measured tempo and key, and the
    loudness when the job's record does not say it.

    This is the one place that knows how a record spells its takes: today ``outputs`` (paths)
    plus ``params``; later the history records (``takes`` with loudness, rating and tags).
    A stems job's outputs are its stems, each named by :func:`stem_names`.
    """
    known = records or {}
    stems = stem_names(job)
    params = job.get("params") or {}
    extra: list[dict[str, Any]] = [t for t in job.get("takes") or [] if isinstance(t, dict)]
    # The recipe is what the take was made from; the job's params say the same before it
    # is written (and for a daemon that records no recipe).
    recipe = job.get("recipe") or {}
    made = recipe.get("params") or params
    lyrics = made.get("lyrics") if isinstance(made.get("lyrics"), str) else None
    backend = params.get("backend") or recipe.get("backend")
    provider = hosted_provider(str(job.get("model") or ""), recipe)
    cost = Cost.from_record(recipe.get("cost")) or Cost.from_record(job.get("cost"))
    outputs = job.get("outputs") or []
    out: list[Take] = []
    for i, path in enumerate(outputs):
        more = extra[i] if i < len(extra) else {}
        said = (more, known.get(path) or {})  # the job's own word first, then the history's
        loud = _said(said, "loudness_lufs", "loudness", "loudness_after_lufs")
        key = _said(said, "key")
        out.append(Take(
            job_id=job["id"], index=i + 1, path=path,
            duration_s=float(more.get("duration_s") or params.get("duration") or 0.0),
            prompt=str(params.get("prompt", "")), seed=params.get("seed"),
            model=str(job.get("model", "")), created_at=float(job.get("created_at") or 0.0),
            loudness=float(loud) if isinstance(loud, int | float) else None,
            rating=more.get("rating"), tags=tuple(more.get("tags") or ()),
            lyrics=lyrics or None, backend=backend if isinstance(backend, str) else None,
            provider=provider, cost=cost, job_takes=max(1, len(outputs)),
            bpm=_number(_said(said, "bpm")),
            musical_key=key if isinstance(key, str) and key else None,
            stem=stems[i] if i < len(stems) else None))
    return out


@dataclass
class Message:
    text: str
    level: Level
    expires_at: float


@dataclass
class ParamHistory:
    """Undo and redo stacks of :class:`Params` snapshots."""

    undo: list[Params] = field(default_factory=list)
    redo: list[Params] = field(default_factory=list)


@dataclass
class LibraryState:
    """The library view: the query as typed, and the takes the daemon answered with."""

    query: str = ""
    takes: list[Take] = field(default_factory=list)
    loading: bool = False
    note: str = ""
    selected: int = 0


@dataclass
class StudioState:
    """What one studio window shows. See the module docstring for what is whose."""

    socket_path: str = ""
    connection: Connection = "connecting"
    connection_note: str = ""
    ever_connected: bool = False
    status: dict[str, Any] | None = None
    loaded_models: list[dict[str, Any]] = field(default_factory=list)
    model_names: list[str] = field(default_factory=list)
    #: Each installed model's family, as ``models.list`` says (None: not recognised).
    model_families: dict[str, str | None] = field(default_factory=dict)
    #: Each installed model's own defaults where they differ from its family's schema
    #: (``models.list``: a distilled Stable Audio 3 takes 8 steps, not 100).
    model_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The hosted models ``models.list`` suggests, by name (they are in ``model_names`` too).
    hosted: dict[str, HostedModel] = field(default_factory=dict)
    #: Models that separate takes into stems (``/stems``), kept out of ``model_names``: the
    #: catalogue's separators, then installed models of their families.
    separator_names: list[str] = field(default_factory=list)
    #: What each running hosted job's provider last said of it (``job.remote``: its own
    #: word, such as ``processing``), by job id.
    remote_status: dict[str, str] = field(default_factory=dict)
    #: The daemon's families by name (``backends.list``); None until it answers, and for
    #: a daemon older than the registry (the panel then offers :data:`FALLBACK_PARAMS`).
    backends: dict[str, dict[str, Any]] | None = None
    #: The family whose parameters the panel shows: the chosen model's (or the daemon's
    #: default model's) when known; it stays as it was for a model the daemon has not named
    #: (a path typed in), since the daemon refuses what that family does not take anyway.
    family: str = FALLBACK_FAMILY
    #: The daemon's presets by name, in its order (``DaemonLink`` loads them).
    presets: dict[str, Preset] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: What the daemon's history (``takes.show``) says of the timeline's takes, by path: the
    #: measured tempo and key, which a job record does not carry.
    take_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The paths asked about (answered or not), so each is asked once.
    take_lookups: set[str] = field(default_factory=set)
    params: Params = field(default_factory=Params)
    param_history: ParamHistory = field(default_factory=ParamHistory)
    selected_take: tuple[str, int] | None = None
    selected_param: int = 0
    view: View = "timeline"
    panel_forced: bool | None = None
    palette_open: bool = False
    palette_selected: int = 0
    help_open: bool = False
    message: Message | None = None
    #: The latest messages, oldest first (for a message log; also handy in test failures).
    message_log: list[Message] = field(default_factory=list)
    library: LibraryState = field(default_factory=LibraryState)
    #: The lyrics editor's words, sent with the next prompt when the model sings. They stay
    #: after a prompt is sent (a song is tried again with the same words), unlike the prompt.
    lyrics: str = ""
    lyrics_open: bool = False
    recall_index: int | None = None
    recall_draft: str = ""
    quit_armed_at: float = 0.0
    clock: Callable[[], float] = time.monotonic
    #: The studio's environment: a hosted provider's key in it (``$REPLICATE_API_TOKEN``) is
    #: sent with that provider's jobs, as timbrectl sends it. Never in a repr (keys).
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False,
                                       compare=False)

    # --- messages -------------------------------------------------------------------------

    def say(self, text: str, level: Level = "info", seconds: float | None = None) -> None:
        """Show ``text`` in the message line (errors stay longer)."""
        ttl = seconds if seconds is not None else (12.0 if level == "error" else 6.0)
        self.message = Message(text, level, self.clock() + ttl)
        self.message_log.append(self.message)
        del self.message_log[:-50]

    def current_message(self) -> Message | None:
        if self.message is not None and self.message.expires_at < self.clock():
            self.message = None
        return self.message

    # --- daemon data ----------------------------------------------------------------------

    def load_jobs(self, jobs: Iterable[dict[str, Any]]) -> None:
        """Replace every job with a fresh listing (after connecting or missing events)."""
        self.jobs = {}
        self.progress = {}
        self.remote_status = {}
        for job in sorted(jobs, key=lambda j: j["created_at"]):
            self.jobs[job["id"]] = job
            if job["state"] in ACTIVE_STATES and job.get("progress"):
                self.progress[job["id"]] = {"job_id": job["id"], **job["progress"],
                                            "eta_s": None}
        self._trim()
        listed = {path for job in self.jobs.values() for path in job.get("outputs") or ()}
        self.take_records = {p: r for p, r in self.take_records.items() if p in listed}
        self.take_lookups &= listed
        if self.selected_take is not None and self.take(self.selected_take) is None:
            self.selected_take = None

    def set_status(self, status: dict[str, Any]) -> None:
        self.status = status
        self.loaded_models = list(status.get("models") or [])
        self.follow_family()

    def set_models(self, installed: Iterable[Mapping[str, Any]],
                   catalogue: Iterable[str | Mapping[str, Any]],
                   hosted: Iterable[Mapping[str, Any]] = ()) -> None:
        """Take a ``models.list`` answer: the names to offer (installed, then the catalogue's,
        then the hosted ones) and each one's family (a hosted model's is its provider's).

        Catalogue entries are names, or records whose ``task`` says which of them (and of
        the installed models, by family) separate stems: those go to ``separator_names``,
        never to the models a prompt can be sent to."""
        listed = [{"name": c} if isinstance(c, str) else c for c in catalogue]
        separating = {c.get("backend") for c in listed if c.get("task") == "separate"}
        entries = [m for m in installed if m.get("backend") not in separating]
        apart = [m["name"] for m in installed if m.get("backend") in separating]
        self.separator_names = list(dict.fromkeys(
            [c["name"] for c in listed if c.get("task") == "separate"] + apart))
        names = [m["name"] for m in entries]
        self.hosted = {h.name: h for h in map(HostedModel.from_listing, hosted)}
        local = names + [c["name"] for c in listed
                         if c["name"] not in names and c.get("task") != "separate"]
        self.model_names = local + [n for n in self.hosted if n not in local]
        self.model_families = {m["name"]: m.get("backend") for m in entries}
        self.model_families.update({h.name: h.provider for h in self.hosted.values()})
        self.model_defaults = {m["name"]: dict(m.get("defaults") or {}) for m in entries}
        self.follow_family()

    def hosted_model(self, model: str | None) -> HostedModel | None:
        """``model`` (None: the daemon's default) as a hosted model, None for a local one.

        One the daemon did not list (``replicate:meta/musicgen:VERSION``) borrows the listed
        entry it pins (its price), else its provider's key state from any listed model of
        the provider (keys are per provider).
        """
        if model is None:
            model = ((self.status or {}).get("default_model") or {}).get("name")
        named = split(model) if isinstance(model, str) else None
        if named is None or model is None:
            return None
        found = self.hosted.get(model)
        if found is not None:
            return found
        provider, rest = named
        pinned = self.hosted.get(f"{provider}:{rest.partition(':')[0]}")
        if pinned is not None:
            return replace(pinned, name=model)
        sibling = next((h for h in self.hosted.values() if h.provider == provider), None)
        return HostedModel(model, provider, key=sibling.key if sibling else None,
                           needs_key=sibling.needs_key if sibling else False)

    def chosen_hosted(self) -> HostedModel | None:
        """The panel's model as a hosted model (the default model's when none is chosen)."""
        return self.hosted_model(self.params.model)

    def set_backends(self, backends: Iterable[Mapping[str, Any]] | None) -> None:
        """Take a ``backends.list`` answer (None: this daemon has none to give)."""
        self.backends = None if backends is None else {b["name"]: dict(b) for b in backends}
        self.follow_family()

    # --- the model family and its parameters ----------------------------------------------

    def family_of(self, model: str | None) -> str | None:
        """The family of ``model`` (None: the daemon's default), None when not known here."""
        if model is None:
            default = (self.status or {}).get("default_model") or {}
            family = default.get("backend")
        else:
            family = self.model_families.get(model)
            named = split(model)
            if family is None and named is not None:  # provider:model, listed or not
                family = named[0]
        return family if isinstance(family, str) else None

    def family_params(self, family: str | None = None) -> ParamSchema:
        """The schema properties of ``family`` (the panel's by default); MusicGen's until the
        daemon lists its families, none for a family it does not list."""
        name = self.family if family is None else family
        if self.backends is None:
            return FALLBACK_PARAMS if name == FALLBACK_FAMILY else {}
        backend = self.backends.get(name) or {}
        props = (backend.get("params") or {}).get("properties")
        return props if isinstance(props, Mapping) else {}

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """The panel's rows: the common parameters around the family's own."""
        return (*LEADING_SPECS, *family_specs(self.family_params()), *TRAILING_SPECS)

    def spec_for(self, name_or_label: str) -> ParamSpec:
        """The panel's spec ``name_or_label``; ValueError naming what the model takes."""
        specs = self.param_specs()
        try:
            return spec_for(name_or_label, specs)
        except KeyError:
            raise ValueError(self.not_taken(name_or_label)) from None

    def family_features(self, family: str | None = None) -> frozenset[str]:
        """What ``family`` (the panel's by default) can do, as ``backends.list`` says (a
        daemon older than it drives MusicGen alone)."""
        name = self.family if family is None else family
        if self.backends is None:
            return FALLBACK_FEATURES if name == FALLBACK_FAMILY else frozenset()
        caps = (self.backends.get(name) or {}).get("capabilities") or {}
        return frozenset(str(f) for f in caps.get("features") or ())

    def families_that(self, feature: str) -> list[str]:
        """The daemon's families with ``feature``, in its order."""
        return [name for name in self.backends or {} if feature in self.family_features(name)]

    def sings(self) -> bool:
        """Whether the chosen model's family takes lyrics (the daemon refuses them from
        the others, naming ``lyrics``)."""
        return "lyrics" in self.family_features()

    def model_label(self) -> str:
        """The chosen model with its family, for messages: ``tiny (musicgen)``."""
        model = short_model(self.params.model) if self.params.model else "the default model"
        return f"{model} ({self.family})"

    def lyrics_note(self) -> str | None:
        """The one line the lyrics editor shows when the chosen model cannot sing (its
        words are then not sent); None when it can."""
        if self.sings():
            return None
        singers = self.families_that("lyrics")
        if not singers:
            return (f"{self.model_label()} does not sing lyrics, and this timbred has no "
                    "model that does")
        return f"{self.model_label()} does not sing lyrics; pick {_a(singers)} model"

    def tracks(self, family: str | None = None) -> tuple[str, ...]:
        """The tracks ``family`` extracts and adds: its schema's ``track`` choices, else
        ACE-Step's (so /extract completes before the daemon has listed its families)."""
        members = (self.family_params(family).get("track") or {}).get("enum") or ()
        named = tuple(str(m) for m in members if m)
        return named or TRACKS

    def request(self, prompt: str) -> dict[str, Any]:
        """The ``generate.submit`` params for ``prompt``: the panel's, and the editor's
        lyrics when there are any and the model sings them."""
        # A daemon that lists no families predates options: it takes MusicGen's four flat.
        out = self.params.submit_params(prompt, flat=self.backends is None)
        if self.lyrics.strip() and self.sings():
            out["lyrics"] = self.lyrics
        return out

    def not_taken(self, name_or_label: str) -> str:
        """The line for a parameter the current model's family does not take."""
        model = short_model(self.params.model) if self.params.model else "the default model"
        own = [f"/{s.label}" for s in family_specs(self.family_params())]
        return (f"{name_or_label}: {model} ({self.family}) does not take it; it takes "
                f"{', '.join(own) or 'no parameters of its own'}")

    def follow_family(self) -> None:
        """Show the chosen model's family, its values conformed (not an undo step: the
        daemon told us something, the user changed nothing)."""
        self.family = self.family_of(self.params.model) or self.family
        self.params = self.conformed(self.params)

    def conformed(self, params: Params, family: str | None = None, *,
                  previous: str | None = None) -> Params:
        """``params`` with the options ``family`` (the panel's) takes: a value kept where
        the family has a parameter of that name that it fits, else the model's default.

        A value still at a default (the schema's, or the ``previous`` model's own) was not
        chosen, so it follows the model's own default: switching to a distilled model moves
        steps 100 to its 8, while a step count typed in stays.
        """
        schema = self.family_params(family)
        # The previous model's defaults: its family's schema (the panel's family until the
        # caller moves it), then its own.
        before = {s.name: s for s in family_specs(self.family_params(
            self.family_of(previous) or self.family))}
        options: dict[str, ParamValue] = {}
        for spec in family_specs(schema):
            value = params.options.get(spec.name)
            default = self.model_default(params.model, spec)
            old = before.get(spec.name)
            if value is not None and value in (
                    spec.default, None if old is None else self.model_default(previous, old)):
                value = default
            if value is not None and valid_value(spec, value):
                options[spec.name] = value
            elif default is not None:
                options[spec.name] = default
        return params if options == dict(params.options) else replace(params, options=options)

    def model_default(self, model: str | None, spec: ParamSpec) -> ParamValue | None:
        """``spec``'s default for ``model`` (None: the daemon's default model): its own, as
        ``models.list`` gave it, else the family schema's."""
        if model is None:
            model = ((self.status or {}).get("default_model") or {}).get("name")
        value = self.model_defaults.get(model or "", {}).get(spec.name, spec.default)
        return value if isinstance(value, (int, float, str, bool)) else spec.default

    def job_options(self, job_params: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The family parameters a job's params hold, as (label, value), in its schema's
        order (the job records its ``backend``; jobs from before the registry were
        MusicGen's)."""
        family = str(job_params.get("backend") or FALLBACK_FAMILY)
        return [(name.replace("_", "-"), job_params[name])
                for name in self.family_params(family) if name in job_params]

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one daemon event; True when something visible changed."""
        kind = event.get("type")
        data = event.get("data") or {}
        if kind == "job.state":
            return self.upsert_job(data["job"])
        if kind == "job.progress":
            job = self.jobs.get(data["job_id"])
            if job is not None and job["state"] not in ACTIVE_STATES:
                return False  # a late progress event for a finished job
            self.progress[data["job_id"]] = data
            return True
        if kind == "job.remote":
            job = self.jobs.get(data["job_id"])
            if job is not None and job["state"] not in ACTIVE_STATES:
                return False
            self.remote_status[data["job_id"]] = str(data.get("status") or "")
            return True
        if kind == "model.loaded":
            self.loaded_models = [m for m in self.loaded_models if m["model"] != data["model"]]
            self.loaded_models.append({**data, "in_use": False})
            return True
        if kind == "model.unloaded":
            self.loaded_models = [m for m in self.loaded_models if m["model"] != data["model"]]
            return True
        if kind == "daemon.stopping":
            self.say(f"timbred is stopping ({data.get('reason', 'no reason given')})")
            return True
        if kind == "worker.crashed":
            self.say(f"the inference worker died: {data.get('reason')}", "error")
            return True
        return False

    def upsert_job(self, job: dict[str, Any]) -> bool:
        """Insert or update a job, never moving it backwards (events may trail a reload)."""
        old = self.jobs.get(job["id"])
        if old is not None and JOB_RANK[job["state"]] < JOB_RANK[old["state"]]:
            return False
        was_following = self.following_newest()
        self.jobs[job["id"]] = job
        if job["state"] not in ACTIVE_STATES:
            self.progress.pop(job["id"], None)
            self.remote_status.pop(job["id"], None)
        if job["state"] == "done" and (old is None or old["state"] != "done") and was_following:
            takes = self.job_takes(job)
            if takes:
                self.selected_take = takes[0].key
        self._trim()
        return True

    def following_newest(self) -> bool:
        """True when the selection is empty or on the newest take (so new takes take it, and
        the timeline shows its newest rows)."""
        takes = self.takes()
        return self.selected_take is None or (bool(takes) and self.selected_take == takes[-1].key)

    def follow_newest(self) -> None:
        """Select the newest take, so the timeline follows what comes next (a prompt sent)."""
        takes = self.takes()
        self.selected_take = takes[-1].key if takes else None

    def _trim(self) -> None:
        while len(self.jobs) > HISTORY_LIMIT:
            oldest = next(iter(self.jobs))
            for path in self.jobs.pop(oldest).get("outputs") or ():
                self.take_records.pop(path, None)
                self.take_lookups.discard(path)
            self.progress.pop(oldest, None)
            self.remote_status.pop(oldest, None)

    # --- what the history knows of the timeline's takes -----------------------------------

    def claim_take_lookups(self) -> list[str]:
        """The done takes not asked about yet (``takes.show``), newest first (the ones in
        sight fill in first), each marked asked. A stems job's files are not takes in the
        history, so they are not asked about."""
        out: list[str] = []
        for job in reversed(self.timeline()):
            if job["state"] != "done" or is_stems_job(job):
                continue
            for path in job.get("outputs") or ():
                if path not in self.take_lookups:
                    self.take_lookups.add(path)
                    out.append(path)
        return out

    def unclaim_take_lookups(self, paths: Iterable[str]) -> None:
        """Ask about ``paths`` again (their lookups were cut short by a lost connection)."""
        self.take_lookups.difference_update(paths)

    def learn_take(self, path: str, record: Mapping[str, Any]) -> bool:
        """Keep ``takes.show``'s ``record`` of the take at ``path``; False when no job on
        the timeline has it any more."""
        if path not in self.take_lookups:
            return False
        self.take_records[path] = dict(record)
        return True

    def job_takes(self, job: dict[str, Any]) -> list[Take]:
        """The takes of ``job``, with what the history said of them."""
        return takes_of(job, self.take_records)

    # --- derived views --------------------------------------------------------------------

    def timeline(self) -> list[dict[str, Any]]:
        """Jobs oldest first (the newest prompt sits just above the composer)."""
        return sorted(self.jobs.values(), key=lambda j: j["created_at"])

    def takes(self) -> list[Take]:
        return [t for job in self.timeline() for t in self.job_takes(job)]

    def take(self, key: tuple[str, int] | None) -> Take | None:
        if key is None:
            return None
        job = self.jobs.get(key[0])
        if job is None:
            for t in self.library.takes:
                if t.key == key:
                    return t
            return None
        for t in self.job_takes(job):
            if t.index == key[1]:
                return t
        return None

    def selected(self) -> Take | None:
        return self.take(self.selected_take)

    def active_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.timeline() if j["state"] in ACTIVE_STATES]

    def queue_depth(self) -> tuple[int, int]:
        """(running, queued) as this window knows them."""
        active = self.active_jobs()
        queued = sum(1 for j in active if j["state"] == "queued")
        return len(active) - queued, queued

    def last_seed(self) -> int | None:
        """The seed of the newest take made (a stems job's seed is its separator's)."""
        for job in reversed(self.timeline()):
            if is_stems_job(job):
                continue
            seed = (job.get("params") or {}).get("seed")
            if isinstance(seed, int):
                return seed
        return None

    def prompt_history(self) -> list[str]:
        """Distinct prompts, oldest first, as the daemon recorded them (shared by all windows)."""
        seen: dict[str, None] = {}
        for job in self.timeline():
            if is_stems_job(job):  # the source take's prompt, not one sent again
                continue
            prompt = (job.get("params") or {}).get("prompt")
            if isinstance(prompt, str) and prompt:
                seen.pop(prompt, None)
                seen[prompt] = None
        return list(seen)

    def device_text(self) -> str:
        if self.status is None:
            return ""
        dev = self.status.get("device") or {}
        active = dev.get("active")
        if active:
            return f"{active['type']} {active['dtype']}"
        if self.loaded_models:
            m = self.loaded_models[-1]
            return f"{m.get('device', '?')} {m.get('dtype', '')}".strip()
        return f"{dev.get('requested', '?')} (idle)"

    def executor_text(self) -> str:
        """Where jobs run, when it is more than the one local worker: ``ray 2 nodes · 1/2
        busy``, ``2 workers · 0/2 busy``, or that the cluster could not be reached."""
        ex = (self.status or {}).get("executor") or {}
        if ex.get("error"):
            return "cluster unreachable: jobs fail"
        workers = [w for w in ex.get("workers") or [] if not w.get("down")]
        busy = sum(1 for w in workers if w.get("jobs"))
        if ex.get("kind") == "ray":
            nodes = sum(1 for n in ex.get("nodes") or [] if n.get("alive"))
            return f"ray {nodes} node{'s' * (nodes != 1)} · {busy}/{len(workers)} busy"
        if ex.get("fallback"):
            return "cluster unreachable: running here"
        if len(workers) > 1:
            return f"{len(workers)} workers · {busy}/{len(workers)} busy"
        return ""

    # --- selection ------------------------------------------------------------------------

    def move_take(self, delta: int) -> Take | None:
        """Select the previous (-1) or next (+1) take in the current view."""
        takes = self.library.takes if self.view == "library" else self.takes()
        if not takes:
            return None
        keys = [t.key for t in takes]
        if self.selected_take in keys:
            i = max(0, min(len(takes) - 1, keys.index(self.selected_take) + delta))
        else:
            i = len(takes) - 1 if delta < 0 else 0
        self.selected_take = keys[i]
        if self.view == "library":
            self.library.selected = i
        return takes[i]

    # --- parameters (undoable) ------------------------------------------------------------

    def set_params(self, new: Params) -> bool:
        """Replace the parameters, recording the old ones for undo; False if unchanged."""
        if new == self.params:
            return False
        self.param_history.undo.append(self.params)
        del self.param_history.undo[:-100]
        self.param_history.redo.clear()
        self.params = new
        return True

    def set_param(self, name: str, value: Any) -> str:
        """Set one parameter (validated values); return a line describing the change."""
        spec = self.spec_for(name)
        p = self.params
        if spec.option:
            new = replace(p, options={**p.options, spec.name: value})
        elif spec.name == "model":
            # Another family's panel: its parameters, the values it shares with this one kept.
            new = replace(p, model=value)
            family = self.family_of(value) or self.family
            new = self.conformed(new, family, previous=p.model)
            self.family = family
        elif spec.name == "seed":
            new = (replace(p, seed_locked=False) if value == "random"
                   else replace(p, seed=int(value), seed_locked=True))
        elif spec.name == "preset":
            new = replace(p, preset=None) if value is None else self.apply_preset(
                p, self.preset_named(value))
        elif spec.name == "format":
            new = replace(p, format=value, format_chosen=True)
        else:
            # A preset stays chosen: a changed value overrides its own, and its prompt
            # wrapping and export settings still apply.
            new = replace(p, **{spec.name: value})
        self.set_params(new)
        line = f"{spec.label}: {format_value(self.params, spec, self.last_seed())}"
        hosted = self.chosen_hosted() if spec.name == "model" else None
        if hosted is not None:
            line += f" — {hosted.about(self.environ)}"
        return line

    def apply_preset(self, params: Params, preset: Preset) -> Params:
        """``params`` with ``preset``'s values in the panel and its name chosen: its model
        first (which may change the family), then the common values, then those of the
        family's own parameters it sets (flat or in an ``options`` table)."""
        values = {k: PRESET_FIELDS[k](v) for k, v in preset.params.items()
                  if k in PRESET_FIELDS}
        fmt = preset.export.get("format")
        if isinstance(fmt, str) and fmt in FORMATS:  # the preset brings it: shown, not sent
            values.update(format=fmt, format_chosen=False)
        new = replace(params, **values, preset=preset.name)
        self.family = self.family_of(new.model) or self.family
        nested = preset.params.get("options")
        given = {**preset.params, **(nested if isinstance(nested, Mapping) else {})}
        options = dict(self.conformed(new).options)
        for spec in family_specs(self.family_params()):
            if spec.name in given:
                value = _coerced(spec, given[spec.name])
                if valid_value(spec, value):  # else the daemon says what is wrong with it
                    options[spec.name] = value
        return replace(new, options=options)

    def preset_named(self, name: str) -> Preset:
        """The daemon's preset ``name``; ValueError naming the choices, or its problem."""
        preset = self.presets.get(name)
        if preset is None:
            usable = [n for n, p in self.presets.items() if p.problem is None]
            raise ValueError(f"preset: {name!r} is not one of the daemon's presets "
                             f"({', '.join(usable) or 'none loaded yet'})")
        if preset.problem is not None:
            raise ValueError(f"preset: {name} cannot be used: {preset.problem}")
        return preset

    def step_param(self, name: str, direction: int) -> str:
        """Step a parameter by its increment (or to the next choice) in ``direction``."""
        spec = self.spec_for(name)
        p = self.params
        if spec.name == "seed":
            return self.set_param("seed", max(0, min(SEED_MAX, p.seed + direction)))
        if spec.kind == "text":
            return f"{spec.label}: type a value (/{spec.label} TEXT)"
        if spec.kind in ("choice", "model", "preset"):
            choices: list[Any] = (
                list(spec.choices) if spec.kind == "choice"
                else [None, *self.model_names] if spec.kind == "model"
                else [None, *(n for n, pr in self.presets.items() if pr.problem is None)])
            if spec.option and spec.values:
                choices = list(spec.values)
            current = p.options.get(spec.name) if spec.option else getattr(p, spec.name)
            i = choices.index(current) if current in choices else 0
            return self.set_param(spec.name, choices[(i + direction) % len(choices)])
        current = p.options.get(spec.name) if spec.option else getattr(p, spec.name)
        if not isinstance(current, int | float):  # no default: start from the bottom
            current = spec.minimum if math.isfinite(spec.minimum) else 0
        value = current + direction * spec.step
        value = max(spec.minimum, min(spec.maximum, value))
        value = round(value) if spec.kind == "int" else round(value, 4)
        return self.set_param(spec.name, value)

    def toggle_seed_lock(self) -> str:
        """Lock the seed (to that of the latest take, if any) or unlock it."""
        p = self.params
        if p.seed_locked:
            self.set_params(replace(p, seed_locked=False))
            return "seed: random for each take"
        seed = self.last_seed()
        self.set_params(replace(p, seed=seed if seed is not None else p.seed, seed_locked=True))
        return f"seed: locked to {self.params.seed}"

    def new_seed(self, rng: random.Random | None = None) -> str:
        seed = (rng or random.SystemRandom()).randrange(0, 2**31)
        self.set_params(replace(self.params, seed=seed, seed_locked=True))
        return f"seed: locked to {seed}"

    def undo(self) -> bool:
        if not self.param_history.undo:
            return False
        self.param_history.redo.append(self.params)
        self.params = self.param_history.undo.pop()
        self.follow_family()  # the restored model's family (it may be told us since)
        return True

    def redo(self) -> bool:
        if not self.param_history.redo:
            return False
        self.param_history.undo.append(self.params)
        self.params = self.param_history.redo.pop()
        self.follow_family()
        return True


def _a(families: list[str]) -> str:
    """``an ace-step`` / ``a musicgen or tone``: the families a model may come from."""
    names = " or ".join(families)
    return ("an " if names[:1] in ("a", "e", "i", "o", "u") else "a ") + names


def _coerced(spec: ParamSpec, value: Any) -> Any:
    """A preset's value as ``spec`` holds it (TOML writes ``top_k = 0.0`` as well as ``0``)."""
    if spec.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
