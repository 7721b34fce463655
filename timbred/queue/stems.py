"""Stem jobs (``takes.stems``): a take separated into stems, queued and run like a generation.

A stems job is a job of the same queue: it waits its turn, loads its separator (a Demucs bag)
on a worker through that worker's residency (kept warm, evicted by the memory budget), reports
progress, can be cancelled, and dies alone with a crashed worker. What differs is its params
(``kind: "stems"`` and the source take; a generation's have no ``kind``) and what it writes:
one file per stem beside the take, recorded in the history
(:meth:`timbred.takes.history.History.write_stems`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from timbred import __version__, models
from timbred.backends import registry
from timbred.errors import InvalidParams, ModelNotFound
from timbred.protocol import schema
from timbred.queue.jobs import Job
from timbred.takes.history import History
from timbred.worker.backend import Separation

__all__ = ["DEFAULT_MODEL", "TASK", "is_stems", "recipe", "resolve", "separation_record"]

TASK = "stems"
#: The separator ``takes.stems`` uses unless told: demucs's own default.
DEFAULT_MODEL = "htdemucs"
#: What of a request decides how the stems are encoded (never loudness or mastering: each
#: stem keeps its level in the mix).
_EXPORT = ("format", "wav_subtype", "mp3_bitrate_kbps", "ogg_quality")


def is_stems(job: Job) -> bool:
    """Whether ``job`` separates a take (else it generates)."""
    return job.params.get("kind") == TASK


def resolve(history: History, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A ``takes.stems`` request checked (the take there, the model a downloaded separator,
    its settings in range), as the model and the job's params. Blocking (files, SQLite)."""
    take = history.existing(str(params["take"]))
    model = str(params.get("model") or DEFAULT_MODEL)
    ref = models.resolve(model)
    spec = registry.get(ref.backend) if ref.backend is not None else None
    if spec is None or spec.task != "separate":
        raise InvalidParams(
            f"choose a separator such as {DEFAULT_MODEL} (timbrectl models pull "
            f"{DEFAULT_MODEL}): {model} ({ref.backend or 'unknown family'}) makes music, "
            "it does not separate stems", param="model")
    if not ref.ready:
        missing = f" (missing {', '.join(ref.missing)})" if ref.missing else ""
        raise ModelNotFound(model, f"not downloaded yet{missing}; run `timbrectl models pull "
                                   f"{model}` first")
    own = {**spec.defaults(), **{k: params[k] for k in spec.params if params.get(k) is not None}}
    schema.check("takes.stems", spec.params_schema(), own)  # the family's own ranges
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise InvalidParams(f"seed must be an integer from 0 to 2^32-1, got {seed!r}",
                            param="seed")
    return model, {
        "kind": TASK, "take": take.id, "source": take.path, "prompt": take.prompt,
        "backend": spec.name, "duration": take.duration_s, "variations": 1,
        "shifts": own["shifts"], "overlap": float(own["overlap"]), "seed": seed,
        "export": {k: params[k] for k in _EXPORT if params.get(k) is not None},
        "keep_alive": params.get("keep_alive"),
    }


def separation_record(job: Job, separation: Separation) -> dict[str, Any]:
    """What each stem's metadata says of how it was separated (the take schema's
    ``separation``)."""
    info = separation.info
    return {"source": job.params["take"], "model": job.model,
            "revision": info.get("revision"), "backend": str(info.get("backend")),
            "device": str(info.get("device")), "shifts": int(job.params["shifts"]),
            "overlap": float(job.params["overlap"]), "seed": int(job.params["seed"]),
            "sources": list(separation.names)}


def recipe(job: Job, model_id: str, separation: Separation) -> dict[str, Any]:
    """The job's recipe: everything that decides its stems (the take's audio aside, which
    its id names)."""
    return {**separation_record(job, separation), "kind": TASK, "model_id": model_id,
            "stems": list(separation.names), "dtype": "float32",
            "timbre_version": __version__,
            "info": json.loads(json.dumps(separation.info, default=str))}
