"""What a take says about itself: prompt, seed, model, recipe and the rest, in one record.

:class:`TakeMetadata` is written into a take's tags (:mod:`timbred.takes.tags`) and its
sidecar (:mod:`timbred.takes.sidecars`), and read back from either when a take is exported
again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from timbred import __version__
from timbred.errors import InvalidParams
from timbred.takes.loudness import LoudnessReport

__all__ = ["TITLE_MAX_CHARS", "TakeMetadata", "check_created_at", "short_title", "utc_now"]

TITLE_MAX_CHARS: Final = 60


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2025-01-31T12:00:00Z``)."""
    return _iso_utc(dt.datetime.now(dt.UTC).replace(microsecond=0))


def _iso_utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def short_title(prompt: str, take_index: int | None = None) -> str:
    """A title from a prompt: whitespace collapsed, cut at a word boundary to at most
    :data:`TITLE_MAX_CHARS` characters with an ellipsis; ``Untitled take [n]`` if empty."""
    text = " ".join(prompt.split())
    if not text:
        return "Untitled take" + ("" if take_index is None else f" {take_index}")
    if len(text) <= TITLE_MAX_CHARS:
        return text
    cut = text[: TITLE_MAX_CHARS - 1]
    space = cut.rfind(" ")
    if space >= TITLE_MAX_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "\u2026"


def _json_value(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"{name} must hold plain JSON values: {exc}", param=name) from exc


@dataclass(frozen=True)
class TakeMetadata:
    """What a take says about itself: written into its tags and its sidecar.

    ``params`` are the generation parameters; ``recipe`` is everything needed to re-render
    (the daemon's recipe: model id, revision, dtype, params, windowing, versions).
    ``created_at`` is ISO 8601 in UTC (normalised to ``...Z``). ``loudness`` is filled in by
    :func:`write_take` with what it measured.
    """

    prompt: str
    seed: int | None
    model: str | None
    revision: str | None = None
    backend: str | None = None
    device: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timbre_version: str = __version__
    created_at: str = field(default_factory=utc_now)
    job_id: str | None = None
    take_index: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    loudness: LoudnessReport | None = None
    #: Tempo, beats and key as measured on the written audio
    #: (:meth:`timbred.takes.analysis.Analysis.to_dict`), or None when not analysed.
    analysis: dict[str, Any] | None = None
    #: The mastering chain with every setting and what it did
    #: (``{"chain": Chain.to_dict(), "report": MasterReport.to_dict()}``), or None.
    mastering: dict[str, Any] | None = None
    #: For a loop cut from a take: ``{"bars", "beats_per_bar", "bpm", "start_s", "source"}``.
    loop: dict[str, Any] | None = None
    #: For a stem separated from a take: its name (``drums``, ``bass``, ``vocals``, ...).
    stem: str | None = None
    #: For a stem: how it was separated (``{"source", "model", "revision", "backend",
    #: "device", "shifts", "overlap", "seed", "sources"}``).
    separation: dict[str, Any] | None = None

    _OPTIONAL_TEXT: ClassVar[tuple[str, ...]] = ("model", "revision", "backend", "device",
                                                 "job_id", "stem")
    _OPTIONAL_OBJECTS: ClassVar[tuple[str, ...]] = ("analysis", "mastering", "loop",
                                                    "separation")

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise InvalidParams("prompt must be a string", param="prompt")
        for name in ("seed", "take_index"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if name == "take_index" else 0)):
                low = 1 if name == "take_index" else 0
                raise InvalidParams(f"{name} must be an integer >= {low} or null, got {value!r}",
                                    param=name)
        for name in self._OPTIONAL_TEXT:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidParams(f"{name} must be a string or null", param=name)
        if not isinstance(self.timbre_version, str):
            raise InvalidParams("timbre_version must be a string", param="timbre_version")
        for name in ("params", "recipe"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise InvalidParams(f"{name} must be an object", param=name)
            _json_value(name, value)
        for name in self._OPTIONAL_OBJECTS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, dict):
                    raise InvalidParams(f"{name} must be an object or null", param=name)
                _json_value(name, value)
        if self.loudness is not None and not isinstance(self.loudness, LoudnessReport):
            raise InvalidParams("loudness must be a LoudnessReport or null", param="loudness")
        object.__setattr__(self, "created_at", check_created_at(self.created_at))

    @property
    def title(self) -> str:
        """:func:`short_title` of the prompt."""
        return short_title(self.prompt, self.take_index)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["loudness"] = None if self.loudness is None else self.loudness.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TakeMetadata:
        """Build from :meth:`to_dict`'s output or a sidecar (whose extra keys are ignored)."""
        if not isinstance(data, Mapping):
            raise InvalidParams("take metadata must be an object", param="metadata")
        for name in ("prompt", "seed", "model"):
            if name not in data:
                raise InvalidParams(f"{name} is required", param=name)
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        loudness = kwargs.get("loudness")
        kwargs["loudness"] = None if loudness is None else LoudnessReport.from_dict(loudness)
        return cls(**kwargs)


def check_created_at(value: object) -> str:
    """``value`` as ISO 8601 in UTC ending in ``Z``; InvalidParams naming ``created_at`` if it
    is not a time, or not in UTC."""
    problem = "created_at must be ISO 8601 in UTC, e.g. 2025-01-31T12:00:00Z"
    if not isinstance(value, str):
        raise InvalidParams(problem, param="created_at")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidParams(f"{problem}, got {value!r}", param="created_at") from exc
    offset = when.utcoffset()
    if offset is None or offset != dt.timedelta(0):
        raise InvalidParams(f"{problem}, got {value!r}", param="created_at")
    return _iso_utc(when)

