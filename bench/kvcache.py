"""One decoding option of Timbre's on vs off, side by side: ``python -m bench.kvcache``.

The option (``--option``) is one of :class:`MusicgenBackend`'s switches that must not change
a take, only its speed:

* ``preallocate_kv`` (the default): Timbre's in-place KV cache
  (:mod:`timbred.worker.kvcache`) against transformers' ``DynamicCache``, which
  re-concatenates every layer's cache each step;
* ``lean_steps``: Timbre's decoding step (:mod:`timbred.worker.decodestep`) against
  transformers' modules.

One process loads :mod:`bench.musicgen_small_random` (musicgen-small's shapes, random
weights) twice through :class:`MusicgenBackend` at ``--precision``, once with the option on
(Timbre's default) and once with it off. It generates the same clip (``--duration``,
guidance 3, seed 7) with each, alternating for ``--rounds`` rounds so that drift on a shared
machine hits both alike, and reports per variant the median wall time, the median step (gap
between progress callbacks) over the whole clip and over its last 50 steps (where the cache
is longest), and whether the takes are bit-identical (they must be). Prints a Markdown
fragment and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.generate import build_model, default_model_dir, machine, write_report

#: Per option: (heading, label when off, label when on).
OPTIONS: dict[str, tuple[str, str, str]] = {
    "preallocate_kv": ("Preallocated KV cache", "transformers `DynamicCache`",
                       "Timbre preallocated"),
    "lean_steps": ("Lean decoding steps", "transformers' modules",
                   "Timbre's `decodestep`"),
}


def measure(model_dir: Path, precision: str, duration: float, rounds: int,
            option: str = "preallocate_kv") -> dict[bool, dict[str, Any]]:
    import os

    import torch

    from timbred.request import Request
    from timbred.worker.musicgen import MusicgenBackend

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    backends = {flag: MusicgenBackend(precision=precision, **{option: flag})
                for flag in (True, False)}
    for backend in backends.values():
        backend.load(str(model_dir), device="cpu", dtype="float32")
        backend.generate(Request(prompt="warm-up", duration=0.5, seed=1))
    params = Request(prompt="lo-fi hip hop with a soft piano", duration=duration,
                              seed=7)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    audio: dict[bool, bytes] = {}
    for r in range(rounds):
        for flag, backend in backends.items():
            print(f"bench.kvcache: round {r + 1}/{rounds}, {option}={flag} ...",
                  file=sys.stderr)
            stamps: list[float] = []

            def stamp(step: int, total: int, stamps: list[float] = stamps) -> None:
                stamps.append(time.perf_counter())

            t0 = time.perf_counter()
            out = backend.generate(params, stamp)
            wall = time.perf_counter() - t0
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            runs[flag].append({"wall_s": wall, "step_ms": statistics.median(gaps) * 1000,
                               "late_step_ms": statistics.median(gaps[-50:]) * 1000})
            audio.setdefault(flag, out.audio.tobytes())
    result: dict[bool, dict[str, Any]] = {}
    for flag, rows in runs.items():
        result[flag] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        result[flag]["walls"] = [row["wall_s"] for row in rows]
    result[True]["identical"] = audio[True] == audio[False]
    return result


def markdown(res: dict[bool, dict[str, Any]], args: argparse.Namespace,
             info: dict[str, Any]) -> str:
    on, off = res[True], res[False]
    heading, off_label, on_label = OPTIONS[args.option]
    lines = [
        f"### {heading} (`python -m bench.kvcache --option {args.option} "
        f"--precision {args.precision} --duration {args.duration:g} "
        f"--rounds {args.rounds}`)", "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores; torch {info['torch']}, "
        f"transformers {info['transformers']}. musicgen-small's architecture, random weights; "
        f"{args.duration:g} s clip, guidance 3; the two variants alternate, medians of "
        f"{args.rounds} rounds.", "",
        f"| `{args.option}` | wall s (runs) | median step ms | median of last 50 steps ms |",
        "|---|--:|--:|--:|",
    ]
    for label, r in ((f"off: {off_label}", off), (f"on: {on_label}", on)):
        walls = ", ".join(f"{w:.1f}" for w in r["walls"])
        lines.append(f"| {label} | {r['wall_s']:.1f} ({walls}) | {r['step_ms']:.1f} | "
                     f"{r['late_step_ms']:.1f} |")
    lines += ["", f"On ÷ off: wall {on['wall_s'] / off['wall_s']:.2f}x, "
              f"median step {on['step_ms'] / off['step_ms']:.2f}x, last 50 steps "
              f"{on['late_step_ms'] / off['late_step_ms']:.2f}x. Takes bit-identical: "
              f"{'yes' if on['identical'] else '**NO**'}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kvcache", description=__doc__)
    p.add_argument("--option", choices=sorted(OPTIONS), default="preallocate_kv",
                   help="the switch to compare (default preallocate_kv)")
    p.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="int8")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-kvcache.md"))
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    model_dir = (args.model_dir or default_model_dir("small")).absolute()
    build_model(model_dir, "small", 1800.0)
    text = markdown(measure(model_dir, args.precision, args.duration, args.rounds,
                            args.option), args, machine())
    write_report(args.out, text)
    return 0 if "**NO**" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
