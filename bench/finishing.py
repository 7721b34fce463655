"""Finishing costs per minute of audio: ``python -m bench.finishing``.

On this CPU, side by side in one run, for one minute of 44.1 kHz stereo (a chord struck on
every beat over noise, the pulse test fixture's generator; timing only, not music):

* **analysis** (:func:`timbred.takes.analysis.analyse`: tempo, beats, downbeat, key), after
  one untimed call that pays librosa's import and numba's compilation;
* **mastering** with each shipped chain (:func:`timbred.takes.mastering.master`: the
  effects, then the loudness and true-peak stage);
* **loudness only** (:func:`timbred.takes.loudness.normalise` to -14 LUFS, what a take
  without a chain gets), as the baseline the chains are compared with;
* **a loop** of 4 bars (:func:`timbred.takes.loops.make_loop`);
* **stems** (:meth:`timbred.worker.stems.DemucsBackend.separate`, what ``takes stems`` runs
  in the worker) with an HTDemucs of the class's default widths (26.9M parameters) and
  random weights, as the tests' fixture is built but full size, with one shifted pass (the
  default) and with none. Random weights cost what trained ones do; the figures are time only.

Each is the median of ``--repeats`` runs; reported in seconds per minute of audio and as a
ratio to the loudness-only baseline.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.generate import machine, write_report


def _signal(seconds: float, rate: int) -> npt.NDArray[np.float32]:
    import importlib

    from tests.backends.pulse import SAMPLE_RATE, PulseBackend
    from timbred.request import Request

    backend = PulseBackend()
    backend.load("bench", device="cpu", dtype="float32")
    out = backend._one(Request(prompt="bench", duration=seconds, seed=1, variations=1,
                               options={"bpm": 120, "key": "A minor"}), backend.capabilities)
    mono = out.audio[0][0].astype(np.float64)
    rng = np.random.default_rng(7)
    mono = mono + 0.02 * rng.standard_normal(mono.size)
    up = importlib.import_module("scipy.signal").resample_poly(mono, rate // 50,
                                                              SAMPLE_RATE // 50)
    return np.vstack([up, 0.9 * up]).astype(np.float32)


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, float]:
    from timbred.takes import mastering
    from timbred.takes.analysis import analyse
    from timbred.takes.loops import make_loop
    from timbred.takes.loudness import normalise

    rate = 44_100
    audio = _signal(args.seconds, rate)
    analyse(audio[:, : 10 * rate], rate)  # librosa's import and numba's compile, untimed
    found = analyse(audio, rate)
    rows: dict[str, float] = {}
    print("bench.finishing: loudness only ...", file=sys.stderr)
    rows["loudness only (-14 LUFS, -1 dBTP)"] = _median_s(
        lambda: normalise(audio, rate, target_lufs=-14.0, ceiling_dbtp=-1.0), args.repeats)
    print("bench.finishing: analysis ...", file=sys.stderr)
    rows["analysis (tempo, beats, key)"] = _median_s(lambda: analyse(audio, rate),
                                                     args.repeats)
    for name in ("streaming", "club", "tape"):
        print(f"bench.finishing: mastering, {name} ...", file=sys.stderr)
        rows[f"mastering: {name}"] = _median_s(
            functools.partial(mastering.master, audio, rate, mastering.load_chain(name)),
            args.repeats)
    if found.bpm is not None and found.downbeat is not None:
        bpm, downbeat = found.bpm, found.downbeat
        rows["loop (4 bars)"] = _median_s(
            lambda: make_loop(audio, rate, bpm=bpm, downbeat=downbeat, bars=4), args.repeats)
    if args.stems:
        backend = _separator()
        for shifts in (1, 0):
            print(f"bench.finishing: stems, shifts {shifts} ...", file=sys.stderr)
            rows[f"stems: htdemucs-sized, shifts {shifts}"] = _median_s(
                functools.partial(backend.separate, audio, rate, shifts=shifts),
                args.stem_repeats)
    per_minute = 60.0 / args.seconds
    return {name: seconds * per_minute for name, seconds in rows.items()}


def _separator() -> Any:
    """A full-size HTDemucs with random weights, loaded as the worker loads one."""
    import tempfile
    from pathlib import Path

    from timbred.testing.tiny_demucs import htdemucs_kwargs, save_bag
    from timbred.worker.stems import DemucsBackend

    folder = Path(tempfile.mkdtemp(prefix="bench-htdemucs-"))
    save_bag(folder, "htdemucs", htdemucs_kwargs(tiny=False))
    backend = DemucsBackend()
    backend.load(str(folder), device="cpu", dtype="float32")
    return backend


def markdown(rows: dict[str, float], args: argparse.Namespace, info: dict[str, Any]) -> str:
    base = rows["loudness only (-14 LUFS, -1 dBTP)"]
    lines = [
        f"### Finishing per minute of audio (`python -m bench.finishing`, {args.seconds:g} s "
        f"of 44.1 kHz stereo, median of {args.repeats})", "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores.", "",
        "| stage | seconds per minute of audio | vs loudness only |", "|---|--:|--:|",
        *(f"| {name} | {seconds:.2f} | {seconds / base:.1f}x |" for name, seconds in rows.items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.finishing",
                                description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stem-repeats", type=int, default=1,
                   help="runs of each stems row (each takes about a minute per minute here)")
    p.add_argument("--no-stems", dest="stems", action="store_false",
                   help="leave out the stems rows")
    p.add_argument("--out", default="bench/RESULTS-finishing.md")
    args = p.parse_args(argv)
    from pathlib import Path

    write_report(Path(args.out), markdown(run(args), args, machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
