"""The preallocated self-attention cache: DynamicCache's semantics without its copies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.conftest import TINY_STRIDE_S, TINY_WINDOW_S, WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker import kvcache
from timbred.worker.kvcache import PreallocatedLayer
from timbred.worker.musicgen import MusicgenBackend


def kv(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, length, 4, generator=g), torch.randn(2, 3, length, 4, generator=g))


class TestLayer:
    def test_matches_concatenation_and_grows_past_its_capacity(self) -> None:
        layer = PreallocatedLayer(capacity=3)
        keys, values = [], []
        for step, length in enumerate([2, 1, 1, 4, 1]):  # 9 positions: grows twice
            k, v = kv(length, step)
            keys.append(k)
            values.append(v)
            got_k, got_v = layer.update(k, v)
            assert torch.equal(got_k, torch.cat(keys, dim=-2))
            assert torch.equal(got_v, torch.cat(values, dim=-2))
            assert layer.get_seq_length() == sum(x.shape[-2] for x in keys)
        assert layer.keys is not None and layer.keys.shape == (2, 3, 9, 4)

    def test_appends_in_place_within_capacity(self) -> None:
        layer = PreallocatedLayer(capacity=8)
        first, _ = layer.update(*kv(2, 0))
        second, _ = layer.update(*kv(1, 1))
        # The same storage: no per-step copy of what is already cached.
        assert first.data_ptr() == second.data_ptr()
        assert torch.equal(second[..., :2, :], first)

    def test_crop_select_and_reset_keep_it_consistent(self) -> None:
        layer = PreallocatedLayer(capacity=4)
        k, v = kv(5, 0)
        layer.update(k, v)
        layer.crop(-2)
        assert layer.get_seq_length() == 3
        k2, v2 = kv(1, 1)
        got_k, _ = layer.update(k2, v2)
        assert torch.equal(got_k, torch.cat([k[..., :3, :], k2], dim=-2))
        layer.batch_select_indices(torch.tensor([1]))
        assert layer.keys is not None and layer.keys.shape == (1, 3, 4, 4)
        assert torch.equal(layer.keys, torch.cat([k[1:, :, :3], k2[1:]], dim=-2))
        layer.reset()
        assert layer.get_seq_length() == 0
        got_k, _ = layer.update(k2, v2)
        assert torch.equal(got_k, k2)


@pytest.fixture(scope="module")
def plain(tiny_model: Path) -> Iterator[MusicgenBackend]:
    """The tiny model decoding with transformers' own (concatenating) cache."""
    backend = MusicgenBackend(preallocate_kv=False)
    backend.load(str(tiny_model), device="cpu", dtype="float32")
    yield backend
    backend.unload()


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts PreallocatedLayer.update calls, to show the preallocated path really ran."""
    calls: list[int] = []
    original = PreallocatedLayer.update

    def counting(self: PreallocatedLayer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreallocatedLayer, "update", counting)
    return calls


@pytest.mark.parametrize("params", [
    Request(prompt="rhodes", duration=1.0, seed=3),
    Request(prompt="rhodes", duration=1.0, seed=3, options={"guidance": 1.0},
                     variations=2),
], ids=["guided", "unguided-variations"])
def test_takes_are_bit_identical_to_the_default_cache(
    backend: MusicgenBackend, plain: MusicgenBackend, params: Request,
    updates: list[int],
) -> None:
    assert backend.preallocate_kv and not plain.preallocate_kv
    ours = backend.generate(params).audio
    assert updates, "the preallocated cache was not used"
    theirs = plain.generate(params).audio
    assert ours.tobytes() == theirs.tobytes()


def test_windows_and_continuation_are_bit_identical(
    windowed_backend: MusicgenBackend, tiny_model: Path, write_wav: WavWriter,
    updates: list[int],
) -> None:
    """Later windows start from context frames: the capacity hint covers them too."""
    other = MusicgenBackend(window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S,
                            preallocate_kv=False)
    other.load(str(tiny_model), device="cpu", dtype="float32")
    try:
        prompt = write_wav("prompt.wav", freq=220.0, seconds=0.5, rate=32_000, channels=1)
        params = Request(prompt="bass", duration=2.3, seed=5,
                                  continuation=str(prompt))
        ours = windowed_backend.generate(params).audio
        assert updates
        assert ours.tobytes() == other.generate(params).audio.tobytes()
    finally:
        other.unload()


def test_melody_is_bit_identical(melody_backend: MusicgenBackend, tiny_melody_model: Path,
                                 write_wav: WavWriter, updates: list[int]) -> None:
    """MusicGen-Melody gets the cache passed in; its conditioning is in the sequence, so the
    buffers grow past the capacity hint."""
    other = MusicgenBackend(window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S,
                            preallocate_kv=False)
    other.load(str(tiny_melody_model), device="cpu", dtype="float32")
    try:
        melody = write_wav("melody.wav", freq=330.0, seconds=1.0)
        params = Request(prompt="lead", duration=1.5, seed=2,
                                  melody=str(melody))
        ours = melody_backend.generate(params).audio
        assert updates
        np.testing.assert_array_equal(ours, other.generate(params).audio)
    finally:
        other.unload()


def test_the_decoder_is_restored_after_a_pass(backend: MusicgenBackend) -> None:
    """The swap lives only as long as the generate call, even one that fails."""
    model: Any = backend._state.model if backend._state else None
    inner = model.decoder.model.decoder
    with pytest.raises(RuntimeError), kvcache.preallocated_kv(model, 4) as extra:
        assert extra == {}  # MusicGen: swapped in, not passed
        assert "forward" in vars(inner)
        raise RuntimeError("boom")
    assert "forward" not in vars(inner)


def test_bad_option_is_named() -> None:
    with pytest.raises(errors.InvalidParams) as info:
        MusicgenBackend(preallocate_kv="yes")
    assert info.value.data["param"] == "preallocate_kv"
