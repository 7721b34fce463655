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
        "retry_of": None, "recipe": None, "cancel_requested": False,
    }


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
