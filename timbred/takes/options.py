"""Export options: the formats a take can be written in, and how each is written.

This is the one place the format tables and the export option names are written down: the
presets (``[export]``), prompt files, the history's layering of configuration, preset and
request, and the writer all take them from here. It imports no audio library, so that
reading a preset or a prompt file stays light.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from timbred.errors import InvalidParams

__all__ = [
    "CEILING_RANGE",
    "EXPORT_KEYS",
    "EXTENSIONS",
    "FLAC_SUBTYPE",
    "FORMATS",
    "FORMAT_OF_SUFFIX",
    "LOUDNESS_TARGET_RANGE",
    "MASTER_NAME",
    "MP3_BITRATES_KBPS",
    "MP3_SUBTYPE",
    "OGG_SUBTYPE",
    "SUFFIX_FORMATS",
    "WAV_SUBTYPES",
    "ExportOptions",
    "check_number",
    "format_from_path",
]

FORMATS: Final = ("wav", "flac", "mp3", "ogg")
#: The extension written for each format.
EXTENSIONS: Final[Mapping[str, str]] = {"wav": ".wav", "flac": ".flac", "mp3": ".mp3",
                                        "ogg": ".ogg"}
#: Each format's own extension, back to the format (what an output *name* may end in).
SUFFIX_FORMATS: Final[Mapping[str, str]] = {ext: fmt for fmt, ext in EXTENSIONS.items()}
#: Every suffix a file's format is read from: the formats' own and two common aliases.
FORMAT_OF_SUFFIX: Final[Mapping[str, str]] = {**SUFFIX_FORMATS, ".wave": "wav", ".oga": "ogg"}
WAV_SUBTYPES: Final = ("PCM_16", "PCM_24", "FLOAT")
FLAC_SUBTYPE: Final = "PCM_24"
MP3_SUBTYPE: Final = "MPEG_LAYER_III"
OGG_SUBTYPE: Final = "VORBIS"

#: MPEG-1 Layer III bit rates (kbps), for 32, 44.1 and 48 kHz.
MP3_BITRATES_KBPS: Final = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

#: What a mastering chain's name may be (it is a file name in the chains' folders).
MASTER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

LOUDNESS_TARGET_RANGE: Final = (-60.0, 0.0)
CEILING_RANGE: Final = (-20.0, 0.0)

def format_from_path(path: str | os.PathLike[str]) -> str:
    """The format (``wav``, ``flac``, ``mp3`` or ``ogg``) for a file name's extension.

    ``.wave`` and ``.oga`` are accepted too; case is ignored. InvalidParams naming ``path``
    otherwise.
    """
    suffix = Path(path).suffix.lower()
    fmt = FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise InvalidParams(
            f"cannot tell the format of {os.fspath(path)!r} from its extension; use one of "
            f"{', '.join(sorted(FORMAT_OF_SUFFIX))}", param="path",
            allowed=sorted(FORMAT_OF_SUFFIX))
    return fmt



def check_number(name: str, value: object, low: float, high: float, *,
                 optional: bool = False) -> None:
    """Refuse anything but a finite number in ``low..high`` (``None`` too when ``optional``),
    with InvalidParams naming ``name`` and the range."""
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
    * ``master``: a mastering chain's name (:mod:`timbred.takes.mastering`: shipped
      ``streaming``, ``club``, ``tape``, ``none``, or a user chain), whose own loudness
      target and ceiling then replace the two above; ``None``: loudness normalisation only.
    """

    format: str = "wav"
    wav_subtype: str = "PCM_24"
    mp3_bitrate_kbps: int = 320
    ogg_quality: float = 0.7
    loudness_target_lufs: float | None = -14.0
    true_peak_ceiling_dbtp: float = -1.0
    master: str | None = None

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
        check_number("ogg_quality", self.ogg_quality, 0.0, 1.0)
        check_number("loudness_target_lufs", self.loudness_target_lufs,
                     *LOUDNESS_TARGET_RANGE, optional=True)
        check_number("true_peak_ceiling_dbtp", self.true_peak_ceiling_dbtp, *CEILING_RANGE)
        if self.master is not None and (not isinstance(self.master, str)
                                        or not MASTER_NAME.fullmatch(self.master)):
            raise InvalidParams(f"master must be a chain name (lower-case letters, digits, - "
                                f"and _), got {self.master!r}", param="master")
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


#: The export option names, in :class:`ExportOptions`' order (the order prompt files and
#: result files list them in). A request, a preset's ``[export]`` table and a take's recorded
#: options all use exactly these.
EXPORT_KEYS: Final = tuple(f.name for f in dataclasses.fields(ExportOptions))
