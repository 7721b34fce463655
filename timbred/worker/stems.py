"""Stems: a take separated into drums, bass, other and vocals by a Demucs bag (in the worker).

:class:`DemucsBackend` holds one bag (``htdemucs``: one Hybrid Transformer Demucs; the
``_ft`` bag: four) loaded from the hub's layout (:mod:`timbred.backends.demucs`) with demucs's
own loader, and :meth:`DemucsBackend.separate` runs demucs's ``apply_model`` over the take:
overlapping segments crossfaded, optionally several shifted passes averaged. It reports
progress per segment and stops between segments when cancelled. Each stem comes back at the
take's sample rate, channel count and length, so that the stems line up with the take sample
for sample in a DAW.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from timbred import errors
from timbred.backends.demucs import bag_file, signatures
from timbred.request import Request
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    Preview,
    ProgressCallback,
    Separation,
    validate_device,
)
from timbred.worker.loading import OneModel, load_failure, snapshot_revision, torch_device

__all__ = ["DemucsBackend"]


@dataclass
class _Loaded:
    bag: Any  # demucs.apply.BagOfModels
    source: str
    revision: str | None
    device: torch.device
    capabilities: Capabilities
    memory_bytes: int
    sources: tuple[str, ...]


class DemucsBackend(OneModel[_Loaded], Backend):
    """A Demucs bag directory (``htdemucs.yaml`` and its models' safetensors)."""

    name: ClassVar[str] = "demucs"
    _nothing_loaded = "no Demucs model is loaded"

    def load(self, source: str, *, device: str, dtype: str) -> None:
        # Demucs runs in float32 whatever the daemon's dtype (its STFT and masks were
        # trained so); ``dtype`` is accepted for the interface and not applied.
        del dtype
        self.unload()
        directory = Path(source)
        bag = bag_file(directory) if directory.is_dir() else None
        sigs = signatures(bag) if bag is not None else None
        if bag is None or not sigs:
            raise errors.ModelNotFound(source, "not a Demucs bag directory (NAME.yaml naming "
                                       "its models' SIGNATURE.safetensors files)")
        target = torch_device(source, validate_device(device))
        try:
            import yaml
            from demucs.apply import BagOfModels
            from demucs.hf import load_safetensors_model

            spec = yaml.safe_load(bag.read_text(encoding="utf-8"))
            models = [load_safetensors_model(directory / f"{sig}.safetensors")
                      for sig in sigs]
            loaded = BagOfModels(models, spec.get("weights"), spec.get("segment"))
            loaded.to(target).eval()
        except errors.TimbreError:
            raise
        except Exception as exc:
            raise load_failure(source, exc, target) from exc
        memory = sum(t.numel() * t.element_size()
                     for t in (*loaded.parameters(), *loaded.buffers()))
        rate, channels = int(loaded.samplerate), int(loaded.audio_channels)
        self._state = _Loaded(
            bag=loaded, source=source, revision=snapshot_revision(source), device=target,
            memory_bytes=memory, sources=tuple(str(s) for s in loaded.sources),
            capabilities=Capabilities(
                melody=False, continuation=False, stereo=channels == 2,
                max_native_duration_s=_segment_s(loaded),
                sample_rate=rate, frame_rate=0.0, channels=channels))

    def generate_batch(self, items: Sequence[Request], progress: ProgressCallback | None = None,
                       cancels: Sequence[CancelToken] | None = None,
                       preview: Preview | None = None) -> list[GenerationOutput]:
        raise errors.InvalidParams("a Demucs model separates takes into stems; it does not "
                                   "generate (timbrectl takes stems TAKE)", param="model")

    def separate(self, audio: npt.NDArray[np.float32], sample_rate: int, *, shifts: int = 1,
                 overlap: float = 0.25, seed: int = 0,
                 progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> Separation:
        """``audio`` (``(channels, frames)`` float32 at ``sample_rate``) separated into the
        bag's stems, each at the same rate, channels and length.

        ``seed`` decides the random offsets of the ``shifts`` passes, so that the same take,
        model and settings separate into the same stems. Raises :class:`errors.Cancelled`
        between segments once ``cancel`` is set.
        """
        from demucs.apply import apply_model
        from julius.resample import resample_frac

        state = self._require()
        if audio.ndim != 2 or audio.shape[1] == 0:
            raise errors.InvalidParams(f"audio to separate must be (channels, frames) and not "
                                       f"empty, got shape {audio.shape}", param="take")
        bag = state.bag
        rate, channels = state.capabilities.sample_rate, state.capabilities.channels
        frames = audio.shape[1]
        with torch.inference_mode():
            mix = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
            mix = _channels(mix, channels)
            if sample_rate != rate:
                mix = resample_frac(mix, sample_rate, rate)
            # As demucs's own command line does: the model was trained on standardised mixes.
            ref = mix.mean(0)
            centre, scale = ref.mean(), ref.std()
            scale = scale if float(scale) > 1e-8 else torch.ones_like(scale)
            mix = (mix - centre) / scale
            total = _segments(bag, state.capabilities.max_native_duration_s, mix.shape[-1],
                              shifts, overlap)
            done = 0

            def on_segment(event: dict[str, Any]) -> None:
                nonlocal done
                if cancel is not None:
                    cancel.raise_if_cancelled()  # apply_model stops its segments on it
                if event.get("state") == "end" and progress is not None:
                    done = min(done + 1, total - 1)
                    progress(done, total)

            saved = random.getstate()
            random.seed(seed)  # apply_model draws each shift's offset from random
            try:
                out = apply_model(bag, mix[None], shifts=shifts, split=True, overlap=overlap,
                                  device=state.device, callback=on_segment)[0]
            except errors.TimbreError:
                raise
            except Exception as exc:
                raise errors.GenerationFailed(f"separation failed: {type(exc).__name__}: "
                                              f"{exc}") from exc
            finally:
                random.setstate(saved)
            out = out * scale + centre
            if sample_rate != rate:
                out = resample_frac(out, rate, sample_rate)
            out = _channels(out, audio.shape[0])
            stems = out[..., :frames]
            if stems.shape[-1] < frames:
                stems = torch.nn.functional.pad(stems, (0, frames - stems.shape[-1]))
        if progress is not None:
            progress(total, total)
        return Separation(
            names=state.sources, stems=np.ascontiguousarray(stems.numpy(), dtype=np.float32),
            info={"backend": self.name, "source": state.source, "revision": state.revision,
                  "device": str(state.device), "dtype": "float32", "sources": list(state.sources),
                  "model_sample_rate": rate, "shifts": shifts, "overlap": overlap,
                  "seed": seed, "segments": total})


def _channels(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """``audio`` (``(..., channels, frames)``) with ``channels`` channels: a mono take is
    doubled for the model, and a model's stereo stem folded back to the take's mono."""
    have = audio.shape[-2]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(dim=-2, keepdim=True)
    if have == 1:
        return audio.expand(*audio.shape[:-2], channels, audio.shape[-1]).contiguous()
    raise errors.InvalidParams(f"cannot separate {have}-channel audio with a "
                               f"{channels}-channel model", param="take")


def _segment_s(bag: Any) -> float:
    """Seconds of audio one pass of the bag's models takes (``apply_model`` splits longer
    audio into segments of it)."""
    longest = bag.max_allowed_segment  # infinite for a bag without an HTDemucs
    return float(longest if math.isfinite(longest) else bag.models[0].segment)


def _segments(bag: Any, segment_s: float, length: int, shifts: int, overlap: float) -> int:
    """How many segments ``apply_model`` runs, at most (a shifted pass's length depends on
    its random offset; progress ends at the total whatever)."""
    passes = len(bag.models) * max(1, shifts)
    segment = int(bag.samplerate * segment_s)
    stride = max(1, int((1 - overlap) * segment))
    padded = length + (2 * int(0.5 * bag.samplerate) if shifts else 0)
    return passes * max(1, math.ceil(padded / stride))
