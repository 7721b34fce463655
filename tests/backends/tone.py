"""A test-only backend: a deterministic tone generator (never shipped, never offered).

It exists to prove the registry's seam: adding a family takes this one module and one
``registry.register(SPEC)`` (the ``tone_backend`` fixture), and it then runs the whole path,
CLI -> daemon -> queue -> worker -> export -> history -> replay. Its "model" is a directory
holding ``tone.json``; its audio is a seeded sine with a little seeded noise: a test fixture,
not music.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from timbred import errors
from timbred.backends import BackendCapabilities, BackendSpec
from timbred.request import Request
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    Preview,
    ProgressCallback,
)

CONFIG = "tone.json"
#: Progress steps per second of audio.
STEPS_PER_S = 20


def write_config(directory: Path, name: str, **fields: Any) -> Path:
    """A test family's "model" directory: ``name`` holding ``fields`` as JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(fields))
    return directory


def make_model(directory: Path, *, sample_rate: int = 8000) -> Path:
    """Write a tone "model" directory (a test fixture) and return it."""
    return write_config(directory, CONFIG, tone_fixture=True, sample_rate=sample_rate)


SPEC = BackendSpec(
    name="tone",
    summary="test fixture: a seeded sine tone (not music)",
    implementation="tests.backends.tone:ToneBackend",
    recognises=lambda d: (d / CONFIG).is_file(),
    missing=lambda d: () if (d / CONFIG).is_file() else (CONFIG,),
    capabilities=BackendCapabilities(sample_rates=(8000,), channels=(1,),
                                     max_native_duration_s=600.0,
                                     features=frozenset({"seeded"})),
    model_features=lambda d: frozenset({"seeded"}),
    params=MappingProxyType({
        "pitch_hz": {"type": "number", "minimum": 20, "maximum": 4000, "default": 440.0,
                     "description": "The tone's frequency."},
        "noise": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                  "description": "Seeded noise added to the tone."},
    }),
    estimate_memory=lambda d, dtype: 0,  # no weights: a formula
    model_hint=f"a directory holding {CONFIG} (test fixture)",
)


class ToneBackend(Backend):
    name: ClassVar[str] = "tone"

    def __init__(self) -> None:
        self._source: str | None = None
        self._caps: Capabilities | None = None
        self._device = "cpu"
        self._dtype = "float32"

    def load(self, source: str, *, device: str, dtype: str) -> None:
        try:
            config = json.loads((Path(source) / CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise errors.ModelLoadFailed(source, f"no readable {CONFIG}: {exc}") from exc
        rate = int(config["sample_rate"])
        self._caps = Capabilities(melody=False, continuation=False, stereo=False,
                                  max_native_duration_s=600.0, sample_rate=rate,
                                  frame_rate=float(STEPS_PER_S), channels=1)
        self._source, self._device, self._dtype = source, device, dtype

    def unload(self) -> None:
        self._source = self._caps = None

    @property
    def loaded(self) -> bool:
        return self._caps is not None

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            raise errors.GenerationFailed("no tone model is loaded")
        return self._caps

    def generate_batch(
        self,
        items: Sequence[Request],
        progress: ProgressCallback | None = None,
        cancels: Sequence[CancelToken] | None = None,
        preview: Preview | None = None,
    ) -> list[GenerationOutput]:
        caps = self.capabilities
        steps = max(1, math.ceil(max(p.duration for p in items) * STEPS_PER_S))
        for step in range(1, steps + 1):
            if cancels and all(c.cancelled for c in cancels):
                raise errors.Cancelled()
            if progress is not None:
                progress(step, steps)
        return [self._one(p, caps) for p in items]

    def _one(self, p: Request, caps: Capabilities) -> GenerationOutput:
        n = round(p.duration * caps.sample_rate)
        t = np.arange(n, dtype=np.float64) / caps.sample_rate
        pitch = float(p.options.get("pitch_hz", 440.0))
        noise = float(p.options.get("noise", 0.01))
        rows = []
        for v in range(p.variations):
            rng = np.random.default_rng([p.seed, v])
            tone = 0.5 * np.sin(2 * np.pi * pitch * (1 + v / 12) * t)
            rows.append(tone + noise * rng.standard_normal(n))
        audio = np.stack(rows)[:, None, :].astype(np.float32)
        info = {"backend": self.name, "source": self._source, "revision": None,
                "device": self._device, "dtype": self._dtype}
        return GenerationOutput(audio=audio, sample_rate=caps.sample_rate, info=info)

    def memory_bytes(self) -> int:
        return 0
