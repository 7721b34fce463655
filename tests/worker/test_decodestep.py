"""The lean decoding step: transformers' numbers, step for step, without its machinery.

Every test runs the same request through two real backends on the tiny fixture, one with
``lean_steps`` on (the default) and one with it off, records the logits of every decoder
forward (a forward hook on the real model) and requires them to be bit-identical, together
with the takes. Counting ``LeanDecoder.step`` shows the lean path really ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import EncodecModel

from tests.worker.conftest import TINY_STRIDE_S, TINY_WINDOW_S, WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker.decodestep import LeanDecoder, lean_decoder, lean_steps
from timbred.worker.musicgen import MusicgenBackend
from timbred.worker.precision import int8_available


def _load(path: Path, **options: Any) -> MusicgenBackend:
    backend = MusicgenBackend(window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S, **options)
    backend.load(str(path), device="cpu", dtype="float32")
    return backend


@pytest.fixture(scope="module")
def pair(tiny_model: Path) -> Iterator[tuple[MusicgenBackend, MusicgenBackend]]:
    """(lean, transformers) backends of the tiny mono model, 1 s windows."""
    lean, plain = _load(tiny_model), _load(tiny_model, lean_steps=False)
    yield lean, plain
    lean.unload()
    plain.unload()


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts LeanDecoder.step calls, to show the lean path really ran."""
    calls: list[int] = []
    original = LeanDecoder.step

    def counting(self: LeanDecoder, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LeanDecoder, "step", counting)
    return calls


def run(backend: MusicgenBackend, items: list[Request]
        ) -> tuple[list[torch.Tensor], list[bytes]]:
    """Every decoder forward's logits, and each take's audio bytes."""
    state = backend._state
    assert state is not None
    logits: list[torch.Tensor] = []
    hook = state.model.decoder.register_forward_hook(
        lambda module, args, out: logits.append(out.logits.clone()))
    try:
        outputs = backend.generate_batch(items)
    finally:
        hook.remove()
    return logits, [o.audio.tobytes() for o in outputs]


def assert_identical(lean: MusicgenBackend, plain: MusicgenBackend,
                     items: list[Request], lean_calls: list[int]) -> None:
    assert lean.lean_steps and not plain.lean_steps
    ours, our_audio = run(lean, items)
    steps = len(lean_calls)
    theirs, their_audio = run(plain, items)
    assert len(lean_calls) == steps, "lean_steps=False still took lean steps"
    assert len(ours) == len(theirs) > 0
    # Only a pass's prefill and first step (which fill the caches) go to transformers.
    assert steps > len(ours) // 2, f"only {steps} of {len(ours)} forwards were lean"
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"forward {index}: logits differ"
    assert our_audio == their_audio


@pytest.mark.parametrize("items", [
    [Request(prompt="rhodes", duration=1.0, seed=3)],
    # Two requests with their own sampling settings; one has variations.
    [Request(prompt="warm rhodes", duration=0.8, seed=3, options={"top_k": 50}),
     Request(prompt="drums", duration=0.8, seed=4, variations=2, options={"temperature": 0.7})],
    [Request(prompt="rhodes", duration=0.8, seed=3, options={"guidance": 1.0},
                      variations=2)],
    # Three windows: later passes start from context frames.
    [Request(prompt="bass", duration=2.3, seed=5)],
], ids=["guided", "batch", "unguided", "windows"])
def test_every_step_is_bit_identical(pair: tuple[MusicgenBackend, MusicgenBackend],
                                     items: list[Request],
                                     lean_calls: list[int]) -> None:
    assert_identical(*pair, items, lean_calls)


def test_continuation_is_bit_identical(pair: tuple[MusicgenBackend, MusicgenBackend],
                                       write_wav: WavWriter, lean_calls: list[int]) -> None:
    prompt = write_wav("prompt.wav", freq=220.0, seconds=0.5, rate=32_000, channels=1)
    items = [Request(prompt="bass", duration=1.6, seed=5,
                              continuation=str(prompt))]
    assert_identical(*pair, items, lean_calls)


def test_without_the_preallocated_cache(tiny_model: Path, lean_calls: list[int]) -> None:
    """The lean step appends to transformers' own DynamicCache just as well."""
    lean = _load(tiny_model, preallocate_kv=False)
    plain = _load(tiny_model, preallocate_kv=False, lean_steps=False)
    try:
        assert_identical(lean, plain, [Request(prompt="keys", duration=1.0,
                                                        seed=9)], lean_calls)
    finally:
        lean.unload()
        plain.unload()


