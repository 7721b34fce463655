"""Stability AI's Stable Audio family through diffusers, as the registry sees it: torch-free.

A model is a diffusers pipeline directory (``model_index.json`` and one folder per
component). Its inference lives in :mod:`timbred.worker.stable_audio`; this module says how to
recognise one, how long a take it can make, which parameters it takes and their defaults.

Two generations, one family (the same parameters mean the same things):

* ``StableAudioPipeline``: Stable Audio Open 1.0. Latent diffusion with a T5 text encoder and
  classifier-free guidance (default 7, so a negative prompt works), 100 steps by default; it
  always denoises its whole trained window (about 47 s) and cuts the take from it. Text only.
* ``StableAudio3Pipeline`` (and its ``AudioToAudio`` and ``Inpaint`` siblings, which load
  from the same directory): Stable Audio 3, a rectified-flow DiT. The distilled checkpoints
  take 8 stochastic ("ping-pong") steps with guidance baked in (default 1, off); the base
  checkpoint 100 deterministic steps. Its latent length follows the duration, up to its
  duration conditioner's range. It varies audio (``init``, ``strength``) and repaints spans
  (``init``, ``repaint``); those two paths take no guidance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from timbred.backends.files import diffusers_pipeline_missing, pipeline_class, read_json
from timbred.backends.spec import BackendCapabilities, BackendSpec
from timbred.errors import InvalidParams
from timbred.request import Request

#: Timbre's own ceiling on any take (the wire's duration maximum).
_MAX_TAKE_S = 600.0


#: The samplers, and the generation each belongs to.
SAMPLERS = ("dpm-sde", "ping-pong", "euler")


@dataclass(frozen=True)
class Generation:
    """What one pipeline generation of the family does, read by spec and worker alike."""

    name: str
    features: frozenset[str]
    guidance: float
    """Default classifier-free guidance scale."""
    samplers: tuple[str, ...]
    """The samplers it takes (:data:`SAMPLERS`)."""


OPEN = Generation("stable-audio-open", frozenset({"seeded"}), guidance=7.0,
                  samplers=("dpm-sde",))
SA3 = Generation("stable-audio-3",
                 frozenset({"seeded", "variation", "inpainting", "streaming"}), guidance=1.0,
                 samplers=("ping-pong", "euler"))

#: The pipeline classes a ``model_index.json`` may name, and the generation each belongs to.
PIPELINES: Mapping[str, Generation] = MappingProxyType({
    "StableAudioPipeline": OPEN,
    "StableAudio3Pipeline": SA3,
    "StableAudio3AudioToAudioPipeline": SA3,
    "StableAudio3InpaintPipeline": SA3,
})


def generation(directory: Path) -> Generation | None:
    return PIPELINES.get(pipeline_class(directory) or "")


def recognises(directory: Path) -> bool:
    return generation(directory) is not None


def max_duration(directory: Path) -> float | None:
    """The longest take a pipeline directory makes, in seconds.

    Stable Audio Open: its transformer's latent length times the autoencoder's hop
    (1024 x 2048 / 44100 = 47.55 s). Stable Audio 3: its duration conditioner's range
    (``max_val``, 384 s for SA3 Medium), within Timbre's 600 s. ``None`` when the configs do
    not say.
    """
    if generation(directory) is SA3:
        embedder = read_json(directory / "duration_embedder" / "config.json")
        try:
            seconds = float(embedder.get("max_val", 384.0))
        except (TypeError, ValueError):
            return None
        return min(seconds, _MAX_TAKE_S) if math.isfinite(seconds) and seconds > 0 else None
    transformer = read_json(directory / "transformer" / "config.json")
    vae = read_json(directory / "vae" / "config.json")
    try:
        hop = math.prod(int(r) for r in vae["downsampling_ratios"])
        seconds = int(transformer["sample_size"]) * hop / float(vae["sampling_rate"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def model_features(directory: Path) -> frozenset[str]:
    found = generation(directory)
    return found.features if found is not None else frozenset()


def model_defaults(directory: Path) -> dict[str, Any]:
    """Steps and guidance as the model was made to run: Stable Audio 3's distilled
    checkpoints (a stochastic scheduler) take 8 steps, its base model and Stable Audio Open
    100; guidance is baked into Stable Audio 3 (1, off) and 7 for Stable Audio Open."""
    found = generation(directory)
    if found is None:
        return {}
    steps, sampler = 100, "dpm-sde"
    if found is SA3:
        scheduler = read_json(directory / "scheduler" / "scheduler_config.json")
        distilled = bool(scheduler.get("stochastic_sampling"))
        steps, sampler = (8, "ping-pong") if distilled else (100, "euler")
    return {"steps": steps, "sampler": sampler, "guidance": found.guidance}


def check_request(directory: Path, request: Request) -> None:
    """A sampler the model's generation does not have is refused, and so is what the
    pipelines would silently ignore: a negative prompt
    without guidance (the pipelines use it only for guidance's unconditional half), and
    guidance or a negative prompt on Stable Audio 3's audio-to-audio and inpaint pipelines,
    which take neither."""
    found = generation(directory)
    sampler = request.options.get("sampler")
    if found is not None and sampler is not None and sampler not in found.samplers:
        raise InvalidParams(
            f"sampler: {found.name} samples with {' or '.join(found.samplers)}, not "
            f"{sampler}", param="sampler", allowed={"enum": list(found.samplers)})
    guided = float(request.options.get("guidance", 1.0)) > 1
    negative = bool(request.options.get("negative"))
    if request.init is not None and found is SA3 and (guided or negative):
        raise InvalidParams(
            "guidance: Stable Audio 3 varies and repaints audio without guidance or a "
            "negative prompt; leave guidance at 1 or below and negative empty",
            param="guidance", allowed={"maximum": 1})
    if negative and not guided:
        raise InvalidParams(
            "negative: set guidance above 1 too (--guidance 3, say); a negative prompt "
            "steers only guided steps, and this model's guidance is off", param="negative")


SPEC = BackendSpec(
    name="stable-audio",
    summary="Stability AI's Stable Audio (Open 1.0, and 3 with audio-to-audio and repaint) "
            "through diffusers: text to 44.1 kHz stereo by latent diffusion",
    implementation="timbred.worker.stable_audio:StableAudioBackend",
    recognises=recognises,
    missing=diffusers_pipeline_missing,
    capabilities=BackendCapabilities(
        sample_rates=(44100,), channels=(2,), max_native_duration_s=384.0,
        features=frozenset({"seeded", "variation", "inpainting", "streaming"})),
    model_features=model_features,
    params=MappingProxyType({
        "steps": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100,
                  "description": "Denoising steps (default: the model's own, 8 for distilled "
                                 "Stable Audio 3, else 100)."},
        "negative": {"type": "string", "maxLength": 2000, "default": "",
                     "description": "What the take should not have (needs guidance > 1)."},
        "sampler": {"enum": list(SAMPLERS), "default": "dpm-sde",
                    "description": "How the steps sample (default: the model's own): "
                                   "dpm-sde is Stable Audio Open's (its only one); Stable "
                                   "Audio 3 takes ping-pong (stochastic, its distilled "
                                   "models') or euler (deterministic, its base model's)."},
        "guidance": {"type": "number", "minimum": 0, "maximum": 30, "default": 7.0,
                     "description": "Classifier-free guidance scale, <= 1 off (default: the "
                                    "model's, 7 for Stable Audio Open, 1 for Stable Audio 3, "
                                    "whose guidance is distilled into it)."},
    }),
    # The decoder precision (models.precision): int8 quantizes the DiT on CPU, opt-in.
    load_options=("precision",),
    max_duration=max_duration,
    model_defaults=model_defaults,
    check_request=check_request,
    needs=("local_weights",),
    model_hint="a diffusers directory whose model_index.json names StableAudioPipeline or "
               "StableAudio3Pipeline",
)
