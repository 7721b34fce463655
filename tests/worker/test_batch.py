"""MusicgenBackend.generate_batch: several requests decoded together on the real tiny model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.worker.conftest import WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker.backend import CancelToken
from timbred.worker.musicgen import MusicgenBackend


def request(seed: int, **kw: Any) -> Request:
    kw.setdefault("duration", 1.0)
    kw.setdefault("prompt", f"request {seed}")
    return Request(seed=seed, **kw)


MIXED = [
    request(1),
    request(2, prompt="a longer prompt, so the text batch is padded",
            options={"temperature": 0.6, "top_k": 5}),
    request(3, variations=2, options={"guidance": 6.0, "top_p": 0.9}),
    request(4, options={"temperature": 0.0}),
]


def test_each_request_gets_its_own_takes(backend: MusicgenBackend) -> None:
    outputs = backend.generate_batch(MIXED)
    assert [o.audio.shape[0] for o in outputs] == [1, 1, 2, 1]
    assert all(o.info["batch_requests"] == 4 and o.info["batch_rows"] == 5 for o in outputs)
    rows = [take for o in outputs for take in o.audio]
    assert len({r.tobytes() for r in rows}) == 5


def test_a_request_samples_from_its_own_seed(backend: MusicgenBackend) -> None:
    """In fp32 on the CPU, a request's takes are the same alone, in a batch, or in another
    order: its tokens come from its own generator, and these GEMMs compute each row alike
    whatever the batch (that second part is the device's, hence the recorded batch)."""
    together = backend.generate_batch(MIXED)
    reordered = backend.generate_batch(MIXED[::-1])[::-1]
    for request_, a, b in zip(MIXED, together, reordered, strict=True):
        alone = backend.generate(request_)
        assert np.array_equal(a.audio, alone.audio)
        assert np.array_equal(b.audio, alone.audio)


def test_int8_batches_rerender_bit_identically(tiny_model: Any) -> None:
    backend = MusicgenBackend(precision="int8")
    backend.load(str(tiny_model), device="cpu", dtype="float32")
    try:
        first = backend.generate_batch(MIXED)
        again = backend.generate_batch(MIXED)
        assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, again, strict=True))
    finally:
        backend.unload()


@pytest.mark.parametrize(("other", "param"), [
    (request(2, duration=1.5), "duration"),
    (request(2, options={"guidance": 1.0}), "guidance"),
])
def test_requests_that_cannot_share_a_plan_are_refused(backend: MusicgenBackend,
                                                       other: Request,
                                                       param: str) -> None:
    with pytest.raises(errors.InvalidParams) as info:
        backend.generate_batch([request(1), other])
    assert info.value.data["param"] == param


def test_continuations_of_one_file_batch_together(windowed_backend: MusicgenBackend,
                                                  write_wav: WavWriter) -> None:
    """Requests continuing the same audio decode together, each from its own seed and
    settings: the takes equal each request decoded alone (fp32 on the CPU), across windows
    (2.3 s in 1 s windows); every take reports the same prompt length."""
    wav = str(write_wav("prompt.wav", seconds=0.3))
    items = [request(1, duration=2.3, continuation=wav),
             request(2, duration=2.3, continuation=wav, variations=2,
                     options={"temperature": 0.7}),
             request(3, duration=2.3, continuation=wav, options={"guidance": 5.0})]
    together = windowed_backend.generate_batch(items)
    assert [o.info["batch_requests"] for o in together] == [3, 3, 3]
    assert all(o.info["windows"] == together[0].info["windows"] > 1 for o in together)
    head = together[0].prompt_samples
    assert head > 0 and all(o.prompt_samples == head for o in together)
    takes = [take for o in together for take in o.audio]
    assert len({t[..., head:].tobytes() for t in takes}) == 4
    for item, out in zip(items, together, strict=True):
        assert np.array_equal(out.audio, windowed_backend.generate(item).audio)


@pytest.mark.parametrize("second", ["other file", "none"])
def test_different_continuations_do_not_share_a_batch(backend: MusicgenBackend,
                                                      write_wav: WavWriter,
                                                      second: str) -> None:
    a = str(write_wav("a.wav", seconds=0.3))
    b = str(write_wav("b.wav", seconds=0.3, freq=220.0))
    other = request(2, continuation=b) if second == "other file" else request(2)
    with pytest.raises(errors.InvalidParams, match="continue the same audio") as info:
        backend.generate_batch([request(1, continuation=a), other])
    assert info.value.data["param"] == "continuation"


def test_melodies_batch_each_with_its_own(melody_backend: MusicgenBackend,
                                         write_wav: WavWriter) -> None:
    """Requests with different melodies decode together, each conditioned on its own: the
    takes equal each request decoded alone (fp32 on the CPU), also across windows (2.3 s
    with 1 s windows) and with a melody shorter than the take (looped)."""
    a4 = str(write_wav("a4.wav", freq=440.0, seconds=1.0))
    e4 = str(write_wav("e4.wav", freq=329.6, seconds=0.4, rate=44_100))
    items = [request(1, duration=2.3, melody=a4),
             request(2, duration=2.3, melody=e4, variations=2),
             request(3, duration=2.3, melody=a4, options={"guidance": 5.0})]
    together = melody_backend.generate_batch(items)
    assert [o.info["batch_requests"] for o in together] == [3, 3, 3]
    for item, out in zip(items, together, strict=True):
        assert np.array_equal(out.audio, melody_backend.generate(item).audio)
    swapped = melody_backend.generate_batch([
        request(1, duration=2.3, melody=e4), items[1]])
    assert not np.array_equal(swapped[0].audio, together[0].audio)  # the melody counts


def test_melody_and_no_melody_do_not_share_a_batch(melody_backend: MusicgenBackend,
                                                   write_wav: WavWriter) -> None:
    a4 = str(write_wav("a4.wav", freq=440.0, seconds=1.0))
    with pytest.raises(errors.InvalidParams) as info:
        melody_backend.generate_batch([request(1, melody=a4), request(2)])
    assert info.value.data["param"] == "melody"


def test_one_cancelled_request_keeps_the_batch_going(backend: MusicgenBackend) -> None:
    tokens = [CancelToken() for _ in MIXED]
    tokens[1].cancel()
    outputs = backend.generate_batch(MIXED, cancels=tokens)
    plain = backend.generate_batch(MIXED)
    # The cancelled request was still decoded, so the others are exactly as without it.
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(outputs, plain, strict=True))


def test_a_batch_stops_once_every_request_is_cancelled(backend: MusicgenBackend) -> None:
    tokens = [CancelToken() for _ in MIXED]

    def progress(step: int, total: int) -> None:
        if step == 3:
            for token in tokens:
                token.cancel()

    with pytest.raises(errors.Cancelled):
        backend.generate_batch(MIXED, progress, tokens)
