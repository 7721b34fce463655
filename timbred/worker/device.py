"""Devices for inference: which one, in which dtype, within what memory, and running out of it.

The decisions are pure functions of what the inference worker reports about its hardware
(:func:`probe`), so they are tested on any machine, with numbers, without a GPU:

* :func:`choose_device` and :func:`choose_dtype`: the ``daemon.device`` and ``models.dtype``
  settings against the CUDA devices the worker sees (an explicit setting always wins;
  ``auto`` picks CUDA when there is one, and bfloat16 where the card computes it, else
  float16; float32 on CPU);
* :func:`memory_budget_bytes`: ``models.memory_budget_mb`` applied to the device that holds
  the models (a GPU's own memory when the models live there, not the host's RAM);
* :func:`oom_reason`: an out-of-memory error from torch (``torch.OutOfMemoryError``, the
  plain ``RuntimeError("CUDA out of memory ...")`` of older builds, ``MemoryError``) turned
  into one clear sentence, ``CUDA out of memory: needs 2.00 GiB, has 1.50 GiB free of
  79.19 GiB on cuda:0``, with the figures parsed from torch's message (or asked of the device).

This module does not import torch at import time (the daemon imports it); the few helpers
that touch a device (:func:`probe`, :func:`mem_get_info`, :func:`release_memory`) import it
inside the call, and only the worker process calls them.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from timbred import errors
from timbred.worker.backend import validate_device, validate_dtype

__all__ = [
    "CudaDevice",
    "OomFigures",
    "choose_device",
    "choose_dtype",
    "is_oom",
    "mem_get_info",
    "memory_budget_bytes",
    "oom_reason",
    "parse_oom",
    "probe",
    "release_memory",
]

GiB = 1 << 30
MiB = 1 << 20

#: Share of a memory that the models may hold together when no budget is configured.
DEFAULT_BUDGET_SHARE = 0.75

_UNITS = {"b": 1, "byte": 1, "bytes": 1, "kib": 1 << 10, "mib": MiB, "gib": GiB,
          "tib": 1 << 40, "kb": 1 << 10, "mb": MiB, "gb": GiB}
_SIZE = r"(\d+(?:\.\d+)?)\s*(bytes|byte|b|kib|mib|gib|tib|kb|mb|gb)\b"
#: torch >= 2.1: "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of
#: which 1.50 GiB is free."; before: "(GPU 0; 7.93 GiB total capacity; ...; 47.06 MiB free;".
_NEED_RE = re.compile(r"tried to allocate\s+" + _SIZE, re.IGNORECASE)
_FREE_RE = re.compile(r"(?:of which\s+" + _SIZE + r"\s+is free|" + _SIZE + r"\s+free\b)",
                      re.IGNORECASE)
_TOTAL_RE = re.compile(r"(?:total capacity of\s+" + _SIZE + r"|" + _SIZE
                       + r"\s+total capacity)", re.IGNORECASE)


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device as the worker sees it."""

    name: str
    total_bytes: int
    bf16: bool
    """Whether it computes bfloat16 natively (compute capability 8.0, Ampere, and later)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"name": self.name, "total_bytes": self.total_bytes, "bf16": self.bf16}

    @classmethod
    def from_dict(cls, data: Any) -> CudaDevice:
        """Inverse of :meth:`to_dict`; a bare name (an older worker) has unknown memory."""
        if isinstance(data, str):
            return cls(name=data, total_bytes=0, bf16=False)
        return cls(name=str(data["name"]), total_bytes=int(data["total_bytes"]),
                   bf16=bool(data["bf16"]))


def choose_device(requested: str, cuda: Sequence[CudaDevice]) -> str:
    """The device models load on: ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is ``cuda`` when the worker sees a CUDA device, else ``cpu``; anything else is
    taken as asked. Raises :class:`errors.InvalidParams` (``param="device"``) for a name
    that is not a device, and for a CUDA device the worker does not see, naming what it sees.
    """
    if not isinstance(requested, str):
        raise errors.InvalidParams("device must be a string", param="device")
    if requested.strip().lower() == "auto":
        return "cuda" if cuda else "cpu"
    device = validate_device(requested)
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= len(cuda):
            seen = (f"{len(cuda)} CUDA device(s): " + ", ".join(d.name for d in cuda)
                    if cuda else "no CUDA device (is this torch built with CUDA? is the "
                    "driver loaded? is CUDA_VISIBLE_DEVICES set?)")
            raise errors.InvalidParams(
                f"device {requested!r} is configured but the inference worker sees {seen}; "
                "set daemon.device to auto or cpu", param="device")
    return device


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def choose_dtype(requested: str, device: str, cuda: Sequence[CudaDevice] = ()) -> str:
    """The dtype models load in: ``float32``, ``bfloat16`` or ``float16``.

    An explicit ``requested`` dtype wins (it is checked, not second-guessed). ``auto`` is
    ``float32`` on CPU; on CUDA it is ``bfloat16`` where the device computes it natively
    (``cuda[N].bf16``), else ``float16`` (pre-Ampere cards emulate bfloat16 slowly, and
    MusicGen's decoder runs in float16 as in audiocraft). Raises
    :class:`errors.InvalidParams` for an unknown name.
    """
    if requested == "auto":
        if not device.startswith("cuda"):
            return "float32"
        index = _device_index(device)
        bf16 = cuda[index].bf16 if index < len(cuda) else True
        return "bfloat16" if bf16 else "float16"
    return validate_dtype(requested)


def memory_budget_bytes(configured_mb: int, *, host_bytes: int,
                        device_bytes: int | None = None) -> int:
    """Memory the loaded models may hold together, in bytes.

    The models live on one device: with ``device_bytes`` (a GPU that reports its memory)
    the budget is of that memory, else of the host's (``host_bytes``). ``configured_mb``
    (``models.memory_budget_mb``) is the budget when set, but never more than a reporting
    device has (a budget past it would only move the failure from eviction to an
    out-of-memory error); 0 means :data:`DEFAULT_BUDGET_SHARE` of the memory.
    """
    if configured_mb < 0:
        raise ValueError("memory_budget_mb must be >= 0")
    memory = device_bytes if device_bytes else host_bytes
    if configured_mb == 0:
        return int(memory * DEFAULT_BUDGET_SHARE)
    configured = configured_mb * MiB
    return min(configured, device_bytes) if device_bytes else configured


@dataclass(frozen=True)
class OomFigures:
    """What an out-of-memory message says (``None``: it does not say)."""

    needed_bytes: int | None
    free_bytes: int | None
    total_bytes: int | None


def _size(match: re.Match[str] | None) -> int | None:
    if match is None:
        return None
    groups = [g for g in match.groups() if g is not None]
    return round(float(groups[0]) * _UNITS[groups[1].lower()])


def parse_oom(text: str) -> OomFigures:
    """The sizes in torch's CUDA out-of-memory message (either of its two formats)."""
    return OomFigures(needed_bytes=_size(_NEED_RE.search(text)),
                      free_bytes=_size(_FREE_RE.search(text)),
                      total_bytes=_size(_TOTAL_RE.search(text)))


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory (on a GPU or on the host)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True  # torch.OutOfMemoryError (is torch.cuda.OutOfMemoryError), by name
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def oom_reason(exc: BaseException, device: str,
               mem_info: Callable[[str], tuple[int, int] | None] | None = None) -> str:
    """One sentence for an out-of-memory ``exc`` on ``device``.

    On CUDA: ``CUDA out of memory: needs N GiB, has M GiB free of T GiB on cuda:0``. The
    figures come from torch's message; what it leaves out is asked of ``mem_info(device)``
    (``(free, total)`` bytes, :func:`mem_get_info` by default) when there is one.
    """
    text = str(exc)
    figures = parse_oom(text)
    on_cuda = device.startswith("cuda") or "cuda" in text.lower()
    if not on_cuda:
        return f"out of memory on {device} (the host's RAM)"
    free, total = figures.free_bytes, figures.total_bytes
    if free is None or total is None:
        info = (mem_info or mem_get_info)(device)
        if info is not None:
            free = info[0] if free is None else free
            total = info[1] if total is None else total
    need = (_gib(figures.needed_bytes) if figures.needed_bytes is not None
            else "more than it has")
    has = "an unknown amount" if free is None else f"{_gib(free)} free"
    of = "" if total is None else f" of {_gib(total)}"
    return f"CUDA out of memory: needs {need}, has {has}{of} on {device}"


# --- the device itself (worker process only) ---------------------------------------------


def probe() -> list[CudaDevice]:
    """The CUDA devices this process sees (none without a CUDA build or driver)."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(CudaDevice(name=str(props.name), total_bytes=int(props.total_memory),
                                bf16=int(props.major) >= 8))
    return found


def mem_get_info(device: str) -> tuple[int, int] | None:
    """``(free, total)`` bytes of a CUDA ``device``; ``None`` for a CPU or when unknown."""
    if not device.startswith("cuda"):
        return None
    import torch

    try:
        free, total = torch.cuda.mem_get_info(_device_index(device))
    except Exception:  # no driver, a device gone bad mid-job: the figures are optional
        return None
    return int(free), int(total)


def release_memory(device: str) -> None:
    """Collect the garbage, and on CUDA return the allocator's cached blocks to the driver.

    Called after a model is dropped (unload) and after a failed generation, so that the
    memory shows as free to the next load, to ``nvidia-smi`` and to other programs.
    """
    gc.collect()
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()
