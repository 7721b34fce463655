"""The fast paths' load-time self-check: a broken fast path costs speed, never a take.

:func:`choose` is exercised with scripted probes; the backend tests break the real lean step
and the real preallocated cache on purpose (wrong numbers, or an exception, as an upstream
change would cause) and load the tiny fixture: the broken path is switched off with a reason
naming the transformers version, the take is still made, bit-identical to the stock path's,
and the take's info says which paths ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from tests.worker.conftest import TINY_STRIDE_S, TINY_WINDOW_S
from timbred.request import Request
from timbred.worker.backend import GenerationOutput
from timbred.worker.decodestep import LeanDecoder
from timbred.worker.fastpath import FastPaths, choose, difference
from timbred.worker.kvcache import PreallocatedLayer
from timbred.worker.musicgen import MusicgenBackend

LIBRARY = f"transformers {transformers.__version__}"
STOCK = [torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, float("-inf")]])]


def scripted(**by_flags: Any) -> Any:
    """A probe answering each ``(preallocate_kv, lean_steps)`` as given (default: STOCK);
    an exception instance given is raised."""
    def probe(kv: bool, lean: bool) -> Sequence[torch.Tensor]:
        answer = by_flags.get(f"{'kv' if kv else ''}{'+' if kv and lean else ''}"
                              f"{'lean' if lean else ''}" or "stock", STOCK)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]
    return probe


class TestChoose:
    def test_paths_that_agree_stay_on(self) -> None:
        """Both paths exact: both on, no fallback."""
        assert choose(scripted(), preallocate_kv=True, lean_steps=True,
                      library=LIBRARY) == FastPaths(True, True)

    def test_nothing_asked_runs_no_probe(self) -> None:
        """With both paths off nothing is probed (a raising probe is never called)."""
        probe = scripted(stock=RuntimeError("must not run"))
        assert choose(probe, preallocate_kv=False, lean_steps=False,
                      library=LIBRARY) == FastPaths(False, False)

    def test_a_raising_path_is_switched_off_and_the_other_kept(self) -> None:
        """The lean step raising (as a renamed keyword would make it) turns off only it; the
        reason names the path, the exception and the library version."""
        boom = TypeError("unexpected keyword argument 'past_key_values'")
        fast = choose(scripted(**{"kv+lean": boom, "lean": boom}), preallocate_kv=True,
                      lean_steps=True, library=LIBRARY)
        assert (fast.preallocate_kv, fast.lean_steps) == (True, False)
        assert fast.fallback is not None
        assert "lean_steps raised TypeError" in fast.fallback
        assert "past_key_values" in fast.fallback and LIBRARY in fast.fallback
        assert "preallocate_kv" not in fast.fallback

    def test_a_disagreeing_path_is_switched_off_naming_the_step(self) -> None:
        """Other logits at step 2: the cache path is off, with the step and the gap."""
        wrong = [STOCK[0], torch.tensor([[2.25, float("-inf")]])]
        fast = choose(scripted(**{"kv+lean": wrong, "kv": wrong}), preallocate_kv=True,
                      lean_steps=True, library=LIBRARY)
        assert (fast.preallocate_kv, fast.lean_steps) == (False, True)
        assert fast.fallback is not None and "preallocate_kv step 2" in fast.fallback
        assert "0.25" in fast.fallback

    def test_exact_alone_but_not_together_keeps_the_cache(self) -> None:
        """Each path exact alone, not together: one must go; the lean step does."""
        fast = choose(scripted(**{"kv+lean": [STOCK[0]]}), preallocate_kv=True,
                      lean_steps=True, library=LIBRARY)
        assert (fast.preallocate_kv, fast.lean_steps) == (True, False)
        assert fast.fallback is not None and "not together" in fast.fallback

    def test_a_broken_stock_path_fails_the_load(self) -> None:
        """The stock path's own failure is not hidden: it propagates."""
        with pytest.raises(RuntimeError, match="stock"):
            choose(scripted(stock=RuntimeError("stock broke")), preallocate_kv=True,
                   lean_steps=False, library=LIBRARY)

    def test_difference_is_bit_exact(self) -> None:
        """One ulp is a difference; equal -inf entries are not; step counts and dtypes are
        compared too."""
        one_ulp = torch.nextafter(STOCK[0], torch.tensor(1.0))
        assert difference(STOCK, [one_ulp, STOCK[1]]) is not None
        assert difference(STOCK, [s.clone() for s in STOCK]) is None
        assert difference(STOCK, STOCK[:1]) == "1 decoding steps instead of 2"
        assert "float64" in (difference(STOCK, [STOCK[0].double(), STOCK[1]]) or "")


PARAMS = Request(prompt="broken fast path", duration=2.0, seed=5, variations=2)


def _load(path: Path, **options: Any) -> MusicgenBackend:
    backend = MusicgenBackend(window_s=TINY_WINDOW_S, stride_s=TINY_STRIDE_S, **options)
    backend.load(str(path), device="cpu", dtype="float32")
    return backend


