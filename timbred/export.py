"""Takes that leave the studio right: formats, loudness, tags and a sidecar, written atomically.

:func:`write_take` turns a float32 ``(channels, samples)`` take into a file: it normalises the
loudness (:func:`normalise`), encodes (:func:`encode`), tags, and publishes the file and its
sidecar JSON through :mod:`timbred.takes` (temporary name, fsync, ``os.link``, never
overwriting). :func:`write_next_take` picks ``take-<n>.<ext>`` in a session directory;
:func:`export_existing` re-encodes a take that is already on disk.

Formats (all written by libsndfile through soundfile, into memory first)
-----------------------------------------------------------------------
* ``wav``: PCM_16, PCM_24 or 32-bit FLOAT.
* ``flac``: 24-bit.
* ``mp3``: MPEG Layer III, constant bit rate (LAME inside libsndfile >= 1.1). libsndfile has
  no bit-rate setting: ``compression_level`` c in 0..1 picks one linearly,
  ``bitrate = int(top - c * (top - bottom))`` kbps, with (top, bottom) = (320, 32) for MPEG-1
  (32, 44.1, 48 kHz), (160, 8) for MPEG-2 (16, 22.05, 24 kHz) and (64, 8) for MPEG-2.5
  (8, 11.025, 12 kHz) (``mpeg_l3_encoder_set_quality`` in libsndfile's
  ``src/mpeg_l3_encode.c``). :func:`mp3_compression_level` inverts that, aiming at
  ``kbps + 0.5`` so that the C truncation lands on ``kbps`` exactly; ``bitrate_mode`` is
  ``CONSTANT``. The tests check the written rate with mutagen.
* ``ogg``: Ogg Vorbis, VBR quality q in 0..1; libsndfile sets
  ``vorbis quality = 1 - compression_level`` (``src/ogg_vorbis.c``), so c = 1 - q.

Encoding into memory means a short write can never go unnoticed (libsndfile's MP3 encoder only
*logs* short writes) and the tags are in the bytes before the temporary file is written.
Integer, MP3 and Vorbis encodings get samples clipped to [-1, 1] (libsndfile would otherwise
wrap); with loudness normalisation on, nothing reaches that. NaN becomes 0 and +-inf +-1
before anything else.

Loudness
--------
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

Tags (mutagen)
--------------
MP3 and WAV get an ID3v2.4 tag (WAV in an ``id3 `` chunk): TIT2 (title), COMM (the prompt),
TDRC (creation time), TSSE (encoder) and a ``TXXX:TIMBRE_*`` frame per field, including
``TXXX:TIMBRE_RECIPE`` with the JSON recipe. FLAC and Ogg Vorbis get Vorbis comments with the
same names: TITLE, DESCRIPTION and COMMENT (the prompt), DATE, ENCODER and ``TIMBRE_*``.
:func:`read_tags` maps both back to one flat dictionary.

Sidecar
-------
``<take file name>.json`` (``take-1.mp3.json``: the extension stays so that exports of one take
in several formats do not clash) holds everything needed to re-render the take; its format is
``schemas/take.schema.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
import io
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import mutagen
import mutagen.flac
import mutagen.id3
import mutagen.mp3
import mutagen.oggvorbis
import mutagen.wave
import numpy as np
import numpy.typing as npt
import pyloudnorm
import soundfile as sf

from timbred import __version__, takes
from timbred.errors import AudioInputError, InvalidParams, OutputError, TakeNotFound

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "MP3_BITRATES_KBPS",
    "SIDECAR_SCHEMA_VERSION",
    "ExportOptions",
    "LoudnessReport",
    "TakeMetadata",
    "WrittenTake",
    "encode",
    "export_existing",
    "format_from_path",
    "integrated_loudness",
    "mp3_available",
    "mp3_compression_level",
    "normalise",
    "read_sidecar",
    "read_tags",
    "short_title",
    "sidecar_path",
    "tag_items",
    "true_peak_dbtp",
    "utc_now",
    "write_next_take",
    "write_take",
]

Audio = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]

FORMATS = ("wav", "flac", "mp3", "ogg")
#: The extension written for each format.
EXTENSIONS = {"wav": ".wav", "flac": ".flac", "mp3": ".mp3", "ogg": ".ogg"}
_FORMAT_OF_SUFFIX = {".wav": "wav", ".wave": "wav", ".flac": "flac", ".mp3": "mp3",
                     ".ogg": "ogg", ".oga": "ogg"}
_SF_FORMAT = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}
WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
FLAC_SUBTYPE = "PCM_24"
MP3_SUBTYPE = "MPEG_LAYER_III"
OGG_SUBTYPE = "VORBIS"

#: MPEG-1 Layer III bit rates (kbps), for 32, 44.1 and 48 kHz.
MP3_BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
#: MPEG-2 / 2.5 Layer III bit rates (kbps), for 16-24 kHz and 8-12 kHz.
MP3_LSF_BITRATES_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
#: Sample rate -> (top, bottom) of libsndfile's linear bit-rate scale, and the allowed rates.
_MP3_SCALES: dict[int, tuple[int, int, tuple[int, ...]]] = {
    **{r: (320, 32, MP3_BITRATES_KBPS) for r in (32_000, 44_100, 48_000)},
    **{r: (160, 8, MP3_LSF_BITRATES_KBPS) for r in (16_000, 22_050, 24_000)},
    **{r: (64, 8, tuple(k for k in MP3_LSF_BITRATES_KBPS if k <= 64))
       for r in (8_000, 11_025, 12_000)},
}
_MP3_MAX_CHANNELS = 2
MAX_CHANNELS = 8

LOUDNESS_TARGET_RANGE = (-60.0, 0.0)
CEILING_RANGE = (-20.0, 0.0)
#: pyloudnorm's gating block (BS.1770): shorter audio has no integrated loudness.
LOUDNESS_BLOCK_S = 0.4
#: pyloudnorm's channel limit (L, R, C, Ls, Rs).
LOUDNESS_MAX_CHANNELS = 5
#: Oversampling factor of the true-peak estimate (BS.1770-4 Annex 2).
TRUE_PEAK_OVERSAMPLING = 4
#: How close to the target a limited take is brought.
LOUDNESS_TOLERANCE_LU = 0.1
#: The most gain the loudness loop adds on top of ``target - before`` to make up for limiting;
#: beyond it the take stays quieter than the target rather than being squashed.
MAX_LIMITER_PUSH_DB = 6.0
_LOUDNESS_PASSES = 6
#: Limiter: look-ahead (the gain starts falling this long before a peak), hold (it stays down
#: this long after), and the threshold below the ceiling it aims at.
LIMITER_LOOKAHEAD_S = 0.005
LIMITER_HOLD_S = 0.050
LIMITER_MARGIN_DB = 0.05
_LIMITER_PASSES = 4

SIDECAR_SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"
TITLE_MAX_CHARS = 60


# --- formats and options -----------------------------------------------------------------------


def format_from_path(path: str | os.PathLike[str]) -> str:
    """The format (``wav``, ``flac``, ``mp3`` or ``ogg``) for a file name's extension.

    ``.wave`` and ``.oga`` are accepted too; case is ignored. InvalidParams naming ``path``
    otherwise.
    """
    suffix = Path(path).suffix.lower()
    fmt = _FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise InvalidParams(
            f"cannot tell the format of {os.fspath(path)!r} from its extension; use one of "
            f"{', '.join(sorted(_FORMAT_OF_SUFFIX))}", param="path",
            allowed=sorted(_FORMAT_OF_SUFFIX))
    return fmt


@cache
def mp3_available() -> bool:
    """Whether this libsndfile can write MP3 (1.1.0 or later, built with LAME and mpg123)."""
    return "MP3" in sf.available_formats() and MP3_SUBTYPE in sf.available_subtypes("MP3")


def mp3_compression_level(kbps: int, sample_rate: int) -> float:
    """The soundfile ``compression_level`` that makes libsndfile write ``kbps`` CBR MP3.

    InvalidParams naming ``mp3_bitrate_kbps`` if that rate does not exist at this sample
    rate; OutputError if MP3 cannot hold the sample rate at all.
    """
    top, bottom, allowed = _mp3_scale(sample_rate, f"<{sample_rate} Hz MP3>")
    if kbps not in allowed:
        raise InvalidParams(
            f"mp3_bitrate_kbps {kbps} is not an MP3 bit rate at {sample_rate} Hz; use one of "
            f"{', '.join(map(str, allowed))}", param="mp3_bitrate_kbps", allowed=list(allowed))
    if kbps == top:
        return 0.0
    return min(1.0, (top - kbps - 0.5) / (top - bottom))


def _mp3_scale(sample_rate: int, name: str) -> tuple[int, int, tuple[int, ...]]:
    scale = _MP3_SCALES.get(sample_rate)
    if scale is None:
        raise OutputError(name, f"MP3 cannot hold {sample_rate} Hz audio; its sample rates "
                          f"are {', '.join(map(str, sorted(_MP3_SCALES)))} Hz")
    return scale


def _check_mp3(options: ExportOptions, sample_rate: int, channels: int, name: str) -> float:
    """Every reason MP3 cannot be written as asked, before any work; the compression level."""
    if not mp3_available():
        raise OutputError(name, f"this libsndfile ({sf.__libsndfile_version__}) cannot "
                          "write MP3; it needs libsndfile 1.1 or later built with LAME "
                          "and mpg123 (choose wav, flac or ogg instead)")
    _mp3_scale(sample_rate, name)
    if channels > _MP3_MAX_CHANNELS:
        raise OutputError(name, f"MP3 holds at most {_MP3_MAX_CHANNELS} channels, the take "
                          f"has {channels}")
    return mp3_compression_level(options.mp3_bitrate_kbps, sample_rate)


def _check_number(name: str, value: object, low: float, high: float, *,
                  optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not low <= value <= high:
        off = " (or null for off)" if optional else ""
        raise InvalidParams(f"{name} must be a number in {low:g}..{high:g}{off}, got {value!r}",
                            param=name, minimum=low, maximum=high)


@dataclass(frozen=True)
class ExportOptions:
    """How a take is written. Validated on construction; InvalidParams names the field.

    * ``format``: ``wav`` | ``flac`` | ``mp3`` | ``ogg``.
    * ``wav_subtype``: ``PCM_16`` | ``PCM_24`` | ``FLOAT`` (WAV only; FLAC is always 24-bit).
    * ``mp3_bitrate_kbps``: a standard MPEG-1 Layer III rate (:data:`MP3_BITRATES_KBPS`);
      constant bit rate.
    * ``ogg_quality``: Vorbis VBR quality, 0..1 (0.7 is about 224 kbps for stereo 44.1 kHz).
    * ``loudness_target_lufs``: integrated loudness target in LUFS (-60..0), or ``None`` to
      write the audio as it is (no gain, no limiter).
    * ``true_peak_ceiling_dbtp``: the ceiling for sample and true peaks when normalising
      (-20..0 dBTP).
    """

    format: str = "wav"
    wav_subtype: str = "PCM_24"
    mp3_bitrate_kbps: int = 320
    ogg_quality: float = 0.7
    loudness_target_lufs: float | None = -14.0
    true_peak_ceiling_dbtp: float = -1.0

    def __post_init__(self) -> None:
        if not isinstance(self.format, str) or self.format.lower() not in FORMATS:
            raise InvalidParams(f"format must be one of {', '.join(FORMATS)}, got "
                                f"{self.format!r}", param="format", allowed=list(FORMATS))
        object.__setattr__(self, "format", self.format.lower())
        if not isinstance(self.wav_subtype, str) or self.wav_subtype.upper() not in WAV_SUBTYPES:
            raise InvalidParams(f"wav_subtype must be one of {', '.join(WAV_SUBTYPES)}, got "
                                f"{self.wav_subtype!r}", param="wav_subtype",
                                allowed=list(WAV_SUBTYPES))
        object.__setattr__(self, "wav_subtype", self.wav_subtype.upper())
        if isinstance(self.mp3_bitrate_kbps, bool) or \
                self.mp3_bitrate_kbps not in MP3_BITRATES_KBPS:
            raise InvalidParams(
                f"mp3_bitrate_kbps must be one of {', '.join(map(str, MP3_BITRATES_KBPS))}, "
                f"got {self.mp3_bitrate_kbps!r}", param="mp3_bitrate_kbps",
                allowed=list(MP3_BITRATES_KBPS))
        _check_number("ogg_quality", self.ogg_quality, 0.0, 1.0)
        _check_number("loudness_target_lufs", self.loudness_target_lufs,
                      *LOUDNESS_TARGET_RANGE, optional=True)
        _check_number("true_peak_ceiling_dbtp", self.true_peak_ceiling_dbtp, *CEILING_RANGE)
        for name in ("ogg_quality", "loudness_target_lufs", "true_peak_ceiling_dbtp"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    @property
    def extension(self) -> str:
        """The file extension for :attr:`format`, with the dot."""
        return EXTENSIONS[self.format]

    @property
    def subtype(self) -> str:
        """The libsndfile subtype written for :attr:`format`."""
        return {"wav": self.wav_subtype, "flac": FLAC_SUBTYPE, "mp3": MP3_SUBTYPE,
                "ogg": OGG_SUBTYPE}[self.format]

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportOptions:
        """Build from :meth:`to_dict`'s output; missing keys take their defaults, unknown
        keys are refused."""
        if not isinstance(data, Mapping):
            raise InvalidParams("export options must be an object", param="export")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidParams(f"unknown export option {key!r}", param=str(key),
                                    allowed=sorted(known))
        return cls(**dict(data))


# --- loudness --------------------------------------------------------------------------------


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


def _as_audio(audio: object, *, allow_empty: bool = False) -> _F64:
    """``(channels, samples)`` float64, finite; InvalidParams naming ``audio`` otherwise."""
    arr = np.asarray(audio)
    if arr.ndim != 2 or not 1 <= arr.shape[0] <= MAX_CHANNELS:
        raise InvalidParams(f"audio must have shape (channels, samples) with 1..{MAX_CHANNELS} "
                            f"channels, got shape {arr.shape}", param="audio")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidParams(f"audio must be floating point, got {arr.dtype}", param="audio")
    if arr.shape[1] == 0 and not allow_empty:
        raise InvalidParams("audio has no samples", param="audio")
    out = np.asarray(arr, dtype=np.float64)
    return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=-1.0)


def _check_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or \
            not 1 <= int(sample_rate) <= 768_000:
        raise InvalidParams(f"sample_rate must be an integer in 1..768000, got {sample_rate!r}",
                            param="sample_rate")
    return int(sample_rate)


def _db(linear: float) -> float | None:
    return 20.0 * math.log10(linear) if linear > 0 else None


def _lin(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _integrated_loudness(x: _F64, sample_rate: int) -> float | None:
    channels, n = x.shape
    if channels > LOUDNESS_MAX_CHANNELS or n < LOUDNESS_BLOCK_S * sample_rate:
        return None
    meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_S)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(meter.integrated_loudness(np.ascontiguousarray(x.T)))
    return value if math.isfinite(value) else None


def integrated_loudness(audio: npt.ArrayLike, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness of ``(channels, samples)`` audio in LUFS, or ``None``
    when it cannot be measured (shorter than 400 ms, silent, more than 5 channels)."""
    return _integrated_loudness(_as_audio(audio, allow_empty=True), _check_rate(sample_rate))


