"""What the diffusers backends (Stable Audio, ACE-Step) do the same way: keeping diffusers
quiet, the dtype and precision a pipeline loads at, loading it onto its device, and the memory
it then holds.

``models.precision`` (untyped from the config) for a diffusion family: ``int8`` quantizes the
DiT's linear layers (CPU; opt-in until measured on trained weights), ``bf16``/``fp32`` set the
dtype, ``auto`` is bf16 on CUDA and fp32 on CPU; ``None``: the requested dtype decides.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers
from diffusers.utils import logging as diffusers_logging

from timbred import errors
from timbred.request import Request
from timbred.worker.backend import (
    CancelToken,
    GenerationOutput,
    ProgressCallback,
    validate_device,
    validate_dtype,
)
from timbred.worker.device import is_oom, oom_reason, release_memory
from timbred.worker.loading import TORCH_DTYPES, load_failure, torch_device
from timbred.worker.precision import quantize_linears, quantized_bytes, resolve_precision

__all__ = ["each_request", "load_pipeline", "load_settings", "pipeline_call", "pipeline_memory",
           "quiet", "take_rows"]


def load_settings(source: str, device: str, dtype: str, precision: str | None
                  ) -> tuple[torch.device, str, str | None]:
    """The device, the dtype and the concrete precision (int8, bf16, fp32; ``None`` when the
    dtype decided) a load of ``source`` uses, ``precision`` being the validated option."""
    target = torch_device(source, validate_device(device))
    dtype = validate_dtype(dtype)
    concrete = None
    if precision is not None:
        concrete = ("fp32" if precision == "auto" and target.type == "cpu"
                    else resolve_precision(precision, target))
        dtype = {"int8": "float32", "bf16": "bfloat16", "fp32": "float32"}[concrete]
    return target, dtype, concrete


def load_pipeline(cls: Any, source: str, target: torch.device, dtype: str,
                  precision: str | None) -> Any:
    """``cls.from_pretrained(source)`` on ``target``, local files only, its DiT quantized for
    int8; every failure as Timbre's (memory released)."""
    try:
        with quiet():
            pipe = cls.from_pretrained(source, dtype=TORCH_DTYPES[dtype],
                                       local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(target)
        if precision == "int8":
            quantize_linears(pipe.transformer)
    except errors.TimbreError:
        raise
    except Exception as exc:
        raise load_failure(source, exc, target) from exc
    return pipe


def pipeline_memory(pipe: Any) -> int:
    """Bytes of every component's weights and buffers (int8 weights included)."""
    parts = [p for p in pipe.components.values() if isinstance(p, torch.nn.Module)]
    memory = sum(t.numel() * t.element_size()
                 for part in parts for t in (*part.parameters(), *part.buffers()))
    return int(memory + sum(quantized_bytes(part) for part in parts))


def each_request(items: Sequence[Request], progress: ProgressCallback | None,
                 cancels: Sequence[CancelToken] | None,
                 make: Callable[[Request, Callable[[int], None]], GenerationOutput]
                 ) -> list[GenerationOutput]:
    """``make(request, step)`` for each request in turn (the diffusion families decode one
    request at a time). ``step(index)``, called after each denoising step, reports progress
    counted over every request's ``steps`` and raises :class:`errors.Cancelled` once every
    token is cancelled, so a cancel stops within one step."""
    tokens = list(cancels) if cancels is not None else [CancelToken() for _ in items]
    total = sum(int(p.options["steps"]) for p in items)
    outputs: list[GenerationOutput] = []
    done = 0
    for p in items:
        if all(t.cancelled for t in tokens):
            raise errors.Cancelled()

        def step(index: int, base: int = done) -> None:
            if all(t.cancelled for t in tokens):
                raise errors.Cancelled()
            if progress is not None:
                progress(base + index + 1, total)

        outputs.append(make(p, step))
        done += int(p.options["steps"])
    return outputs


@contextlib.contextmanager
def pipeline_call(family: str, p: Request, device: torch.device, oom_hint: str
                  ) -> Iterator[None]:
    """Around one pipeline call: diffusers quiet, inference mode, and every foreign failure
    as :class:`errors.GenerationFailed` naming ``family`` (memory released; out of memory
    said so, with ``oom_hint``)."""
    try:
        with quiet(), torch.inference_mode():
            yield
    except errors.TimbreError:
        raise
    except Exception as exc:
        release_memory(str(device))
        if is_oom(exc):
            raise errors.GenerationFailed(
                f"{oom_reason(exc, str(device))}, making {p.variations} x {p.duration:g} s "
                f"({oom_hint})") from exc
        raise errors.GenerationFailed(f"{family} failed: {type(exc).__name__}: "
                                      f"{exc}") from exc


def take_rows(audio: torch.Tensor, samples: int, family: str) -> npt.NDArray[np.float32]:
    """A pipeline's ``(rows, channels, n)`` audio as float32 on the CPU, exactly ``samples``
    long (pipelines cut at whole latent frames, a take rounds), refused if not finite."""
    out = audio.detach().to("cpu", torch.float32).numpy()[:, :, :samples]
    if out.shape[-1] < samples:
        out = np.pad(out, ((0, 0), (0, 0), (0, samples - out.shape[-1])))
    if not np.isfinite(out).all():
        raise errors.GenerationFailed(
            f"{family} produced non-finite samples (try dtype=float32)")
    return np.ascontiguousarray(out, dtype=np.float32)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """diffusers' and torchsde's chatter (the accelerate hint, float round-off warnings from
    the Brownian tree at the schedule's ends) stays out of the daemon's log."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    # Loading bars (diffusers' components, transformers' weights) would fill stderr.
    diffusers_logging.disable_progress_bar()
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torchsde(\.|$)")
            # diffusers' Oobleck autoencoder still builds with the old weight_norm API.
            warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is "
                                    "deprecated", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
