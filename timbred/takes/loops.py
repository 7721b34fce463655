"""Loops that loop: a whole number of bars cut from a take on a downbeat, with a seam that
plays end to end without a click.

The method (:func:`make_loop`): the loop is ``L = bars * beats_per_bar * 60 / bpm`` seconds
(rounded to samples), starting at the first downbeat from which it fits. Played twice, the
sample after the loop's last is its first; in the take, the sample after its last is the one
at ``start + L``. So the loop's head is crossfaded with the take's own continuation: over the
first ``crossfade_s``, ``loop[i] = fade_in[i] * take[start + i] + fade_out[i] *
take[start + L + i]`` (equal-power curves). At the seam, the loop's end is followed by
``take[start + L]`` - exactly what followed it in the take - and the head fades into the
loop's own material, so the waveform and its slope are continuous. This needs ``crossfade_s``
of audio after the loop (the last bars of a take can only be cut if that much follows).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from timbred.errors import InvalidParams
from timbred.takes.audio import Audio, as_audio, check_rate

__all__ = ["make_loop", "seam_jump"]

#: Longest crossfade accepted (a quarter of a second is already audible as a swell).
MAX_CROSSFADE_S: Final = 0.25


def make_loop(audio: npt.ArrayLike, sample_rate: int, *, bpm: float, downbeat: float,
              bars: int, beats_per_bar: int = 4, crossfade_s: float = 0.01) -> Audio:
    """``bars`` whole bars of ``(channels, samples)`` audio from the first downbeat at or
    after ``downbeat`` (stepping a bar at a time) from which they fit, the head crossfaded
    with what follows the cut (see the module docstring). float32, exactly
    ``round(bars * beats_per_bar * 60 / bpm * sample_rate)`` samples long.

    InvalidParams naming ``bars`` when they do not fit (saying how many would), ``bpm``,
    ``beats_per_bar``, ``downbeat`` or ``crossfade_s`` when impossible."""
    rate = check_rate(sample_rate)
    x = as_audio(audio)
    if isinstance(bars, bool) or not isinstance(bars, int) or bars < 1:
        raise InvalidParams(f"bars must be a whole number of at least 1, got {bars!r}",
                            param="bars")
    if isinstance(beats_per_bar, bool) or not isinstance(beats_per_bar, int) \
            or not 1 <= beats_per_bar <= 16:
        raise InvalidParams(f"beats_per_bar must be 1..16, got {beats_per_bar!r}",
                            param="beats_per_bar")
    for name, value, low in (("bpm", bpm, 1e-9), ("downbeat", downbeat, 0.0),
                             ("crossfade_s", crossfade_s, 0.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < low:
            raise InvalidParams(f"{name} must be a number of at least {low:g}, got {value!r}",
                                param=name)
    if not 20 <= bpm <= 400:
        raise InvalidParams(f"bpm must be 20..400, got {bpm:g}", param="bpm")
    if crossfade_s > MAX_CROSSFADE_S:
        raise InvalidParams(f"crossfade_s must be at most {MAX_CROSSFADE_S:g}",
                            param="crossfade_s")
    bar = beats_per_bar * 60.0 / bpm
    length = round(bars * bar * rate)
    fade = round(crossfade_s * rate)
    total = x.shape[1]
    start_s = downbeat
    # The first downbeat from which the loop and its crossfade's source both fit.
    while round(start_s * rate) + length + fade > total and start_s - bar >= -1e-9:
        start_s -= bar
    start = round(max(0.0, start_s) * rate)
    if start + length + fade > total:
        fits = max(0, math.floor((total - fade) / rate / bar))
        raise InvalidParams(
            f"bars: {bars} bar(s) at {bpm:g} BPM ({length / rate:.2f} s) do not fit in this "
            f"{total / rate:.2f} s take; at most {fits} bar(s) do", param="bars",
            fits=fits)
    loop = x[:, start:start + length].copy()
    if fade:
        t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
        fade_in, fade_out = np.sin(t * np.pi / 2), np.cos(t * np.pi / 2)
        after = x[:, start + length:start + length + fade]
        loop[:, :fade] = fade_in * loop[:, :fade] + fade_out * after
    return np.ascontiguousarray(loop, dtype=np.float32)


def seam_jump(loop: npt.ArrayLike) -> float:
    """How much the seam of ``loop`` played twice jumps: the step from its last sample to
    its first, over the 99th percentile of the steps between neighbouring samples inside
    it (the largest over channels). At most about 1 when the seam is no steeper than the
    loop's own steep moments (an attack); a cut through a wave without a crossfade gives
    several times that."""
    x = as_audio(loop)
    steps = np.abs(np.diff(x, axis=1))
    typical = np.maximum(np.percentile(steps, 99, axis=1), 1e-12)
    seam = np.abs(x[:, 0] - x[:, -1])
    return float((seam / typical).max())
