"""Reading the audio files a generation is conditioned on (melody, continuation prompt).

Numpy and soundfile only, no torch: the daemon can call :func:`probe_audio` at submit time
to refuse a bad file before a job is queued, and the worker calls :func:`read_audio` to get
samples at the model's rate and channel count.

Every failure is an :class:`errors.AudioInputError` naming the parameter and the file.
"""

from __future__ import annotations

import importlib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred import errors

__all__ = ["AudioFileInfo", "convert_channels", "fit_length", "probe_audio", "read_audio",
           "resample"]


@dataclass(frozen=True)
class AudioFileInfo:
    """What :func:`probe_audio` learns from a file's header."""

    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def probe_audio(path: str, *, param: str) -> AudioFileInfo:
    """Check that ``path`` is a readable, non-empty audio file and read its header.

    ``param`` names the request parameter the path came from (``"melody"``,
    ``"continuation"``) so the error can say which input is wrong.
    """
    _check_readable_file(path, param)
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise errors.AudioInputError(path, param, _soundfile_reason(exc)) from exc
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise errors.AudioInputError(path, param, "the file contains no audio")
    return AudioFileInfo(path=path, sample_rate=int(info.samplerate),
                         channels=int(info.channels), frames=int(info.frames))


def read_audio(
    path: str,
    *,
    param: str,
    sample_rate: int,
    channels: int,
    max_duration_s: float | None = None,
) -> npt.NDArray[np.float32]:
    """Read ``path`` as float32 of shape ``(channels, samples)`` at ``sample_rate``.

    Stereo or multichannel files are averaged down to mono; mono files are duplicated up to
    stereo (multichannel files keep their first two channels). ``max_duration_s`` reads at
    most that much of the start of the file, so a huge file cannot exhaust memory.
    """
    if sample_rate <= 0 or channels not in (1, 2):
        raise ValueError(f"bad target format: {sample_rate} Hz, {channels} channels")
    info = probe_audio(path, param=param)
    frames = info.frames
    if max_duration_s is not None:
        frames = min(frames, max(1, math.ceil(max_duration_s * info.sample_rate)))
    try:
        data, _ = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise errors.AudioInputError(path, param, _soundfile_reason(exc)) from exc
    audio = np.ascontiguousarray(data.T, dtype=np.float32)
    if audio.shape[-1] == 0:
        raise errors.AudioInputError(path, param, "the file contains no audio")
    if not np.isfinite(audio).all():
        raise errors.AudioInputError(path, param, "the file contains NaN or infinite samples")
    audio = convert_channels(audio, channels)
    return resample(audio, info.sample_rate, sample_rate)


def convert_channels(audio: npt.NDArray[np.float32], channels: int) -> npt.NDArray[np.float32]:
    """Convert ``(C, S)`` audio to ``channels`` (1 or 2) channels, as audiocraft does."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels == 1:
        return np.ascontiguousarray(audio.mean(axis=0, keepdims=True), dtype=np.float32)
    if have == 1:
        return np.ascontiguousarray(np.repeat(audio, channels, axis=0))
    return np.ascontiguousarray(audio[:channels])


def resample(
    audio: npt.NDArray[np.float32], src_rate: int, dst_rate: int
) -> npt.NDArray[np.float32]:
    """Resample ``(C, S)`` audio along its last axis with a polyphase FIR filter.

    The output has ``ceil(S * dst_rate / src_rate)`` samples.
    """
    if src_rate == dst_rate:
        return audio
    g = math.gcd(src_rate, dst_rate)
    out = _scipy_signal().resample_poly(audio, dst_rate // g, src_rate // g, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _scipy_signal() -> Any:
    # scipy ships no type information and mypy's overrides do not list it, so it is imported
    # dynamically and used as Any. It is always installed: pyloudnorm depends on it.
    return importlib.import_module("scipy.signal")


def _check_readable_file(path: str, param: str) -> None:
    """Turn the common filesystem mistakes into clear messages (libsndfile's are vague)."""
    try:
        st = Path(path).stat()
    except FileNotFoundError as exc:
        raise errors.AudioInputError(path, param, "no such file") from exc
    except PermissionError as exc:
        raise errors.AudioInputError(path, param, "permission denied") from exc
    except OSError as exc:
        raise errors.AudioInputError(path, param, exc.strerror or str(exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise errors.AudioInputError(path, param, "is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise errors.AudioInputError(path, param, "is not a regular file")
    if st.st_size == 0:
        raise errors.AudioInputError(path, param, "the file is empty")
    if not os.access(path, os.R_OK):
        raise errors.AudioInputError(path, param, "permission denied")


def _soundfile_reason(exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    return f"not a readable audio file ({detail})"


def fit_length(audio: npt.NDArray[np.float32], samples: int) -> npt.NDArray[np.float32]:
    """``audio`` (``(channels, frames)``) cut or padded with silence to ``samples`` frames."""
    if audio.shape[-1] >= samples:
        return np.ascontiguousarray(audio[:, :samples])
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[-1])))
