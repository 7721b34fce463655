"""The streaming preview of the MusicGen backend: the real tiny model, chunk by chunk.

The fixture has random weights, so its audio is noise; what is checked is the bookkeeping a
player relies on (chunks in order, without gaps, ending exactly where the take ends, sent
while decoding still runs) and that each chunk is the take's own audio at that place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.conftest import WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker.backend import CancelToken, Preview
from timbred.worker.musicgen import MusicgenBackend

SR = 32_000
HOP = 640
CONTEXT = 50  # frames of left context decoded with each chunk (1 s at 50 Hz)


class Recorder:
    """Progress and preview callbacks that record what arrived, and at which step."""

    def __init__(self) -> None:
        self.step = 0
        self.total = 0
        self.chunks: list[tuple[int, np.ndarray[Any, np.dtype[np.float32]], int]] = []

    def progress(self, step: int, total: int) -> None:
        self.step, self.total = step, total

    def send(self, start: int, audio: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        self.chunks.append((start, audio.copy(), self.step))


class Decodes:
    """What the codec was asked to decode: preview pieces and the take's final codes."""

    def __init__(self) -> None:
        self.pieces: list[torch.Tensor] = []
        self.final: list[torch.Tensor] = []


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Decodes:
    """Spy on the backend's two decode paths (the real ones still run)."""
    seen = Decodes()
    real_frames, real_decode = MusicgenBackend._decode_frames, MusicgenBackend._decode

    def frames(st: Any, codes: torch.Tensor) -> Any:
        seen.pieces.append(codes.clone())
        return real_frames(st, codes)

    def decode(st: Any, codes: torch.Tensor, target: int, cancel: CancelToken) -> Any:
        seen.final.append(codes.clone())
        return real_decode(st, codes, target, cancel)

    monkeypatch.setattr(MusicgenBackend, "_decode_frames", staticmethod(frames))
    monkeypatch.setattr(MusicgenBackend, "_decode", staticmethod(decode))
    return seen


def run(backend: MusicgenBackend, params: Request, chunk_s: float = 0.5,
        cancel: CancelToken | None = None) -> tuple[Any, Recorder]:
    rec = Recorder()
    out = backend.generate(params, rec.progress, cancel, Preview(chunk_s, rec.send))
    return out, rec


def check_stream(out: Any, rec: Recorder, decodes: Decodes) -> None:
    """Chunks tile the take from 0 to its end; each is decoded from the take's own tokens."""
    position = 0
    for start, audio, _ in rec.chunks:
        assert start == position
        assert audio.dtype == np.float32
        assert audio.shape[:2] == out.audio.shape[:2]
        position += audio.shape[-1]
    assert position == out.audio.shape[-1]
    *early, (last_start, last, _) = rec.chunks
    # The last chunk is cut from the take's own decode.
    assert np.array_equal(last, out.audio[..., last_start:])
    # Every earlier chunk was decoded from exactly the tokens the take has there (plus up
    # to a second of earlier ones as context), read out of the delay pattern mid-decoding.
    (final,) = decodes.final
    assert len(decodes.pieces) == len(early)
    for (start, audio, _), piece in zip(early, decodes.pieces, strict=True):
        end = (start + audio.shape[-1]) // HOP
        first = max(0, start // HOP - CONTEXT)
        assert torch.equal(piece, final[..., first:end])


def test_chunks_arrive_while_decoding_and_tile_the_take(backend: MusicgenBackend,
                                                        decodes: Decodes) -> None:
    params = Request(prompt="rain on a tin roof", duration=2.0, seed=5)
    out, rec = run(backend, params)
    check_stream(out, rec, decodes)
    # 100 frames: 12 first (half a 25-frame chunk), 25, 25, 25, then the last 13 from the take.
    assert [a.shape[-1] // HOP for _, a, _ in rec.chunks] == [12, 25, 25, 25, 13]
    assert rec.chunks[0][0] == 0 and rec.chunks[0][1].shape[-1] == 12 * HOP
    # Sent during decoding, long before the last step: 12 frames + the 3-step delay pattern.
    assert rec.chunks[0][2] == 15 < rec.total
    assert all(step < rec.total for _, _, step in rec.chunks[:-1])


def test_the_take_is_the_same_with_or_without_preview(backend: MusicgenBackend,
                                                      decodes: Decodes) -> None:
    params = Request(prompt="same either way", duration=1.5, seed=9, variations=2)
    streamed, rec = run(backend, params, chunk_s=0.3)
    check_stream(streamed, rec, decodes)
    plain = backend.generate(params)
    assert np.array_equal(streamed.audio, plain.audio)
    assert rec.chunks[0][1].shape[:2] == (2, 1)


def test_windows_and_continuation_stream_without_gaps(windowed_backend: MusicgenBackend,
                                                      write_wav: WavWriter,
                                                      decodes: Decodes) -> None:
    prompt = write_wav("prompt.wav", seconds=0.5)
    params = Request(prompt="go on", duration=2.6, seed=2,
                              continuation=str(prompt))
    out, rec = run(windowed_backend, params, chunk_s=0.4)
    check_stream(out, rec, decodes)
    # The continued audio is final before the first step: it is the first chunk, at once.
    assert rec.chunks[0][2] == 0 and rec.chunks[0][1].shape[-1] == 25 * HOP


def test_stereo_chunks_carry_both_channels(stereo_backend: MusicgenBackend,
                                           decodes: Decodes) -> None:
    out, rec = run(stereo_backend, Request(prompt="wide", duration=1.2, seed=4))
    assert out.audio.shape[1] == 2
    check_stream(out, rec, decodes)


def test_a_cancel_stops_the_stream(backend: MusicgenBackend) -> None:
    cancel = CancelToken()
    rec = Recorder()

    def send(start: int, audio: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        rec.send(start, audio)
        cancel.cancel()

    with pytest.raises(errors.Cancelled):
        backend.generate(Request(prompt="stop", duration=2.0, seed=1),
                         rec.progress, cancel, Preview(0.5, send))
    assert len(rec.chunks) == 1


@pytest.mark.parametrize("chunk_s", [0.0, -1.0, 61.0, float("nan")])
def test_impossible_chunk_lengths_are_refused(chunk_s: float) -> None:
    with pytest.raises(errors.InvalidParams, match="chunk_s"):
        Preview(chunk_s, lambda start, audio: None)