@pytest.fixture(scope="module")
def stock_audio(tiny_model: Path) -> Iterator[np.ndarray[Any, Any]]:
    """PARAMS decoded with both fast paths off: transformers' own path (3 windows)."""
    backend = _load(tiny_model, preallocate_kv=False, lean_steps=False)
    out = backend.generate(PARAMS)
    assert out.info["fast_paths"] == {"preallocate_kv": False, "lean_steps": False,
                                      "fallback": None}
    backend.unload()
    yield out.audio


def _load_and_generate(path: Path, params: Request = PARAMS,
                       after_load: Callable[[], object] = lambda: None
                       ) -> tuple[tuple[str, ...], GenerationOutput]:
    """Load ``path`` (running the self-check), call ``after_load``, make ``params``' takes:
    the load's warnings and the output."""
    backend = _load(path)
    try:
        warnings = backend.load_warnings
        after_load()
        return warnings, backend.generate(params)
    finally:
        backend.unload()


def _lean_off_by_a_hair(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the real lean step return slightly wrong hidden states; count its calls."""
    calls: list[int] = []
    original = LeanDecoder.step

    def off(self: LeanDecoder, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        out: Any = original(self, *args, **kwargs)
        out.last_hidden_state = out.last_hidden_state + 1e-3
        return out

    monkeypatch.setattr(LeanDecoder, "step", off)
    return calls


class TestBackendSelfCheck:
    def test_healthy_paths_are_on_and_recorded(self, tiny_model: Path,
                                               stock_audio: np.ndarray[Any, Any]) -> None:
        """With the installed transformers both paths pass their check, decode the take
        bit-identically to the stock path, and the info says they ran."""
        warnings, out = _load_and_generate(tiny_model)
        assert warnings == ()
        assert out.info["fast_paths"] == {"preallocate_kv": True, "lean_steps": True,
                                          "fallback": None}
        assert np.array_equal(out.audio, stock_audio)

    def test_a_disagreeing_lean_step_falls_back_and_the_take_is_made(
            self, tiny_model: Path, stock_audio: np.ndarray[Any, Any],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A lean step that is off by 1e-3 is caught at load: one warning naming the
        transformers version, the take is still made through the stock step (the broken one
        is never called again), bit-identical to transformers' own, and the info says why."""
        calls = _lean_off_by_a_hair(monkeypatch)
        (warning,), out = _load_and_generate(tiny_model, after_load=calls.clear)
        assert "lean_steps step" in warning and "logits differ" in warning
        assert LIBRARY in warning and str(tiny_model) in warning
        assert calls == []
        fast = out.info["fast_paths"]
        assert (fast["preallocate_kv"], fast["lean_steps"]) == (True, False)
        assert fast["fallback"] is not None and LIBRARY in fast["fallback"]
        assert np.array_equal(out.audio, stock_audio)

    def test_a_raising_lean_step_falls_back(self, tiny_model: Path,
                                            stock_audio: np.ndarray[Any, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """A lean step that raises (as a renamed internal would make it) is switched off the
        same way; the take is the stock path's, bit for bit."""
        def raising(self: LeanDecoder, *args: Any, **kwargs: Any) -> Any:
            raise AttributeError("'EncoderDecoderCache' object has no attribute 'layers'")

        monkeypatch.setattr(LeanDecoder, "step", raising)
        (warning,), out = _load_and_generate(tiny_model)
        assert "lean_steps raised AttributeError" in warning
        assert out.info["fast_paths"]["lean_steps"] is False
        assert np.array_equal(out.audio, stock_audio)

    def test_a_corrupting_cache_falls_back_and_keeps_the_lean_step(
            self, tiny_model: Path, stock_audio: np.ndarray[Any, Any],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """A preallocated cache that hands attention wrong values is switched off alone: the
        lean step, exact on transformers' cache, stays on; the take is still exact."""
        original = PreallocatedLayer.update

        def corrupting(self: PreallocatedLayer, *args: Any, **kwargs: Any
                       ) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = original(self, *args, **kwargs)
            return keys, values * 1.001

        monkeypatch.setattr(PreallocatedLayer, "update", corrupting)
        (warning,), out = _load_and_generate(tiny_model)
        assert "preallocate_kv" in warning and "lean_steps" not in warning
        assert out.info["fast_paths"]["preallocate_kv"] is False
        assert out.info["fast_paths"]["lean_steps"] is True
        assert np.array_equal(out.audio, stock_audio)

    def test_the_melody_model_checks_too(self, tiny_melody_model: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """MusicGen-Melody's decoder (another class, another cache hand-over) is probed the
        same way: a broken lean step is caught there too."""
        _lean_off_by_a_hair(monkeypatch)
        (warning,), out = _load_and_generate(
            tiny_melody_model, Request(prompt="hum", duration=1.0, seed=1))
        assert "lean_steps" in warning
        assert out.audio.shape[0] == 1 and np.isfinite(out.audio).all()