def _oversampled_abs(x: _F64) -> _F64:
    """``|x|`` 4x oversampled, the maximum over channels: shape ``(4 * samples,)``."""
    up = _signal().resample_poly(x, TRUE_PEAK_OVERSAMPLING, 1, axis=-1)
    return np.asarray(np.abs(up).max(axis=0), dtype=np.float64)


def _true_peak(x: _F64) -> float:
    """Estimated true peak (linear): the larger of the 4x-oversampled and the sample peak."""
    if x.size == 0:
        return 0.0
    return float(max(_oversampled_abs(x).max(), np.abs(x).max()))


def true_peak_dbtp(audio: npt.ArrayLike) -> float | None:
    """Estimated true peak of ``(channels, samples)`` audio in dBTP (BS.1770-4 Annex 2, 4x
    oversampling, never below the sample peak); ``None`` for all-zero audio."""
    return _db(_true_peak(_as_audio(audio, allow_empty=True)))


def _peak_envelope(x: _F64) -> _F64:
    """Per sample, the largest absolute value of the oversampled signal next to it."""
    n = x.shape[1]
    between = _oversampled_abs(x).reshape(n, TRUE_PEAK_OVERSAMPLING).max(axis=1)
    env = np.asarray(np.maximum(between, np.abs(x).max(axis=0)), dtype=np.float64)
    env[1:] = np.maximum(env[1:], between[:-1])
    return env


