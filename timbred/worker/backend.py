"""The backend interface: what a text-to-music model must offer the inference worker.

This module is deliberately free of torch: the daemon process imports it (for
:class:`GenerationOutput` and friends; the request itself is :class:`timbred.request.Request`)
without paying for, or depending on, the inference stack. Concrete backends
(:mod:`timbred.worker.musicgen`) are imported only inside the worker process.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from timbred import errors
from timbred.request import Request

__all__ = [
    "DTYPES",
    "PRECISIONS",
    "Backend",
    "CancelToken",
    "Capabilities",
    "GenerationOutput",
    "Preview",
    "PreviewSink",
    "ProgressCallback",
    "Separation",
    "validate_device",
    "validate_dtype",
    "validate_precision",
]

#: The dtypes a backend may be asked to load a model in.
DTYPES = ("float32", "bfloat16", "float16")

#: Decoder precisions a backend may be asked for (the ``precision`` backend option):
#: ``int8`` (dynamically quantized linear layers, CPU), ``bf16``, ``fp32``, or ``auto``
#: (chosen from the hardware when the model loads).
PRECISIONS = ("auto", "int8", "bf16", "fp32")

#: ``progress(step, total)``: ``step`` counts decoding steps done so far over the whole job
#: (every window of a long generation), ``total`` is the number the job will take. ``total``
#: is fixed for the job, and ``step`` rises by one per call up to ``total``.
ProgressCallback = Callable[[int, int], None]

#: ``send(start, audio)``: finished audio while a generation runs. ``start`` is the sample
#: offset of ``audio`` (float32, ``(variations, channels, samples)``) in the final take; the
#: chunks arrive in order and without gaps, the last one ending where the take ends.
PreviewSink = Callable[[int, npt.NDArray[np.float32]], None]

@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do; fixed for as long as it stays loaded."""

    melody: bool
    """Accepts a ``melody`` (chroma conditioning)."""
    continuation: bool
    """Accepts audio to continue (``continuation``)."""
    stereo: bool
    max_native_duration_s: float
    """Longest clip made in one pass; longer ones are made in overlapping windows."""
    sample_rate: int
    frame_rate: float
    """Decoder steps (audio token frames) per second of audio."""
    channels: int

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON types."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        """Inverse of :meth:`to_dict`."""
        return cls(
            melody=bool(data["melody"]),
            continuation=bool(data["continuation"]),
            stereo=bool(data["stereo"]),
            max_native_duration_s=float(data["max_native_duration_s"]),
            sample_rate=int(data["sample_rate"]),
            frame_rate=float(data["frame_rate"]),
            channels=int(data["channels"]),
        )


@dataclass(frozen=True)
class Preview:
    """Ask a generation to hand on audio as it is made (streaming preview).

    About every ``chunk_s`` seconds of finished audio (the first chunk after half of that,
    so that playback can start sooner) the backend decodes what is final so far and calls
    ``send``. Preview audio is decoded in pieces with some left context, so it can differ
    slightly from the take (which is decoded whole) near chunk edges; it is for listening
    while waiting, never for keeping.
    """

    chunk_s: float
    send: PreviewSink

    def __post_init__(self) -> None:
        if not (math.isfinite(self.chunk_s) and 0.05 <= self.chunk_s <= 60):
            raise errors.InvalidParams("preview chunk_s must be in 0.05..60 seconds",
                                       param="preview_chunk_s")


class CancelToken:
    """A thread-safe, one-way cancellation flag shared by the requester and a generation.

    The worker's pipe-reader thread calls :meth:`cancel`; the generating thread polls
    :meth:`raise_if_cancelled` once per decoding step.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the generation to stop; idempotent."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`errors.Cancelled` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise errors.Cancelled()


@dataclass
class GenerationOutput:
    """The takes of one generation.

    ``audio`` is float32 of shape ``(variations, channels, samples)`` with exactly
    ``round(duration_s * sample_rate)`` samples. ``prompt_samples`` is where new material
    starts in each take (0 unless a continuation prompt was given). ``info`` describes how
    it was made: ``backend``, ``source``, ``revision`` (``None`` when unknown), ``dtype``,
    ``device`` and backend-specific extras.
    """

    audio: npt.NDArray[np.float32]
    sample_rate: int
    info: dict[str, Any] = field(default_factory=dict)
    prompt_samples: int = 0
    #: Wall seconds of the backend call that made it (the whole batch's), set by the
    #: inference worker: what the same call costs in-process, without the daemon around it.
    decode_s: float | None = None