def test_melody_is_bit_identical(tiny_melody_model: Path, write_wav: WavWriter,
                                 lean_calls: list[int]) -> None:
    """MusicGen-Melody: no cross-attention; its conditioning is part of the sequence."""
    lean, plain = _load(tiny_melody_model), _load(tiny_melody_model, lean_steps=False)
    try:
        melody = write_wav("melody.wav", freq=330.0, seconds=1.0)
        items = [Request(prompt="lead", duration=1.5, seed=2,
                                  melody=str(melody))]
        assert_identical(lean, plain, items, lean_calls)
    finally:
        lean.unload()
        plain.unload()


def test_stereo_is_bit_identical(tiny_stereo_model: Path, lean_calls: list[int]) -> None:
    lean, plain = _load(tiny_stereo_model), _load(tiny_stereo_model, lean_steps=False)
    try:
        assert_identical(lean, plain, [Request(prompt="pad", duration=1.0, seed=6)],
                         lean_calls)
    finally:
        lean.unload()
        plain.unload()


@pytest.mark.skipif(not int8_available(), reason="no int8 engine in this torch")
def test_int8_is_bit_identical(tiny_model: Path, lean_calls: list[int]) -> None:
    """The quantized linears are called directly (their bound forward), same numbers."""
    lean = _load(tiny_model, precision="int8")
    plain = _load(tiny_model, precision="int8", lean_steps=False)
    try:
        items = [Request(prompt="lofi", duration=1.0, seed=1),
                 Request(prompt="dub", duration=1.0, seed=2)]
        assert_identical(lean, plain, items, lean_calls)
    finally:
        lean.unload()
        plain.unload()


def test_generate_no_longer_decodes_audio_it_throws_away(
        pair: tuple[MusicgenBackend, MusicgenBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    """EnCodec runs once per take (mono: one call), not also at the end of every pass."""
    calls: list[tuple[int, ...]] = []
    original = EncodecModel.decode

    def counting(self: Any, audio_codes: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(audio_codes.shape))
        return original(self, audio_codes, *args, **kwargs)

    monkeypatch.setattr(EncodecModel, "decode", counting)
    lean, _ = pair
    items = [Request(prompt="a", duration=2.3, seed=1),  # three windows
             Request(prompt="b", duration=2.3, seed=2, variations=2)]
    outputs = lean.generate_batch(items)
    assert [o.audio.shape[-1] for o in outputs] == [round(2.3 * 32_000)] * 2
    assert len(calls) == 3, f"EnCodec ran {len(calls)} times for 3 takes: {calls}"
    assert all(shape[:2] == (1, 1) for shape in calls)  # one take at a time


def test_only_plain_decoding_steps_are_covered(
        pair: tuple[MusicgenBackend, MusicgenBackend]) -> None:
    """Requests for attentions or hidden states, and unknown attention code, go to transformers."""
    lean, _ = pair
    state = lean._state
    assert state is not None
    model: Any = state.model
    decoder = model.decoder.model.decoder
    step = lean_decoder(model)
    assert step is not None
    ids = torch.zeros((4, 1), dtype=torch.long)
    assert not step.covers(ids, None, None, None, {})  # no cache yet: the first step
    config = decoder.config
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        assert lean_decoder(model) is None
    finally:
        config._attn_implementation = saved
    with pytest.raises(RuntimeError), lean_steps(model) as used:
        assert used and "forward" in vars(decoder)
        raise RuntimeError("boom")
    assert "forward" not in vars(decoder)  # the class's method again, even after a failure


def test_a_covered_step_asking_for_more_is_left_to_transformers(
        pair: tuple[MusicgenBackend, MusicgenBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real decoding step's call, replayed with extra outputs or in training mode, is not
    taken: the lean step returns neither attentions nor hidden states."""
    covered: list[tuple[Any, ...]] = []
    original = LeanDecoder.covers

    def spying(self: LeanDecoder, *args: Any) -> bool:
        result = original(self, *args)
        if result and not covered:
            covered.append((self, *args))
        return result

    monkeypatch.setattr(LeanDecoder, "covers", spying)
    lean, _ = pair
    lean.generate(Request(prompt="x", duration=0.4, seed=1))
    assert covered, "no step was covered"
    step, ids, embeds, encoder_states, cache, extra = covered[0]
    assert original(step, ids, embeds, encoder_states, cache, extra)  # still true now
    for flag in ("output_hidden_states", "output_attentions"):
        assert not original(step, ids, embeds, encoder_states, cache, {flag: True})
    step.decoder.train()
    try:
        assert not original(step, ids, embeds, encoder_states, cache, extra)
    finally:
        step.decoder.eval()


def test_bad_option_is_named() -> None:
    with pytest.raises(errors.InvalidParams) as info:
        MusicgenBackend(lean_steps="yes")
    assert info.value.data["param"] == "lean_steps"
