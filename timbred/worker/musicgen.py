"""MusicGen (and MusicGen-Melody) through Hugging Face transformers.

Imported only inside the worker process: it pulls in torch and transformers.

How a generation runs
---------------------
* The prompt is tokenised ``variations`` times and decoded as one batch: one
  ``model.generate`` call per window, never one per take.
* ``torch.manual_seed(seed)`` right before the first window makes a re-render with the same
  (params, model, device, dtype, precision) bit-identical on CPU. (On CUDA this also needs
  the same GPU model, driver and library versions; cuBLAS is deterministic for a fixed
  configuration.) int8 is bit-identical too: dynamic quantization is a deterministic
  function of each step's activations.
* A :class:`transformers.StoppingCriteria` is called after every decoding step. It reports
  progress, checks the :class:`~timbred.worker.backend.CancelToken` (so a cancel lands within
  one step) and keeps a reference to the raw token matrix, which ``generate`` itself does not
  return (it returns decoded audio).
* Durations beyond the window (``window_s``, 30 s by default, MusicGen's training length) are
  made the way audiocraft's ``extend_stride`` does it: the first window is generated from
  nothing (or from the continuation prompt); every later one gets the last
  ``window_s - stride_s`` seconds of *tokens* as its decoder prompt (``decoder_input_ids``,
  which transformers lays out in the delay pattern itself) and adds up to ``stride_s``
  seconds. The whole token sequence is decoded once at the end, so there are no seams to
  crossfade. The result is trimmed to exactly ``round(duration * sample_rate)`` samples.
* A continuation prompt is encoded with the model's own EnCodec and used as the decoder
  prompt. As in audiocraft, the returned audio *includes* the prompt (re-synthesised from its
  tokens) and ``duration`` counts it; ``GenerationOutput.prompt_samples`` says where the
  new material starts.
* Streaming preview (:class:`_Previewer`): after each decoding step the frames complete in
  every codebook (past the delay pattern) are known; once a chunk's worth has built up they
  are decoded with EnCodec, with up to one second of earlier frames as left context so the
  codec's convolutions and LSTM start warm, and handed on. The take itself is still decoded
  whole at the end; the last chunk is cut from that final decode, so the stream ends
  exactly where the take does.
* Melody conditioning computes the chroma of the melody file the way
  ``MusicgenMelodyFeatureExtractor`` does, but with ``torch.stft`` instead of torchaudio
  (which Timbre does not depend on). Each window is conditioned on the part of the melody
  that lines up with it; a melody shorter than the output is looped. Unlike audiocraft, no
  Demucs stem separation is done first, so drums and bass in the melody file count too.
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import numpy.typing as npt
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.audio_utils import chroma_filter_bank
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput

from timbred import errors
from timbred.backends.musicgen import SPEC
from timbred.protocol import schema
from timbred.request import Request
from timbred.worker.audio_io import probe_audio, read_audio
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    Preview,
    ProgressCallback,
    validate_device,
    validate_dtype,
    validate_precision,
)
from timbred.worker.decodestep import lean_decoder, lean_steps
from timbred.worker.device import is_oom, oom_reason, release_memory
from timbred.worker.fastpath import FastPaths, choose
from timbred.worker.kvcache import preallocated_kv
from timbred.worker.loading import TORCH_DTYPES, OneModel, load_failure, snapshot_revision
from timbred.worker.loading import torch_device as resolve_device
from timbred.worker.precision import (
    int8_activation_bits,
    quantize_decoder,
    quantized_bytes,
    resolve_precision,
)

__all__ = ["MusicgenBackend", "plan_windows"]

#: The dtype a model is loaded in for each concrete precision (int8 quantizes a float32 load).
_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "float32"}
_MODEL_CLASSES: dict[str, Any] = {
    "musicgen": MusicgenForConditionalGeneration,
    "musicgen_melody": MusicgenMelodyForConditionalGeneration,
}


def plan_windows(
    prompt_frames: int,
    target_frames: int,
    *,
    window_frames: int,
    context_frames: int,
    min_new_frames: int,
) -> list[tuple[int, int]]:
    """Split a generation into decoder passes: ``[(context, new), ...]`` in frames.

    Each pass sees at most ``context_frames`` of the tokens made so far (or of the prompt)
    and adds ``new`` frames, with ``context + new <= window_frames``. Every pass adds at least
    ``min_new_frames`` (the delay pattern needs one frame per codebook), so the last may
    overshoot ``target_frames``; the caller trims the audio.
    """
    if min_new_frames < 1 or context_frames < 0 or window_frames - context_frames < min_new_frames:
        raise ValueError(
            f"cannot window {window_frames} frames with {context_frames} frames of context "
            f"and passes of at least {min_new_frames} frames"
        )
    plan: list[tuple[int, int]] = []
    have = prompt_frames
    while have < target_frames:
        context = min(have, context_frames)
        new = max(min(target_frames - have, window_frames - context), min_new_frames)
        plan.append((context, new))
        have += new
    return plan


class _ChromaExtractor:
    """``MusicgenMelodyFeatureExtractor``'s chroma, on torch alone (no torchaudio)."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, num_chroma: int,
                 chunk_length_s: float) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.max_samples = int(chunk_length_s * sample_rate)
        filters = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=num_chroma,
                                     sampling_rate=sample_rate, tuning=0)
        self.filters = torch.from_numpy(np.asarray(filters)).float()
        self.window = torch.hann_window(n_fft)

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """Mono ``(samples,)`` audio -> one-hot chroma ``(1, frames, num_chroma)``."""
        wav = wav[: self.max_samples].float()
        if wav.shape[-1] < self.n_fft:
            pad = self.n_fft - wav.shape[-1]
            wav = torch.nn.functional.pad(wav, (pad // 2, pad - pad // 2))
        # torchaudio.transforms.Spectrogram(power=2, normalized=True, center=True) == this.
        spec = torch.stft(wav[None], n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.n_fft, window=self.window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True)
        spec = (spec / self.window.pow(2).sum().sqrt()).abs().pow(2)
        raw = torch.einsum("cf,bft->bct", self.filters, spec)
        norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6)
        norm = norm.transpose(1, 2)
        onehot = torch.zeros_like(norm)
        onehot.scatter_(dim=-1, index=norm.argmax(-1, keepdim=True), value=1.0)
        return onehot


class _StepHook(StoppingCriteria):
    """Called by ``generate`` after every decoding step: progress, cancel, token capture,
    and the streaming preview."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelToken, total: int,
                 previewer: _Previewer | None = None) -> None:
        self.progress = progress
        self.cancel = cancel
        self.total = total
        self.previewer = previewer
        self.step = 0
        self.sequences: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        # Only a reference: generate() has just built this tensor and never mutates it.
        self.sequences = input_ids
        self.step += 1
        if self.progress is not None:
            self.progress(self.step, self.total)
        self.cancel.raise_if_cancelled()
        if self.previewer is not None:
            self.previewer.step(input_ids)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def take_sequences(self) -> torch.Tensor | None:
        seqs, self.sequences = self.sequences, None
        return seqs


#: Earlier frames decoded with each preview chunk, so the codec starts warm.
_PREVIEW_CONTEXT_S = 1.0


class _Previewer:
    """Decodes finished frames while a generation runs and sends them on in chunks.

    Frames are counted from the start of the take (a continuation prompt's frames first).
    Before each decoder pass, :meth:`begin_pass` says which frames are already final
    (``codes``) and where the pass's own frame 0 lies; after each step, :meth:`step` sees the
    pass's raw token matrix, in which frame ``f`` of row ``r`` sits at column
    ``delays[r] + 1 + f`` (see :meth:`MusicgenBackend._new_frames`).
    """

    def __init__(self, st: _Loaded, preview: Preview, batch: int, target_samples: int) -> None:
        self.st = st
        self.send = preview.send
        self.batch = batch
        self.target_samples = target_samples
        rate = st.capabilities.frame_rate
        self.chunk = max(1, round(preview.chunk_s * rate))
        self.first = max(1, self.chunk // 2)
        self.context = round(_PREVIEW_CONTEXT_S * rate)
        self.target_frames = -(-target_samples // st.hop)
        self.sent = 0  # frames handed on so far
        self.codes = torch.empty((batch, st.num_codebooks, 0), dtype=torch.long)
        self.pass_start = 0

    def begin_pass(self, codes: torch.Tensor, context: int) -> None:
        self.codes = codes
        self.pass_start = codes.shape[-1] - context
        # Frames already final before the pass starts (a continuation prompt) go at once.
        self._maybe_send(codes.shape[-1], None)

    def step(self, raw: torch.Tensor) -> None:
        complete = raw.shape[-1] - max(self.st.delays) - 1  # frames final in every row
        self._maybe_send(self.pass_start + complete, raw)

    def _maybe_send(self, final: int, raw: torch.Tensor | None) -> None:
        final = min(final, self.target_frames)
        # The last chunk comes from the take's own decode (finish), not from here.
        if final >= self.target_frames or final - self.sent < (
                self.first if self.sent == 0 else self.chunk):
            return
        start = max(0, self.sent - self.context)
        frames = self._frames(start, final, raw)
        audio = MusicgenBackend._decode_frames(self.st, frames)
        offset = (self.sent - start) * self.st.hop
        self.send(self.sent * self.st.hop,
                  np.ascontiguousarray(audio[..., offset: (final - start) * self.st.hop]))
        self.sent = final

    def _frames(self, start: int, end: int, raw: torch.Tensor | None) -> torch.Tensor:
        """Frames ``[start, end)`` of the take as codes ``(batch, rows, end - start)``."""
        have = self.codes.shape[-1]
        parts = [self.codes[..., start: min(end, have)]]
        if end > have and raw is not None:
            rows = self.st.num_codebooks
            grid = raw.reshape(self.batch, rows, raw.shape[-1])
            first, last = max(start, have) - self.pass_start, end - self.pass_start
            parts.append(torch.stack([grid[:, r, d + 1 + first: d + 1 + last]
                                      for r, d in enumerate(self.st.delays)], dim=1))
        return torch.cat(parts, dim=-1)

    def finish(self, audio: npt.NDArray[np.float32]) -> None:
        """Send the rest of the take, cut from its final decode."""
        start = self.sent * self.st.hop
        if start < audio.shape[-1]:
            self.send(start, np.ascontiguousarray(audio[..., start:]))
            self.sent = self.target_frames


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    source: str
    revision: str | None
    model_type: str
    device: torch.device
    dtype_name: str
    precision: str | None
    """The concrete decoder precision (int8, bf16, fp32), or None when ``dtype`` decided."""
    torch_dtype: torch.dtype
    capabilities: Capabilities
    hop: int
    num_codebooks: int
    """Codebook rows the decoder predicts (both channels of a stereo model)."""
    delays: tuple[int, ...]
    """Delay-pattern offset of each row: its index (mono) or index // 2 (stereo)."""
    window_frames: int
    context_frames: int
    memory_bytes: int
    chroma: _ChromaExtractor | None
    fast: FastPaths
    """The fast paths this model decodes with (checked against the stock path at load)."""


class MusicgenBackend(OneModel[_Loaded], Backend):
    """MusicGen / MusicGen-Melody checkpoints in the transformers format.

    ``window_s`` is the longest clip made in one decoder pass (MusicGen was trained on 30 s);
    longer clips are extended in passes that each keep ``window_s - stride_s`` seconds of
    context, as audiocraft's ``extend_stride`` does. Tests use tiny windows.

    ``precision`` chooses the decoder's arithmetic and takes precedence over ``load``'s
    ``dtype``: ``fp32``; ``bf16``; ``int8`` (the decoder's linear layers dynamically
    quantized, CPU only; the text encoder and EnCodec stay float32); or ``auto``, resolved at
    load time (bf16 on CUDA, int8 on CPU where it works, else fp32). ``None`` (the default)
    keeps the older behaviour: the whole model in ``dtype``. The concrete precision is
    recorded in every :attr:`GenerationOutput.info` (``None`` when ``dtype`` decided).

    ``preallocate_kv`` (default on) decodes with :mod:`timbred.worker.kvcache`'s in-place
    self-attention cache instead of transformers' re-concatenating one, and ``lean_steps``
    (default on) runs the decoding steps through :mod:`timbred.worker.decodestep` instead of
    transformers' modules. The takes are bit-identical either way (tested). Both lean on
    transformers internals, so each load checks them against the stock path
    (:mod:`timbred.worker.fastpath`) and switches off any that disagree for that model; what
    ran is recorded in every take's ``info["fast_paths"]``, and :attr:`load_warnings` says
    why a path was switched off.
    """

    name: ClassVar[str] = "musicgen"

    def __init__(self, *, window_s: float = 30.0, stride_s: float = 18.0,
                 precision: object = None, preallocate_kv: object = True,
                 lean_steps: object = True) -> None:
        # ``precision`` is typed ``object``: backend options arrive untyped (from the config,
        # over the worker pipe) and are checked here, at runtime, by validate_precision.
        if not (math.isfinite(window_s) and window_s > 0):
            raise errors.InvalidParams("window_s must be a positive number", param="window_s")
        if not (math.isfinite(stride_s) and 0 < stride_s <= window_s):
            raise errors.InvalidParams("stride_s must be in (0, window_s]", param="stride_s")
        self.window_s = float(window_s)
        self.stride_s = float(stride_s)
        self.precision: str | None = (
            None if precision is None else validate_precision(precision)
        )
        for name, flag in (("preallocate_kv", preallocate_kv), ("lean_steps", lean_steps)):
            if not isinstance(flag, bool):
                raise errors.InvalidParams(f"{name} must be true or false", param=name)
        self.preallocate_kv = bool(preallocate_kv)
        self.lean_steps = bool(lean_steps)
        self._state: _Loaded | None = None

    # --- loading ---------------------------------------------------------------------------

    def load(self, source: str, *, device: str, dtype: str) -> None:
        """Load a MusicGen checkpoint from a local directory or the local Hugging Face cache."""
        device = validate_device(device)
        dtype = validate_dtype(dtype)
        self.unload()
        torch_device = resolve_device(source, device)
        precision = None
        if self.precision is not None:
            precision = resolve_precision(self.precision, torch_device)
            dtype = _PRECISION_DTYPES[precision]
        config = _load_config(source)
        model_type = str(getattr(config, "model_type", ""))
        model_class = _MODEL_CLASSES.get(model_type)
        if model_class is None:
            raise errors.ModelLoadFailed(
                source, f"not a MusicGen checkpoint (model_type {model_type!r})"
            )
        torch_dtype = TORCH_DTYPES[dtype]
        try:
            model = model_class.from_pretrained(
                source, config=config, dtype=torch_dtype, local_files_only=True
            )
            # EnCodec stays in float32 whatever the decoder's dtype, as in audiocraft: it is
            # small, and half precision audibly degrades the codec.
            model.audio_encoder.to(torch.float32)
            model.to(torch_device)
            model.eval()
            if precision == "int8":
                quantize_decoder(model)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            chroma = _chroma_extractor(source, config) if model_type == "musicgen_melody" else None
            fast = choose(_fast_path_probe(model, tokenizer, torch_device),
                          preallocate_kv=self.preallocate_kv,
                          lean_steps=self.lean_steps and lean_decoder(model) is not None,
                          library=f"transformers {transformers.__version__}")
        except errors.TimbreError:
            raise
        except Exception as exc:
            raise load_failure(source, exc, torch_device) from exc
        self._state = self._describe(
            model, tokenizer, source, config, model_type, torch_device, dtype, torch_dtype,
            precision, chroma, fast
        )

    def _describe(self, model: Any, tokenizer: Any, source: str, config: Any, model_type: str,
                  device: torch.device, dtype_name: str, torch_dtype: torch.dtype,
                  precision: str | None, chroma: _ChromaExtractor | None,
                  fast: FastPaths) -> _Loaded:
        audio_cfg = config.audio_encoder
        decoder_cfg = config.decoder
        sample_rate = int(audio_cfg.sampling_rate)
        hop = int(np.prod(audio_cfg.upsampling_ratios))
        channels = int(decoder_cfg.audio_channels)
        num_codebooks = int(decoder_cfg.num_codebooks)
        channel_codebooks = num_codebooks // channels
        encoder_codebooks = model.audio_encoder.quantizer.get_num_quantizers_for_bandwidth(
            audio_cfg.target_bandwidths[0]
        )
        if audio_cfg.chunk_length_s is not None or encoder_codebooks != channel_codebooks:
            raise errors.ModelLoadFailed(
                source, f"unsupported codec layout ({encoder_codebooks} codebooks per channel "
                f"from EnCodec, {channel_codebooks} expected by the decoder)"
            )
        frame_rate = sample_rate / hop
        window_frames = round(self.window_s * frame_rate)
        stride_frames = round(self.stride_s * frame_rate)
        if stride_frames < channel_codebooks:
            raise errors.InvalidParams(
                f"stride_s must cover at least {channel_codebooks} frames "
                f"({channel_codebooks / frame_rate:.3f} s) for this model", param="stride_s"
            )
        delays = tuple(row // channels for row in range(num_codebooks))
        memory = sum(t.numel() * t.element_size() for t in model.parameters())
        memory += sum(t.numel() * t.element_size() for t in model.buffers())
        memory += quantized_bytes(model)
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            source=source,
            revision=_revision(source, config),
            model_type=model_type,
            device=device,
            dtype_name=dtype_name,
            precision=precision,
            torch_dtype=torch_dtype,
            capabilities=Capabilities(
                melody=model_type == "musicgen_melody",
                continuation=True,
                stereo=channels == 2,
                max_native_duration_s=self.window_s,
                sample_rate=sample_rate,
                frame_rate=frame_rate,
                channels=channels,
            ),
            hop=hop,
            num_codebooks=num_codebooks,
            delays=delays,
            window_frames=window_frames,
            context_frames=window_frames - stride_frames,
            memory_bytes=memory,
            chroma=chroma,
            fast=fast,
        )

    @property
    def load_warnings(self) -> tuple[str, ...]:
        """Why a fast path was switched off for the loaded model, if one was."""
        state = self._state
        if state is None or state.fast.fallback is None:
            return ()
        return (f"{state.source}: {state.fast.fallback}",)

    # --- generation ------------------------------------------------------------------------

    def generate_batch(
        self,
        items: Sequence[Request],
        progress: ProgressCallback | None = None,
        cancels: Sequence[CancelToken] | None = None,
        preview: Preview | None = None,
    ) -> list[GenerationOutput]:
        """Decode several requests as one batch: one ``generate`` call per window for all.

        Each request samples with its own generator, seeded with its own seed, and its own
        temperature, top-k, top-p and guidance scale (:class:`_RowSampler`). They must share
        the duration (one decoding plan), whether guidance is on, and whether they follow a
        melody (each its own; a melody model conditions every row on one), and continue the
        same audio file, if any (its frames are every row's prompt). A cancelled request's
        rows keep being decoded (the others' numbers must not depend on when it left); only
        when all are cancelled does the batch stop. ``preview`` receives the rows of every
        request, in order.
        """
        st = self._require()
        if not items:
            raise errors.InvalidParams("an empty batch", param="items")
        tokens = list(cancels) if cancels is not None else [CancelToken() for _ in items]
        if len(tokens) != len(items):
            raise errors.InvalidParams("one cancel token per request", param="cancels")
        # Each request's own parameters, checked against the family's schema once here.
        samplings = [Sampling.of(p) for p in items]
        _check_batchable(items, samplings)
        cancel = _AllCancelled(tokens)
        first = items[0]
        caps = st.capabilities
        if first.melody is not None and st.chroma is None:
            raise errors.InvalidParams(
                f"{st.source} is not a melody model; melody conditioning needs a "
                "musicgen-melody checkpoint", param="melody"
            )
        target_samples = round(first.duration * caps.sample_rate)
        if target_samples < 1:
            raise errors.InvalidParams("duration is shorter than one sample",
                                       param="duration")
        prompt = self._read_prompt(st, first, target_samples)
        melody = None
        if first.melody is not None and st.chroma is not None:
            # Each file once: requests often share a melody, and the batch one duration.
            read: dict[str, npt.NDArray[np.float32]] = {}
            for p in items:
                path = p.melody or ""
                if path not in read:
                    read[path] = read_audio(path, param="melody",
                                            sample_rate=st.chroma.sample_rate, channels=1,
                                            max_duration_s=first.duration)[0]
            melody = (st.chroma, [read[p.melody or ""] for p in items])
        cancel.raise_if_cancelled()
        rows = sum(p.variations for p in items)
        try:
            with torch.inference_mode():
                previewer = None if preview is None else _Previewer(
                    st, preview, rows, target_samples)
                audio, plan = self._generate(st, items, samplings, prompt, melody,
                                             target_samples, progress, cancel, previewer)
                if previewer is not None:
                    previewer.finish(audio)
        except errors.TimbreError:
            raise
        except Exception as exc:
            # The traceback's frames hold the batch's tensors; drop them so that the memory
            # can really be returned and the next (smaller) job fits.
            traceback.clear_frames(exc.__traceback__)
            release_memory(str(st.device))
            if is_oom(exc):
                raise errors.GenerationFailed(
                    f"{oom_reason(exc, str(st.device))}, generating {rows} x "
                    f"{first.duration:g} s; try fewer variations, a shorter duration, "
                    "a smaller model or a half-precision dtype"
                ) from exc
            raise errors.GenerationFailed(f"{type(exc).__name__}: {exc}") from exc
        info: dict[str, Any] = {
            "backend": self.name,
            "source": st.source,
            "revision": st.revision,
            "model_type": st.model_type,
            "dtype": st.dtype_name,
            "precision": st.precision,
            "device": str(st.device),
            "window_s": self.window_s,
            "stride_s": self.stride_s,
            "windows": len(plan),
            "sampler": SAMPLER,
            "batch_requests": len(items),
            "batch_rows": rows,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "fast_paths": st.fast.to_dict(),
        }
        if st.precision == "int8":  # 8 where the CPU's kernel is exact at full range, else 7
            info["int8_activation_bits"] = int8_activation_bits()
        outputs = []
        row = 0
        for p in items:
            outputs.append(GenerationOutput(
                audio=np.ascontiguousarray(audio[row: row + p.variations]),
                sample_rate=caps.sample_rate,
                info=dict(info),
                prompt_samples=0 if prompt is None else int(prompt.shape[-1]),
            ))
            row += p.variations
        return outputs

    def _read_prompt(self, st: _Loaded, params: Request,
                     target_samples: int) -> npt.NDArray[np.float32] | None:
        path = params.continuation
        if path is None:
            return None
        sr = st.capabilities.sample_rate
        length_s = probe_audio(path, param="continuation").duration_s
        # One second more than needed is enough to tell "too long" from "fits".
        wav = read_audio(path, param="continuation", sample_rate=sr,
                         channels=st.capabilities.channels,
                         max_duration_s=params.duration + 1.0)
        # Whole frames only: then the prompt ends exactly where generated frames begin.
        usable = (wav.shape[-1] // st.hop) * st.hop
        if usable == 0:
            raise errors.AudioInputError(
                path, "continuation", f"shorter than one audio frame ({st.hop / sr * 1000:g} ms)"
            )
        if usable >= target_samples:
            raise errors.InvalidParams(
                f"the continuation audio ({length_s:.2f} s) must be shorter than the duration "
                f"({params.duration:g} s), which includes it", param="duration"
            )
        return wav[:, :usable]

    def _generate(
        self,
        st: _Loaded,
        items: Sequence[Request],
        samplings: Sequence[Sampling],
        prompt: npt.NDArray[np.float32] | None,
        melody: tuple[_ChromaExtractor, list[npt.NDArray[np.float32]]] | None,
        target_samples: int,
        progress: ProgressCallback | None,
        cancel: CancelToken,
        previewer: _Previewer | None = None,
    ) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
        batch = sum(p.variations for p in items)
        rows = st.num_codebooks
        min_new = max(st.delays) + 1
        target_frames = -(-target_samples // st.hop)
        # Every request's randomness comes from its own seeded generator (never the global
        # one), so a re-render with the same batch is bit-identical.
        sampler = _RowSampler(items, samplings, rows, st.device)
        texts = [p.prompt for p in items for _ in range(p.variations)]
        text = st.tokenizer(texts, padding=True, return_tensors="pt")
        text_inputs = {k: v.to(st.device) for k, v in text.items()}
        codes = torch.empty((batch, rows, 0), dtype=torch.long, device=st.device)
        if prompt is not None:
            codes = self._encode(st, prompt).expand(batch, -1, -1).contiguous()
        plan = plan_windows(codes.shape[-1], target_frames, window_frames=st.window_frames,
                            context_frames=st.context_frames, min_new_frames=min_new)
        hook = _StepHook(progress, cancel, sum(new + min_new - 1 for _, new in plan), previewer)
        for context, new in plan:
            cancel.raise_if_cancelled()
            have = codes.shape[-1]
            if previewer is not None:
                previewer.begin_pass(codes, context)
            kwargs: dict[str, Any] = dict(text_inputs)
            kwargs.update(sampler.generate_kwargs())
            # MusicGen's generate() lays the prompt out in the delay pattern itself and then
            # takes exactly new + (codebooks - 1) steps to complete `new` frames.
            kwargs["max_new_tokens"] = new + min_new - 1
            kwargs["stopping_criteria"] = StoppingCriteriaList([hook])
            if context:
                kwargs["decoder_input_ids"] = codes[..., have - context:].reshape(
                    batch * rows, context
                )
            if melody is not None:
                extractor, waves = melody
                kwargs["input_features"] = torch.cat([
                    self._melody_features(st, extractor, wave, have - context, p.variations)
                    for p, wave in zip(items, waves, strict=True)])
            # Positions this pass holds: BOS, the context frames and every new step.
            kv: contextlib.AbstractContextManager[dict[str, Any]] = contextlib.nullcontext({})
            if st.fast.preallocate_kv:
                kv = preallocated_kv(st.model, 1 + context + kwargs["max_new_tokens"])
            lean: contextlib.AbstractContextManager[bool] = contextlib.nullcontext(False)
            if st.fast.lean_steps:
                lean = lean_steps(st.model)
            with kv as extra, lean, _without_codec_decode(st.model):
                st.model.generate(**kwargs, **extra)
            codes = torch.cat([codes, self._new_frames(hook, batch, rows, st.delays, context,
                                                       new, min_new)], dim=-1)
        cancel.raise_if_cancelled()
        return self._decode(st, codes, target_samples, cancel), plan

    @staticmethod
    def _new_frames(hook: _StepHook, batch: int, rows: int, delays: tuple[int, ...],
                    context: int, new: int, min_new: int) -> torch.Tensor:
        """Undo the delay pattern on the raw token matrix of one pass; keep the new frames.

        Row ``r`` holds BOS at column ``delays[r]`` and frame ``f`` (counting the context
        frames first) at column ``delays[r] + 1 + f``.
        """
        raw = hook.take_sequences()
        length = context + new + min_new
        if raw is None or tuple(raw.shape) != (batch * rows, length):
            shape = None if raw is None else tuple(raw.shape)
            raise errors.GenerationFailed(
                f"unexpected token matrix {shape} from generate(); "
                f"expected {(batch * rows, length)}"
            )
        raw = raw.reshape(batch, rows, length)
        start = [d + 1 + context for d in delays]
        return torch.stack([raw[:, r, s: s + new] for r, s in enumerate(start)], dim=1)

    @staticmethod
    def _encode(st: _Loaded, prompt: npt.NDArray[np.float32]) -> torch.Tensor:
        """Prompt audio ``(channels, samples)`` -> codes ``(1, rows, frames)``."""
        encoder = st.model.audio_encoder
        wav = torch.from_numpy(prompt).to(st.device, torch.float32)[None]
        per_channel = [encoder.encode(wav[:, c: c + 1]).audio_codes[0] for c in range(wav.shape[1])]
        if len(per_channel) == 1:
            return per_channel[0]  # type: ignore[no-any-return]
        # Stereo decoders interleave the channels' codebooks: L0, R0, L1, R1, ...
        left, right = per_channel
        codes = torch.empty((1, st.num_codebooks, left.shape[-1]), dtype=left.dtype,
                            device=left.device)
        codes[:, 0::2] = left
        codes[:, 1::2] = right
        return codes

    @staticmethod
    def _melody_features(st: _Loaded, extractor: _ChromaExtractor,
                         melody: npt.NDArray[np.float32], start_frame: int,
                         batch: int) -> torch.Tensor:
        """Chroma of the melody span under this pass (looping a short melody), for ``batch``
        rows."""
        sr = extractor.sample_rate
        frame_rate = st.capabilities.frame_rate
        start = round(start_frame / frame_rate * sr)
        length = min(round(st.window_frames / frame_rate * sr), extractor.max_samples)
        span = np.take(melody, np.arange(start, start + length), mode="wrap")
        chroma = extractor(torch.from_numpy(np.ascontiguousarray(span)))
        return chroma.to(st.device, st.torch_dtype).expand(batch, -1, -1)

    @staticmethod
    def _decode_take(st: _Loaded, take: torch.Tensor) -> torch.Tensor:
        """Codes ``(1, rows, frames)`` -> audio ``(channels, samples)`` on the device."""
        encoder = st.model.audio_encoder
        channels = st.capabilities.channels
        # The class's decode, not the instance attribute: inside a generate pass (the
        # previewer decodes there) that is _without_codec_decode's stand-in.
        decode = type(encoder).decode
        parts = [decode(encoder, take[None, :, c::channels], [None]).audio_values
                 for c in range(channels)]
        return torch.cat(parts, dim=1)[0]

    @staticmethod
    def _decode_frames(st: _Loaded, codes: torch.Tensor) -> npt.NDArray[np.float32]:
        """Codes ``(batch, rows, frames)`` -> float32 audio, every sample the codec gives."""
        takes = [MusicgenBackend._decode_take(st, codes[i: i + 1]).float().cpu().numpy()
                 for i in range(codes.shape[0])]
        return np.stack(takes).astype(np.float32, copy=False)

    @staticmethod
    def _decode(st: _Loaded, codes: torch.Tensor, target_samples: int,
                cancel: CancelToken) -> npt.NDArray[np.float32]:
        """Codes ``(batch, rows, frames)`` -> float32 audio ``(batch, channels, samples)``."""
        takes = []
        # One take at a time: EnCodec's activations for minutes of audio are large.
        for index in range(codes.shape[0]):
            wav = MusicgenBackend._decode_take(st, codes[index: index + 1])[:, :target_samples]
            if wav.shape[-1] != target_samples:
                raise errors.GenerationFailed(
                    f"the codec returned {wav.shape[-1]} samples, {target_samples} expected"
                )
            takes.append(wav.float().cpu().numpy())
            cancel.raise_if_cancelled()
        return np.ascontiguousarray(np.stack(takes), dtype=np.float32)


#: How tokens are drawn; recorded with every take (a change here changes every re-render).
SAMPLER = "per-request-generator/1"

#: The logit _RowSampler leaves on every token but the chosen one: finite, so that
#: guidance's ``uncond + (cond - uncond) * scale`` after it cannot make a NaN.
_NOT_CHOSEN = -1e4


class _RowSampler(LogitsProcessor):
    """Draws every request's tokens with its own generator and its own sampling settings.

    transformers samples a whole batch from the global RNG, so a row's tokens would depend
    on which other requests shared the batch. Instead this processor runs on the raw logits
    (MusicGen's generate puts it before its own guidance processor), applies each request's
    guidance with the same formula as ``ClassifierFreeGuidanceLogitsProcessor``, then
    transformers' own temperature / top-k / top-p warpers, and draws from a
    ``torch.Generator`` seeded with the request's seed (``temperature == 0``: argmax). It
    returns logits that single out the drawn token (in both halves when guidance is on), so
    that guidance and greedy decoding after it pick exactly that token.
    """

    def __init__(self, items: Sequence[Request], samplings: Sequence[Sampling], codebooks: int,
                 device: torch.device) -> None:
        self.guided = samplings[0].guidance > 1
        self.spans: list[tuple[slice, Sampling, torch.Generator, LogitsProcessorList]] = []
        row = 0
        for p, sampling in zip(items, samplings, strict=True):
            rows = p.variations * codebooks
            generator = torch.Generator(device=device)
            generator.manual_seed(p.seed)
            self.spans.append((slice(row, row + rows), sampling, generator, _warpers(sampling)))
            row += rows

    def generate_kwargs(self) -> dict[str, Any]:
        """``generate()`` arguments: a fresh list each call (generate appends to it)."""
        return {
            "do_sample": False,
            # Any value > 1 makes MusicGen add the unconditional rows; each request's own
            # scale is applied here, and the guidance processor then changes nothing.
            "guidance_scale": 2.0 if self.guided else 1.0,
            "logits_processor": LogitsProcessorList([self]),
        }

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        n = input_ids.shape[0]
        logits = scores.float()
        out = torch.full_like(scores, _NOT_CHOSEN)
        for span, p, generator, warpers in self.spans:
            row_logits = logits[span]
            if self.guided:
                uncond = logits[n:][span]
                row_logits = uncond + (row_logits - uncond) * p.guidance
            if p.temperature == 0:
                chosen = torch.argmax(row_logits, dim=-1)
            else:
                row_logits = warpers(cast(torch.LongTensor, input_ids[span]), row_logits)
                probs = torch.nn.functional.softmax(row_logits, dim=-1)
                chosen = torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
            index = torch.arange(span.start, span.stop, device=scores.device)
            out[index, chosen] = 0
            if self.guided:
                out[index + n, chosen] = 0
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Sampling:
    """MusicGen's own parameters of one request (its ``options``, named as the family's
    schema names them), with the spec's defaults for any not given; checked against that
    schema here too, since a request may come from a replayed recipe or a test."""

    temperature: float
    top_k: int
    top_p: float
    guidance: float

    @classmethod
    def of(cls, request: Request) -> Sampling:
        values = {**SPEC.defaults(), **request.options}
        schema.check("musicgen parameters", SPEC.params_schema(), values)
        return cls(temperature=float(values["temperature"]), top_k=int(values["top_k"]),
                   top_p=float(values["top_p"]), guidance=float(values["guidance"]))


def _warpers(p: Sampling) -> LogitsProcessorList:
    """transformers' own warpers, added under the same conditions ``generate`` adds them."""
    warpers = LogitsProcessorList()
    if p.temperature not in (0.0, 1.0):
        warpers.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=p.top_k))
    # audiocraft's top_p=0 means "off", as does transformers' 1.0.
    if 0 < p.top_p < 1:
        warpers.append(TopPLogitsWarper(top_p=p.top_p))
    return warpers


def _check_batchable(items: Sequence[Request], samplings: Sequence[Sampling]) -> None:
    """Requests decoded together share one decoding plan and the guidance rows."""
    first, guided = items[0], samplings[0].guidance > 1
    for p, sampling in zip(items[1:], samplings[1:], strict=True):
        if p.duration != first.duration:
            raise errors.InvalidParams("requests in one batch must have the same duration",
                                       param="duration")
        if (sampling.guidance > 1) != guided:
            raise errors.InvalidParams(
                "requests in one batch must all use guidance, or none", param="guidance")
        if (p.melody is None) != (first.melody is None):
            raise errors.InvalidParams(
                "requests in one batch must all follow a melody, or none", param="melody")
        # The continued audio's frames are every row's decoder prompt and set the plan:
        # one file for all (read and encoded once), or none.
        if p.continuation != first.continuation:
            raise errors.InvalidParams(
                "requests in one batch must continue the same audio file, or none",
                param="continuation")


class _AllCancelled(CancelToken):
    """Cancelled once every request of a batch is (the batch runs while one still wants it)."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: Sequence[CancelToken]) -> None:
        super().__init__()
        self._tokens = tuple(tokens)

    def cancel(self) -> None:
        for token in self._tokens:
            token.cancel()

    @property
    def cancelled(self) -> bool:
        return all(token.cancelled for token in self._tokens)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise errors.Cancelled()


class _ScoreRecorder(LogitsProcessor):
    """Keeps a copy of every step's raw logits and changes nothing."""

    def __init__(self, into: list[torch.Tensor]) -> None:
        self.into = into

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        self.into.append(scores.detach().clone())
        return scores


def _fast_path_probe(model: Any, tokenizer: Any, device: torch.device
                     ) -> Callable[[bool, bool], list[torch.Tensor]]:
    """The probe :func:`timbred.worker.fastpath.choose` compares: greedy, guided decoding of
    a few steps, once from nothing and once continuing a short decoder prompt (the two ways a
    window starts), with the given fast paths; every step's raw logits."""
    codebooks = int(model.decoder.config.num_codebooks)
    channels = int(model.decoder.config.audio_channels)
    # Enough steps past the delay pattern that several cached decoding steps run.
    steps = codebooks // channels + 3
    text = {k: v.to(device) for k, v in tokenizer(["fast path check"], return_tensors="pt").items()}
    context = (torch.arange(codebooks * 3, device=device) % 7).reshape(codebooks, 3)

    def probe(preallocate: bool, lean: bool) -> list[torch.Tensor]:
        scores: list[torch.Tensor] = []
        for prompt in (None, context):
            kwargs: dict[str, Any] = dict(text)
            kwargs.update(do_sample=False, guidance_scale=3.0, max_new_tokens=steps,
                          logits_processor=LogitsProcessorList([_ScoreRecorder(scores)]))
            if prompt is not None:
                kwargs["decoder_input_ids"] = prompt
            positions = 1 + (0 if prompt is None else prompt.shape[-1]) + steps
            kv: contextlib.AbstractContextManager[dict[str, Any]] = contextlib.nullcontext({})
            if preallocate:
                kv = preallocated_kv(model, positions)
            fast: contextlib.AbstractContextManager[bool] = contextlib.nullcontext(False)
            if lean:
                fast = lean_steps(model)
            with torch.inference_mode(), kv as extra, fast, _without_codec_decode(model):
                model.generate(**kwargs, **extra)
        return scores

    return probe


@contextlib.contextmanager
def _without_codec_decode(model: Any) -> Iterator[None]:
    """Keep one ``generate`` pass from decoding its tokens to audio.

    transformers' MusicGen ``generate`` ends by running EnCodec over every row it made. Timbre
    never uses that audio: it keeps the tokens (:class:`_StepHook`) and decodes each take once,
    at the end, over all windows. The stand-in returns no samples in the shape generate
    expects, so a 10 s take no longer pays for EnCodec twice (about 1.3 s on the benchmark
    machine, per row and per window).
    """
    codec = model.audio_encoder

    def no_audio(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> EncodecDecoderOutput:
        # audio_codes: (frames, batch, codebooks, steps); audio: (batch, channels, samples).
        return EncodecDecoderOutput(
            audio_values=torch.zeros((audio_codes.shape[1], 1, 0), device=audio_codes.device))

    codec.decode = no_audio
    try:
        yield
    finally:
        del codec.decode  # the class's method shows through again


def _load_config(source: str) -> Any:
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        if not Path(source).is_dir():
            raise errors.ModelNotFound(
                source, "not a local directory and not in the Hugging Face cache (pull it first)"
            ) from exc
        raise errors.ModelLoadFailed(source, f"unreadable config: {exc}") from exc


def _revision(source: str, config: Any) -> str | None:
    commit = getattr(config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    return snapshot_revision(source)


def _chroma_extractor(source: str, config: Any) -> _ChromaExtractor:
    try:
        fe, _ = FeatureExtractionMixin.get_feature_extractor_dict(source, local_files_only=True)
    except OSError:
        fe = {}  # no preprocessor config: use MusicgenMelodyFeatureExtractor's defaults
    return _ChromaExtractor(
        sample_rate=int(fe.get("sampling_rate", config.audio_encoder.sampling_rate)),
        n_fft=int(fe.get("n_fft", 16384)),
        hop_length=int(fe.get("hop_length", 4096)),
        num_chroma=int(fe.get("num_chroma", getattr(config, "num_chroma", 12))),
        chunk_length_s=float(fe.get("chunk_length", 30)),
    )
