"""Encoding: a take's samples as the bytes of a WAV, FLAC, MP3 or Ogg Vorbis file, untagged.

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
wrap); with loudness normalisation on, nothing reaches that.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred.errors import InvalidParams, OutputError
from timbred.takes.audio import as_audio, check_rate
from timbred.takes.options import MP3_BITRATES_KBPS, MP3_SUBTYPE, ExportOptions

__all__ = [
    "MP3_LSF_BITRATES_KBPS",
    "check_mp3",
    "encode",
    "mp3_available",
    "mp3_compression_level",
]

_SF_FORMAT: Final = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}
#: MPEG-2 / 2.5 Layer III bit rates (kbps), for 16-24 kHz and 8-12 kHz.
MP3_LSF_BITRATES_KBPS: Final = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
#: Sample rate -> (top, bottom) of libsndfile's linear bit-rate scale, and the allowed rates.
_MP3_SCALES: Final[dict[int, tuple[int, int, tuple[int, ...]]]] = {
    **{r: (320, 32, MP3_BITRATES_KBPS) for r in (32_000, 44_100, 48_000)},
    **{r: (160, 8, MP3_LSF_BITRATES_KBPS) for r in (16_000, 22_050, 24_000)},
    **{r: (64, 8, tuple(k for k in MP3_LSF_BITRATES_KBPS if k <= 64))
       for r in (8_000, 11_025, 12_000)},
}
_MP3_MAX_CHANNELS: Final = 2


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


def check_mp3(options: ExportOptions, sample_rate: int, channels: int, name: str) -> float:
    """Every reason MP3 cannot be written as asked, before any work; the compression level.

    OutputError (naming ``name``) when this libsndfile has no MP3 or MP3 cannot hold the
    sample rate or channel count; InvalidParams for a bit rate the sample rate does not have.
    """
    if not mp3_available():
        raise OutputError(name, f"this libsndfile ({sf.__libsndfile_version__}) cannot "
                          "write MP3; it needs libsndfile 1.1 or later built with LAME "
                          "and mpg123 (choose wav, flac or ogg instead)")
    _mp3_scale(sample_rate, name)
    if channels > _MP3_MAX_CHANNELS:
        raise OutputError(name, f"MP3 holds at most {_MP3_MAX_CHANNELS} channels, the take "
                          f"has {channels}")
    return mp3_compression_level(options.mp3_bitrate_kbps, sample_rate)



def encode(audio: npt.ArrayLike, sample_rate: int, options: ExportOptions, *,
           name: str = "<take>") -> bytes:
    """Encode ``(channels, samples)`` audio as ``options`` says, untagged, into bytes.

    OutputError (naming ``name``) when this libsndfile cannot write the format (MP3 needs
    libsndfile >= 1.1 built with LAME), when MP3 cannot hold the sample rate or channel count,
    or when the encoder fails; InvalidParams for an MP3 bit rate the sample rate does not have.
    """
    rate = check_rate(sample_rate)
    x = as_audio(audio)
    fmt = options.format
    extra: dict[str, Any] = {}
    if fmt == "mp3":
        extra = {"compression_level": check_mp3(options, rate, x.shape[0], name),
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
