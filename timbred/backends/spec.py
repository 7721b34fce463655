"""What a backend declares about itself, without importing its inference stack.

A :class:`BackendSpec` is everything the daemon, the CLI and the studio need to know about a
model family before (and without) loading one: its name, how it recognises a model directory,
what it can do, the parameters it takes (as a JSON Schema), the load options it takes from the
configuration, and what it needs. The class that generates audio is named by an import path and
imported only inside the inference worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timbred.request import COMMON, Request

#: Features a backend (or one of its models) may have; ``backends.list`` reports them.
FEATURES = frozenset({
    "melody",          # follows a melody file's chroma (``melody``)
    "continuation",    # continues an audio file (``continuation``)
    "lyrics",          # sings given lyrics
    "inpainting",      # regenerates a span of an audio file (``init`` with ``repaint``)
    "variation",       # makes a variation of an audio file (``init`` with ``strength``)
    "batching",        # decodes several requests together
    "streaming",       # hands on audio while it generates (studio preview)
    "seeded",          # the same seed, parameters and settings give bit-identical audio
})


#: What a family's models do (:attr:`BackendSpec.task`).
TASKS = ("generate", "separate")


@dataclass(frozen=True)
class BackendCapabilities:
    """What a family can do, for ``backends.list``: the union over its models (a loaded
    model reports its own, exact :class:`timbred.worker.backend.Capabilities`)."""

    sample_rates: tuple[int, ...]
    channels: tuple[int, ...]
    max_native_duration_s: float
    """Longest clip one pass makes; longer takes are made in windows, if at all."""
    features: frozenset[str]

    def __post_init__(self) -> None:
        unknown = self.features - FEATURES
        if unknown:
            raise ValueError(f"unknown backend features: {', '.join(sorted(unknown))}")

    def to_dict(self) -> dict[str, Any]:
        return {"sample_rates": list(self.sample_rates), "channels": list(self.channels),
                "max_native_duration_s": self.max_native_duration_s,
                "features": sorted(self.features)}


@dataclass(frozen=True)
class BackendSpec:
    """One model family behind the registry (see ``docs/architecture.md``)."""

    name: str
    """Stable name, stored in every recipe (``musicgen``)."""
    summary: str
    implementation: str
    """``module:Class`` of its :class:`timbred.worker.backend.Backend`, imported in the
    worker only (the daemon never imports torch)."""
    recognises: Callable[[Path], bool]
    """Whether a model directory (or hub snapshot) holds one of this family's models; cheap,
    reads a small config file at most."""
    missing: Callable[[Path], tuple[str, ...]]
    """The files a load needs that ``directory`` lacks (empty when it is complete)."""
    capabilities: BackendCapabilities
    model_features: Callable[[Path], frozenset[str]]
    """The features one model directory has (``musicgen-melody`` follows melodies,
    ``musicgen-small`` does not); a subset of ``capabilities.features``."""
    params: Mapping[str, Any]
    """JSON Schema (an object's ``properties``) of its own generation parameters, with
    defaults; the common ones (prompt, duration, seed, variations, audio inputs, export) are
    every backend's and not repeated here."""
    batch_key: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
    """What, among its parameters, requests decoded together must share (MusicGen: whether
    guidance is on); ``None``: it decodes one request at a time."""
    estimate_memory: Callable[[Path, str | None], int] | None = None
    """Bytes a model directory's weights take loaded at a dtype (``None``: as stored);
    ``None`` here: a transformers checkpoint's safetensors or ``.bin`` files tell."""
    load_options: tuple[str, ...] = ()
    """Configuration keys under ``models.`` it is constructed with (MusicGen's windowing
    and precision); they decide the audio, so recipes record them."""
    max_duration: Callable[[Path], float | None] | None = None
    """The longest take one model directory makes, in seconds (a diffusion model's trained
    length; ``None``: it has no limit of its own, Timbre's 600 s applies). Longer requests are
    refused at submit with the limit named."""
    model_defaults: Callable[[Path], Mapping[str, Any]] | None = None
    """Defaults one model directory sets for some of the family's parameters, over the
    schema's (a distilled Stable Audio 3 takes 8 steps, its base model 100)."""
    check_request: Callable[[Path, Request], None] | None = None
    """Refuse (:class:`timbred.errors.InvalidParams`) a request one model cannot make, at
    submit, beyond what the schema and the features say."""
    edits_init: Callable[[Mapping[str, Any]], bool] | None = None
    """Given a request's own parameters, whether its ``init`` is *edited* as the common
    fields say (varied by ``strength``, or with ``repaint`` a span made anew); ``False`` for a
    task of the family's own (ACE-Step extracting a track), which then takes no default
    strength and is checked by :attr:`check_request` alone. ``None``: always."""
    needs: tuple[str, ...] = ("local_weights",)
    """What it needs to run: ``local_weights``, ``api_key``, ``gpu``."""
    model_hint: str = ""
    """How a user recognises its model directories, for a refusal's message."""
    task: str = "generate"
    """What its models do: ``generate`` takes (every family so far) or ``separate`` a take
    into stems (Demucs: ``takes.stems``). A separator is never offered for generation."""
    hosted: bool = False
    """Its models run at a provider (``provider:model``), through the daemon's hosted
    executor, not in the inference worker; ``implementation`` then names the
    :class:`timbred.hosted.base.Provider`."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"backend {self.name!r}: task must be one of {', '.join(TASKS)}")
        # Its parameters travel flat beside the common fields in a job's params (and on the
        # wire): one of the same name would be ambiguous.
        clash = sorted(set(self.params) & COMMON)
        if clash:
            raise ValueError(f"backend {self.name!r}: parameter names {', '.join(clash)} "
                             "are every backend's own fields; choose others")

    def params_schema(self) -> dict[str, Any]:
        """The full JSON Schema of its parameters (``schemas/backends/<name>.params.json``)."""
        return {"type": "object", "additionalProperties": False,
                "properties": dict(self.params)}

    def defaults(self) -> dict[str, Any]:
        """Each parameter's default, by name."""
        return {k: v["default"] for k, v in self.params.items() if "default" in v}

    def to_dict(self) -> dict[str, Any]:
        """Its ``backends.list`` entry."""
        return {"name": self.name, "summary": self.summary,
                "capabilities": self.capabilities.to_dict(),
                "params": self.params_schema(), "load_options": list(self.load_options),
                "needs": list(self.needs), "hosted": self.hosted, "task": self.task}
