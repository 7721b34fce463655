"""Job records shaped like the daemon's (schemas/openrpc.json ``Job``) and a real take file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SR = 32_000


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


def swell(path: Path, seconds: float = 2.0) -> Path:
    """A 220 Hz tone that grows from silence to full scale (a sparkline that rises)."""
    t = np.arange(int(seconds * SR), dtype=np.float32) / SR
    audio = np.sin(2 * np.pi * 220 * t) * (t / seconds)
    sf.write(path, audio.astype(np.float32), SR)
    return path
