"""Decoder precision for MusicGen: int8 dynamic quantization, the hardware choice, quality.

Imported only inside the worker process (it pulls in torch).

Why int8, and why torch's own ``quantize_dynamic``
-------------------------------------------------
MusicGen decoding is memory-bound: every step reads the whole decoder. Dynamically quantized
linear layers (weights stored int8 with one scale per output channel, activations quantized
per tensor on the fly, fbgemm/x86 kernels) read a quarter of the bytes.
:func:`torch.ao.quantization.quantize_dynamic` is deprecated (its module warns on import and
on use) but is present and works in torch 2.13; it
is called here with exactly those two warnings silenced, nothing else. torchao 0.18 (the
maintained successor; its wheel downloads, about 3 MB) was evaluated on the same machine,
without ``torch.compile``: on a musicgen-small-shaped stack of linear layers (2 rows, as with
guidance) its ``Int8DynamicActivationInt8WeightConfig`` took 756 ms per pass and
``Int8WeightOnlyConfig`` 530 ms, against 67 ms for ``quantize_dynamic`` (974 ms fp32), and two
of its native extensions failed to load against torch 2.13. It would also be a new dependency,
so it does not serve better here. When torch removes ``torch.ao``, the
``auto`` choice falls back to fp32 (:func:`int8_available` is then false) instead of failing.

Quality is measured, not assumed: :func:`compare_logits` runs a reference and a candidate model
step by step on the same (teacher-forced) tokens and reports the per-step relative error of the
guided logits and the top-k agreement.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from timbred import errors
from timbred.worker.backend import validate_precision

__all__ = [
    "QualityReport",
    "compare_logits",
    "full_range_int8",
    "int8_activation_bits",
    "int8_available",
    "quantize_decoder",
    "quantize_linears",
    "quantized_bytes",
    "resolve_precision",
]

#: The two deprecation warnings ``torch.ao.quantization`` raises (module import, convert, and
#: the quantized-tensor constructors); nothing else is silenced.
_AO_WARNINGS = (
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning),
)


@contextmanager
def _quiet_ao() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in _AO_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@functools.cache
def _full_range_linear() -> type[torch.nn.Module]:
    """torch's dynamic int8 ``Linear`` with 8-bit activations instead of its fixed 7 bits."""
    with _quiet_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeDynamicLinear(DynamicLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(
                x, self._packed_params._packed_params, reduce_range=False)
            return y.to(x.dtype)  # type: ignore[no-any-return]

    return FullRangeDynamicLinear


def _quantize_dynamic(module: torch.nn.Module, *, full_range: bool | None = None
                      ) -> torch.nn.Module:
    """``quantize_dynamic`` on ``module``'s ``nn.Linear`` layers, in place, quietly.

    Weights get one scale per output channel: as fast as one per tensor with fbgemm/x86
    (measured), and closer to fp32 (on musicgen-small's shapes with random weights the
    guided-logit error fell from 8.7 % to 7.9 %; trained weights, whose channels differ more
    in range, gain more).

    Activations use all 8 bits where :func:`full_range_int8` says the kernel computes them
    exactly (``full_range=None``), else torch's 7. On musicgen-small's shapes that halves the
    guided-logit error (7.9 % -> 4.5 %, top-50 agreement 0.93 -> 0.96) at the same speed.
    """
    if full_range is None:
        full_range = full_range_int8()
    with _quiet_ao():
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        mapping = {torch.nn.Linear: _full_range_linear()} if full_range else None
        return quantize_dynamic(  # type: ignore[no-untyped-call,no-any-return]
            module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
            mapping=mapping, inplace=True,
        )


@functools.cache
def int8_available() -> bool:
    """Whether dynamic int8 quantization works in this torch on this CPU (checked once)."""
    try:
        probe = _quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(16, 16)),
                                  full_range=False)
        with torch.inference_mode():
            out = probe(torch.ones(2, 16))
    except Exception:  # no engine, no torch.ao, no kernel for this CPU: all mean "no"
        return False
    return bool(torch.isfinite(out).all())


