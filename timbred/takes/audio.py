"""The audio every export stage takes: ``(channels, samples)`` arrays and their sample rate.

Loudness, encoding and the writer each accept array-likes from callers; they are checked and
cleaned here, once per call, the same way: NaN becomes 0 and +-inf +-1 before anything else.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Final

import numpy as np
import numpy.typing as npt

from timbred.errors import InvalidParams

__all__ = ["F64", "MAX_CHANNELS", "Audio", "as_audio", "check_rate", "warnings_ignored"]

#: What the stages return: float32 ``(channels, samples)``.
Audio = npt.NDArray[np.float32]
#: What they compute in.
F64 = npt.NDArray[np.float64]

MAX_CHANNELS: Final = 8


def as_audio(audio: object, *, allow_empty: bool = False) -> F64:
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


def check_rate(sample_rate: object) -> int:
    """The sample rate as an int in 1..768000; InvalidParams naming ``sample_rate`` otherwise."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or \
            not 1 <= int(sample_rate) <= 768_000:
        raise InvalidParams(f"sample_rate must be an integer in 1..768000, got {sample_rate!r}",
                            param="sample_rate")
    return int(sample_rate)


#: Held while the warning filters are changed: they are the process's, shared by threads.
_FILTERS = threading.RLock()


@contextlib.contextmanager
def warnings_ignored(category: type[Warning] = Warning) -> Iterator[None]:
    """Ignore ``category`` for the block, one thread at a time.

    ``warnings.catch_warnings`` saves and restores the process's filters, which every thread
    shares. The daemon measures and analyses takes in threads (two workers' takes encoded at
    once): two overlapping blocks restore each other's filters, so a warning escapes one
    (an error under pytest's ``-W error``) and the other can leave warnings ignored for
    good. pyloudnorm and librosa change the filters inside their own calls too, so those
    calls run under this lock as well.
    """
    with _FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield
