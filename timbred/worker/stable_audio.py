"""Stable Audio (Stability AI's latent diffusion) through diffusers' maintained pipelines.

Stable Audio Open 1.0 (``StableAudioPipeline``) makes text into audio; Stable Audio 3
(``StableAudio3Pipeline``) also varies audio (its audio-to-audio pipeline) and repaints a
span of it (its inpaint pipeline), both built from the loaded pipeline's components with
``from_pipe`` (no second copy of the weights).

One request at a time: each is one pipeline call that makes all its variations together
(``num_waveforms_per_prompt``). Every variation draws from its own seeded CPU generator
(variation 0 from the request's seed itself, the others from seeds derived from it), so a
take does not depend on how many variations were asked for with it (up to float round-off:
the transformer's arithmetic differs slightly with the batch size), and the same recipe on
the same machine gives the same samples bit for bit (the schedulers' re-noising draws from
those generators too).

Progress is reported after every denoising step and cancel is checked there, so a cancelled
job stops within one step. With a preview asked for, Stable Audio 3 sends one draft of the
whole take three quarters of the way through (its latents then, decoded); Stable Audio Open
sends none (its latents are still far from audio until its last steps). A repaint keeps
the source outside its span sample for sample: the model's new audio is spliced in with
short equal-power crossfades just inside the span.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import diffusers
import numpy as np
import numpy.typing as npt
import torch

from timbred import errors
from timbred.backends.stable_audio import PIPELINES, SA3, Generation
from timbred.request import MAX_SEED, Request
from timbred.worker.audio_io import fit_length, read_audio
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    Preview,
    ProgressCallback,
    validate_precision,
)
from timbred.worker.diffusion import (
    each_request,
    load_pipeline,
    load_settings,
    pipeline_call,
    pipeline_memory,
    take_rows,
)
from timbred.worker.loading import (
    OneModel,
    snapshot_revision,
    source_pipeline_class,
)

__all__ = ["SPLICE_FADE_S", "StableAudioBackend", "splice", "variation_seeds"]


#: Length of the crossfades that splice a repainted span into its source, in seconds.
SPLICE_FADE_S = 0.02


@dataclass
class _Loaded:
    pipe: Any
    source: str
    pipeline: str
    generation: Generation
    revision: str | None
    device: torch.device
    dtype: str
    precision: str | None
    """The concrete precision (int8, bf16, fp32), or None when the dtype decided."""
    capabilities: Capabilities
    memory_bytes: int
    scheduler_config: Any = None
    """The scheduler configuration the model shipped with (samplers are built from it)."""
    schedulers: dict[str, Any] = field(default_factory=dict)
    """Stable Audio 3's scheduler per sampler, built on first use."""
    variants: dict[str, Any] = field(default_factory=dict)
    """Stable Audio 3's audio-to-audio and inpaint pipelines, built on first use from the
    loaded components."""


def variation_seeds(seed: int, variations: int) -> list[int]:
    """The seed of each variation: the request's own for the first (so ``-n 1`` and the
    first of ``-n 4`` are the same take), then seeds drawn from ``SeedSequence([seed, v])``
    (distinct streams, never ``seed + v``, which the next seed's first take would share)."""
    seeds = [seed]
    for v in range(1, variations):
        state = np.random.SeedSequence([seed, v]).generate_state(2, dtype=np.uint32)
        seeds.append(int((int(state[0]) << 32 | int(state[1])) & MAX_SEED))
    return seeds


class StableAudioBackend(OneModel[_Loaded], Backend):
    """A diffusers Stable Audio pipeline directory (or a cached hub snapshot of one)."""

    name: ClassVar[str] = "stable-audio"
    _nothing_loaded = "no Stable Audio model is loaded"

    def __init__(self, *, precision: object = None) -> None:
        # ``precision`` (the ``models.precision`` load option, untyped from the config):
        # ``int8`` quantizes the DiT's linear layers (CPU; 1.7x faster per step on Stable
        # Audio Open's shapes here, at a 7.8 % error of one pass on random weights:
        # bench/RESULTS.md), ``bf16``/``fp32`` set the dtype, ``auto`` is bf16 on CUDA and
        # fp32 on CPU (int8 stays opt-in until measured on trained weights); None: the dtype
        # decides.
        self.precision = None if precision is None else validate_precision(precision)

    # --- loading ---------------------------------------------------------------------------

    def load(self, source: str, *, device: str, dtype: str) -> None:
        self.unload()
        target, dtype, precision = load_settings(source, device, dtype, self.precision)
        pipeline = source_pipeline_class(source) or ""
        found = PIPELINES.get(pipeline)
        if found is None:
            raise errors.ModelLoadFailed(
                source, f"{pipeline or 'no pipeline'}: not a pipeline Timbre drives "
                f"({', '.join(sorted(PIPELINES))})")
        # The text-to-audio pipeline holds every component; the audio-in ones are built
        # from it when a request needs them.
        if found is SA3:
            pipeline = "StableAudio3Pipeline"
        pipe = load_pipeline(getattr(diffusers, pipeline), source, target, dtype, precision)
        vae = pipe.vae.config
        rate = int(vae.sampling_rate)
        channels = int(vae.audio_channels)
        if found is SA3:
            hop = int(pipe.vae.downsampling_ratio)
            longest = min(float(pipe.duration_embedder.config.max_val), 600.0)
        else:
            hop = math.prod(int(r) for r in vae.downsampling_ratios)
            longest = int(pipe.transformer.config.sample_size) * hop / rate
        self._state = _Loaded(
            pipe=pipe, source=source, pipeline=pipeline, generation=found,
            revision=snapshot_revision(source), device=target, dtype=dtype,
            precision=precision, memory_bytes=pipeline_memory(pipe),
            scheduler_config=pipe.scheduler.config,
            capabilities=Capabilities(
                melody=False, continuation=False, stereo=channels == 2,
                max_native_duration_s=longest, sample_rate=rate, frame_rate=rate / hop,
                channels=channels))

    # --- generation ------------------------------------------------------------------------

    def generate_batch(
        self,
        items: Sequence[Request],
        progress: ProgressCallback | None = None,
        cancels: Sequence[CancelToken] | None = None,
        preview: Preview | None = None,
    ) -> list[GenerationOutput]:
        """Each request in turn (the family does not batch requests); ``progress`` counts the
        denoising steps of all of them. The call raises :class:`errors.Cancelled` within one
        step once every request's token is cancelled."""
        st = self._require()
        caps = st.capabilities
        for p in items:
            if p.melody is not None or p.continuation is not None:
                raise errors.InvalidParams(
                    f"{'melody' if p.melody else 'continuation'}: Stable Audio takes no "
                    "melody and continues nothing (vary audio with init instead)",
                    param="melody" if p.melody else "continuation")
            wanted = None if p.init is None else (
                "inpainting" if p.repaint is not None else "variation")
            if wanted is not None and wanted not in st.generation.features:
                raise errors.InvalidParams(
                    f"init: {st.pipeline} cannot {'repaint' if p.repaint else 'vary'} audio "
                    "(Stable Audio 3 can)", param="init")
            sampler = p.options.get("sampler", st.generation.samplers[0])
            if sampler not in st.generation.samplers:
                raise errors.InvalidParams(
                    f"sampler: {st.pipeline} samples with "
                    f"{' or '.join(st.generation.samplers)}, not {sampler}", param="sampler")
            if p.duration > caps.max_native_duration_s + 1e-9:
                raise errors.InvalidParams(
                    f"duration: {p.duration:g} s is longer than this model makes "
                    f"({caps.max_native_duration_s:.2f} s)", param="duration")
        # A draft is one chunk holding every row of the batch, so only a batch of one request
        # (every Stable Audio batch the scheduler makes) can have one.
        draft = preview if len(items) == 1 else None
        return each_request(items, progress, cancels,
                            lambda p, step: self._one(st, p, step, draft))

    def _one(self, st: _Loaded, p: Request, step: Callable[[int], None],
             preview: Preview | None = None) -> GenerationOutput:
        caps = st.capabilities
        samples = round(p.duration * caps.sample_rate)
        steps = int(p.options["steps"])
        seeds = variation_seeds(p.seed, p.variations)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        source = None if p.init is None else fit_length(read_audio(
            p.init, param="init", sample_rate=caps.sample_rate, channels=caps.channels,
            max_duration_s=p.duration + 1), samples)
        started = time.perf_counter()
        with pipeline_call("Stable Audio", p, st.device, "try fewer variations or "
                           "dtype=float16"):
            if st.generation is SA3:
                audio = self._stable_audio_3(st, p, steps, generators, source, step, preview)
            else:
                audio = st.pipe(
                    prompt=p.prompt, negative_prompt=_negative(p),
                    audio_start_in_s=0.0, audio_end_in_s=p.duration,
                    num_inference_steps=steps, guidance_scale=float(p.options["guidance"]),
                    num_waveforms_per_prompt=p.variations, generator=generators,
                    callback=lambda index, timestep, latents: step(index), callback_steps=1,
                    output_type="pt").audios
        out = take_rows(audio, samples, "Stable Audio")
        if source is not None and p.repaint is not None:
            out = splice(source, out, p.repaint, caps.sample_rate)
        info = {"backend": self.name, "source": st.source, "revision": st.revision,
                "device": str(st.device), "dtype": st.dtype, "precision": st.precision,
                "pipeline": st.pipeline,
                "diffusers": diffusers.__version__,
                "scheduler": type(st.pipe.scheduler).__name__, "variation_seeds": seeds,
                "seconds_per_step": round((time.perf_counter() - started) / steps, 4)}
        if p.repaint is not None:
            info["splice_fade_s"] = SPLICE_FADE_S
        return GenerationOutput(audio=np.ascontiguousarray(out, dtype=np.float32),
                                sample_rate=caps.sample_rate, info=info)

    @staticmethod
    def _stable_audio_3(st: _Loaded, p: Request, steps: int, generators: list[torch.Generator],
                        source: npt.NDArray[np.float32] | None,
                        step: Callable[[int], None],
                        preview: Preview | None) -> torch.Tensor:
        samples = round(p.duration * st.capabilities.sample_rate)
        # The preview: the latents three quarters of the way through, decoded once (one
        # autoencoder pass, cheap beside the DiT's steps: 2.5 s against 33 s for 10 s of Stable
        # Audio 3 Medium's shapes here), sent as the whole take's draft.
        draft = steps * 3 // 4 - 1 if preview is not None and steps >= 4 else -1

        def on_step_end(pipe: Any, index: int, timestep: Any,
                        tensors: dict[str, Any]) -> dict[str, Any]:
            step(index)
            if index == draft and preview is not None:
                audio = pipe.vae.decode(tensors["latents"]).sample[:, :, :samples]
                rows = audio.clamp(-1.0, 1.0).to("cpu", torch.float32).numpy()
                preview.send(0, np.ascontiguousarray(rows))
            return tensors

        # The sampler: Stable Audio 3's flow-matching scheduler, stochastic (ping-pong) or
        # not (Euler); set on whichever pipeline runs, since from_pipe shares the object.
        sampler = str(p.options.get("sampler") or "")
        if sampler not in st.schedulers:
            st.schedulers[sampler] = type(st.pipe.scheduler).from_config(
                st.scheduler_config, stochastic_sampling=sampler == "ping-pong")
        common: dict[str, Any] = {
            "prompt": p.prompt, "duration": p.duration, "num_inference_steps": steps,
            "num_waveforms_per_prompt": p.variations, "generator": generators,
            "callback_on_step_end": on_step_end, "output_type": "pt"}
        if source is None:
            st.pipe.scheduler = st.schedulers[sampler]
            return st.pipe(guidance_scale=float(p.options["guidance"]),  # type: ignore[no-any-return]
                           negative_prompt=_negative(p), **common).audios
        audio = torch.from_numpy(source[None]).to(st.device, st.pipe.vae.dtype)
        if p.repaint is not None:
            inpaint = _variant(st, "StableAudio3InpaintPipeline")
            inpaint.scheduler = st.schedulers[sampler]
            return inpaint(audio=audio, mask_start_seconds=p.repaint[0],  # type: ignore[no-any-return]
                           mask_end_seconds=p.repaint[1], **common).audios
        vary = _variant(st, "StableAudio3AudioToAudioPipeline")
        vary.scheduler = st.schedulers[sampler]
        return vary(audio=audio, init_noise_level=float(p.strength or 1.0),  # type: ignore[no-any-return]
                    **common).audios


def splice(source: npt.NDArray[np.float32], made: npt.NDArray[np.float32],
           span: tuple[float, float], sample_rate: int) -> npt.NDArray[np.float32]:
    """``made``'s rows (``(variations, channels, samples)``) with ``source`` (``(channels,
    samples)``) everywhere outside ``span``: equal-power crossfades of :data:`SPLICE_FADE_S`
    (shorter for a short span) just inside its ends, so outside it every sample is the
    source's."""
    start = round(span[0] * sample_rate)
    end = min(round(span[1] * sample_rate), source.shape[-1])
    fade = max(1, min(round(SPLICE_FADE_S * sample_rate), (end - start) // 2))
    weight = np.zeros(source.shape[-1], dtype=np.float64)  # 1 = made, 0 = source
    weight[start:end] = 1.0
    ramp = np.sin(0.5 * np.pi * (np.arange(1, fade + 1) / (fade + 1))) ** 2
    weight[start:start + fade] = ramp
    weight[end - fade:end] = ramp[::-1]
    # Equal power: the two gains' squares sum to one.
    gain_made, gain_source = np.sqrt(weight), np.sqrt(1.0 - weight)
    out = made.astype(np.float64) * gain_made + source.astype(np.float64)[None] * gain_source
    out[..., :start] = source[None, :, :start]
    out[..., end:] = source[None, :, end:]
    return out.astype(np.float32)


def _negative(p: Request) -> str | None:
    return str(p.options.get("negative") or "") or None


def _variant(st: _Loaded, name: str) -> Any:
    if name not in st.variants:
        st.variants[name] = getattr(diffusers, name).from_pipe(st.pipe)
        st.variants[name].set_progress_bar_config(disable=True)
    return st.variants[name]
