"""Loops cut on bar lines with a click-free seam: the loop played twice end to end has no
jump at the seam beyond the steepest moments inside it, and a plain cut does."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from timbred.errors import InvalidParams
from timbred.takes.loops import make_loop, seam_jump

SR = 22_050


def take(seconds: float = 8.0) -> npt.NDArray[np.float32]:
    """A 220.7 Hz tone with 0.37 Hz vibrato and a little noise, in stereo: no whole number
    of its periods fits in a bar, so a cut lands mid-wave."""
    t = np.arange(round(seconds * SR)) / SR
    rng = np.random.default_rng(3)
    wave = 0.5 * np.sin(2 * np.pi * 220.7 * t + 3 * np.sin(2 * np.pi * 0.37 * t))
    left = wave + 0.01 * rng.standard_normal(t.size)
    return np.vstack([left, 0.8 * left]).astype(np.float32)


class TestLoops:
    def test_two_bars_at_120_are_four_seconds_and_loop_without_a_click(self) -> None:
        loop = make_loop(take(), SR, bpm=120.0, downbeat=0.3, bars=2)
        assert loop.shape == (2, 4 * SR) and loop.dtype == np.float32
        naive = take()[:, round(0.3 * SR):round(0.3 * SR) + 4 * SR]
        assert seam_jump(loop) < 1.2
        assert seam_jump(naive) > 3 * seam_jump(loop)  # the measure can fail

    def test_a_late_downbeat_steps_back_a_bar_at_a_time(self) -> None:
        """Asked from 6.3 s, 2 bars of 2 s do not fit in 8 s: the loop starts a bar (or
        two) earlier, still on the bar grid."""
        audio = take()
        loop = make_loop(audio, SR, bpm=120.0, downbeat=6.3, bars=2, crossfade_s=0.0)
        starts = [s for s in (4.3, 2.3, 0.3)
                  if np.array_equal(loop, audio[:, round(s * SR):round(s * SR) + 4 * SR])]
        assert starts == [2.3]

    def test_bars_that_do_not_fit_are_refused_saying_how_many_do(self) -> None:
        with pytest.raises(InvalidParams, match=r"at most 3 bar\(s\) do") as info:
            make_loop(take(), SR, bpm=120.0, downbeat=0.0, bars=5)
        assert info.value.data["param"] == "bars"

    @pytest.mark.parametrize(("kwargs", "param"), [
        ({"bars": 0}, "bars"), ({"bpm": 0.0}, "bpm"), ({"bpm": float("nan")}, "bpm"),
        ({"beats_per_bar": 0}, "beats_per_bar"), ({"downbeat": -1.0}, "downbeat"),
        ({"crossfade_s": 1.0}, "crossfade_s")])
    def test_impossible_values_name_the_parameter(self, kwargs: dict[str, float],
                                                  param: str) -> None:
        args = {"bpm": 120.0, "downbeat": 0.0, "bars": 1, **kwargs}
        with pytest.raises(InvalidParams) as info:
            make_loop(take(), SR, **args)  # type: ignore[arg-type]
        assert info.value.data["param"] == param