def _limit(y: _F64, sample_rate: int, ceiling: float) -> tuple[_F64, bool]:
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


def _finish(y: _F64, ceiling: float) -> tuple[Audio, bool]:
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
    rate = _check_rate(sample_rate)
    x = _as_audio(audio, allow_empty=True)
    _check_number("target_lufs", target_lufs, -200.0, 200.0, optional=True)
    _check_number("ceiling_dbtp", ceiling_dbtp, -200.0, 200.0)
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


# --- metadata ----------------------------------------------------------------------------------


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2025-01-31T12:00:00Z``)."""
    return _iso_utc(dt.datetime.now(dt.UTC).replace(microsecond=0))


def _iso_utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def short_title(prompt: str, take_index: int | None = None) -> str:
    """A title from a prompt: whitespace collapsed, cut at a word boundary to at most
    :data:`TITLE_MAX_CHARS` characters with an ellipsis; ``Untitled take [n]`` if empty."""
    text = " ".join(prompt.split())
    if not text:
        return "Untitled take" + ("" if take_index is None else f" {take_index}")
    if len(text) <= TITLE_MAX_CHARS:
        return text
    cut = text[: TITLE_MAX_CHARS - 1]
    space = cut.rfind(" ")
    if space >= TITLE_MAX_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "\u2026"


def _json_value(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"{name} must hold plain JSON values: {exc}", param=name) from exc


@dataclass(frozen=True)
class TakeMetadata:
    """What a take says about itself: written into its tags and its sidecar.

    ``params`` are the generation parameters; ``recipe`` is everything needed to re-render
    (the daemon's recipe: model id, revision, dtype, params, windowing, versions).
    ``created_at`` is ISO 8601 in UTC (normalised to ``...Z``). ``loudness`` is filled in by
    :func:`write_take` with what it measured.
    """

    prompt: str
    seed: int | None
    model: str | None
    revision: str | None = None
    backend: str | None = None
    device: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timbre_version: str = __version__
    created_at: str = field(default_factory=utc_now)
    job_id: str | None = None
    take_index: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    loudness: LoudnessReport | None = None

    _OPTIONAL_TEXT: ClassVar[tuple[str, ...]] = ("model", "revision", "backend", "device",
                                                 "job_id")

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise InvalidParams("prompt must be a string", param="prompt")
        for name in ("seed", "take_index"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if name == "take_index" else 0)):
                low = 1 if name == "take_index" else 0
                raise InvalidParams(f"{name} must be an integer >= {low} or null, got {value!r}",
                                    param=name)
        for name in self._OPTIONAL_TEXT:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidParams(f"{name} must be a string or null", param=name)
        if not isinstance(self.timbre_version, str):
            raise InvalidParams("timbre_version must be a string", param="timbre_version")
        for name in ("params", "recipe"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise InvalidParams(f"{name} must be an object", param=name)
            _json_value(name, value)
        if self.loudness is not None and not isinstance(self.loudness, LoudnessReport):
            raise InvalidParams("loudness must be a LoudnessReport or null", param="loudness")
        object.__setattr__(self, "created_at", _check_created_at(self.created_at))

    @property
    def title(self) -> str:
        """:func:`short_title` of the prompt."""
        return short_title(self.prompt, self.take_index)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["loudness"] = None if self.loudness is None else self.loudness.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TakeMetadata:
        """Build from :meth:`to_dict`'s output or a sidecar (whose extra keys are ignored)."""
        if not isinstance(data, Mapping):
            raise InvalidParams("take metadata must be an object", param="metadata")
        for name in ("prompt", "seed", "model"):
            if name not in data:
                raise InvalidParams(f"{name} is required", param=name)
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        loudness = kwargs.get("loudness")
        kwargs["loudness"] = None if loudness is None else LoudnessReport.from_dict(loudness)
        return cls(**kwargs)


def _check_created_at(value: object) -> str:
    problem = "created_at must be ISO 8601 in UTC, e.g. 2025-01-31T12:00:00Z"
    if not isinstance(value, str):
        raise InvalidParams(problem, param="created_at")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidParams(f"{problem}, got {value!r}", param="created_at") from exc
    offset = when.utcoffset()
    if offset is None or offset != dt.timedelta(0):
        raise InvalidParams(f"{problem}, got {value!r}", param="created_at")
    return _iso_utc(when)


def _fmt_number(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _param_key(name: str) -> str:
    return "TIMBRE_PARAM_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def tag_items(metadata: TakeMetadata) -> list[tuple[str, str]]:
    """The tags written for ``metadata``, by their normalised names (see :func:`read_tags`).

    Fields that are ``None`` are left out.
    """
    when = dt.datetime.fromisoformat(metadata.created_at).astimezone(dt.UTC)
    loud = metadata.loudness
    items: list[tuple[str, str | None]] = [
        ("TITLE", metadata.title),
        ("COMMENT", metadata.prompt),
        ("DATE", when.strftime("%Y-%m-%dT%H:%M:%S")),
        ("ENCODER", f"Timbre {metadata.timbre_version}"),
        ("TIMBRE_PROMPT", metadata.prompt),
        ("TIMBRE_SEED", None if metadata.seed is None else str(metadata.seed)),
        ("TIMBRE_MODEL", metadata.model),
        ("TIMBRE_REVISION", metadata.revision),
        ("TIMBRE_BACKEND", metadata.backend),
        ("TIMBRE_DEVICE", metadata.device),
        ("TIMBRE_VERSION", metadata.timbre_version),
        ("TIMBRE_CREATED_AT", metadata.created_at),
        ("TIMBRE_JOB_ID", metadata.job_id),
        ("TIMBRE_TAKE_INDEX", None if metadata.take_index is None else str(metadata.take_index)),
    ]
    for name, value in sorted(metadata.params.items()):
        if value is not None:
            items.append((_param_key(name), value if isinstance(value, str)
                          else json.dumps(value, sort_keys=True)))
    if loud is not None:
        items += [
            ("TIMBRE_LOUDNESS_BEFORE_LUFS", _fmt_number(loud.before_lufs)),
            ("TIMBRE_LOUDNESS_AFTER_LUFS", _fmt_number(loud.after_lufs)),
            ("TIMBRE_TRUE_PEAK_AFTER_DBTP", _fmt_number(loud.true_peak_after_dbtp)),
            ("TIMBRE_GAIN_DB", _fmt_number(loud.gain_db)),
        ]
    items.append(("TIMBRE_RECIPE", json.dumps(metadata.recipe, sort_keys=True,
                                              ensure_ascii=False, separators=(",", ":"))))
    return [(k, v) for k, v in items if v is not None]


_ID3_FRAMES = {"TITLE": "TIT2", "DATE": "TDRC", "ENCODER": "TSSE"}
# mutagen's frame classes and file types are only partly typed; use them as Any.
_ID3: Any = mutagen.id3
_OPENERS: dict[str, Any] = {"wav": mutagen.wave.WAVE, "mp3": mutagen.mp3.MP3,
                            "flac": mutagen.flac.FLAC, "ogg": mutagen.oggvorbis.OggVorbis}


def _id3_frames(items: Sequence[tuple[str, str]]) -> list[Any]:
    frames: list[Any] = []
    for key, value in items:
        if key == "COMMENT":
            frames.append(_ID3.COMM(encoding=3, lang="eng", desc="", text=[value]))
        elif key in _ID3_FRAMES:
            frames.append(getattr(_ID3, _ID3_FRAMES[key])(encoding=3, text=[value]))
        else:
            frames.append(_ID3.TXXX(encoding=3, desc=key, text=[value]))
    return frames


def _tag_bytes(data: bytes, fmt: str, metadata: TakeMetadata) -> bytes:
    """Add the tags for ``metadata`` to an encoded file held in memory."""
    items = tag_items(metadata)
    buf = io.BytesIO(data)
    audio = _OPENERS[fmt](buf)
    if audio.tags is None:
        audio.add_tags()
    if fmt in ("wav", "mp3"):
        for frame in _id3_frames(items):
            audio.tags.add(frame)
        buf.seek(0)
        audio.save(buf, v2_version=4)
    else:
        for key, value in items:
            audio.tags[key] = [value]
            if key == "COMMENT":
                audio.tags["DESCRIPTION"] = [value]
        buf.seek(0)
        audio.save(buf)
    return buf.getvalue()


def read_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tags of an audio file, normalised across containers.

    ID3 (MP3, WAV): TIT2 -> ``TITLE``, COMM (empty description) -> ``COMMENT``, TDRC ->
    ``DATE``, TSSE -> ``ENCODER``, ``TXXX:<desc>`` -> ``<desc>``. Vorbis comments (FLAC, Ogg):
    names upper-cased, DESCRIPTION -> ``COMMENT`` when there is no COMMENT. Several values
    are joined with a newline. TakeNotFound if the file does not exist, AudioInputError
    (``param`` ``path``) if it is not an audio file mutagen knows.
    """
    p = Path(path)
    if not p.is_file():
        raise TakeNotFound(str(p))
    try:
        audio: Any = mutagen.File(p)
    except (mutagen.MutagenError, OSError) as exc:
        raise AudioInputError(str(p), "path", str(exc)) from exc
    if audio is None:
        raise AudioInputError(str(p), "path", "not an audio file with tags mutagen knows")
    tags: Any = audio.tags
    out: dict[str, str] = {}
    if tags is None:
        return out
    if isinstance(tags, _ID3.ID3):
        names = {v: k for k, v in _ID3_FRAMES.items()}
        for frame in tags.values():
            text = "\n".join(str(t) for t in getattr(frame, "text", []))
            if frame.FrameID == "TXXX":
                out[frame.desc] = text
            elif frame.FrameID == "COMM" and frame.desc == "":
                out["COMMENT"] = text
            elif frame.FrameID == "TDRC":
                out["DATE"] = text.replace(" ", "T")  # mutagen shows ID3 times with a space
            elif frame.FrameID in names:
                out[names[frame.FrameID]] = text
        return out
    for key, values in tags.as_dict().items():
        out[key.upper()] = "\n".join(values)
    if "COMMENT" not in out and "DESCRIPTION" in out:
        out["COMMENT"] = out["DESCRIPTION"]
    return out


# --- encoding --------------------------------------------------------------------------------


def encode(audio: npt.ArrayLike, sample_rate: int, options: ExportOptions, *,
           name: str = "<take>") -> bytes:
    """Encode ``(channels, samples)`` audio as ``options`` says, untagged, into bytes.

    OutputError (naming ``name``) when this libsndfile cannot write the format (MP3 needs
    libsndfile >= 1.1 built with LAME), when MP3 cannot hold the sample rate or channel count,
    or when the encoder fails; InvalidParams for an MP3 bit rate the sample rate does not have.
    """
    rate = _check_rate(sample_rate)
    x = _as_audio(audio)
    fmt = options.format
    extra: dict[str, Any] = {}
    if fmt == "mp3":
        extra = {"compression_level": _check_mp3(options, rate, x.shape[0], name),
                 "bitrate_mode": "CONSTANT"}
    elif fmt == "ogg":
        extra = {"compression_level": 1.0 - options.ogg_quality}
    if options.subtype != "FLOAT":
        x = np.clip(x, -1.0, 1.0)
    frames = np.ascontiguousarray(x.T, dtype=np.float32)
    buf = io.BytesIO()
    try:
        sf.write(buf, frames, rate, format=_SF_FORMAT[fmt], subtype=options.subtype, **extra)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise OutputError(name, f"encoding {fmt} ({options.subtype}) failed: {exc}") from exc
    return buf.getvalue()


# --- writing takes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenTake:
    """A take as written: where, how, how long, how loud, and its sidecar.

    ``frames`` is the number of sample frames encoded (an MP3 or Vorbis decoder may return a
    few more or fewer, within the codec's padding).
    """

    path: Path
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    bytes: int
    loudness: LoudnessReport | None
    sidecar_path: Path

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (paths as strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["path"] = str(self.path)
        out["sidecar_path"] = str(self.sidecar_path)
        out["loudness"] = None if self.loudness is None else self.loudness.to_dict()
        return out


@dataclass(frozen=True)
class _Encoded:
    data: bytes
    options: ExportOptions
    sample_rate: int
    channels: int
    frames: int
    metadata: TakeMetadata


def sidecar_path(take: str | os.PathLike[str]) -> Path:
    """``<take file name>.json`` beside the take."""
    p = Path(take)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def _prepare(audio: npt.ArrayLike, sample_rate: int, options: ExportOptions,
             metadata: TakeMetadata, name: str) -> _Encoded:
    if not isinstance(options, ExportOptions):
        raise InvalidParams("options must be ExportOptions", param="options")
    if not isinstance(metadata, TakeMetadata):
        raise InvalidParams("metadata must be TakeMetadata", param="metadata")
    rate = _check_rate(sample_rate)
    x = _as_audio(audio)
    if options.format == "mp3":
        _check_mp3(options, rate, x.shape[0], name)
    if options.loudness_target_lufs is not None:
        out, report = normalise(x, rate, target_lufs=options.loudness_target_lufs,
                                ceiling_dbtp=options.true_peak_ceiling_dbtp)
    else:
        out = np.ascontiguousarray(x, dtype=np.float32)
        before = _integrated_loudness(x, rate)
        peak = _db(_true_peak(x))
        report = LoudnessReport(before, before, peak, peak, 0.0, False)
    metadata = dataclasses.replace(metadata, loudness=report)
    data = _tag_bytes(encode(out, rate, options, name=name), options.format, metadata)
    return _Encoded(data, options, rate, out.shape[0], out.shape[1], metadata)


def _sidecar(enc: _Encoded, file_name: str) -> dict[str, Any]:
    md = enc.metadata
    return {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "take": {
            "path": file_name,
            "format": enc.options.format,
            "subtype": enc.options.subtype,
            "sample_rate": enc.sample_rate,
            "channels": enc.channels,
            "frames": enc.frames,
            "duration_s": enc.frames / enc.sample_rate,
            "bytes": len(enc.data),
            "sha256": hashlib.sha256(enc.data).hexdigest(),
        },
        "job_id": md.job_id,
        "take_index": md.take_index,
        "created_at": md.created_at,
        "timbre_version": md.timbre_version,
        "prompt": md.prompt,
        "title": md.title,
        "seed": md.seed,
        "model": md.model,
        "revision": md.revision,
        "backend": md.backend,
        "device": md.device,
        "params": md.params,
        "recipe": md.recipe,
        "loudness": None if md.loudness is None else md.loudness.to_dict(),
        "export": enc.options.to_dict(),
    }


def _sidecar_bytes(enc: _Encoded, file_name: str) -> bytes:
    text = json.dumps(_sidecar(enc, file_name), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _written(enc: _Encoded, path: Path) -> WrittenTake:
    return WrittenTake(
        path=path, format=enc.options.format, subtype=enc.options.subtype,
        sample_rate=enc.sample_rate, channels=enc.channels, frames=enc.frames,
        duration_s=enc.frames / enc.sample_rate, bytes=len(enc.data),
        loudness=enc.metadata.loudness, sidecar_path=sidecar_path(path))


def _check_suffix(path: Path, options: ExportOptions) -> None:
    if format_from_path(path) != options.format:
        raise InvalidParams(f"{path.name}: the extension does not match the format "
                            f"{options.format!r} (use {options.extension})", param="path")


def write_take(path: str | os.PathLike[str], audio: npt.ArrayLike, sample_rate: int,
               options: ExportOptions, metadata: TakeMetadata) -> WrittenTake:
    """Normalise, encode, tag and publish one take at ``path``, then its sidecar.

    ``audio`` is ``(channels, samples)``. The file and the sidecar are each written to a
    temporary name in the same directory and fsynced *both* before the take is linked to its
    final name and the sidecar after it, so a full disk or a read-only directory fails with
    OutputError and leaves nothing under a final name. Nothing is ever overwritten: if
    ``path`` or its sidecar exists, OutputError. The extension of ``path`` must match
    ``options.format`` (InvalidParams naming ``path``).
    """
    final = Path(path)
    _check_suffix(final, options)
    side = sidecar_path(final)
    for p in (final, side):
        if os.path.lexists(p):
            raise OutputError(str(p), "a file with that name already exists; it was left "
                              "untouched (Timbre never overwrites a file)")
    enc = _prepare(audio, sample_rate, options, metadata, str(final))
    takes.publish([(final, enc.data), (side, _sidecar_bytes(enc, final.name))])
    return _written(enc, final)


def write_next_take(directory: str | os.PathLike[str], audio: npt.ArrayLike, sample_rate: int,
                    options: ExportOptions, metadata: TakeMetadata) -> WrittenTake:
    """Like :func:`write_take`, at ``directory/take-<n>.<ext>`` for the smallest free ``n``.

    Concurrent writers (threads or processes) never get the same name: each claims it with
    ``os.link`` and moves to the next number on EEXIST (:func:`timbred.takes.link_numbered`).
    """
    folder = Path(directory)
    enc = _prepare(audio, sample_rate, options, metadata, str(folder))
    ext = options.extension.lstrip(".")
    final = takes.link_numbered(
        folder, ext, enc.data,
        companions=lambda p: [(sidecar_path(p), _sidecar_bytes(enc, p.name))])
    return _written(enc, final)


def read_sidecar(take: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``take`` as a dictionary, or ``None`` if it has none.

    InvalidParams (naming ``sidecar``) if it exists but is not a JSON object.
    """
    side = sidecar_path(take)
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"{side}: cannot read the sidecar: {exc}", param="sidecar") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"{side}: not valid JSON: {exc}", param="sidecar") from exc
    if not isinstance(data, dict):
        raise InvalidParams(f"{side}: not a JSON object", param="sidecar")
    return data


def _metadata_from_tags(tags: Mapping[str, str], fallback_prompt: str) -> TakeMetadata:
    def integer(key: str) -> int | None:
        try:
            return int(tags[key])
        except (KeyError, ValueError):
            return None

    recipe: dict[str, Any] = {}
    try:
        loaded = json.loads(tags.get("TIMBRE_RECIPE", "{}"))
        recipe = loaded if isinstance(loaded, dict) else {}
    except json.JSONDecodeError:
        pass
    params = recipe.get("params")
    created = tags.get("TIMBRE_CREATED_AT")
    try:
        created = _check_created_at(created) if created else utc_now()
    except InvalidParams:
        created = utc_now()
    return TakeMetadata(
        prompt=tags.get("TIMBRE_PROMPT", tags.get("COMMENT", fallback_prompt)),
        seed=integer("TIMBRE_SEED"),
        model=tags.get("TIMBRE_MODEL"),
        revision=tags.get("TIMBRE_REVISION"),
        backend=tags.get("TIMBRE_BACKEND"),
        device=tags.get("TIMBRE_DEVICE"),
        params=params if isinstance(params, dict) else {},
        timbre_version=tags.get("TIMBRE_VERSION", __version__),
        created_at=created,
        job_id=tags.get("TIMBRE_JOB_ID"),
        take_index=integer("TIMBRE_TAKE_INDEX"),
        recipe=recipe,
    )


def export_existing(src: str | os.PathLike[str], dst_or_dir: str | os.PathLike[str],
                    options: ExportOptions, metadata: TakeMetadata | None = None) -> WrittenTake:
    """Re-encode the take at ``src`` as ``options`` say, with :func:`write_take`.

    ``dst_or_dir`` is the new file (its extension must match ``options.format``) or an
    existing directory, where ``<src stem><ext>`` is written. The metadata is, in order:
    ``metadata``, the source's sidecar, the source's own Timbre tags, or a bare record (the
    file name as prompt). Loudness is normalised again (a no-op up to a few hundredths of a
    dB for a take Timbre already normalised to the same target). TakeNotFound if ``src``
    does not exist, AudioInputError (``param`` ``src``) if it cannot be decoded.
    """
    source = Path(src)
    if not source.is_file():
        raise TakeNotFound(str(source))
    try:
        frames, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioInputError(str(source), "src", str(exc)) from exc
    dst = Path(dst_or_dir)
    if dst.is_dir():
        dst = dst / (source.stem + options.extension)
    if metadata is None:
        side = read_sidecar(source)
        if side is not None:
            try:
                metadata = TakeMetadata.from_dict(side)
            except InvalidParams as exc:
                raise InvalidParams(f"{sidecar_path(source)}: {exc.message}",
                                    param="sidecar") from exc
        else:
            try:
                tags = read_tags(source)
            except AudioInputError:
                tags = {}
            metadata = _metadata_from_tags(tags, source.stem)
    return write_take(dst, np.ascontiguousarray(frames.T), int(rate), options,
                      dataclasses.replace(metadata, loudness=None))
