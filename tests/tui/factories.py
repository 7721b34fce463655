"""Job records and job.preview events shaped like the daemon's (schemas/openrpc.json), and
real take and preview chunk files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from timbre_tui.state import StudioState
from timbred.backends import ace_step, musicgen

SR = 32_000
#: A model of each family the lyrics and the edits care about, as models.list names them.
ACE_MODEL = "/m/ace-base"
MUSICGEN_MODEL = "/m/musicgen"


def job(job_id: str, state: str, prompt: str, *, outputs: Sequence[str] = (),
        created_at: float = 1_800_000_000.0, progress: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None, seed: int = 7,
        duration: float = 2.0) -> dict[str, Any]:
    return {
        "id": job_id, "state": state, "priority": 0, "model": "/models/tiny",
        "params": {"prompt": prompt, "duration": duration, "seed": seed, "temperature": 1.0,
                   "top_k": 250, "top_p": 0.0, "guidance": 3.0,
                   "variations": max(1, len(outputs)), "melody": None, "continuation": None,
                   "output": None, "keep_alive": None},
        "created_at": created_at, "started_at": None, "finished_at": None,
        "progress": progress, "error": error, "outputs": list(outputs), "attempts": 1,
        "retry_of": None, "recipe": None, "cancel_requested": False, "timings": None,
        "idempotency_key": None, "remote": None, "cost": None, "placement": None,
    }


#: The stems htdemucs separates, in its order (the recipe's ``stems``).
STEMS = ("drums", "bass", "other", "vocals")


def stems_job(job_id: str, state: str, source: str, *, prompt: str = "warm lofi rhodes",
              take_id: str = "t-1", names: Sequence[str] = STEMS, recipe: bool = True,
              created_at: float = 1_800_000_000.0,
              progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``takes.stems`` job as the daemon records one (timbred/queue/stems.py): the source
    take's prompt and id in its params; once done, a stem file per name beside the source
    (``take-1-drums.flac``) and, with ``recipe``, the recipe naming them in order."""
    stem = Path(source)
    done = state == "done"
    outputs = [str(stem.with_name(f"{stem.stem}-{n}.flac")) for n in names] if done else []
    record = job(job_id, state, prompt, outputs=outputs, created_at=created_at,
                 progress=progress)
    record["model"] = "htdemucs"
    record["params"] = {"kind": "stems", "take": take_id, "source": source, "prompt": prompt,
                        "backend": "demucs", "duration": 2.0, "variations": 1, "shifts": 1,
                        "overlap": 0.25, "seed": 0, "export": {"format": "flac"},
                        "keep_alive": None}
    if done and recipe:
        record["recipe"] = {"kind": "stems", "source": take_id, "model": "htdemucs",
                            "backend": "demucs", "stems": list(names), "shifts": 1,
                            "overlap": 0.25, "seed": 0, "sources": list(names)}
    return record


def take_record(path: str, *, job_id: str = "j-1", index: int = 1,
                prompt: str = "warm lofi rhodes", bpm: float | None = None,
                key: str | None = None, loudness: float | None = -14.0) -> dict[str, Any]:
    """A take as ``takes.show`` and ``history.search`` give it (the Take schema)."""
    return {"id": f"t-{job_id}-{index}", "job_id": job_id, "session": "s", "prompt": prompt,
            "take_index": index, "path": path, "format": Path(path).suffix.lstrip("."),
            "sample_rate": SR, "channels": 1, "duration_s": 2.0,
            "loudness_before_lufs": None, "loudness_after_lufs": loudness,
            "created_at": 1_800_000_000.0, "recipe": {"model": MUSICGEN_MODEL},
            "deleted_at": None, "rating": None, "note": None, "tags": [], "bpm": bpm,
            "key": key, "stems": []}


def song(job_id: str, take: Path, lyrics: str | None, *, prompt: str = "a ballad",
         duration: float = 2.0, created_at: float = 1_800_000_000.0) -> dict[str, Any]:
    """A done ACE-Step job whose recipe holds ``lyrics`` (as the daemon records a take)."""
    record = job(job_id, "done", prompt, outputs=[str(take)], duration=duration,
                 created_at=created_at)
    record["model"] = ACE_MODEL
    record["params"] = {"prompt": prompt, "duration": duration, "seed": 7, "variations": 1,
                        "lyrics": lyrics, "backend": "ace-step", **ace_step.SPEC.defaults()}
    record["recipe"] = {"model": ACE_MODEL, "backend": "ace-step", "params": {
        "prompt": prompt, "duration": duration, "seed": 7, "variations": 1, "init": None,
        "strength": None, "repaint": None, "lyrics": lyrics,
        "options": ace_step.SPEC.defaults()}}
    return record


#: Hosted models as the daemon's models.list names them (the first one is listed).
HOSTED_MODEL = "replicate:meta/musicgen"
STABILITY_MODEL = "stability:stable-audio-2.5"
#: What the daemon says a hosted take costs (its one line for people).
HOSTED_PRICE = "~$0.05 for 30 s (estimate: $0.001525/s of Nvidia L40S, published price)"
#: A hosted family's own parameters as backends.list gives them (a test's, not Replicate's).
HOSTED_PARAMS: dict[str, Any] = {
    "model_version": {"enum": ["stereo-large", "melody-large"], "default": "stereo-large"},
    "output_format": {"enum": ["wav", "mp3"], "default": "wav"},
}


def hosted_entry(name: str, *, key: str | None = None, price: str = HOSTED_PRICE,
                 summary: str = "MusicGen, hosted on Replicate") -> dict[str, Any]:
    """One ``models.list`` ``hosted`` entry (``key`` None: the daemon has none)."""
    return {"name": name, "provider": name.partition(":")[0], "summary": summary, "key": key,
            "needs_key": key is None, "deterministic": False, "price": price}


