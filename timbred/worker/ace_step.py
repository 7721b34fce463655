"""ACE-Step 1.5 through diffusers' ``AceStepPipeline``: songs with sung lyrics, and its edits.

Every request is one pipeline call making all its variations together (a batch of the same
prompt and lyrics), each variation's noise from its own seeded CPU generator
(:func:`timbred.worker.stable_audio.variation_seeds`: the first is the request's seed, so
``-n 1`` and the first of ``-n 4`` start from the same noise).

Audio in (``init``) is read at 48 kHz stereo, fitted to the take's length and handed to the
pipeline's task:

========================  ==========================================================
request                   pipeline
========================  ==========================================================
no init                   ``text2music``
init                      ``cover``, ``audio_cover_strength = 1 - strength`` (strength 1
                          keeps nothing of the source's conditioning: text to music)
init, repaint             ``repaint`` of the span; outside it the take is the source,
                          sample for sample (spliced with short crossfades)
task extract / add /      ``extract`` / ``lego`` (over the repaint span if one is
complete, track           given) / ``complete``
========================  ==========================================================

The pipeline encodes audio through the autoencoder by *sampling* its latent distribution with
torch's global generator; that is seeded from the request's seed inside a forked RNG state, so
an edit is as repeatable as text to music. Progress is reported after each step and cancel
checked there (a cancelled job stops within one step). No preview: the latents are not
decoded mid-way (a draft would cost an autoencoder pass at 48 kHz).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import diffusers
import numpy as np
import numpy.typing as npt
import torch

from timbred import errors
from timbred.backends.ace_step import PIPELINE, TRACKS
from timbred.request import Request
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
from timbred.worker.stable_audio import SPLICE_FADE_S, splice, variation_seeds

__all__ = ["AceStepBackend", "pipeline_task"]

#: Timbre's task names for the pipeline's (``add`` is ACE-Step's ``lego``).
_TASKS = {"extract": "extract", "add": "lego", "complete": "complete"}


@dataclass
class _Loaded:
    pipe: Any
    source: str
    revision: str | None
    device: torch.device
    dtype: str
    precision: str | None
    turbo: bool
    covers: bool
    """Whether it holds the audio tokenizer pair a cover needs."""
    capabilities: Capabilities
    memory_bytes: int


def pipeline_task(p: Request) -> str:
    """The pipeline's ``task_type`` for a request (see the module's table)."""
    task = str(p.options.get("task") or "generate")
    if task != "generate":
        return _TASKS[task]
    if p.init is None:
        return "text2music"
    return "repaint" if p.repaint is not None else "cover"


class AceStepBackend(OneModel[_Loaded], Backend):
    """A diffusers ACE-Step 1.5 pipeline directory (or a cached hub snapshot of one)."""

    name: ClassVar[str] = "ace-step"
    _nothing_loaded = "no ACE-Step model is loaded"

    def __init__(self, *, precision: object = None) -> None:
        # ``models.precision``: int8 quantizes the DiT's linear layers on CPU (opt-in, as for
        # Stable Audio), bf16/fp32 set the dtype, auto is bf16 on CUDA and fp32 on CPU.
        self.precision = None if precision is None else validate_precision(precision)

    def load(self, source: str, *, device: str, dtype: str) -> None:
        self.unload()
        target, dtype, precision = load_settings(source, device, dtype, self.precision)
        pipeline = source_pipeline_class(source) or ""
        if pipeline != PIPELINE:
            raise errors.ModelLoadFailed(
                source, f"{pipeline or 'no pipeline'}: not an ACE-Step pipeline ({PIPELINE})")
        pipe = load_pipeline(diffusers.AceStepPipeline, source, target, dtype, precision)
        # Songs are long: an untiled decode of 120 s at 48 kHz holds ~17 GiB of activations on
        # top of the weights (bench/RESULTS.md, session 11), so the autoencoder decodes in
        # its own overlapping tiles (512 latent frames, 20.5 s) and encodes sources over 30 s
        # the same way. Always on, so a recipe's audio does not depend on the machine.
        pipe.vae.enable_tiling()
        rate = int(pipe.sample_rate)
        channels = int(pipe.vae.config.audio_channels)
        self._state = _Loaded(
            pipe=pipe, source=source, revision=snapshot_revision(source), device=target,
            dtype=dtype, precision=precision, turbo=bool(pipe.is_turbo),
            covers=pipe.audio_tokenizer is not None and pipe.audio_token_detokenizer is not None,
            memory_bytes=pipeline_memory(pipe),
            capabilities=Capabilities(
                melody=False, continuation=False, stereo=channels == 2,
                max_native_duration_s=600.0, sample_rate=rate,
                frame_rate=float(pipe.latents_per_second), channels=channels))

    def generate_batch(
        self,
        items: Sequence[Request],
        progress: ProgressCallback | None = None,
        cancels: Sequence[CancelToken] | None = None,
        preview: Preview | None = None,
    ) -> list[GenerationOutput]:
        """Each request in turn; ``progress`` counts the denoising steps of all of them, and
        the call raises :class:`errors.Cancelled` within one step once every token is."""
        st = self._require()
        for p in items:
            self._check(st, p)
        return each_request(items, progress, cancels, lambda p, step: self._one(st, p, step))

    def _check(self, st: _Loaded, p: Request) -> None:
        """What the daemon checked at submit, again (a replayed recipe, another model)."""
        if p.melody is not None or p.continuation is not None:
            name = "melody" if p.melody else "continuation"
            raise errors.InvalidParams(f"{name}: ACE-Step takes no {name} (edit audio with "
                                       "init instead)", param=name)
        if p.duration > st.capabilities.max_native_duration_s + 1e-9:
            raise errors.InvalidParams(
                f"duration: {p.duration:g} s is longer than ACE-Step makes (600 s)",
                param="duration")
        task = pipeline_task(p)
        if task != "text2music" and p.init is None:
            raise errors.InvalidParams(f"init: {task} needs audio to work on", param="init")
        if task == "cover" and not st.covers:
            raise errors.InvalidParams(
                "init: this checkpoint has no audio tokenizer, so it cannot cover; use one "
                "converted with it", param="init")
        track = str(p.options.get("track") or "")
        if track and track not in TRACKS:
            raise errors.InvalidParams(f"track: {track!r} is not one of {', '.join(TRACKS)}",
                                       param="track", allowed={"enum": list(TRACKS)})

    def _one(self, st: _Loaded, p: Request, step: Callable[[int], None]) -> GenerationOutput:
        caps = st.capabilities
        samples = round(p.duration * caps.sample_rate)
        steps = int(p.options["steps"])
        task = pipeline_task(p)
        seeds = variation_seeds(p.seed, p.variations)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        source = None if p.init is None else fit_length(read_audio(
            p.init, param="init", sample_rate=caps.sample_rate, channels=caps.channels,
            max_duration_s=p.duration + 1), samples)

        def on_step_end(pipe: Any, index: int, timestep: Any,
                        tensors: dict[str, Any]) -> dict[str, Any]:
            step(index)
            return tensors

        track = str(p.options.get("track") or "") or None
        key = str(p.options.get("key") or "") or None
        signature = str(p.options.get("time_signature") or "") or None  # 0: the model's
        bpm = int(p.options.get("bpm") or 0) or None
        kwargs: dict[str, Any] = {
            "prompt": [p.prompt] * p.variations, "lyrics": [p.lyrics or ""] * p.variations,
            "audio_duration": p.duration, "vocal_language": str(p.options["language"]),
            "num_inference_steps": steps, "guidance_scale": float(p.options["guidance"]),
            "shift": float(p.options["shift"]), "generator": generators,
            "bpm": bpm, "keyscale": key, "timesignature": signature,
            "task_type": task, "callback_on_step_end": on_step_end, "output_type": "pt"}
        if source is not None:
            kwargs["src_audio"] = torch.from_numpy(source)
        if task == "cover":
            kwargs["audio_cover_strength"] = 1.0 - float(p.strength or 0.0)
        if task in ("extract", "lego"):
            kwargs["track_name"] = track
        if task == "complete" and track is not None:
            kwargs["complete_track_classes"] = [track]
        if p.repaint is not None and task in ("repaint", "lego"):
            kwargs["repainting_start"], kwargs["repainting_end"] = p.repaint
        started = time.perf_counter()
        devices = [st.device.index or 0] if st.device.type == "cuda" else []
        # The autoencoder samples its latents of init audio from torch's global generator;
        # seeded here (and restored after), an edit repeats bit for bit.
        with pipeline_call("ACE-Step", p, st.device, "try fewer variations or a shorter "
                           "take"), torch.random.fork_rng(devices=devices):
            torch.manual_seed(p.seed)
            audio = st.pipe(**kwargs).audios
        out = take_rows(audio, samples, "ACE-Step")
        if source is not None and task == "repaint" and p.repaint is not None:
            out = splice(source, _match_level(out, source, p.repaint, caps.sample_rate),
                         p.repaint, caps.sample_rate)
        info: dict[str, Any] = {
            "backend": self.name, "source": st.source, "revision": st.revision,
            "device": str(st.device), "dtype": st.dtype, "precision": st.precision,
            "pipeline": PIPELINE, "diffusers": diffusers.__version__, "task": task,
            "turbo": st.turbo, "vae_tiling": True, "variation_seeds": seeds,
            "seconds_per_step": round((time.perf_counter() - started) / steps, 4)}
        if task == "cover":
            info["audio_cover_strength"] = kwargs["audio_cover_strength"]
        if task == "repaint":
            info["splice_fade_s"] = SPLICE_FADE_S
        return GenerationOutput(audio=np.ascontiguousarray(out, dtype=np.float32),
                                sample_rate=caps.sample_rate, info=info)


def _match_level(made: npt.NDArray[np.float32], source: npt.NDArray[np.float32],
                 span: tuple[float, float], rate: int) -> npt.NDArray[np.float32]:
    """``made`` scaled, row by row, to the source's level outside the repainted span.

    The pipeline peak-normalises its whole output to -1 dBFS; the source (a take, already
    loudness-normalised) need not peak there, so the new span would jump in level at the
    seams. Outside the span the model re-made the source, so the RMS ratio there is the gain.
    """
    keep = np.ones(source.shape[-1], dtype=bool)
    keep[round(span[0] * rate):round(span[1] * rate)] = False
    if not keep.any():
        return made
    want = float(np.sqrt(np.mean(np.square(source[:, keep], dtype=np.float64))))
    out = made.astype(np.float64)
    for row in out:
        have = float(np.sqrt(np.mean(np.square(row[:, keep]))))
        if have > 1e-6 and want > 1e-6:
            row *= want / have
    return out.astype(np.float32)
