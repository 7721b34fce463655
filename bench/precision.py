"""Decoder precision side by side: fp32, bf16 and int8 on musicgen-small's architecture.

One command::

    .venv/bin/python -m bench.precision [--steps 100] [--quality-steps 50] [--out PATH]

For each precision a fresh child process loads :mod:`bench.musicgen_small_random` (musicgen-
small's exact shapes, random weights: timing only) through :class:`MusicgenBackend` with
that ``precision`` option and generates one clip of ``--steps`` decoding steps at guidance 3
(sampling, top-k 250, one variation). It reports:

* ms per decoding step: the median gap between consecutive progress callbacks (one per step),
  excluding the first step (text encoding and the prompt pass);
* the real-time factor (generation seconds per second of audio, < 1 is faster than real
  time) of a 10 s clip (503 steps), EXTRAPOLATED from the measured run: fixed cost (the
  measured run's wall time minus its steps) + 503 x the per-step time + EnCodec decoding
  scaled linearly from the measured clip. Pass ``--steps 503`` to measure it directly;
* peak RSS (VmHWM) of the child, which includes loading (int8 loads float32, then quantizes),
  and its RSS after loading.

A last child loads all three and runs :func:`timbred.worker.precision.compare_logits` for
bf16 and int8 against fp32 (teacher-forced, guided logits, top-50). Then it writes a Markdown
fragment (``bench/RESULTS-precision.md`` by default) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FRAME_RATE = 50
CODEBOOKS = 4
CLIP_S = 10.0
CLIP_STEPS = round(CLIP_S * FRAME_RATE) + CODEBOOKS - 1
PRECISIONS = ("fp32", "bf16", "int8")
PROMPT = "warm lo-fi hip hop with a soft piano"
CHILD_TIMEOUT_S = 240.0


def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _threads() -> int:
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def child_timing(model: Path, precision: str, steps: int) -> dict[str, Any]:
    """Load with ``precision``, generate ``steps`` steps, return timings and memory."""
    from timbred.request import Request
    from timbred.worker.musicgen import MusicgenBackend

    threads = _threads()
    t0 = time.perf_counter()
    backend = MusicgenBackend(precision=precision)
    backend.load(str(model), device="cpu", dtype="float32")
    gc.collect()
    load_s = time.perf_counter() - t0
    rss_loaded = _status_kib("VmRSS")
    stamps: list[float] = []

    def progress(step: int, total: int) -> None:
        stamps.append(time.perf_counter())

    frames = steps - (CODEBOOKS - 1)
    params = Request(prompt=PROMPT, duration=frames / FRAME_RATE, seed=7,
                              options={"guidance": 3.0})
    t1 = time.perf_counter()
    out = backend.generate(params, progress)
    wall = time.perf_counter() - t1
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    step_s = statistics.median(gaps)
    decode_s = max(0.0, wall - (stamps[-1] - t1))  # after the last step: EnCodec + copies
    fixed_s = max(0.0, (stamps[0] - t1))  # text encoder, first step
    return {
        "precision": precision, "threads": threads, "steps": len(stamps),
        "audio_s": out.audio.shape[-1] / out.sample_rate, "wall_s": wall, "load_s": load_s,
        "step_ms": step_s * 1000, "step_mean_ms": statistics.fmean(gaps) * 1000,
        "first_step_s": fixed_s, "decode_s": decode_s,
        "vmhwm_mib": _status_kib("VmHWM") / 1024, "rss_loaded_mib": rss_loaded / 1024,
        "weights_mib": backend.memory_bytes() / 2**20, "info_precision": out.info["precision"],
    }


def child_quality(model: Path, steps: int) -> dict[str, Any]:
    """compare_logits of bf16 and int8 against fp32."""
    from timbred.worker.musicgen import MusicgenBackend
    from timbred.worker.precision import compare_logits

    _threads()
    loaded = {}
    for precision in PRECISIONS:
        backend = MusicgenBackend(precision=precision)
        backend.load(str(model), device="cpu", dtype="float32")
        loaded[precision] = backend._state
    ref = loaded["fp32"]
    assert ref is not None
    inputs = dict(ref.tokenizer([PROMPT], padding=True, return_tensors="pt"))
    report: dict[str, Any] = {}
    for precision in ("bf16", "int8"):
        state = loaded[precision]
        assert state is not None
        t0 = time.perf_counter()
        quality = compare_logits(ref.model, state.model, inputs, steps, guidance_scale=3.0)
        report[precision] = {**quality.to_dict(), "seconds": time.perf_counter() - t0}
    return report


def run_child(argv: list[str]) -> dict[str, Any]:
    """Run ``python -m bench.precision --child ...`` and parse its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", "bench.precision", *argv],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def extrapolate(row: dict[str, Any]) -> dict[str, float]:
    """Seconds and real-time factor of a 10 s clip from a shorter measured run."""
    step_s = row["step_ms"] / 1000
    decode_s = row["decode_s"] * CLIP_S / row["audio_s"]
    total = row["first_step_s"] + (CLIP_STEPS - 1) * step_s + decode_s
    return {"clip_s": total, "rtf": total / CLIP_S}


