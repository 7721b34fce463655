"""What the fast paths' load-time self-check costs: model loads with and without it, side by side.

``MusicgenBackend.load`` checks the preallocated KV cache and the lean decoding step against
transformers' stock path (:mod:`timbred.worker.fastpath`) whenever one of them is on; with both
off it probes nothing. Loading the same musicgen-small-shaped checkpoint (random weights, FOR
TIMING ONLY: :mod:`bench.musicgen_small_random`) both ways, interleaved, gives the check's cost
as a difference of medians, next to the load it is part of and a 10 s take for scale.

    python -m bench.fastpath [--repeat 3] [--precision fp32|int8] [--cache DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench.musicgen_small_random import build
from timbred.request import Request
from timbred.worker.musicgen import MusicgenBackend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    parser.add_argument("--cache", type=Path, default=Path("bench/out/musicgen-small-random"))
    args = parser.parse_args(argv)
    source = str(build(args.cache, size="small"))
    loads: dict[bool, list[float]] = {True: [], False: []}
    take_s = 0.0
    for i in range(args.repeat):
        for checked in (False, True):
            backend = MusicgenBackend(precision=args.precision, preallocate_kv=checked,
                                      lean_steps=checked)
            began = time.perf_counter()
            backend.load(source, device="cpu", dtype="float32")
            loads[checked].append(time.perf_counter() - began)
            print(f"run {i + 1}: load {'with' if checked else 'without'} the check "
                  f"{loads[checked][-1]:.2f} s", file=sys.stderr)
            if checked and i == 0:
                began = time.perf_counter()
                backend.generate(Request(prompt="scale", duration=10.0, seed=1))
                take_s = time.perf_counter() - began
                assert backend.load_warnings == (), backend.load_warnings
            backend.unload()
    with_check, without = statistics.median(loads[True]), statistics.median(loads[False])
    print(f"musicgen-small shapes, {args.precision}, CPU, median of {args.repeat}:")
    print(f"  load without the check {without:.2f} s, with it {with_check:.2f} s: "
          f"the check costs {with_check - without:.2f} s per load")
    print(f"  for scale: a 10 s take with the fast paths on took {take_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
