"""Loudness: BS.1770-4 measurement, normalisation to a target, and a true-peak limiter.

:func:`normalise` measures integrated loudness with pyloudnorm (ITU-R BS.1770-4: K-weighting,
400 ms blocks with 75 % overlap, -70 LUFS absolute and -10 LU relative gates), applies the
gain to the target and keeps the true peak (4x oversampled with ``scipy.signal.resample_poly``,
as BS.1770-4 Annex 2 estimates it, and never below the sample peak) at or below the ceiling.
When the gain would push peaks past the ceiling, a look-ahead peak limiter takes them down
(see :func:`_limit`), and the gain is raised again (by at most :data:`MAX_LIMITER_PUSH_DB`)
until the limited take measures within :data:`LOUDNESS_TOLERANCE_LU` of the target.

The rule for audio that cannot be measured: shorter than one 400 ms gating block, silent or
quieter than the -70 LUFS gate, or more than 5 channels (pyloudnorm's limit). Its loudness is
reported as ``None``, no gain is applied, and it is only peak-limited if it exceeds the
ceiling (so 100 ms of silence comes back unchanged). Output is always finite float32 whose
sample peak and estimated true peak are at or below the ceiling.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyloudnorm

from timbred.errors import InvalidParams
from timbred.takes.audio import F64, Audio, as_audio, check_rate, warnings_ignored
from timbred.takes.options import check_number

__all__ = [
    "LoudnessReport",
    "integrated_loudness",
    "measure",
    "normalise",
    "true_peak_dbtp",
]

#: pyloudnorm's gating block (BS.1770): shorter audio has no integrated loudness.
LOUDNESS_BLOCK_S: Final = 0.4
#: pyloudnorm's channel limit (L, R, C, Ls, Rs).
LOUDNESS_MAX_CHANNELS: Final = 5
#: Oversampling factor of the true-peak estimate (BS.1770-4 Annex 2).
TRUE_PEAK_OVERSAMPLING: Final = 4
#: How close to the target a limited take is brought.
LOUDNESS_TOLERANCE_LU: Final = 0.1
#: The most gain the loudness loop adds on top of ``target - before`` to make up for limiting;
#: beyond it the take stays quieter than the target rather than being squashed.
MAX_LIMITER_PUSH_DB: Final = 6.0
_LOUDNESS_PASSES: Final = 6
#: Limiter: look-ahead (the gain starts falling this long before a peak), hold (it stays down
#: this long after), and the threshold below the ceiling it aims at.
LIMITER_LOOKAHEAD_S: Final = 0.005
LIMITER_HOLD_S: Final = 0.050
LIMITER_MARGIN_DB: Final = 0.05
_LIMITER_PASSES: Final = 4


@dataclass(frozen=True)
class LoudnessReport:
    """What :func:`normalise` measured and did.

    Loudness in LUFS and true peaks in dBTP are ``None`` when they cannot be measured (see the
    module docstring: too short, silent, too many channels); ``gain_db`` is the static gain
    applied before the limiter; ``limited`` says whether the limiter changed the audio.
    """

    before_lufs: float | None
    after_lufs: float | None
    true_peak_before_dbtp: float | None
    true_peak_after_dbtp: float | None
    gain_db: float
    limited: bool

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types (no NaN or infinity)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoudnessReport:
        """Build from :meth:`to_dict`'s output; InvalidParams on a missing or mistyped field."""
        if not isinstance(data, Mapping):
            raise InvalidParams("loudness must be an object", param="loudness")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                raise InvalidParams(f"loudness.{f.name} is required",
                                    param=f"loudness.{f.name}")
            value = data[f.name]
            if f.name == "limited":
                ok = isinstance(value, bool)
            elif f.name == "gain_db":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                ok = value is None or (isinstance(value, int | float)
                                       and not isinstance(value, bool))
            if not ok:
                raise InvalidParams(f"loudness.{f.name} has the wrong type: {value!r}",
                                    param=f"loudness.{f.name}")
            values[f.name] = value
        return cls(**values)


