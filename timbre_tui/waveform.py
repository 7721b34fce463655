"""Waveform sparklines: a peak envelope read from the take (soundfile, in a worker thread),
cached by path, drawn at any width with the eight block characters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
import soundfile as sf

BLOCKS = "▁▂▃▄▅▆▇█"
ENVELOPE_BINS = 512
_CHUNK_FRAMES = 65536


@dataclass(frozen=True)
class Envelope:
    """Peak amplitude (0..1) of ``ENVELOPE_BINS`` equal slices of a file, and its length."""

    duration_s: float
    peaks: tuple[float, ...]


def read_envelope(path: str, bins: int = ENVELOPE_BINS) -> Envelope:
    """Read ``path`` in chunks and return its peak envelope (blocking: run it in a thread)."""
    with sf.SoundFile(path) as f:
        frames = f.frames
        rate = f.samplerate
        if frames <= 0:
            return Envelope(0.0, ())
        n = min(bins, frames)
        edges = np.linspace(0, frames, n + 1).astype(np.int64)
        peaks = np.zeros(n, dtype=np.float32)
        start = 0
        for block in f.blocks(blocksize=_CHUNK_FRAMES, dtype="float32", always_2d=True):
            mono = np.abs(block).max(axis=1)
            stop = start + len(mono)
            first = int(np.searchsorted(edges, start, side="right")) - 1
            last = int(np.searchsorted(edges, stop - 1, side="right")) - 1
            for b in range(max(first, 0), min(last, n - 1) + 1):
                lo, hi = max(edges[b], start) - start, min(edges[b + 1], stop) - start
                if hi > lo:
                    peaks[b] = max(peaks[b], float(mono[lo:hi].max()))
            start = stop
    return Envelope(frames / rate, tuple(float(min(1.0, p)) for p in peaks))


def sparkline(envelope: Envelope, width: int) -> str:
    """``envelope`` as ``width`` block characters, scaled to its own loudest peak."""
    if width <= 0:
        return ""
    peaks = envelope.peaks
    if not peaks:
        return BLOCKS[0] * width
    top = max(peaks) or 1.0
    out = []
    for i in range(width):
        lo = i * len(peaks) // width
        hi = max(lo + 1, (i + 1) * len(peaks) // width)
        level = max(peaks[lo:hi]) / top
        out.append(BLOCKS[min(len(BLOCKS) - 1, int(level * (len(BLOCKS) - 1) + 0.5))])
    return "".join(out)


class WaveformCache:
    """Envelopes by path, read at most one at a time in a worker thread.

    ``get`` never blocks: the first call for a path schedules the read through ``spawn`` and
    returns None; ``on_ready`` is called once the envelope (or the reason it failed) is in.
    """

    def __init__(self, spawn: Callable[[Callable[[], Awaitable[None]]], None],
                 on_ready: Callable[[], None]) -> None:
        self._spawn = spawn
        self._on_ready = on_ready
        self._envelopes: dict[str, Envelope] = {}
        self._errors: dict[str, str] = {}
        self._pending: set[str] = set()
        self._limiter = anyio.CapacityLimiter(1)

    def get(self, path: str) -> Envelope | None:
        env = self._envelopes.get(path)
        if env is None and path not in self._errors and path not in self._pending:
            self._pending.add(path)
            self._spawn(lambda: self._load(path))
        return env

    def error(self, path: str) -> str | None:
        return self._errors.get(path)

    async def load(self, path: str) -> Envelope | None:
        """Read ``path`` now (if not cached) and return its envelope."""
        if path not in self._envelopes and path not in self._errors:
            self._pending.add(path)
            await self._load(path)
        return self._envelopes.get(path)

    async def _load(self, path: str) -> None:
        try:
            env = await anyio.to_thread.run_sync(read_envelope, path, limiter=self._limiter)
        except (OSError, RuntimeError, sf.LibsndfileError) as exc:
            self._errors[path] = f"cannot read {path}: {exc}"
        else:
            self._envelopes[path] = env
        finally:
            self._pending.discard(path)
        self._on_ready()