def models_listing(*, replicate_key: str | None = None) -> dict[str, Any]:
    """A whole ``models.list`` answer: one installed MusicGen, no catalogue, and hosted
    models at Replicate (``replicate_key``: where the daemon finds its key) and Stability
    (whose key it has in its environment)."""
    return {
        "installed": [{"name": MUSICGEN_MODEL, "kind": "local", "repo": None, "revision": None,
                       "refs": [], "path": MUSICGEN_MODEL, "size_bytes": 1024,
                       "last_modified": 1_800_000_000.0, "missing": [],
                       "backend": "musicgen"}],
        "catalogue": [],
        "hosted": [hosted_entry(HOSTED_MODEL, key=replicate_key),
                   hosted_entry(STABILITY_MODEL, key="env", price="~$0.20 a take (published "
                                "price)", summary="Stable Audio 2.5, from Stability AI")],
    }


def hosted_backends() -> list[dict[str, Any]]:
    """``backends.list`` entries for MusicGen and the Replicate and Stability families,
    reduced to what the studio reads."""
    return [musicgen.SPEC.to_dict(),
            *({"name": name, "params": {"type": "object", "additionalProperties": False,
                                        "properties": HOSTED_PARAMS}, "hosted": True,
               "capabilities": {"features": []}} for name in ("replicate", "stability"))]


def hosted_job(job_id: str, state: str, prompt: str, *, outputs: Sequence[str] = (),
               created_at: float = 1_800_000_000.0, usd: float = 0.0475,
               estimate: bool = True, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job of :data:`HOSTED_MODEL`, as the daemon records one: the provider's family in
    its params, and once done a recipe naming the provider with the job's cost."""
    record = job(job_id, state, prompt, outputs=outputs, created_at=created_at, error=error)
    record["model"] = HOSTED_MODEL
    record["params"] = {"prompt": prompt, "duration": 2.0, "seed": 7,
                        "variations": max(1, len(outputs)), "backend": "replicate",
                        "model_version": "stereo-large", "output_format": "wav"}
    record["remote"] = {"provider": "replicate", "calls": [None] * max(1, len(outputs))}
    record["cost"] = None
    if state == "done":
        cost = {"provider": "replicate", "usd": usd, "estimate": estimate,
                "basis": "$0.001525/s of Nvidia L40S (published price)"}
        record["cost"] = cost
        record["recipe"] = {
            "model": HOSTED_MODEL, "backend": "replicate", "device": "hosted:replicate",
            "params": {"prompt": prompt, "duration": 2.0, "seed": 7,
                       "variations": max(1, len(outputs)),
                       "options": {"model_version": "stereo-large", "output_format": "wav"}},
            "hosted": {"provider": "replicate", "model": "meta/musicgen",
                       "pinned_model": f"{HOSTED_MODEL}:671ac645ce5e552cc63a54a2bbff63fc",
                       "deterministic": False, "calls": [{"seed": 7, "id": "p-1"}]},
            "cost": cost}
    return record


def with_families(st: StudioState) -> StudioState:
    """``st`` as a daemon driving MusicGen (its default model's family) and ACE-Step would
    leave it: their real ``backends.list`` entries and one installed model of each."""
    st.set_status({"models": [], "default_model": {"name": MUSICGEN_MODEL,
                                                   "backend": "musicgen"}})
    st.set_backends([musicgen.SPEC.to_dict(), ace_step.SPEC.to_dict()])
    st.set_models([{"name": MUSICGEN_MODEL, "backend": "musicgen"},
                   {"name": ACE_MODEL, "backend": "ace-step", "defaults": {"steps": 50}}], [])
    return st


def swell(path: Path, seconds: float = 2.0) -> Path:
    """A 220 Hz tone that grows from silence to full scale (a sparkline that rises)."""
    t = np.arange(int(seconds * SR), dtype=np.float32) / SR
    audio = np.sin(2 * np.pi * 220 * t) * (t / seconds)
    sf.write(path, audio.astype(np.float32), SR)
    return path


def tone(seconds: float, sr: int = SR, start_s: float = 0.0) -> np.ndarray[Any, Any]:
    """A 220 Hz tone at half scale from ``start_s`` (so pieces of it join without a seam)."""
    t = start_s + np.arange(round(seconds * sr), dtype=np.float64) / sr
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def preview_chunks(folder: Path, lengths_s: Sequence[float],
                   sr: int = SR) -> list[tuple[str, float]]:
    """A tone cut into chunk files as timbred writes them (16-bit mono WAV), with their starts."""
    out: list[tuple[str, float]] = []
    start = 0.0
    for i, length in enumerate(lengths_s):
        path = folder / f"chunk-{i:04d}-1.wav"
        sf.write(path, tone(length, sr, start), sr, subtype="PCM_16", format="WAV")
        out.append((str(path), start))
        start += length
    return out


def preview_event(job_id: str, index: int, path: str, start_s: float, duration_s: float, *,
                  final: bool = False, sr: int = SR) -> dict[str, Any]:
    """A ``job.preview`` event as the studio gets it (schemas/openrpc.json ``x-events``)."""
    return {"method": "event", "type": "job.preview", "data": {
        "job_id": job_id, "index": index, "paths": [path],
        "start_sample": round(start_s * sr), "frames": round(duration_s * sr),
        "start_s": start_s, "duration_s": duration_s, "sample_rate": sr, "channels": 1,
        "final": final}}


def cut(path: str, keep_bytes: int | None) -> None:
    """Damage a file as a reader may find it: cut to ``keep_bytes``, or removed (None)."""
    if keep_bytes is None:
        Path(path).unlink()
    else:
        Path(path).write_bytes(Path(path).read_bytes()[:keep_bytes])
