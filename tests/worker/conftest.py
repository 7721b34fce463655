"""Fixtures for the worker tests: the tiny MusicGen checkpoints, loaded backends, audio files.

Everything is real: the checkpoints are built with random weights by
:mod:`timbred.testing.tiny_musicgen` (once per session), loaded through ``from_pretrained``
and run through ``generate``; the worker tests spawn real processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from timbred.testing.tiny_musicgen import build_tiny_musicgen
from timbred.worker.musicgen import MusicgenBackend

#: Windows of 1 s with 0.4 s of context (0.6 s stride), so 2-3 s clips need several passes.
TINY_WINDOW_S = 1.0
TINY_STRIDE_S = 0.6

WavWriter = Callable[..., Path]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Session scope, so that module-scoped async fixtures (a running worker) are allowed.
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model(tiny: Path) -> Path:
    """The tiny mono MusicGen checkpoint directory (the session's, from tests/conftest.py)."""
    return tiny


@pytest.fixture(scope="session")
def tiny_melody_model(tiny_melody: Path) -> Path:
    """The tiny MusicGen-Melody checkpoint directory (shared with the daemon tests)."""
    return tiny_melody


@pytest.fixture(scope="session")
def tiny_stereo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stereo MusicGen checkpoint directory."""
    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny-stereo", stereo=True)


def _loaded(path: Path, **options: float) -> Iterator[MusicgenBackend]:
    backend = MusicgenBackend(**options)
    backend.load(str(path), device="cpu", dtype="float32")
    yield backend
    backend.unload()


@pytest.fixture(scope="session")
def backend(tiny_model: Path) -> Iterator[MusicgenBackend]:
    """The tiny model loaded with MusicGen's default 30 s window."""
    yield from _loaded(tiny_model)


@pytest.fixture(scope="session")
def windowed_backend(tiny_model: Path) -> Iterator[MusicgenBackend]:
    """The tiny model loaded with 1 s windows (0.6 s stride)."""
    yield from _loaded(tiny_model, window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S)


@pytest.fixture(scope="session")
def melody_backend(tiny_melody_model: Path) -> Iterator[MusicgenBackend]:
    """The tiny melody model loaded with 1 s windows."""
    yield from _loaded(tiny_melody_model, window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S)


@pytest.fixture(scope="session")
def stereo_backend(tiny_stereo_model: Path) -> Iterator[MusicgenBackend]:
    """The tiny stereo model loaded with 1 s windows."""
    yield from _loaded(tiny_stereo_model, window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S)


def sine(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """A sine tone, shape (frames, channels), at a quarter of full scale."""
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.25 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(tone[:, None], channels, axis=1)


@pytest.fixture
def write_wav(tmp_path: Path) -> WavWriter:
    """``write_wav(name, freq=440, seconds=0.5, rate=48000, channels=2) -> Path``."""

    def write(name: str, *, freq: float = 440.0, seconds: float = 0.5, rate: int = 48_000,
              channels: int = 2) -> Path:
        path = tmp_path / name
        sf.write(path, sine(freq, seconds, rate, channels), rate)
        return path

    return write