def machine() -> dict[str, Any]:
    """CPU model and flags that matter here, cores, memory, versions, load."""
    import torch
    import transformers

    cpu, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {
        "cpu": cpu, "usable_cores": len(os.sched_getaffinity(0)), "ram_gib": mem / 2**20,
        "flags": [f for f in wanted if f in flags],
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(rows: dict[str, dict[str, Any]], quality: dict[str, Any], info: dict[str, Any],
             steps: int, runtime_s: float) -> str:
    base = rows["fp32"]
    base_clip = extrapolate(base)
    measured_directly = steps >= CLIP_STEPS
    lines = [
        "# Decoder precision: fp32 vs bf16 vs int8 (`bench/precision.py`)",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores, "
        f"{info['ram_gib']:.0f} GiB RAM, CPU flags {', '.join(info['flags'])}; Python "
        f"{info['python']}, torch {info['torch']} (quantized engine `{info['quantized_engine']}`"
        f"), transformers {info['transformers']}. torch threads = {base['threads']}. Load "
        f"average at start {info['loadavg']} (the cores are shared with other work, so "
        "absolute times are noisy; the ratios within one run are the figures to read).",
        "",
        "Model: `bench/musicgen_small_random.py` (musicgen-small's exact architecture, random "
        "weights), loaded through `MusicgenBackend(precision=...)`. Clip: prompt of one "
        "variation, guidance 3 (two decoder rows), sampling with top-k 250.",
        "",
        (f"Each precision generated {steps} decoding steps "
         f"({rows['fp32']['audio_s']:.2f} s of audio) in its own process. "
         + ("" if measured_directly else
            f"**The 10 s figures are extrapolated, not measured**: fixed cost + "
            f"{CLIP_STEPS} steps x the measured median step + EnCodec decoding scaled "
            "linearly.")),
        "",
        "| precision | ms / step (median) | vs fp32 | 10 s clip (s) | RTF (10 s) | vs fp32 "
        "| peak RSS (MiB) | vs fp32 | RSS loaded (MiB) | weights (MiB) | load (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in PRECISIONS:
        row = rows[name]
        clip = extrapolate(row)
        lines.append(
            f"| {name} | {row['step_ms']:.1f} | {row['step_ms'] / base['step_ms']:.2f}x "
            f"| {clip['clip_s']:.1f} | {clip['rtf']:.2f} | "
            f"{clip['clip_s'] / base_clip['clip_s']:.2f}x | {row['vmhwm_mib']:.0f} | "
            f"{row['vmhwm_mib'] / base['vmhwm_mib']:.2f}x | {row['rss_loaded_mib']:.0f} | "
            f"{row['weights_mib']:.0f} | {row['load_s']:.1f} |")
    lines += [
        "",
        "RTF = generation seconds per second of audio (< 1: faster than real time). Peak RSS "
        "is the child's VmHWM (load included: int8 loads float32 weights, then quantizes the "
        "decoder); RSS loaded is after loading and a GC; weights is "
        "`MusicgenBackend.memory_bytes()`.",
        "",
        f"Quality against fp32 (`timbred.worker.precision.compare_logits`, "
        f"{quality['int8']['steps']} teacher-forced steps, guided logits, top-"
        f"{quality['int8']['k']}; target for int8: max relative error <= 2e-2):",
        "",
        "| precision | max rel. error | mean rel. error | top-50 agreement | "
        "max rel. error, model's own logits | mean, model's own |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("bf16", "int8"):
        q = quality[name]
        lines.append(f"| {name} | {q['max_rel_error']:.4f} | {q['mean_rel_error']:.4f} | "
                     f"{q['topk_agreement']:.4f} | {q['model_max_rel_error']:.4f} | "
                     f"{q['model_mean_rel_error']:.4f} |")
    lines += [
        "",
        "Random weights give logits of a different distribution than trained ones; the error "
        "of trained weights should be measured the same way once a real checkpoint is at hand "
        "(the function takes any two loaded models).",
        "",
        f"Raw rows: `{json.dumps(rows, sort_keys=True)}`",
        "",
        f"Quality raw: `{json.dumps(quality, sort_keys=True)}`",
        "",
        f"Runtime of the whole benchmark: {runtime_s:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def default_model_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("timbre")) / "bench" / "musicgen-small-random"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100,
                   help="decoding steps measured per precision (503 = a full 10 s clip)")
    p.add_argument("--quality-steps", type=int, default=50)
    p.add_argument("--model", type=Path, default=None,
                   help="the random-weight checkpoint (built there if missing)")
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-precision.md"))
    p.add_argument("--child", choices=(*PRECISIONS, "quality"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model: Path = args.model or default_model_dir()
    if args.child == "quality":
        print(json.dumps(child_quality(model, args.quality_steps)))
        return 0
    if args.child is not None:
        print(json.dumps(child_timing(model, args.child, args.steps)))
        return 0
    if args.steps < CODEBOOKS + 2:
        raise SystemExit(f"--steps must be at least {CODEBOOKS + 2}")
    start = time.perf_counter()
    from bench.musicgen_small_random import build

    build(model, size="small")
    info = machine()
    rows = {}
    for precision in PRECISIONS:
        print(f"bench.precision: {precision} ...", file=sys.stderr)
        rows[precision] = run_child(["--child", precision, "--steps", str(args.steps),
                                     "--model", str(model)])
    print("bench.precision: quality ...", file=sys.stderr)
    quality = run_child(["--child", "quality", "--quality-steps", str(args.quality_steps),
                         "--model", str(model)])
    text = markdown(rows, quality, info, args.steps, time.perf_counter() - start)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
