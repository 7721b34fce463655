"""GPU benchmark: ``python -m bench.gpu --device cuda --budget 420 --out DIR``.

One process, one run, on whatever device it is given, prepared so that scarce GPU minutes are
spent only on measuring. For each model (musicgen-small, then musicgen-medium: their exact
architectures with random weights, :mod:`bench.musicgen_small_random`; no diffusion backend
has landed yet, so there is none to build) it measures, side by side (the shapes are those
of transformers' ``convert_musicgen_transformers.py``, ``decoder_config_from_checkpoint``:
small hidden 1024, 24 layers, 16 heads; medium hidden 1536, 48 layers, 24 heads; FFN 4 x
hidden; T5-base text encoder, EnCodec 32 kHz):

* **Timbre's worker path**: :class:`timbred.worker.musicgen.MusicgenBackend`, loaded and
  called exactly as the inference worker does (``load`` then ``generate`` /
  ``generate_batch``, with its preallocated KV cache and lean decoding steps), for every
  precision Timbre offers on the device (CUDA: bf16, fp16 (``dtype=float16``) and fp32 as
  the reference; CPU: fp32, int8, bf16);
* **the plain transformers script** as the baseline: ``from_pretrained`` + ``processor`` +
  ``model.generate(do_sample=True, guidance_scale=3)``, as the Hugging Face docs have it
  (fp32, and the device's half precision);
* **options**, each guarded: ``torch.compile`` of the decoder's step, transformers' static
  cache with its compiled (CUDA-graph) step, and SDPA restricted to the flash or the
  memory-efficient kernel.

Measured per variant: seconds and real-time factor (wall seconds / audio seconds; below 1 is
faster than real time) of a 10 s and a 30 s take at batch 1; throughput of a batch of 8 10 s
takes (clips per minute); time to first audio with streaming preview (the generation is
cancelled once the first chunk arrives); median seconds per decoding step; peak device
memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS instead).

Budget: ``--budget SECONDS`` (wall, from start, model builds included). Measurements run in
order of importance (on small: Timbre's default precision (10 s take, batch 8, 30 s take,
streaming), the plain transformers baseline, the other precisions (10 s take, batch 8), the
SDPA kernels; then
medium: its build, the default precision in full, the others' 10 s take, the baseline; last
the options that compile: ``torch.compile`` and the static cache with CUDA graphs) and
each is first given an estimate (from the step time measured so far); one that would not fit
is skipped and reported as skipped. A running one is cancelled at the budget's end. Every
measurement is guarded: a failure (out of memory, a compile error, a missing kernel) is
recorded with its reason and the run goes on, so one crash never costs the run.

``--device cpu --quick`` runs the whole thing on the tiny test model with short takes (CI
smoke test, not a timing). Progress goes to stderr; ``report.json`` (schema
``schemas/bench-gpu-report.schema.json``) and ``report.md`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

SCHEMA = "timbre-bench-gpu/1"
PROMPT = "lo-fi hip hop beat with chill piano and warm bass"
GUIDANCE = 3.0
FRAME_RATE = 50  # EnCodec 32 kHz: decoding steps per second of audio
CODEBOOKS = 4
#: Targets on an H200 (issue 23); reported against, never asserted.
TARGETS = {"small_10s_b1_s": 0.4, "small_clips_per_min_b8": 200.0, "diffusion_10s_s": 0.1}
#: First guess at seconds per decoding step before anything is measured (a 2-row guided
#: batch): deliberately pessimistic so that the first estimates never overrun.
GUESS_STEP_S = {"cuda": 0.03, "cpu": 0.5}
#: The tiny test model (--quick) steps in milliseconds anywhere.
TINY_GUESS_STEP_S = 0.02
#: Seconds to load a checkpoint from a warm page cache and move it to the device.
LOAD_GUESS_S = {"tiny": 2.0, "small": 10.0, "medium": 25.0}
#: Per generation, besides the steps (text encoder, EnCodec decode), for a 10 s take.
FIXED_GUESS_S = {"cuda": 0.3, "cpu": 1.0}
#: A torch.compile's own time (compiling, not running), as an estimate.
COMPILE_GUESS_S = {"cuda": 90.0, "cpu": 120.0}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: full (H200) or --quick (CPU smoke test)."""

    short_s: float
    long_s: float
    batch: int
    chunk_s: float
    warmup_s: float