@functools.cache
def full_range_int8() -> bool:
    """Whether this CPU's int8 kernel multiplies full-range (8-bit) activations exactly.

    torch's dynamic ``Linear`` always quantizes activations to 7 bits (``reduce_range``)
    because fbgemm's AVX2/AVX-512 kernels add pairs of uint8 x int8 products in int16
    (``vpmaddubsw``), which saturates at full range; its VNNI kernels (``vpdpbusd``)
    accumulate in int32 and do not. This is probed, not read off CPU flags: the worst case
    (every activation and every weight at its extreme, so every pair sums to 64770) is
    computed once on a musicgen-sized row and compared with the exact answer; a saturating
    kernel is off by half.
    """
    if not int8_available():
        return False
    k = 1024
    linear = torch.nn.Linear(k, 8, bias=False)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    try:
        probe = _quantize_dynamic(torch.nn.Sequential(linear), full_range=True)
        x = torch.ones(2, k)  # quantizes to 255 exactly (scale 1/255, zero point 0)
        with torch.inference_mode():
            out = probe(x)
            quantized: Any = next(probe.children())
            exact = torch.nn.functional.linear(x, quantized.weight().dequantize())
    except Exception:  # this torch's kernel refuses reduce_range=False: keep 7 bits
        return False
    return bool(torch.allclose(out, exact, rtol=1e-4))


