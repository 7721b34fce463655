"""The one generation request: what decides a take's audio, in one vocabulary.

A :class:`Request` is built once at the edge (``generate.submit``, a prompt file, a replayed
recipe; :meth:`timbred.queue.generation.Generation.resolve` applies presets and defaults),
stored with the job, sent to the executor, decoded by a backend and recorded in the take's
recipe, from which a replay rebuilds it. Its names are the wire's (``duration``, ``melody``,
``continuation``); a model family's own parameters (MusicGen's ``temperature``, ``top_k``,
``top_p``, ``guidance``; a diffusion model's steps) are in ``options`` under the names its
parameter schema gives them (:attr:`timbred.backends.BackendSpec.params`), checked at the edge
against that schema with its defaults filled in.

It imports nothing heavy (no numpy, no torch): the daemon, the worker and the studio share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from timbred.errors import InvalidParams

__all__ = ["COMMON", "DEFAULT_DURATION_S", "DEFAULT_STRENGTH", "DEFAULT_VARIATIONS",
           "MAX_LYRICS_CHARS", "MAX_SEED", "Request"]

#: A request's length when none is given, in seconds; the studio's panel starts there too.
DEFAULT_DURATION_S = 10.0
#: Takes per request when none is given.
DEFAULT_VARIATIONS = 1
#: Seeds are stored in SQLite INTEGER columns and fed to ``torch.manual_seed``: 2**63 - 1.
MAX_SEED = (1 << 63) - 1

#: Every family's fields; a family's own parameter may not take one of these names (its
#: value travels flat in a job's params beside them).
COMMON = frozenset({"prompt", "duration", "seed", "variations", "melody", "continuation",
                    "init", "strength", "repaint", "lyrics", "options"})
#: The longest lyrics a request takes, in characters (a ten-minute song's words fit many
#: times over; ACE-Step reads up to 2048 tokens of them).
MAX_LYRICS_CHARS = 8000
#: How far a variation moves from its ``init`` audio when no ``strength`` is given.
DEFAULT_STRENGTH = 0.6

# Recipes (and the batches inside them) written before this module spoke the wire's names
# used GenerationParams' own, which carried MusicGen's sampling as fields (every such recipe
# is MusicGen's): those names, and where each one lives now.
_V1_RENAMED = {"duration_s": "duration", "melody_path": "melody",
               "continuation_path": "continuation"}
_V1_OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
               "guidance_scale": "guidance"}


@dataclass(frozen=True)
class Request:
    """One generation request (see the module's docstring); validated when built, every
    problem an :class:`InvalidParams` naming the field.

    ``duration`` is the length of each take in seconds; with ``continuation`` it *includes*
    the continued audio, which the take starts with. ``variations`` takes are sampled in one
    pass from the same seed's stream. ``melody``, ``continuation`` and ``init`` are absolute
    paths.

    ``lyrics`` are words to sing (section tags such as ``[verse]`` on their own lines), for a
    family with the ``lyrics`` feature; ``None`` when there are none (an empty or
    whitespace-only text is stored as ``None``: it sings nothing either way).

    ``init`` is audio the take is made from: a variation of it (``strength`` in (0, 1]: how
    far the take may move from it, 1 keeping nothing), or, with ``repaint`` (``[start, end]``
    in seconds), the same audio with only that span made anew.
    """

    prompt: str
    duration: float
    seed: int
    variations: int = DEFAULT_VARIATIONS
    melody: str | None = None
    continuation: str | None = None
    init: str | None = None
    strength: float | None = None
    repaint: tuple[float, float] | None = None
    lyrics: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """The family's own parameters by its schema's names (defaults filled in at the edge)."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise InvalidParams(f"prompt must be a string, got {type(self.prompt).__name__}",
                                param="prompt")
        _check_number("duration", self.duration)
        # Normalise 2 -> 2.0 so to_dict() output (and recipes) has one shape.
        object.__setattr__(self, "duration", float(self.duration))
        if not self.duration > 0:
            raise InvalidParams("duration must be greater than 0", param="duration")
        _check_int("seed", self.seed)
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidParams(f"seed must be in 0..{MAX_SEED}", param="seed")
        _check_int("variations", self.variations)
        if self.variations < 1:
            raise InvalidParams("variations must be at least 1", param="variations")
        for name in ("melody", "continuation", "init"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidParams(f"{name} must be a non-empty path", param=name)
        self._check_init()
        self._check_lyrics()
        if not isinstance(self.options, Mapping) or not all(
                isinstance(k, str) for k in self.options):
            raise InvalidParams("options must be an object keyed by parameter names",
                                param="options")
        object.__setattr__(self, "options", dict(self.options))

    def _check_init(self) -> None:
        if self.init is None:
            for name in ("strength", "repaint"):
                if getattr(self, name) is not None:
                    raise InvalidParams(f"{name}: needs init (the audio to start from)",
                                        param=name)
            return
        if self.strength is not None:
            _check_number("strength", self.strength)
            object.__setattr__(self, "strength", float(self.strength))
            if not 0 < self.strength <= 1:
                raise InvalidParams("strength must be in (0, 1]: 1 keeps nothing of init",
                                    param="strength", allowed={"exclusiveMinimum": 0,
                                                               "maximum": 1})
        if self.repaint is None:
            return
        span = self.repaint
        if isinstance(span, (str, bytes)) or not hasattr(span, "__len__") or len(span) != 2:
            raise InvalidParams("repaint must be [start, end] in seconds", param="repaint")
        for value in span:
            _check_number("repaint", value)
        start, end = float(span[0]), float(span[1])
        if not 0 <= start < end <= self.duration:
            raise InvalidParams(
                f"repaint: [{start:g}, {end:g}] must be a span inside the take's "
                f"{self.duration:g} s, start before end", param="repaint")
        if self.strength is not None:
            raise InvalidParams("strength: a repaint remakes its span whole; leave strength "
                                "out", param="strength")
        object.__setattr__(self, "repaint", (start, end))

    def _check_lyrics(self) -> None:
        if self.lyrics is None:
            return
        if not isinstance(self.lyrics, str):
            raise InvalidParams(f"lyrics must be text, got {type(self.lyrics).__name__}",
                                param="lyrics")
        if len(self.lyrics) > MAX_LYRICS_CHARS:
            raise InvalidParams(
                f"lyrics: {len(self.lyrics)} characters is too long; at most "
                f"{MAX_LYRICS_CHARS}", param="lyrics", allowed={"maxLength": MAX_LYRICS_CHARS})
        if "\x00" in self.lyrics:
            raise InvalidParams("lyrics: holds a NUL byte; is it a text file?", param="lyrics")
        # Windows line ends and trailing blanks decide nothing; one spelling keeps recipes
        # (and replays) identical however the words arrived.
        text = "\n".join(line.rstrip() for line in self.lyrics.replace("\r\n", "\n")
                         .replace("\r", "\n").split("\n")).strip("\n")
        object.__setattr__(self, "lyrics", text if text.strip() else None)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types, always the same keys (the recipe's ``params``,
        the worker pipe's request)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["options"] = dict(self.options)
        out["repaint"] = None if self.repaint is None else list(self.repaint)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Request:
        """Build from :meth:`to_dict`'s output; unknown keys are refused, naming them."""
        if not isinstance(data, Mapping):
            raise InvalidParams("a generation request must be an object", param=None)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidParams(f"unknown request field {key!r}", param=key)
        for name in ("prompt", "duration", "seed"):
            if name not in data:
                raise InvalidParams(f"{name} is required", param=name)
        return cls(**dict(data))

    @classmethod
    def from_recipe(cls, params: Mapping[str, Any]) -> Request:
        """Build from a recipe's ``params`` (or one request of its ``batch``), of any age.

        Recipes written before the wire's names were used everywhere say ``duration_s``,
        ``melody_path``, ``continuation_path`` and carry MusicGen's sampling as fields
        (``guidance_scale``); they are read as the request they always described.
        """
        if "duration_s" not in params:
            return cls.from_dict(params)
        out: dict[str, Any] = {}
        options = dict(params.get("options") or {})
        for key, value in params.items():
            if key in _V1_OPTIONS:
                options[_V1_OPTIONS[key]] = value
            elif key != "options":
                out[_V1_RENAMED.get(key, key)] = value
        return cls.from_dict({**out, "options": options})

    @classmethod
    def from_job(cls, params: Mapping[str, Any], family_params: Mapping[str, Any]) -> Request:
        """Build from a job's stored params: the wire's names, the family's own parameters
        (``family_params``, its schema's properties) flat beside the common ones."""
        return cls(
            prompt=params["prompt"], duration=params["duration"], seed=params["seed"],
            variations=params.get("variations", DEFAULT_VARIATIONS),
            melody=params.get("melody"), continuation=params.get("continuation"),
            init=params.get("init"), strength=params.get("strength"),
            repaint=params.get("repaint"), lyrics=params.get("lyrics"),
            options={k: params[k] for k in family_params if k in params})

    def job_params(self) -> dict[str, Any]:
        """The inverse of :meth:`from_job` for the fields it covers (the family's own
        parameters flat, as the wire and ``jobs.show`` have always shown them)."""
        out = {k: v for k, v in self.to_dict().items() if k != "options"}
        return {**out, **self.options}


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass, but `"seed": true` is a client bug, not a seed.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"{name} must be an integer, got {type(value).__name__}",
                            param=name)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParams(f"{name} must be a number, got {type(value).__name__}",
                            param=name)
    if not math.isfinite(value):
        raise InvalidParams(f"{name} must be finite", param=name)
