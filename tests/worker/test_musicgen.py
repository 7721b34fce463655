"""Tests for timbred.worker.musicgen: the real tiny model through from_pretrained + generate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.conftest import TINY_STRIDE_S, TINY_WINDOW_S, WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker.backend import CancelToken
from timbred.worker.musicgen import MusicgenBackend, plan_windows

SR = 32_000
HOP = 640  # 50 Hz frames
CODEBOOKS = 4


def params(duration: float = 1.0, seed: int = 1, **kw: Any) -> Request:
    return Request(prompt="lo fi hip hop", duration=duration, seed=seed, **kw)


class Steps:
    """A progress callback that records every (step, total) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, step: int, total: int) -> None:
        self.calls.append((step, total))


@pytest.fixture
def generate_calls(backend: MusicgenBackend) -> Iterator[list[Any]]:
    """Spy on the loaded model's generate(): records each call's return value, the audio
    transformers decodes itself. Timbre has generate skip that decode (it decodes the
    kept tokens once, itself), so the spy lifts the stand-in for the call."""
    model = backend._state.model  # type: ignore[union-attr]
    real = model.generate
    calls: list[Any] = []

    def spy(**kwargs: Any) -> Any:
        codec = model.audio_encoder
        stand_in = vars(codec).pop("decode", None)
        assert stand_in is not None, "generate ran without the stand-in decode"
        try:
            out = real(**kwargs)
        finally:
            codec.decode = stand_in
        calls.append(out)
        return out

    model.generate = spy
    yield calls
    del model.generate  # back to the class attribute