FULL = Plan(short_s=10.0, long_s=30.0, batch=8, chunk_s=1.0, warmup_s=0.5)
QUICK = Plan(short_s=0.2, long_s=0.4, batch=2, chunk_s=0.1, warmup_s=0.06)


def _log(message: str) -> None:
    print(f"bench.gpu [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- budget --------------------------------------------------------------------------------


class Budget:
    """Wall seconds left to the run; decides what fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.simulated = 0.0  # --dry-run: the estimates of what "ran"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start + self.simulated

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left


# --- results -------------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement (or its skip or failure)."""

    id: str
    model: str
    impl: str  # "timbre" | "transformers"
    precision: str
    option: str
    metric: str  # take | batch | stream | load | build
    status: str = "ok"  # ok | failed | skipped | cut
    reason: str | None = None
    audio_s: float | None = None
    batch: int = 1
    wall_s: float | None = None
    rtf: float | None = None
    clips_per_min: float | None = None
    ttfa_s: float | None = None
    step_ms: float | None = None
    steps: int | None = None
    peak_device_bytes: int | None = None
    estimate_s: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Run:
    """Rows, the budget and what was learnt along the way (step times)."""

    def __init__(self, device: str, plan: Plan, budget: Budget,
                 only: Sequence[str] = (), dry_run: bool = False) -> None:
        self.device = device
        self.only = tuple(only)
        self.dry_run = dry_run
        self.kind = "cuda" if device.startswith("cuda") else "cpu"
        self.plan = plan
        self.budget = budget
        self.rows: list[Row] = []
        self.step_s: dict[str, float] = {}  # (model) -> seconds per step, batch 1, guided
        self.checks: list[dict[str, Any]] = []  # CUDA correctness, on the device itself

    def check(self, name: str, ok: bool, detail: str) -> None:
        """Record one correctness check (never raises: the measurements go on)."""
        self.checks.append({"name": name, "status": "ok" if ok else "failed",
                            "detail": detail})
        _log(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})")

    def step_guess(self, model: str, batch: int = 1) -> float:
        guess = TINY_GUESS_STEP_S if model == "tiny" else GUESS_STEP_S[self.kind]
        if model == "medium" and "small" in self.step_s:
            guess = 2 * self.step_s["small"]  # twice the layers, 1.5x as wide
        base = self.step_s.get(model, guess)
        # Batch rows cost little extra on a GPU (memory-bound), more on a CPU.
        return base * (1 + (batch - 1) * (0.05 if self.kind == "cuda" else 0.5))

    def estimate(self, model: str, seconds: float, batch: int = 1, extra: float = 0.0) -> float:
        steps = round(seconds * FRAME_RATE) + CODEBOOKS
        # Plus the fixed part: text encoder, EnCodec decode of every take, copies.
        fixed = FIXED_GUESS_S[self.kind] * (1 + seconds / 10) * math.sqrt(batch)
        return steps * self.step_guess(model, batch) * 1.3 + fixed + extra

    def measure(self, row: Row, estimate_s: float, work: Callable[[Row, Deadline], None]) -> Row:
        """Run ``work(row)`` if it fits the budget, guarded; record the row either way."""
        row.estimate_s = round(estimate_s, 2)
        self.rows.append(row)
        if self.only and not any(fnmatch.fnmatchcase(row.id, p) for p in self.only):
            row.status, row.reason = "skipped", "not selected (--only)"
            return row
        if not self.budget.fits(estimate_s):
            row.status = "skipped"
            row.reason = (f"budget: needs about {estimate_s:.0f} s, "
                          f"{max(0.0, self.budget.left):.0f} s left")
            _log(f"skip {row.id} ({row.reason})")
            return row
        _log(f"run  {row.id} (about {estimate_s:.1f} s, {self.budget.left:.0f} s left)")
        if self.dry_run:
            row.status, row.reason = "skipped", "dry run: would run"
            self.budget.simulated += estimate_s
            return row
        deadline = Deadline(self.budget.left)
        reset_peak(self.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                work(row, deadline)
            except Exception as exc:  # guarded: record and go on
                row.status = "cut" if deadline.expired else "failed"
                row.reason = ("budget ran out mid-measurement" if deadline.expired
                              else f"{type(exc).__name__}: {_first_line(exc)}")
                traceback.clear_frames(exc.__traceback__)
                _log(f"{row.status} {row.id}: {row.reason}")
            finally:
                deadline.stop()
        row.warnings = sorted({_first_line(w.message) for w in caught})[:5]
        row.peak_device_bytes = peak_bytes(self.device)
        if row.status == "ok":
            _log(f"done {row.id}: {summary(row)}")
        free(self.device)
        return row


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def summary(row: Row) -> str:
    parts = []
    if row.wall_s is not None:
        parts.append(f"{row.wall_s:.3f} s")
    if row.rtf is not None:
        parts.append(f"RTF {row.rtf:.3f}")
    if row.clips_per_min is not None:
        parts.append(f"{row.clips_per_min:.1f} clips/min")
    if row.ttfa_s is not None:
        parts.append(f"first audio {row.ttfa_s:.3f} s")
    if row.step_ms is not None:
        parts.append(f"{row.step_ms:.2f} ms/step")
    return ", ".join(parts)


class Deadline:
    """A timer that cancels the running generation when the budget runs out."""

    def __init__(self, seconds: float) -> None:
        from timbred.worker.backend import CancelToken

        self.token = CancelToken()
        self.expired = False
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self.token.cancel()

    def stop(self) -> None:
        self._timer.cancel()


# --- device helpers ------------------------------------------------------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return None


def free(device: str) -> None:
    from timbred.worker.device import release_memory

    gc.collect()
    release_memory(device)


# --- models --------------------------------------------------------------------------------


def default_model_dir() -> Path:
    """Where built checkpoints are cached between runs (the same as bench.generate's)."""
    return Path(platformdirs.user_cache_dir("timbre")) / "bench"


def build_model(run: Run, name: str, root: Path, models: list[dict[str, Any]]) -> Path | None:
    """Build (or reuse) ``name``'s checkpoint under ``root``; ``None`` if it failed or did
    not fit."""
    out: list[Path] = []

    def work(row: Row, deadline: Deadline) -> None:
        t0 = time.perf_counter()
        if name == "tiny":
            from timbred.testing.tiny_musicgen import build_tiny_musicgen

            out.append(build_tiny_musicgen(root / "musicgen-tiny"))
        else:
            from bench.musicgen_small_random import build

            out.append(build(root / f"musicgen-{name}-random", size=name))  # type: ignore[arg-type]
        row.wall_s = time.perf_counter() - t0

    # Building writes fp32 safetensors (small ~2.3 GB, medium ~7 GB): host time, not GPU. A
    # guess (random init of ~0.6 / ~1.9 G parameters, then the write), not yet measured there.
    guess = {"tiny": 5.0, "small": 30.0, "medium": 60.0}[name]
    # Only worth building if a load and a 10 s take fit after it.
    worth = LOAD_GUESS_S.get(name, 25.0) + run.estimate(name, run.plan.short_s)
    row = run.measure(Row(id=f"{name}/build", model=name, impl="timbre", precision="-",
                          option="-", metric="build"), guess + worth, work)
    if run.dry_run:
        run.budget.simulated -= worth if row.reason == "dry run: would run" else 0.0
    if run.dry_run and row.reason == "dry run: would run":
        return root / f"musicgen-{name}-random"
    if not out:
        return None
    models.append({"name": name, "path": str(out[0]), "build_s": row.wall_s,
                   "shapes": _shapes(name)})
    return out[0]


def _shapes(name: str) -> dict[str, int] | None:
    from bench.musicgen_small_random import DECODERS

    if name not in DECODERS:
        return None
    hidden, layers, heads, ffn = DECODERS[name]
    return {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn}


# --- Timbre's worker path ------------------------------------------------------------------


def precisions_for(device: str) -> list[tuple[str, dict[str, Any], str]]:
    """Timbre's precisions on ``device``: (label, backend options, load dtype), default first."""
    if device.startswith("cuda"):
        return [("bf16", {"precision": "bf16"}, "float32"),
                ("fp16", {}, "float16"),
                ("fp32", {"precision": "fp32"}, "float32")]
    return [("fp32", {"precision": "fp32"}, "float32"),
            ("int8", {"precision": "int8"}, "float32"),
            ("bf16", {"precision": "bf16"}, "float32")]


class Steps:
    """A progress callback keeping every step's time."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, step: int, total: int) -> None:
        self.stamps.append(time.perf_counter())

    def median_s(self) -> float | None:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(gaps) if gaps else None


def _params(seconds: float, seed: int = 1) -> Any:
    from timbred.request import Request

    return Request(prompt=PROMPT, duration=seconds, seed=seed,
                            options={"guidance": GUIDANCE})


@contextlib.contextmanager
def loaded_backend(run: Run, model: str, source: Path, options: dict[str, Any], dtype: str,
                   prepare: Callable[[Any], None] | None = None, name: str = "",
                   cancel: Any = None, warmup_s: float | None = None) -> Iterator[Any]:
    """A MusicgenBackend loaded as the worker loads it (then warmed up); unloaded after."""
    import torch

    from timbred.worker.musicgen import MusicgenBackend

    cuda = run.device.startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else 0
    backend = MusicgenBackend(**options)
    backend.load(str(source), device=run.device, dtype=dtype)
    weights = weakref.ref(backend._state.model)  # type: ignore[union-attr]
    try:
        if prepare is not None:
            prepare(backend)
        steps = Steps()
        # A compiled variant warms up at the measured length: its shapes are then compiled
        # (the compile time shows in the load row), and the take measures the steady state.
        backend.generate(_params(warmup_s or run.plan.warmup_s), steps, cancel)
        sync(run.device)
        step = steps.median_s()
        if step is not None and model not in run.step_s:
            run.step_s[model] = step  # a first measured figure for the estimates
        yield backend
    finally:
        backend.unload()
        del backend
        free(run.device)
        # The worker's unload must give the memory back (models.memory_budget_mb counts on it).
        name = f"{name or model} unload frees the model"
        if cuda:
            left = torch.cuda.memory_allocated() - before
            run.check(name, left < 64 * 2**20 and weights() is None,
                      f"{left / 2**20:.1f} MiB still allocated after unload, "
                      f"model {'alive' if weights() is not None else 'collected'}")
        else:
            run.check(name, weights() is None,
                      f"model {'alive' if weights() is not None else 'collected'}")


def timbre_take(run: Run, backend: Any, row: Row, deadline: Deadline, seconds: float,
                batch: int, context: Callable[[], contextlib.AbstractContextManager[Any]]
                ) -> None:
    """Time one generate_batch of ``batch`` requests of ``seconds`` each."""
    steps = Steps()
    items = [_params(seconds, seed=1 + i) for i in range(batch)]
    sync(run.device)
    with context():
        t0 = time.perf_counter()
        backend.generate_batch(items, steps, [deadline.token] * batch)
        sync(run.device)
        wall = time.perf_counter() - t0
    row.audio_s, row.batch, row.wall_s = seconds, batch, wall
    row.rtf = wall / seconds
    row.steps = len(steps.stamps)
    step = steps.median_s()
    row.step_ms = None if step is None else step * 1000
    if batch > 1:
        row.clips_per_min = batch * 60 / wall
    elif step is not None and row.option == "default":
        run.step_s[row.model] = step


def timbre_stream(run: Run, backend: Any, row: Row, deadline: Deadline, seconds: float,
                  context: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
    """Time to the first streamed chunk, then cancel the rest."""
    from timbred import errors
    from timbred.worker.backend import CancelToken, Preview

    first: list[float] = []
    stop = CancelToken()

    def send(start: int, audio: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        stop.cancel()

    class Either(CancelToken):
        @property
        def cancelled(self) -> bool:
            return stop.cancelled or deadline.token.cancelled

        def raise_if_cancelled(self) -> None:
            if self.cancelled:
                raise errors.Cancelled()

    sync(run.device)
    with context():
        t0 = time.perf_counter()
        with contextlib.suppress(errors.Cancelled):
            backend.generate(_params(seconds), cancel=Either(),
                             preview=Preview(run.plan.chunk_s, send))
    if not first:
        raise RuntimeError("no preview chunk arrived")
    row.audio_s = seconds
    row.ttfa_s = first[0] - t0


def measure_timbre(run: Run, model: str, source: Path, label: str, options: dict[str, Any],
                   dtype: str, *, metrics: Sequence[str], option: str = "default",
                   prepare: Callable[[Any], None] | None = None,
                   context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                   extra_s: float = 0.0, warmup_s: float | None = None) -> None:
    """Load one Timbre variant once and run ``metrics`` on it, each guarded and budgeted."""
    plan = run.plan
    ctx = context or contextlib.nullcontext
    base = f"{model}/timbre/{label}" + ("" if option == "default" else f"/{option}")
    load_row = Row(id=f"{base}/load", model=model, impl="timbre", precision=label,
                   option=option, metric="load")
    # Loading and warming up: a few seconds for the weights, plus the warm-up clip.
    load_guess = (LOAD_GUESS_S.get(model, 25.0) + extra_s
                  + run.estimate(model, warmup_s or plan.warmup_s))
    stack = contextlib.ExitStack()
    backends: list[Any] = []

    def load(row: Row, deadline: Deadline) -> None:
        t0 = time.perf_counter()
        backends.append(stack.enter_context(loaded_backend(run, model, source, options, dtype,
                                                           prepare, name=base,
                                                           cancel=deadline.token,
                                                           warmup_s=warmup_s)))
        row.wall_s = time.perf_counter() - t0

    with stack:
        run.measure(load_row, load_guess, load)
        planned = run.dry_run and load_row.reason == "dry run: would run"
        if not backends and not planned:
            for metric in metrics:  # say what could not be measured, and why
                run.rows.append(Row(id=f"{base}/{metric}", model=model, impl="timbre",
                                    precision=label, option=option, metric=metric,
                                    status="skipped", reason=f"load {load_row.status}"))
            return
        backend = backends[0] if backends else None
        for metric in metrics:
            row = Row(id=f"{base}/{metric}", model=model, impl="timbre", precision=label,
                      option=option, metric=metric)
            if metric == "take10":
                run.measure(row, run.estimate(model, plan.short_s),
                            lambda r, d: timbre_take(run, backend, r, d, plan.short_s, 1, ctx))
            elif metric == "take30":
                run.measure(row, run.estimate(model, plan.long_s),
                            lambda r, d: timbre_take(run, backend, r, d, plan.long_s, 1, ctx))
            elif metric == "batch8":
                run.measure(row, run.estimate(model, plan.short_s, plan.batch),
                            lambda r, d: timbre_take(run, backend, r, d, plan.short_s,
                                                     plan.batch, ctx))
            elif metric == "stream":
                run.measure(row, run.estimate(model, plan.chunk_s),
                            lambda r, d: timbre_stream(run, backend, r, d, plan.short_s, ctx))
        backends.clear()


# --- the plain transformers script ---------------------------------------------------------


def measure_plain(run: Run, model: str, source: Path, dtype_name: str, *,
                  option: str = "default", generate_extra: dict[str, Any] | None = None,
                  extra_s: float = 0.0) -> None:
    """The Hugging Face docs' script: from_pretrained, processor, generate (10 s take)."""
    import torch
    from transformers import (
        AutoProcessor,
        MusicgenForConditionalGeneration,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    plan = run.plan
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    row = Row(id=f"{model}/transformers/{dtype_name}" + (
        "" if option == "default" else f"/{option}") + "/take10", model=model,
        impl="transformers", precision=dtype_name, option=option, metric="take10")

    class Stop(StoppingCriteria):
        def __init__(self, deadline: Deadline, steps: Steps) -> None:
            self.deadline, self.steps = deadline, steps

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            self.steps(0, 0)
            if self.deadline.token.cancelled:
                raise RuntimeError("budget ran out")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def work(row: Row, deadline: Deadline) -> None:
        processor = AutoProcessor.from_pretrained(str(source))  # type: ignore[no-untyped-call]
        net: Any = MusicgenForConditionalGeneration.from_pretrained(str(source), dtype=dtype)
        net.to(run.device)
        inputs = processor(text=[PROMPT], padding=True, return_tensors="pt").to(run.device)
        kwargs: dict[str, Any] = {"do_sample": True, "guidance_scale": GUIDANCE,
                                  **(generate_extra or {})}
        try:
            with torch.inference_mode():
                torch.manual_seed(1)  # warm-up: kernels, allocator, any compile
                net.generate(**inputs, max_new_tokens=round(plan.warmup_s * FRAME_RATE) + 1,
                             **kwargs)
                steps = Steps()
                sync(run.device)
                t0 = time.perf_counter()
                torch.manual_seed(1)
                audio = net.generate(**inputs, max_new_tokens=round(plan.short_s * FRAME_RATE),
                                     stopping_criteria=StoppingCriteriaList(
                                         [Stop(deadline, steps)]), **kwargs)
                audio.float().cpu()  # the script writes the WAV from host memory
                wall = time.perf_counter() - t0
        finally:
            del net
        row.audio_s, row.wall_s, row.rtf = plan.short_s, wall, wall / plan.short_s
        step = steps.median_s()
        row.step_ms = None if step is None else step * 1000
        row.steps = len(steps.stamps)

    # Baseline steps cost about twice Timbre's (no in-place cache, full module machinery).
    run.measure(row, 15.0 + extra_s + 2 * run.estimate(model, plan.short_s + plan.warmup_s),
                work)


# --- options -------------------------------------------------------------------------------


def compile_decoder(backend: Any) -> None:
    """torch.compile the decoder's forward (dynamic shapes: the KV cache grows each step)."""
    import torch

    decoder = backend._state.model.decoder
    decoder.forward = torch.compile(decoder.forward, dynamic=True)


def sdpa_kernel(name: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Restrict scaled_dot_product_attention to one kernel for the measured call."""
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as restrict

    backend = {"flash": SDPBackend.FLASH_ATTENTION,
               "mem-efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
    return lambda: restrict([backend])


# --- the run -------------------------------------------------------------------------------


def run_all(run: Run, models: list[dict[str, Any]], model_root: Path, sizes: Sequence[str],
            quick: bool, quick_model: Path | None = None) -> None:
    """Every measurement, most important first: each model's own figures (the first model in
    full, the others in brief), then the expensive options (compiles) on the first model."""
    offered = precisions_for(run.device)
    default_label, default_opts, default_dtype = offered[0]
    half = "bf16" if run.kind == "cuda" else "fp32"
    all_metrics = ("take10", "batch8", "take30", "stream")
    first: tuple[str, Path] | None = None
    for size_index, size in enumerate(sizes):
        name = "tiny" if quick else size
        if quick and quick_model is not None:
            source: Path | None = quick_model
            models.append({"name": name, "path": str(quick_model), "build_s": None,
                           "shapes": None})
        else:
            source = build_model(run, name, model_root, models)
        if source is None:
            continue
        # 1. The targets: Timbre's default precision, 10 s take and batch of 8 first.
        measure_timbre(run, name, source, default_label, default_opts, default_dtype,
                       metrics=all_metrics)
        if size_index > 0:
            # Larger models: the other precisions' 10 s take only, then the baseline.
            for label, opts, dtype in offered[1:]:
                measure_timbre(run, name, source, label, opts, dtype, metrics=("take10",))
            measure_plain(run, name, source, half)
            continue
        first = (name, source)
        # 2. The baseline: the plain transformers script, at fp32 and at half precision.
        measure_plain(run, name, source, "fp32")
        if half != "fp32":
            measure_plain(run, name, source, half)
        # 3. Every other precision Timbre offers here: 10 s take and batch (--quick: the take).
        for label, opts, dtype in offered[1:]:
            measure_timbre(run, name, source, label, opts, dtype,
                           metrics=("take10",) if quick else ("take10", "batch8"))
        # 4. The cheap options: SDPA restricted to one kernel (no compile involved).
        for kernel in ("flash", "mem-efficient"):
            measure_timbre(run, name, source, default_label, default_opts, default_dtype,
                           metrics=("take10",), option=f"sdpa-{kernel}",
                           context=sdpa_kernel(kernel))
    if first is None:
        return
    # 5. Last, the options that compile (minutes each), on the first model.
    name, source = first
    compile_s = COMPILE_GUESS_S[run.kind]
    measure_timbre(run, name, source, default_label,
                   {**default_opts, "lean_steps": False}, default_dtype,
                   metrics=("take10", "batch8"), option="torch-compile",
                   prepare=compile_decoder, extra_s=compile_s, warmup_s=run.plan.short_s)
    if run.kind == "cuda":
        measure_plain(run, name, source, half, option="static-cache-cudagraphs",
                      generate_extra={"cache_implementation": "static"}, extra_s=compile_s)
    else:
        run.rows.append(Row(id=f"{name}/transformers/{half}/static-cache-cudagraphs/take10",
                            model=name, impl="transformers", precision=half,
                            option="static-cache-cudagraphs", metric="take10",
                            status="skipped", reason="CUDA graphs need a CUDA device"))


def device_checks(run: Run) -> None:
    """Timbre's CUDA decisions, on the device itself: what the worker reports, the dtype and
    budget it picks, and a real out-of-memory error read back as a job error."""
    import torch

    from timbred.worker import device as dev

    seen = dev.probe()
    if not run.device.startswith("cuda"):
        run.check("explicit cpu wins over any GPU", dev.choose_device("cpu", seen) == "cpu",
                  f"the worker would report {len(seen)} CUDA device(s)")
        run.check("auto device and dtype", dev.choose_dtype("auto", "cpu", seen) == "float32",
                  f"cpu -> {dev.choose_dtype('auto', 'cpu', seen)}")
        return
    index = int(run.device.split(":")[1]) if ":" in run.device else 0
    ok = len(seen) > index and seen[index].total_bytes > 0
    run.check("probe reports the device's memory", ok,
              ", ".join(f"{d.name}: {d.total_bytes / 2**30:.1f} GiB, bf16 {d.bf16}"
                        for d in seen))
    if not ok:
        return
    gpu = seen[index]
    dtype = dev.choose_dtype("auto", run.device, seen)
    capability = torch.cuda.get_device_capability(index)
    run.check("auto dtype follows bf16 support",
              dtype == ("bfloat16" if capability[0] >= 8 else "float16"),
              f"capability {capability[0]}.{capability[1]} -> {dtype}")
    budget = dev.memory_budget_bytes(0, host_bytes=1, device_bytes=gpu.total_bytes)
    run.check("memory budget is of the device", budget == int(gpu.total_bytes * 0.75),
              f"{budget / 2**30:.1f} GiB of {gpu.total_bytes / 2**30:.1f} GiB")
    free_bytes, _ = torch.cuda.mem_get_info(index)
    try:
        torch.empty(free_bytes + 4 * 2**30, dtype=torch.uint8, device=run.device)
    except Exception as exc:
        reason = dev.oom_reason(exc, run.device) if dev.is_oom(exc) else repr(exc)
        figures = dev.parse_oom(str(exc))
        run.check("a real CUDA OOM reads as 'needs N GiB, has M'",
                  reason.startswith("CUDA out of memory: needs ")
                  and figures.needed_bytes is not None, reason)
    else:
        run.check("a real CUDA OOM reads as 'needs N GiB, has M'", False,
                  "allocating more than the free memory did not fail")
    free(run.device)


def device_info(device: str, *, dry_run: bool = False) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"requested": device, "type": device.split(":")[0]}
    if dry_run:
        info.update(name="dry run", total_bytes=None)
    elif device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        props = torch.cuda.get_device_properties(index)
        info.update(name=str(props.name), total_bytes=int(props.total_memory),
                    capability=f"{props.major}.{props.minor}", bf16=props.major >= 8,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())  # type: ignore[no-untyped-call]
    else:
        info.update(name=_cpu_name(), total_bytes=None, threads=torch.get_num_threads(),
                    usable_cores=len(os.sched_getaffinity(0)))
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def findings(rows: Sequence[Row], kind: str) -> list[str]:
    """The targets, against what was reached (on the device this ran on)."""
    out = []
    by_id = {r.id: r for r in rows}
    take = next((r for r in rows if r.model == "small" and r.impl == "timbre"
                 and r.option == "default" and r.metric == "take10" and r.status == "ok"), None)
    batch = next((r for r in rows if r.model == "small" and r.impl == "timbre"
                  and r.option == "default" and r.metric == "batch8" and r.status == "ok"), None)
    if take is not None and take.wall_s is not None:
        met = "met" if take.wall_s <= TARGETS["small_10s_b1_s"] else "not met"
        out.append(f"small 10 s take at batch 1 ({take.precision}): {take.wall_s:.3f} s against "
                   f"a target of {TARGETS['small_10s_b1_s']} s on an H200 ({met} on {kind})")
    if batch is not None and batch.clips_per_min is not None:
        met = "met" if batch.clips_per_min >= TARGETS["small_clips_per_min_b8"] else "not met"
        out.append(f"small batch of {batch.batch} ({batch.precision}): "
                   f"{batch.clips_per_min:.1f} clips/min against a target of "
                   f"{TARGETS['small_clips_per_min_b8']:.0f} ({met} on {kind})")
    out.append("diffusion backends: none has landed, none measured (target 10 s take "
               f"<= {TARGETS['diffusion_10s_s']} s)")
    plain = by_id.get("small/transformers/bf16/take10") or by_id.get(
        "small/transformers/fp32/take10")
    if take is not None and plain is not None and plain.wall_s and take.wall_s:
        out.append(f"Timbre vs the plain transformers script ({plain.precision}), 10 s take: "
                   f"{plain.wall_s / take.wall_s:.2f}x")
    return out


def markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = [
        "# GPU benchmark (bench/gpu.py)", "",
        f"Device: {dev['requested']} ({dev.get('name')}); torch {report['machine']['torch']}, "
        f"transformers {report['machine']['transformers']}; budget {report['budget_s']:.0f} s, "
        f"ran {report['elapsed_s']:.1f} s; quick: {report['quick']}.", "",
        "RTF: wall seconds / audio seconds (below 1: faster than real time). Peak: "
        "`torch.cuda.max_memory_allocated` during the measurement (CUDA only).", "",
        "| id | status | audio s | batch | wall s | RTF | clips/min | first audio s | ms/step "
        "| peak GiB | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]

    def f(value: float | None, digits: int = 3) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for r in report["results"]:
        peak = r["peak_device_bytes"]
        note = (r["reason"] or "") + (" warnings: " + "; ".join(r["warnings"])
                                      if r["warnings"] else "")
        lines.append(
            f"| {r['id']} | {r['status']} | {f(r['audio_s'], 1)} | {r['batch']} | "
            f"{f(r['wall_s'])} | {f(r['rtf'])} | {f(r['clips_per_min'], 1)} | "
            f"{f(r['ttfa_s'])} | {f(r['step_ms'], 2)} | "
            f"{'' if peak is None else f'{peak / 2**30:.2f}'} | {note.replace('|', '/')} |")
    lines += ["", "Checks (CUDA correctness on this device):", ""] + [
        f"- {c['status']}: {c['name']} ({c['detail']})" for c in report["checks"]]
    lines += ["", "Findings:", ""] + [f"- {line}" for line in report["findings"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default cuda)")
    p.add_argument("--budget", type=float, default=420.0, metavar="SECONDS",
                   help="wall seconds for the whole run, builds included (default 420)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory for report.json and report.md")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, short takes, batch 2: a smoke test, not a timing")
    p.add_argument("--sizes", default="small,medium",
                   help="comma-separated model sizes, most important first (default "
                   "small,medium)")
    p.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help="where checkpoints are built and cached (default: the user cache)")
    p.add_argument("--only", default="", metavar="PATTERNS",
                   help="comma-separated fnmatch patterns of measurement ids to run (e.g. "
                   "'small/timbre/bf16/*'; a variant's load must be selected too); the rest is "
                   "reported as skipped. Default: everything")
    p.add_argument("--dry-run", action="store_true",
                   help="no device, no model: list the plan, each step's estimate and what "
                   "the budget would skip (the estimates stand in for the time)")
    p.add_argument("--assume-step-ms", type=float, default=None, metavar="MS",
                   help="with --dry-run: musicgen-small's seconds per step to plan with "
                   "(medium: twice that) instead of the pessimistic first guess")
    p.add_argument("--quick-model", type=Path, default=None, metavar="DIR",
                   help="with --quick: an already built tiny checkpoint (skips the build)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.budget > 0:
        raise SystemExit("--budget must be positive")
    budget = Budget(args.budget)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    from timbred.worker.backend import validate_device

    device = validate_device(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available() and not args.dry_run:
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        sizes = sizes[:1]
    plan = QUICK if args.quick else FULL
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    run = Run(device, plan, budget, only, dry_run=args.dry_run)
    if args.dry_run and args.assume_step_ms:
        run.step_s.update(small=args.assume_step_ms / 1000, medium=2 * args.assume_step_ms / 1000)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _log(f"device {device}, budget {args.budget:.0f} s, sizes {sizes}, quick {args.quick}")
    models: list[dict[str, Any]] = []
    try:
        if not args.dry_run:
            device_checks(run)
    except Exception as exc:  # guarded like every measurement
        run.check("device checks", False, f"{type(exc).__name__}: {_first_line(exc)}")
    run_all(run, models, args.model_dir or default_model_dir(), sizes, args.quick,
            args.quick_model)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started,
        "elapsed_s": round(budget.elapsed, 3),
        "budget_s": args.budget,
        "quick": bool(args.quick),
        "dry_run": bool(args.dry_run),
        "command": ["python", "-m", "bench.gpu", *(argv if argv is not None else sys.argv[1:])],
        "device": device_info(device, dry_run=args.dry_run),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "cpu": _cpu_name(),
                    "platform": platform.platform(),
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
        "plan": vars(plan),
        "targets": TARGETS,
        "models": models,
        "diffusion": {"backends": [], "note": "no diffusion backend has landed yet"},
        "results": [r.to_dict() for r in run.rows],
        "checks": run.checks,
        "findings": findings(run.rows, run.kind),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "report.md").write_text(markdown(report), encoding="utf-8")
    counts = {s: sum(r.status == s for r in run.rows) for s in ("ok", "failed", "skipped", "cut")}
    _log(f"wrote {args.out}/report.json and report.md in {budget.elapsed:.1f} s: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
