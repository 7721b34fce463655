"""A test-only backend: a chord pulsed on every beat, at the tempo and in the key asked for.

Never shipped, never offered. It takes ``bpm`` and ``key`` as its own parameters (as
ACE-Step does), so that ``--bpm`` and ``--key`` reach a backend natively, and the takes it
makes have a tempo and a key for the analysis to find: a tonic triad (with two harmonics per
note) struck on each beat and decaying, the downbeat louder, and the tonic two octaves down
on beats 1 (strong) and 3 (soft) as a kick would mark the bar. A test fixture, not music.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from tests.backends.tone import ToneBackend, write_config
from timbred.backends import BackendCapabilities, BackendSpec
from timbred.request import Request
from timbred.worker.backend import Capabilities, GenerationOutput

CONFIG = "pulse.json"
SAMPLE_RATE = 22_050
_NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def make_model(directory: Path) -> Path:
    """Write a pulse "model" directory (a test fixture) and return it."""
    return write_config(directory, CONFIG, pulse_fixture=True, sample_rate=SAMPLE_RATE)


SPEC = BackendSpec(
    name="pulse",
    summary="test fixture: a chord pulsed at a tempo, in a key (not music)",
    implementation="tests.backends.pulse:PulseBackend",
    recognises=lambda d: (d / CONFIG).is_file(),
    missing=lambda d: () if (d / CONFIG).is_file() else (CONFIG,),
    capabilities=BackendCapabilities(sample_rates=(SAMPLE_RATE,), channels=(1,),
                                     max_native_duration_s=600.0,
                                     features=frozenset({"seeded"})),
    model_features=lambda d: frozenset({"seeded"}),
    params=MappingProxyType({
        "bpm": {"type": "integer", "minimum": 0, "maximum": 300, "default": 0,
                "description": "Beats per minute (0: 100)."},
        "key": {"type": "string", "maxLength": 20, "default": "",
                "pattern": "^$|^[A-G][#b]? (major|minor)$",
                "description": "Key and mode (empty: C major)."},
    }),
    estimate_memory=lambda d, dtype: 0,
    model_hint=f"a directory holding {CONFIG} (test fixture)",
)


def _freq(note: int, octave: int) -> float:
    """Equal temperament, A4 = 440 Hz; ``note`` 0 is C."""
    return 440.0 * 2 ** ((note - 9) / 12 + (octave - 4))


class PulseBackend(ToneBackend):
    name: ClassVar[str] = "pulse"

    def load(self, source: str, *, device: str, dtype: str) -> None:
        self._caps = Capabilities(melody=False, continuation=False, stereo=False,
                                  max_native_duration_s=600.0, sample_rate=SAMPLE_RATE,
                                  frame_rate=20.0, channels=1)
        self._source, self._device, self._dtype = source, device, dtype

    def _one(self, p: Request, caps: Capabilities) -> GenerationOutput:
        rate = caps.sample_rate
        n = round(p.duration * rate)
        t = np.arange(n, dtype=np.float64) / rate
        bpm = int(p.options.get("bpm") or 0) or 100
        tonic_name, _, mode = (str(p.options.get("key") or "") or "C major").partition(" ")
        tonic = _NOTES.index(tonic_name.replace("Db", "C#").replace("Eb", "D#")
                             .replace("Gb", "F#").replace("Ab", "G#").replace("Bb", "A#"))
        third = 3 if mode == "minor" else 4
        beat = 60.0 / bpm
        phase = np.mod(t, beat)
        index = np.floor(t / beat).astype(np.int64)
        # Struck on every beat, decaying over it; the bar's first beat louder.
        envelope = np.exp(-phase * 8.0) * np.where(index % 4 == 0, 1.0, 0.6)
        chord = np.zeros(n)
        for step in (0, third, 7):
            f = _freq((tonic + step) % 12, 4 if tonic + step < 12 else 5)
            for harmonic, weight in ((1, 1.0), (2, 0.3), (3, 0.15)):
                chord += weight * np.sin(2 * math.pi * f * harmonic * t)
        # The low end marks the bar as a kick does: strong on its first beat, softer on the
        # third (the analysis finds the downbeat there).
        bass = (np.sin(2 * math.pi * _freq(tonic, 2) * t)
                * np.where(index % 4 == 0, 1.5, np.where(index % 4 == 2, 0.5, 0.0)))
        rows = []
        for v in range(p.variations):
            rng = np.random.default_rng([p.seed, v])
            mix = 0.12 * envelope * (chord + 0.8 * bass) + 0.002 * rng.standard_normal(n)
            rows.append(mix)
        audio = np.stack(rows)[:, None, :].astype(np.float32)
        info = {"backend": self.name, "source": self._source, "revision": None,
                "device": self._device, "dtype": self._dtype}
        return GenerationOutput(audio=audio, sample_rate=rate, info=info)