def expected_steps(duration_s: float, *, prompt_frames: int = 0, window_s: float = 30.0,
                   stride_s: float = 18.0) -> int:
    frames = -(-round(duration_s * SR) // HOP)
    window = round(window_s * 50)
    plan = plan_windows(prompt_frames, frames, window_frames=window,
                        context_frames=window - round(stride_s * 50),
                        min_new_frames=CODEBOOKS)
    return sum(new + CODEBOOKS - 1 for _, new in plan)


class TestPlanWindows:
    def test_single_window(self) -> None:
        """A clip shorter than the window is one pass from nothing."""
        assert plan_windows(0, 100, window_frames=1500, context_frames=600,
                            min_new_frames=4) == [(0, 100)]

    def test_extension_keeps_window_minus_stride_of_context(self) -> None:
        """Later passes keep (window - stride) frames of context and add up to stride."""
        assert plan_windows(0, 115, window_frames=50, context_frames=20, min_new_frames=4) == [
            (0, 50), (20, 30), (20, 30), (20, 5)
        ]

    def test_prompt_is_context_and_last_pass_overshoots(self) -> None:
        """A prompt counts as context; a pass never adds fewer than min_new frames."""
        assert plan_windows(10, 52, window_frames=50, context_frames=20, min_new_frames=4) == [
            (10, 40), (20, 4)
        ]

    def test_refuses_a_stride_below_min_new(self) -> None:
        """A stride too small to complete the delay pattern is a ValueError."""
        with pytest.raises(ValueError, match="cannot window"):
            plan_windows(0, 10, window_frames=10, context_frames=8, min_new_frames=4)


class TestGenerate:
    def test_shape_length_and_rate(self, backend: MusicgenBackend) -> None:
        """Output is float32 (variations, channels, round(duration * 32000)) and finite."""
        out = backend.generate(params(1.23))
        assert out.sample_rate == SR
        assert out.audio.dtype == np.float32
        assert out.audio.shape == (1, 1, round(1.23 * SR))
        assert np.isfinite(out.audio).all()
        assert out.prompt_samples == 0
        assert out.info["backend"] == "musicgen"
        assert out.info["dtype"] == "float32"
        assert out.info["device"] == "cpu"
        assert out.info["windows"] == 1

    def test_same_seed_is_bit_identical(self, backend: MusicgenBackend) -> None:
        """Re-rendering with the same params gives the very same samples."""
        first = backend.generate(params(seed=42, variations=2))
        again = backend.generate(params(seed=42, variations=2))
        assert np.array_equal(first.audio, again.audio)

    def test_other_seed_differs(self, backend: MusicgenBackend) -> None:
        """A different seed gives different audio."""
        one = backend.generate(params(seed=1))
        two = backend.generate(params(seed=2))
        assert not np.array_equal(one.audio, two.audio)

    def test_text_prompt_conditions_the_output(self, backend: MusicgenBackend) -> None:
        """With the same seed, another text prompt gives other audio."""
        one = backend.generate(params(seed=3))
        two = backend.generate(Request(prompt="dark ambient synth", duration=1.0,
                                                seed=3))
        assert not np.array_equal(one.audio, two.audio)

    def test_variations_are_one_batched_generate(
        self, backend: MusicgenBackend, generate_calls: list[Any]
    ) -> None:
        """N variations are N distinct takes from ONE generate() call, with the same
        progress total as a single take."""
        single, batched = Steps(), Steps()
        backend.generate(params(1.0), progress=single)
        generate_calls.clear()
        out = backend.generate(params(1.0, variations=3), progress=batched)
        assert len(generate_calls) == 1
        assert out.audio.shape == (3, 1, SR)
        assert batched.calls[-1] == single.calls[-1]
        takes = out.audio[:, 0]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not np.array_equal(takes[i], takes[j])

    def test_tokens_match_transformers_own_decoding(
        self, backend: MusicgenBackend, generate_calls: list[Any]
    ) -> None:
        """Undoing the delay pattern on the captured tokens and decoding them gives the
        audio transformers' generate() returns itself (so no frame is shifted or lost)."""
        out = backend.generate(params(0.7, variations=2))
        reference = generate_calls[0].float().numpy()[..., : out.audio.shape[-1]]
        np.testing.assert_allclose(out.audio, reference, atol=1e-5)

    def test_progress_counts_every_step_up_to_total(self, backend: MusicgenBackend) -> None:
        """Progress is called once per decoding step: 1, 2, ... total, total fixed."""
        steps = Steps()
        backend.generate(params(1.0), progress=steps)
        total = expected_steps(1.0)
        assert steps.calls == [(i, total) for i in range(1, total + 1)]

    def test_greedy_and_bfloat16(self, tiny_model: Path) -> None:
        """temperature=0 decodes greedily (seed-independent) and bfloat16 models work."""
        backend = MusicgenBackend()
        backend.load(str(tiny_model), device="cpu", dtype="bfloat16")
        try:
            a = backend.generate(params(0.5, seed=1, options={"temperature": 0}))
            b = backend.generate(params(0.5, seed=2, options={"temperature": 0}))
        finally:
            backend.unload()
        assert a.info["dtype"] == "bfloat16"
        assert a.audio.dtype == np.float32
        assert np.array_equal(a.audio, b.audio)

    def test_unload_frees_and_refuses(self, tiny_model: Path) -> None:
        """After unload() memory_bytes() is 0 and generate() is GenerationFailed."""
        backend = MusicgenBackend()
        backend.load(str(tiny_model), device="cpu", dtype="float32")
        assert backend.memory_bytes() > 0
        backend.unload()
        assert backend.memory_bytes() == 0
        assert not backend.loaded
        with pytest.raises(errors.GenerationFailed):
            backend.generate(params())


class TestCancel:
    def test_cancel_lands_within_a_step(self, backend: MusicgenBackend) -> None:
        """Cancelling mid-generation raises Cancelled at the very next step check."""
        token = CancelToken()
        seen: list[int] = []

        def progress(step: int, total: int) -> None:
            seen.append(step)
            if step == 5:
                token.cancel()

        with pytest.raises(errors.Cancelled):
            backend.generate(params(5.0), progress=progress, cancel=token)
        assert seen[-1] == 5

    def test_cancelled_before_start(self, backend: MusicgenBackend) -> None:
        """An already-cancelled token stops the job before any decoding step."""
        token = CancelToken()
        token.cancel()
        steps = Steps()
        with pytest.raises(errors.Cancelled):
            backend.generate(params(), progress=steps, cancel=token)
        assert steps.calls == []


class TestWindowed:
    def test_exact_length_over_several_windows(self, windowed_backend: MusicgenBackend) -> None:
        """2.3 s with 1 s windows takes 4 passes, one progress total, and is exactly
        round(2.3 * 32000) samples."""
        steps = Steps()
        out = windowed_backend.generate(params(2.3, variations=2), progress=steps)
        assert out.audio.shape == (2, 1, round(2.3 * SR))
        assert out.info["windows"] == 4
        total = expected_steps(2.3, window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S)
        assert steps.calls == [(i, total) for i in range(1, total + 1)]
        assert windowed_backend.capabilities.max_native_duration_s == TINY_WINDOW_S

    def test_windowed_is_reproducible(self, windowed_backend: MusicgenBackend) -> None:
        """Windowed generation is as deterministic as a single pass."""
        a = windowed_backend.generate(params(2.1, seed=9))
        b = windowed_backend.generate(params(2.1, seed=9))
        assert np.array_equal(a.audio, b.audio)


class TestContinuation:
    def test_prompt_is_included_and_length_exact(
        self, windowed_backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """The output starts with the (re-synthesised) prompt, which counts towards
        the duration; the new part depends on the seed, the prompt part does not."""
        prompt = write_wav("prompt.wav", seconds=0.5, rate=48_000, channels=2)
        a = windowed_backend.generate(params(2.3, seed=1, continuation=str(prompt)))
        b = windowed_backend.generate(params(2.3, seed=2, continuation=str(prompt)))
        assert a.audio.shape == (1, 1, round(2.3 * SR))
        assert a.prompt_samples == round(0.5 * SR)  # a whole number of 640-sample frames
        head = a.prompt_samples // 2  # far from the boundary, where the codec mixes frames
        np.testing.assert_allclose(a.audio[..., :head], b.audio[..., :head], atol=1e-6)
        assert not np.allclose(a.audio[..., a.prompt_samples:], b.audio[..., b.prompt_samples:])

    def test_prompt_must_be_shorter_than_duration(
        self, backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """A prompt as long as the duration is InvalidParams naming duration."""
        prompt = write_wav("long.wav", seconds=1.0, rate=32_000, channels=1)
        with pytest.raises(errors.InvalidParams) as info:
            backend.generate(params(1.0, continuation=str(prompt)))
        assert info.value.data["param"] == "duration"


class TestMelody:
    def test_melody_conditioning_changes_the_output(
        self, melody_backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """A melody model accepts a melody file, and the melody changes the takes."""
        a4 = write_wav("a4.wav", freq=440.0, seconds=1.0)
        e4 = write_wav("e4.wav", freq=329.6, seconds=1.0)
        assert melody_backend.capabilities.melody
        one = melody_backend.generate(params(2.3, variations=2, melody=str(a4)))
        two = melody_backend.generate(params(2.3, variations=2, melody=str(e4)))
        assert one.audio.shape == (2, 1, round(2.3 * SR))
        assert not np.array_equal(one.audio, two.audio)

    def test_melody_with_continuation(
        self, melody_backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """Melody and continuation inputs work together."""
        melody = write_wav("melody.wav", seconds=0.7, rate=44_100, channels=1)
        prompt = write_wav("prompt.wav", seconds=0.4)
        out = melody_backend.generate(
            params(1.5, melody=str(melody), continuation=str(prompt))
        )
        assert out.audio.shape == (1, 1, round(1.5 * SR))
        assert out.prompt_samples == round(0.4 * SR)

    def test_melody_on_a_plain_model_is_invalid(
        self, backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """Asking a non-melody model for melody conditioning is InvalidParams('melody')."""
        assert not backend.capabilities.melody
        with pytest.raises(errors.InvalidParams) as info:
            backend.generate(params(melody=str(write_wav("m.wav"))))
        assert info.value.data["param"] == "melody"


class TestAudioInputs:
    @pytest.mark.parametrize("field", ["melody", "continuation"])
    def test_missing_file(self, melody_backend: MusicgenBackend, tmp_path: Path,
                          field: str) -> None:
        """A missing melody/continuation file is AudioInputError naming param and file."""
        path = str(tmp_path / "missing.wav")
        inputs: dict[str, Any] = {field: path}
        with pytest.raises(errors.AudioInputError) as info:
            melody_backend.generate(params(2.0, **inputs))
        assert info.value.data["param"] == field
        assert info.value.data["path"] == path

    @pytest.mark.parametrize("field", ["melody", "continuation"])
    def test_corrupt_file(self, melody_backend: MusicgenBackend, tmp_path: Path,
                          field: str) -> None:
        """A file that is not audio is AudioInputError naming param and file."""
        path = tmp_path / "corrupt.wav"
        path.write_bytes(b"this is not a wav file at all" * 10)
        inputs: dict[str, Any] = {field: str(path)}
        with pytest.raises(errors.AudioInputError) as info:
            melody_backend.generate(params(2.0, **inputs))
        assert info.value.data["param"] == field
        assert info.value.data["path"] == str(path)


class TestStereo:
    def test_stereo_takes_and_continuation(
        self, stereo_backend: MusicgenBackend, write_wav: WavWriter
    ) -> None:
        """A stereo model returns (variations, 2, samples); a stereo prompt is continued."""
        prompt = write_wav("stereo.wav", seconds=0.3, channels=2)
        caps = stereo_backend.capabilities
        assert (caps.stereo, caps.channels) == (True, 2)
        out = stereo_backend.generate(params(1.7, variations=2, continuation=str(prompt)))
        assert out.audio.shape == (2, 2, round(1.7 * SR))
        assert not np.array_equal(out.audio[:, 0], out.audio[:, 1])


class TestLoad:
    def test_capabilities(self, backend: MusicgenBackend) -> None:
        """The tiny model reports 32 kHz mono, 50 Hz frames, a 30 s native window."""
        caps = backend.capabilities
        assert (caps.sample_rate, caps.frame_rate, caps.channels) == (SR, 50.0, 1)
        assert (caps.melody, caps.continuation, caps.stereo) == (False, True, False)
        assert caps.max_native_duration_s == 30.0
        assert backend.memory_bytes() > 0

    def test_missing_source_is_model_not_found(self, tmp_path: Path) -> None:
        """A source that is neither a directory nor cached is ModelNotFound."""
        with pytest.raises(errors.ModelNotFound):
            MusicgenBackend().load(str(tmp_path / "nothing-here"), device="cpu",
                                   dtype="float32")

    def test_not_a_musicgen_checkpoint(self, tmp_path: Path) -> None:
        """A directory holding another model type is ModelLoadFailed saying so."""
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        with pytest.raises(errors.ModelLoadFailed, match="not a MusicGen checkpoint"):
            MusicgenBackend().load(str(tmp_path), device="cpu", dtype="float32")

    def test_bad_device_and_dtype(self, tiny_model: Path) -> None:
        """Unknown device or dtype strings are InvalidParams naming them."""
        with pytest.raises(errors.InvalidParams) as info:
            MusicgenBackend().load(str(tiny_model), device="tpu", dtype="float32")
        assert info.value.data["param"] == "device"
        with pytest.raises(errors.InvalidParams) as info:
            MusicgenBackend().load(str(tiny_model), device="cpu", dtype="int4")
        assert info.value.data["param"] == "dtype"

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_cuda_without_cuda(self, tiny_model: Path) -> None:
        """Asking for CUDA where torch has none is ModelLoadFailed with a clear reason."""
        with pytest.raises(errors.ModelLoadFailed, match="no CUDA device"):
            MusicgenBackend().load(str(tiny_model), device="cuda", dtype="float16")

    @pytest.mark.parametrize(("options", "param"),
                             [({"window_s": 0}, "window_s"), ({"stride_s": 40}, "stride_s")])
    def test_bad_window_options(self, options: dict[str, float], param: str) -> None:
        """Window options are validated in the constructor."""
        with pytest.raises(errors.InvalidParams) as info:
            MusicgenBackend(**options)
        assert info.value.data["param"] == param




class TestSampling:
    def test_defaults_are_the_familys_declared_ones(self) -> None:
        """A request without options samples with the spec's defaults (audiocraft's)."""
        from timbred.backends.musicgen import SPEC
        from timbred.worker.musicgen import Sampling
        got = Sampling.of(params())
        assert (got.temperature, got.top_k, got.top_p, got.guidance) == (
            SPEC.defaults()["temperature"], SPEC.defaults()["top_k"],
            SPEC.defaults()["top_p"], SPEC.defaults()["guidance"])
        assert Sampling.of(params(options={"top_k": 7})).top_k == 7

    @pytest.mark.parametrize(("options", "param"), [
        ({"temperature": -0.1}, "temperature"), ({"top_k": -1}, "top_k"),
        ({"top_p": 1.5}, "top_p"), ({"guidance": -1}, "guidance"), ({"steps": 4}, "steps"),
    ])
    def test_bad_options_name_the_parameter(self, backend: MusicgenBackend,
                                            options: dict[str, Any], param: str) -> None:
        """The worker checks a request's options against the family's schema too (a replayed
        recipe or a script may reach it without the daemon's edge)."""
        with pytest.raises(errors.InvalidParams) as info:
            backend.generate(params(options=options))
        assert param in str(info.value)