@dataclass
class Separation:
    """A take separated into stems (``takes.stems``): one row of ``stems`` per name, at the
    take's sample rate, channel count and length; ``info`` says how (model, device, the
    separation's settings)."""

    names: tuple[str, ...]
    stems: npt.NDArray[np.float32]
    """``(len(names), channels, frames)`` float32."""
    info: dict[str, Any] = field(default_factory=dict)


def validate_device(device: str) -> str:
    """Check a device string (``cpu``, ``cuda`` or ``cuda:N``) and return it normalised."""
    if not isinstance(device, str):
        raise errors.InvalidParams("device must be a string", param="device")
    dev = device.strip().lower()
    if dev in ("cpu", "cuda"):
        return dev
    if dev.startswith("cuda:") and dev[5:].isdigit():
        return f"cuda:{int(dev[5:])}"
    raise errors.InvalidParams(
        f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'", param="device"
    )


def validate_dtype(dtype: str) -> str:
    """Check a dtype name against :data:`DTYPES` and return it."""
    if dtype not in DTYPES:
        raise errors.InvalidParams(
            f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}", param="dtype"
        )
    return dtype


def validate_precision(precision: object) -> str:
    """Check a precision name against :data:`PRECISIONS` and return it."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise errors.InvalidParams(
            f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}",
            param="precision",
        )
    return precision


class Backend(ABC):
    """A text-to-music model that can be loaded, asked for takes, and unloaded.

    A backend instance holds at most one model. Its methods block (they run inside the
    worker process, on its main thread); only :class:`CancelToken` is touched from other
    threads. Every failure is raised as a :class:`errors.TimbreError`: foreign errors
    (torch, transformers, soundfile) are translated here, at the edge.
    """

    name: ClassVar[str]
    """Stable backend name, stored with each take."""

    @abstractmethod
    def load(self, source: str, *, device: str, dtype: str) -> None:
        """Load the model at ``source`` (a local directory or a cached hub repo id).

        Never downloads. Raises :class:`errors.ModelNotFound`, :class:`errors.ModelLoadFailed`
        or :class:`errors.InvalidParams` (bad ``device``/``dtype``).
        """

    @abstractmethod
    def unload(self) -> None:
        """Free the model and its memory; a no-op when nothing is loaded."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether a model is loaded."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the loaded model can do; raises :class:`errors.GenerationFailed` if none is."""

    @property
    def load_warnings(self) -> tuple[str, ...]:
        """What the last load had to give up (e.g. a fast path that failed its self-check),
        one line each, for the daemon to log once; empty when nothing was."""
        return ()

    def generate(
        self,
        params: Request,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview: Preview | None = None,
    ) -> GenerationOutput:
        """Make ``params.variations`` takes, streaming them to ``preview`` if given.

        Raises :class:`errors.Cancelled` (within a few decoding steps of ``cancel``),
        :class:`errors.InvalidParams`, :class:`errors.AudioInputError` or
        :class:`errors.GenerationFailed`. A batch of one: see :meth:`generate_batch`.
        """
        return self.generate_batch([params], progress,
                                   None if cancel is None else [cancel], preview)[0]

    @abstractmethod
    def generate_batch(
        self,
        items: Sequence[Request],
        progress: ProgressCallback | None = None,
        cancels: Sequence[CancelToken] | None = None,
        preview: Preview | None = None,
    ) -> list[GenerationOutput]:
        """Make several requests' takes, decoded together.

        Each request samples from its own seed, so its takes do not depend on which others
        share the batch (numerically they may, on some devices and precisions: a re-render
        repeats the whole batch). ``cancels`` holds one token per request; the call raises
        :class:`errors.Cancelled` only once all of them are cancelled. ``preview`` receives
        every request's rows, in order. Raises what :meth:`generate` raises.
        """

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes held by the loaded model's weights and buffers (0 when unloaded)."""