def _signal() -> Any:
    # scipy ships no type information (see timbred.worker.audio_io); imported lazily as Any.
    return importlib.import_module("scipy.signal")


def _ndimage() -> Any:
    return importlib.import_module("scipy.ndimage")



def _db(linear: float) -> float | None:
    return 20.0 * math.log10(linear) if linear > 0 else None


def _lin(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _integrated_loudness(x: F64, sample_rate: int) -> float | None:
    channels, n = x.shape
    if channels > LOUDNESS_MAX_CHANNELS or n < LOUDNESS_BLOCK_S * sample_rate:
        return None
    meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_S)
    with warnings_ignored(RuntimeWarning), np.errstate(all="ignore"):
        value = float(meter.integrated_loudness(np.ascontiguousarray(x.T)))
    return value if math.isfinite(value) else None


def integrated_loudness(audio: npt.ArrayLike, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness of ``(channels, samples)`` audio in LUFS, or ``None``
    when it cannot be measured (shorter than 400 ms, silent, more than 5 channels)."""
    return _integrated_loudness(as_audio(audio, allow_empty=True), check_rate(sample_rate))


def _oversampled_abs(x: F64) -> F64:
    """``|x|`` 4x oversampled, the maximum over channels: shape ``(4 * samples,)``."""
    up = _signal().resample_poly(x, TRUE_PEAK_OVERSAMPLING, 1, axis=-1)
    return np.asarray(np.abs(up).max(axis=0), dtype=np.float64)


def _true_peak(x: F64) -> float:
    """Estimated true peak (linear): the larger of the 4x-oversampled and the sample peak."""
    if x.size == 0:
        return 0.0
    return float(max(_oversampled_abs(x).max(), np.abs(x).max()))


def true_peak_dbtp(audio: npt.ArrayLike) -> float | None:
    """Estimated true peak of ``(channels, samples)`` audio in dBTP (BS.1770-4 Annex 2, 4x
    oversampling, never below the sample peak); ``None`` for all-zero audio."""
    return _db(_true_peak(as_audio(audio, allow_empty=True)))


def _peak_envelope(x: F64) -> F64:
    """Per sample, the largest absolute value of the oversampled signal next to it."""
    n = x.shape[1]
    between = _oversampled_abs(x).reshape(n, TRUE_PEAK_OVERSAMPLING).max(axis=1)
    env = np.asarray(np.maximum(between, np.abs(x).max(axis=0)), dtype=np.float64)
    env[1:] = np.maximum(env[1:], between[:-1])
    return env


def _limit(y: F64, sample_rate: int, ceiling: float) -> tuple[F64, bool]:
    """A look-ahead peak limiter that holds the estimated true peak at ``ceiling``.

    Per sample, the reduction needed (in dB) to bring the 4x-oversampled envelope down to a
    threshold :data:`LIMITER_MARGIN_DB` under the ceiling is spread with a running maximum over
    ``[n - hold, n + lookahead]`` and then smoothed by two running means of half-width
    ``lookahead / 2``. Because every sample in a smoothing window lies inside the maximum's
    window, the smoothed reduction is never less than what each sample needs, yet the gain
    moves only in S-shaped ramps of about ``2 * lookahead`` (10 ms), starting before the peak
    and releasing ``hold`` (50 ms) after it: no clipping, no distortion of the waveform
    beyond slow gain changes. Gain is the same on all channels (no image shift). A few passes
    handle the small changes of inter-sample peaks that gain modulation causes.
    """
    ndimage = _ndimage()
    lookahead = max(1, round(LIMITER_LOOKAHEAD_S * sample_rate))
    hold = max(lookahead, round(LIMITER_HOLD_S * sample_rate))
    hold += (hold - lookahead) % 2  # the running maximum's window is centred: even offset
    smooth = 2 * (lookahead // 2) + 1
    threshold = ceiling * _lin(-LIMITER_MARGIN_DB)
    limited = False
    for _ in range(_LIMITER_PASSES):
        env = _peak_envelope(y)
        if env.max() <= ceiling:
            break
        limited = True
        over = np.maximum(20.0 * np.log10(np.maximum(env, 1e-30) / threshold), 0.0)
        reduction = ndimage.maximum_filter1d(over, size=hold + lookahead + 1,
                                             origin=(hold - lookahead) // 2, mode="nearest")
        for _ in range(2):
            reduction = ndimage.uniform_filter1d(reduction, size=smooth, mode="nearest")
        y = y * np.power(10.0, -reduction / 20.0)
    return y, limited


def _finish(y: F64, ceiling: float) -> tuple[Audio, bool]:
    """float32, with the ceiling guaranteed on what is returned: a last static trim if the
    limiter's passes or the float32 rounding left the estimate above it (and whether one
    was needed)."""
    out: Audio = np.ascontiguousarray(y, dtype=np.float32)
    trimmed = False
    for _ in range(3):
        peak = _true_peak(out.astype(np.float64))
        if peak <= ceiling:
            break
        trimmed = True
        out = np.ascontiguousarray(out.astype(np.float64) * (ceiling / peak * (1 - 1e-6)),
                                   dtype=np.float32)
    return out, trimmed


def normalise(audio: npt.ArrayLike, sample_rate: int, *, target_lufs: float | None,
              ceiling_dbtp: float) -> tuple[Audio, LoudnessReport]:
    """Bring ``(channels, samples)`` audio to ``target_lufs`` with peaks under the ceiling.

    ``target_lufs=None`` only peak-limits. Measurement follows BS.1770-4, the true peak is
    estimated with 4x oversampling, and the ceiling is held by a look-ahead limiter
    (:func:`_limit`) rather than by clipping; see the module docstring for the rule on
    unmeasurable audio. Returns finite float32 audio of the same shape and a
    :class:`LoudnessReport` measured before and after.
    """
    rate = check_rate(sample_rate)
    x = as_audio(audio, allow_empty=True)
    check_number("target_lufs", target_lufs, -200.0, 200.0, optional=True)
    check_number("ceiling_dbtp", ceiling_dbtp, -200.0, 200.0)
    ceiling = _lin(ceiling_dbtp)
    before = _integrated_loudness(x, rate)
    peak_before = _true_peak(x)
    if x.shape[1] == 0:
        return (np.zeros(x.shape, dtype=np.float32),
                LoudnessReport(None, None, None, None, 0.0, False))
    gain_db = 0.0
    if target_lufs is not None and before is not None:
        gain_db = target_lufs - before
    linear_gain_db = gain_db
    y, limited = _limit(x * _lin(gain_db), rate, ceiling)
    if target_lufs is not None and before is not None and limited:
        # The limiter took some loudness away: add gain until the take is back at the target
        # (loudness grows by at most 1 dB per dB of gain, so the loop never overshoots).
        for _ in range(_LOUDNESS_PASSES):
            after = _integrated_loudness(y, rate)
            if after is None or target_lufs - after <= LOUDNESS_TOLERANCE_LU:
                break
            new_gain = min(gain_db + target_lufs - after, linear_gain_db + MAX_LIMITER_PUSH_DB)
            if new_gain <= gain_db + 1e-3:
                break
            gain_db = new_gain
            y, limited = _limit(x * _lin(gain_db), rate, ceiling)
    out, trimmed = _finish(y, ceiling)
    out64 = out.astype(np.float64)
    report = LoudnessReport(
        before_lufs=before,
        after_lufs=_integrated_loudness(out64, rate),
        true_peak_before_dbtp=_db(peak_before),
        true_peak_after_dbtp=_db(_true_peak(out64)),
        gain_db=gain_db,
        limited=limited or trimmed,
    )
    return out, report



def measure(audio: npt.ArrayLike, sample_rate: int) -> LoudnessReport:
    """The report for audio written as it is (normalisation off): its loudness and true peak,
    the same before and after, no gain, nothing limited."""
    x = as_audio(audio, allow_empty=True)
    before = _integrated_loudness(x, check_rate(sample_rate))
    peak = _db(_true_peak(x))
    return LoudnessReport(before, before, peak, peak, 0.0, False)