def int8_activation_bits() -> int:
    """The activation width :func:`quantize_decoder` uses here: 8, or 7 (torch's default)."""
    return 8 if full_range_int8() else 7


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision (``int8``, ``bf16`` or ``fp32``) for ``precision`` on ``device``.

    ``auto`` is bf16 on CUDA and, on CPU, int8 where :func:`int8_available`, else fp32.
    Raises :class:`errors.InvalidParams` (``param="precision"``) for an unknown name or for
    int8 on CUDA (torch's dynamic quantization has CPU kernels only).
    """
    precision = validate_precision(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return "int8" if int8_available() else "fp32"
    if precision == "int8":
        if device.type != "cpu":
            raise errors.InvalidParams(
                f"precision 'int8' runs on CPU only; use 'bf16' (or 'auto') on {device}",
                param="precision",
            )
        if not int8_available():
            raise errors.InvalidParams(
                f"precision 'int8' is not available in torch {torch.__version__} on this CPU "
                f"(quantized engines: {', '.join(torch.backends.quantized.supported_engines)}); "
                "use 'fp32' or 'auto'",
                param="precision",
            )
    return precision


def quantize_decoder(model: Any) -> int:
    """Quantize every ``nn.Linear`` of ``model.decoder`` to dynamic int8, in place.

    The text encoder, ``enc_to_dec_proj`` and EnCodec are left as they are. Returns the
    number of layers quantized.
    """
    return quantize_linears(model.decoder)


def quantize_linears(module: torch.nn.Module) -> int:
    """Quantize every ``nn.Linear`` of ``module`` to dynamic int8, in place (per-channel
    weights, 8-bit activations where exact: :func:`_quantize_dynamic`); returns how many."""
    before = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    _quantize_dynamic(module)
    after = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    return before - after


def quantized_bytes(model: torch.nn.Module) -> int:
    """Bytes held by dynamically quantized linear layers (not counted by ``parameters()``)."""
    total = 0
    for module in model.modules():
        weight_fn = getattr(module, "weight", None)
        if callable(weight_fn) and hasattr(module, "_packed_params"):
            weight = weight_fn()
            total += weight.numel() * weight.element_size()
            bias_fn = getattr(module, "bias", None)
            bias = bias_fn() if callable(bias_fn) else None
            if bias is not None:
                total += bias.numel() * bias.element_size()
    return total


@dataclass(frozen=True)
class QualityReport:
    """How far a candidate model's logits are from the reference's, step by step.

    ``max_rel_error`` and ``mean_rel_error`` are over steps of ``||cand - ref|| / ||ref||``
    (Frobenius norm over every row and codebook of the step's guided logits, the ones
    sampling sees); ``topk_agreement`` is the mean fraction of the reference's top-k tokens
    that are also in the candidate's top-k (1.0: identical candidate sets for sampling).
    ``model_max_rel_error`` and ``model_mean_rel_error`` are the same error on the model's
    own output before guidance combines it (the conditional and the null-conditioned rows).
    Guidance ``u + s (c - u)`` scales the difference of two nearly equal rows: errors that
    differ between the rows (activation rounding) grow by up to ``sqrt(s^2 + (s-1)^2)``
    (3.6 at s=3), errors both rows share (weight rounding) largely cancel in ``c - u``.
    Without guidance the two pairs are the same.
    """

    max_rel_error: float
    mean_rel_error: float
    topk_agreement: float
    steps: int
    k: int
    model_max_rel_error: float
    model_mean_rel_error: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON types: every field by name."""
        return asdict(self)


class _Stepper:
    """One model decoding step by step with its own KV cache."""

    def __init__(self, model: Any, inputs: dict[str, torch.Tensor], guidance_scale: float) -> None:
        self.model = model
        self.guided = guidance_scale > 1
        self.scale = guidance_scale
        hidden = model.text_encoder(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"]).last_hidden_state
        mask = inputs["attention_mask"]
        if self.guided:  # the "null" condition, as MusicgenForConditionalGeneration.generate
            hidden = torch.cat([hidden, torch.zeros_like(hidden)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        self.encoder_outputs = (hidden,)
        self.attention_mask = mask
        self.cache: Any = None

    def __call__(self, column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one token column ``(batch * codebooks, 1)``; float32 logits back: the
        guided ones and the model's own (every row, before guidance)."""
        # Imported here: this module is also used (probes, quantization) without transformers.
        from timbred.worker.hfnames import CACHE_ARG, output_cache

        ids = column.repeat((2, 1)) if self.guided else column
        out = self.model(encoder_outputs=self.encoder_outputs,
                         attention_mask=self.attention_mask, decoder_input_ids=ids,
                         use_cache=True, **{CACHE_ARG: self.cache})
        self.cache = output_cache(out)
        raw: torch.Tensor = out.logits[:, -1].float()
        logits = raw
        if self.guided:
            half = raw.shape[0] // 2
            cond, uncond = raw[:half], raw[half:]
            logits = uncond + (cond - uncond) * self.scale
        return logits, raw


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` (Frobenius norm over every element)."""
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def compare_logits(
    model_fp32: Any,
    model_q: Any,
    inputs: dict[str, torch.Tensor],
    steps: int,
    *,
    guidance_scale: float = 3.0,
    k: int = 50,
) -> QualityReport:
    """Compare ``model_q``'s decoding logits with ``model_fp32``'s over ``steps`` steps.

    Both are ``MusicgenForConditionalGeneration`` models of the same architecture; ``inputs``
    is the tokenizer's output (``input_ids``, ``attention_mask``) for a batch of prompts.
    Both models see the same tokens at every step: the reference's greedy choice, laid out
    in MusicGen's delay pattern (teacher forcing), so the sequences cannot diverge and every
    step measures the error of one step. With ``guidance_scale > 1`` the compared logits are
    the classifier-free-guided ones, as sampling sees them.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    config = model_fp32.generation_config
    bos = int(config.decoder_start_token_id)
    pad = int(config.pad_token_id)
    codebooks = int(model_fp32.decoder.num_codebooks)
    rows = int(inputs["input_ids"].shape[0]) * codebooks
    errs: list[float] = []
    model_errs: list[float] = []
    agree: list[float] = []
    with torch.inference_mode():
        ref = _Stepper(model_fp32, inputs, guidance_scale)
        cand = _Stepper(model_q, inputs, guidance_scale)
        ids = torch.full((rows, 1), bos, dtype=torch.long)
        ids, delay_mask = model_fp32.decoder.build_delay_pattern_mask(
            ids, pad_token_id=pad, max_length=steps + 1)
        for _ in range(steps):
            column = model_fp32.decoder.apply_delay_pattern_mask(ids, delay_mask)[:, -1:]
            want, want_raw = ref(column)
            got, got_raw = cand(column)
            errs.append(_rel_error(got, want))
            model_errs.append(_rel_error(got_raw, want_raw))
            top_ref = want.topk(k, dim=-1).indices
            top_got = got.topk(k, dim=-1).indices
            hits = (top_ref[:, :, None] == top_got[:, None, :]).any(-1).float().mean()
            agree.append(float(hits))
            ids = torch.cat([ids, want.argmax(-1, keepdim=True)], dim=-1)
    return QualityReport(max_rel_error=max(errs), mean_rel_error=sum(errs) / len(errs),
                         topk_agreement=sum(agree) / len(agree), steps=steps, k=k,
                         model_max_rel_error=max(model_errs),
                         model_mean_rel_error=sum(model_errs) / len(model_errs))
