"""Where int8's error comes from, and what the alternatives cost: ``python -m bench.quant_study``.

The speed target (6x the plain float32 script) needs about one byte per decoder weight per
step, i.e. int8 weights; the quality target is a guided-logits relative error of at most
2e-2 against float32. This study measures, on :mod:`bench.musicgen_small_random` (musicgen-
small's shapes, random weights), side by side in one run:

1. **Error** (``compare_logits``: teacher-forced, guidance 3, ``--steps`` steps) of
   Timbre's int8 (``quantize_dynamic``: int8 weights per output channel and uint8
   activations per tensor, 8 bits where the kernel is exact at full range), of torch's stock
   7-bit activations, and of *simulated* variants that isolate each source: weights
   rounded to int8 (per channel, or per group of 128 inputs) with float32 activations;
   activations rounded (per tensor, as fbgemm does) with float32 weights; linear inputs
   rounded to bfloat16; some with the four ``lm_heads`` left in float32. Simulated means
   quantize-then-dequantize in float32: the same numbers as a real kernel, not its speed.
2. **Speed** of the kernels those variants would need, on a stack of linear layers shaped
   like musicgen-small's decoder (24 x q, k, v, out, cross q, cross out, fc1, fc2; 2 rows,
   as with guidance): float32 and bfloat16 dense, ``quantize_dynamic`` (fbgemm), and
   ``torch.ops.aten._weight_int8pack_mm`` (int8 weights, per-channel scales, float
   activations: weight-only int8).

It writes a Markdown fragment (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.generate import build_model, default_model_dir, machine, write_report

PROMPT = "warm lo-fi hip hop with a soft piano"
GROUP = 128


Rounding = Callable[[torch.Tensor], torch.Tensor]


class FakeQuantLinear(torch.nn.Module):
    """``linear`` with its weight rounded once and its input rounded on every call."""

    def __init__(self, linear: torch.nn.Linear, weight_fn: Rounding | None,
                 act_fn: Rounding | None) -> None:
        super().__init__()
        w = linear.weight.data
        self.weight = w if weight_fn is None else weight_fn(w)
        self.bias = linear.bias
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fn is not None:
            x = self.act_fn(x)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def _replace_linears(model: Any, make: Callable[[torch.nn.Linear], torch.nn.Module],
                     skip: tuple[str, ...]) -> Any:
    copy_ = copy.deepcopy(model)
    for name, module in list(copy_.decoder.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and not full.startswith(skip):
                setattr(module, child_name, make(child))
    return copy_


def error_rows(model_dir: Path, steps: int) -> list[tuple[str, Any]]:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from timbred.worker.precision import (
        _quantize_dynamic,
        compare_logits,
        int8_activation_bits,
    )

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ref: Any = MusicgenForConditionalGeneration.from_pretrained(str(model_dir))
    ref.eval()
    processor: Any = AutoProcessor.from_pretrained(str(model_dir))  # type: ignore[no-untyped-call]
    text = processor(text=[PROMPT], return_tensors="pt", padding=True)
    inputs = {k: text[k] for k in ("input_ids", "attention_mask")}

    def w_channel(w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().amax(1, keepdim=True) / 127
        return (w / scale).round().clamp(-127, 127) * scale

    def w_group(w: torch.Tensor) -> torch.Tensor:
        n, k = w.shape
        g = w.reshape(n, k // GROUP, GROUP)
        scale = g.abs().amax(-1, keepdim=True) / 127
        return ((g / scale).round().clamp(-127, 127) * scale).reshape(n, k)

    def a_tensor(x: torch.Tensor) -> torch.Tensor:
        # Asymmetric uint8, one scale per tensor (fbgemm's dynamic activations).
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (hi - lo) / 255 or 1.0
        zero = round(-lo / scale)
        return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale

    def block32(x: torch.Tensor) -> torch.Tensor:
        # Symmetric int8, one scale per 32 consecutive inputs (weights or activations).
        g = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
        scale = (g.abs().amax(-1, keepdim=True) / 127).clamp_min(torch.finfo(x.dtype).tiny)
        return ((g / scale).round().clamp(-127, 127) * scale).reshape(x.shape)

    def a_bf16(x: torch.Tensor) -> torch.Tensor:
        return x.bfloat16().float()

    def fake(w: Rounding | None = None, a: Rounding | None = None,
             skip: tuple[str, ...] = ()) -> Any:
        return _replace_linears(ref, lambda lin: FakeQuantLinear(lin, w, a), skip)

    def timbre_int8(skip: tuple[str, ...] = (), full_range: bool | None = None) -> Any:
        model = copy.deepcopy(ref)
        if skip:  # everything but the lm_heads
            _quantize_dynamic(model.decoder.model, full_range=full_range)
        else:
            _quantize_dynamic(model.decoder, full_range=full_range)
        return model

    heads = ("lm_heads",)
    bits = int8_activation_bits()
    variants: list[tuple[str, Callable[[], Any]]] = [
        (f"Timbre int8 here (`quantize_dynamic`: int8 weights/channel + {bits}-bit "
         "activations/tensor)", timbre_int8),
        ("… the same, lm_heads in float32", lambda: timbre_int8(heads)),
        ("torch's stock dynamic int8 (7-bit activations: `reduce_range`)",
         lambda: timbre_int8(full_range=False)),
        ("simulated: activations only (uint8 per tensor), float32 weights",
         lambda: fake(a=a_tensor)),
        ("simulated: weights only, int8 per channel, float32 activations",
         lambda: fake(w=w_channel)),
        ("… the same, lm_heads in float32", lambda: fake(w=w_channel, skip=heads)),
        ("… the same, bfloat16 linear inputs", lambda: fake(w=w_channel, a=a_bf16,
                                                              skip=heads)),
        (f"simulated: weights only, int8 per group of {GROUP}, lm_heads float32",
         lambda: fake(w=w_group, skip=heads)),
        ("simulated: bfloat16 linear inputs only, float32 weights", lambda: fake(a=a_bf16)),
        ("simulated: int8 weights and activations per block of 32 inputs (ONNX Runtime's "
         "`MatMulNBits`, accuracy level 4), lm_heads float32",
         lambda: fake(w=block32, a=block32, skip=heads)),
    ]
    rows = []
    for label, build in variants:
        print(f"bench.quant_study: {label} ...", file=sys.stderr)
        report = compare_logits(ref, build(), inputs, steps, guidance_scale=3.0)
        rows.append((label, report))
    return rows


def kernel_rows(repeats: int) -> list[tuple[str, float]]:
    from timbred.worker.precision import _quantize_dynamic, full_range_int8

    shapes = [(1024, 1024)] * 6 + [(4096, 1024), (1024, 4096)]
    layers = 24

    def timed(step: Callable[[], object]) -> float:
        for _ in range(3):
            step()
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        return (time.perf_counter() - t0) / repeats * 1000

    out: list[tuple[str, float]] = []
    with torch.inference_mode():
        for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
            x = {k: torch.randn(2, k, dtype=dtype) for k in (1024, 4096)}
            dense = [torch.randn(n, k, dtype=dtype) for _ in range(layers) for n, k in shapes]
            packed = [(torch.randint(-127, 128, (n, k), dtype=torch.int8),
                       torch.rand(n, dtype=dtype)) for _ in range(layers) for n, k in shapes]

            def dense_step(x: dict[int, torch.Tensor] = x,
                           dense: list[torch.Tensor] = dense) -> object:
                return [torch.nn.functional.linear(x[w.shape[1]], w) for w in dense]

            def packed_step(x: dict[int, torch.Tensor] = x,
                            packed: list[tuple[torch.Tensor, torch.Tensor]] = packed) -> object:
                return [torch.ops.aten._weight_int8pack_mm(x[w.shape[1]], w, s)
                        for w, s in packed]

            out.append((f"dense {name} (`F.linear`)", timed(dense_step)))
            out.append((f"weight-only int8 (`_weight_int8pack_mm`), {name} activations",
                        timed(packed_step)))
        stack = torch.nn.Sequential(*[torch.nn.Linear(k, n) for _ in range(layers)
                                      for n, k in shapes])
        x32 = {k: torch.randn(2, k) for k in (1024, 4096)}
        for full_range, label in ((False, "7-bit activations (torch's stock)"),
                                  (True, "8-bit activations")):
            if full_range and not full_range_int8():
                continue  # this CPU's kernel saturates at full range: Timbre keeps 7 bits
            mods: list[Any] = list(_quantize_dynamic(copy.deepcopy(stack),
                                                     full_range=full_range).children())

            def fbgemm_step(mods: list[Any] = mods) -> object:
                return [m(x32[m.in_features]) for m in mods]

            out.append((f"int8 `quantize_dynamic` (fbgemm), {label}", timed(fbgemm_step)))
    return out


def markdown(errors: list[tuple[str, Any]], kernels: list[tuple[str, float]], steps: int,
             info: dict[str, Any]) -> str:
    lines = [
        "### Where int8's error comes from (`python -m bench.quant_study`)", "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores; torch "
        f"{info['torch']}. musicgen-small's architecture, random weights. Error: "
        f"`compare_logits`, {steps} teacher-forced steps, guidance 3, against float32.", "",
        "Guided: the logits sampling sees (guidance 3); model: the model's own rows before "
        "guidance combines them.", "",
        "| decoder linear layers | max rel. error, guided | mean rel. error, guided | "
        "top-50 agreement | max rel. error, model | mean rel. error, model |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for label, r in errors:
        lines.append(f"| {label} | {r.max_rel_error:.4f} | {r.mean_rel_error:.4f} | "
                     f"{r.topk_agreement:.3f} | {r.model_max_rel_error:.4f} | "
                     f"{r.model_mean_rel_error:.4f} |")
    base = kernels[-1][1]  # the last fbgemm row: what Timbre uses on this CPU
    lines += ["", "Kernels on a musicgen-small-shaped stack of linear layers (2 rows, one "
              "decoding step's linear work):", "",
              f"| kernel | ms per step | vs {kernels[-1][0]} |", "|---|--:|--:|"]
    for label, ms in kernels:
        lines.append(f"| {label} | {ms:.1f} | {ms / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quant_study", description=__doc__)
    p.add_argument("--steps", type=int, default=12, help="teacher-forced steps (default 12)")
    p.add_argument("--repeats", type=int, default=30, help="kernel timing repeats")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-quant.md"))
    args = p.parse_args(argv)
    model_dir = (args.model_dir or default_model_dir("small")).absolute()
    build_model(model_dir, "small", 1800.0)
    info = machine()
    kernels = kernel_rows(args.repeats)
    errors = error_rows(model_dir, args.steps)
    text = markdown(errors, kernels, args.steps, info)
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
