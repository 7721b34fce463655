"""The mastering chains' level stage, measured three ways: ``python -m bench.mastering``.

::

    .venv/bin/python -m bench.mastering [--seconds 10] [--rate 44100] [--repeat 3]

For four synthetic stereo signals (a dense, noise-ish mix; transient-heavy drums; struck
chords like the test suite's ``pulse`` fixture; a quiet pad) and each shipped chain with a
loudness target, the chain's effects run once (:func:`timbred.takes.mastering.apply_effects`)
and then each candidate level stage brings the result to the chain's target loudness under
its true-peak ceiling:

* (a) :func:`timbred.takes.loudness.normalise`: Timbre's true-peak look-ahead limiter,
  which pushes at most 6 dB into it and otherwise stays under the target;
* (b) pedalboard's ``Limiter`` (JUCE: two compressors, make-up gain, a hard clip at 0 dBFS)
  driven by a gain to the target, iterated (the gain corrected by the measured loudness
  error along the measured slope) up to :data:`PASSES` times, each pass followed by a static
  trim that puts the true peak at the ceiling (the limiter itself only knows sample peaks);
  the pass closest to the target is kept;
* (c) :func:`timbred.takes.mastering.level_stage`, what :func:`~timbred.takes.mastering.master`
  uses: (a), and where (a) falls short, a soft clipper ahead of it, as deep as needed (at
  most the chain's ``clip_db``).

Each result is measured with an independent meter, written here rather than taken from
Timbre: pyloudnorm's BS.1770 integrated loudness, and the true peak as the larger of the
sample peak and the peak of a 4x ``scipy.signal.resample_poly`` upsampling. The table shows
the loudness error (LU, measured minus target), the true peak over the ceiling (dB; <= 0 is
under it), "flat": the output's samples within 0.01 dB of its sample peak (the flat tops a
hard clipper leaves; a limiter that only moves the gain leaves a handful), and the time of
the level stage alone (ms, best of ``--repeat``). The acceptance criteria (issue 22): within
0.5 LU of the target, true peak at most the ceiling + 0.1 dB.
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pedalboard
import pyloudnorm

from timbred.takes.loudness import normalise
from timbred.takes.mastering import Chain, Target, apply_effects, level_stage, load_chain

F64 = npt.NDArray[np.float64]
Level = Callable[[F64, int, Target], npt.NDArray[np.float32]]

CHAINS: Final = ("streaming", "club", "tape")
#: (b)'s gain loop: at most this many passes, stopping this close to the target, driving
#: the limiter at most this far past the plain gain to the target; its release time.
PASSES: Final = 8
TOLERANCE_LU: Final = 0.1
MAX_DRIVE_DB: Final = 24.0
RELEASE_MS: Final = 100.0
#: JUCE's Limiter raises its output by min(3.75 dB, -threshold): a threshold this far under
#: the ceiling puts its limited peaks there.
JUCE_MAKEUP_DB: Final = 3.75
CRITERIA_LU: Final = 0.5
CRITERIA_TP_DB: Final = 0.1


def _signal() -> Any:
    # scipy ships no type information; imported lazily as Any (as timbred.takes.loudness).
    return importlib.import_module("scipy.signal")


# --- the independent meter --------------------------------------------------------------------


def lufs(x: npt.ArrayLike, rate: int) -> float:
    """pyloudnorm's BS.1770 integrated loudness of ``(channels, samples)`` audio."""
    arr = np.asarray(x, dtype=np.float64)
    return float(pyloudnorm.Meter(rate).integrated_loudness(arr.T))


def true_peak_db(x: npt.ArrayLike) -> float:
    """max(sample peak, 4x ``resample_poly`` peak) in dB."""
    arr = np.asarray(x, dtype=np.float64)
    up = _signal().resample_poly(arr, 4, 1, axis=-1)
    return 20.0 * math.log10(max(float(np.abs(up).max()), float(np.abs(arr).max())))


# --- the signals ------------------------------------------------------------------------------


def dense(seconds: float, rate: int, rng: np.random.Generator) -> F64:
    """A loud, dense mix: pink-ish noise, a bass line and a chord, gently pumping."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    noise = _signal().lfilter([0.05], [1.0, -0.95], rng.standard_normal((2, n)), axis=-1)
    bass = 0.3 * np.sin(2 * np.pi * 55.0 * t * (1 + 0.5 * (np.floor(t * 2) % 2)))
    chord = sum(0.08 * np.sin(2 * np.pi * f * t + p)
                for f, p in ((220.0, 0.0), (277.2, 1.0), (329.6, 2.0), (440.0, 0.5)))
    pump = 0.7 + 0.3 * np.abs(np.sin(np.pi * 2.0 * t))
    out = pump * (noise + bass + chord)
    return np.asarray(out * (0.5 / np.abs(out).max()), dtype=np.float64)


def drums(seconds: float, rate: int, rng: np.random.Generator) -> F64:
    """Transient-heavy drums at 120 bpm: kicks, snares and hats with silence between."""
    n = round(seconds * rate)
    out = np.zeros((2, n))
    beat = rate // 2
    k = np.arange(round(0.25 * rate)) / rate
    kick = np.sin(2 * np.pi * (50.0 * k + 60.0 * (1 - np.exp(-k * 30)) / 30)) * np.exp(-k * 12)
    s = np.arange(round(0.15 * rate)) / rate
    snare = rng.standard_normal((2, s.size)) * np.exp(-s * 25) * 0.6
    h = np.arange(round(0.03 * rate)) / rate
    hat = np.diff(rng.standard_normal((2, h.size + 1)), axis=-1) * np.exp(-h * 150) * 0.2
    for i, start in enumerate(range(0, n, beat // 2)):
        def place(sound: F64, at: int = start) -> None:
            end = min(n, at + sound.shape[-1])
            out[:, at:end] += sound[..., :end - at]
        place(hat)
        if i % 2 == 0:
            place(kick if i % 4 == 0 else snare)
    return np.asarray(out * (0.9 / np.abs(out).max()), dtype=np.float64)


def chords(seconds: float, rate: int, rng: np.random.Generator) -> F64:
    """Struck chords: a triad with harmonics hit on every beat at 100 bpm and decaying
    (like the test suite's ``pulse`` fixture), the bass an octave down on beats 2 and 4."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    beat = 0.6
    index = np.floor(t / beat)
    envelope = np.exp(-np.mod(t, beat) * 8.0) * np.where(index % 4 == 0, 1.0, 0.6)
    chord = sum(w * np.sin(2 * np.pi * f * h * t) for f in (261.6, 329.6, 392.0)
                for h, w in ((1, 1.0), (2, 0.3), (3, 0.15)))
    bass = np.sin(2 * np.pi * 98.0 * t) * (index % 2 == 1)
    mono = 0.12 * envelope * (chord + 0.8 * bass)
    return np.asarray(mono + 0.002 * rng.standard_normal((2, n)), dtype=np.float64)


def pad(seconds: float, rate: int, rng: np.random.Generator) -> F64:
    """A quiet pad (about -35 LUFS): a slowly swelling chord, slightly detuned per side."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    phases = rng.uniform(0, 2 * np.pi, size=8)
    left = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip((196.0, 246.9, 293.7, 392.0),
                                                             phases[:4], strict=True))
    right = sum(np.sin(2 * np.pi * f * 1.003 * t + p)
                for f, p in zip((196.0, 246.9, 293.7, 392.0), phases[4:], strict=True))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.2 * t)
    return np.asarray(np.stack([left, right]) * swell * 0.012, dtype=np.float64)


SIGNALS: Final[dict[str, Callable[[float, int, np.random.Generator], F64]]] = {
    "dense mix": dense, "drums": drums, "struck chords": chords, "quiet pad": pad}


# --- the two level stages ---------------------------------------------------------------------


def level_normalise(y: F64, rate: int, target: Target) -> npt.NDArray[np.float32]:
    """(a) normalise: Timbre's own look-ahead true-peak limiter."""
    return normalise(y, rate, target_lufs=target.loudness_lufs,
                     ceiling_dbtp=target.true_peak_dbtp)[0]


def level_pedalboard(y: F64, rate: int, goal: Target) -> npt.NDArray[np.float32]:
    """(b) pedalboard Limiter: gain to the target, iterated, each pass trimmed to the
    ceiling."""
    assert goal.loudness_lufs is not None
    target, ceiling = goal.loudness_lufs, goal.true_peak_dbtp
    limiter = pedalboard.Limiter(threshold_db=ceiling - JUCE_MAKEUP_DB, release_ms=RELEASE_MS)
    x = np.ascontiguousarray(y, dtype=np.float32)
    start_db = target - lufs(x, rate)
    gain_db, tried = start_db, []
    best: tuple[float, npt.NDArray[np.float32]] = (math.inf, x)
    for _ in range(PASSES):
        z = limiter(x * np.float32(10.0 ** (gain_db / 20.0)), float(rate), reset=True)
        over = true_peak_db(z) - ceiling
        out = np.ascontiguousarray(z * np.float32(10.0 ** (-max(over, 0.0) / 20.0)))
        error = target - lufs(out, rate)
        if abs(error) < best[0]:
            best = (abs(error), out)
        if abs(error) <= TOLERANCE_LU:
            break
        tried.append((gain_db, error))
        # Limiting flattens loudness against gain: step along the measured slope (secant),
        # at least 1 dB per LU missing, within MAX_DRIVE_DB of the plain gain.
        slope = 1.0
        if len(tried) > 1 and tried[-1][0] != tried[-2][0]:
            slope = (tried[-2][1] - tried[-1][1]) / (tried[-1][0] - tried[-2][0])
        step = error / min(1.0, max(slope, 0.05))
        gain_db = min(max(gain_db + step, start_db - MAX_DRIVE_DB), start_db + MAX_DRIVE_DB)
    return best[1]


def level_timbre(y: F64, rate: int, target: Target) -> npt.NDArray[np.float32]:
    """(c) level_stage: (a), with a soft clipper ahead of it as deep as the target needs."""
    return level_stage(y, rate, target)[0]


LEVELS: Final[dict[str, Level]] = {"a": level_normalise, "b": level_pedalboard,
                                   "c": level_timbre}


# --- the run ----------------------------------------------------------------------------------


def flat_tops(x: npt.ArrayLike) -> int:
    """Samples within 0.01 dB of the sample peak: a clipper leaves runs of them (flat tops),
    a limiter that only moves the gain a handful."""
    arr = np.abs(np.asarray(x, dtype=np.float64))
    return int(np.count_nonzero(arr >= arr.max() * 10.0 ** (-0.01 / 20.0)))


def measure(level: Level, y: F64, rate: int, chain: Chain, repeat: int
            ) -> tuple[float, float, int, float]:
    """(loudness error LU, true peak over the ceiling dB, flat-topped samples, best time ms)
    of one level stage."""
    assert chain.target is not None and chain.target.loudness_lufs is not None
    target, ceiling = chain.target.loudness_lufs, chain.target.true_peak_dbtp
    best = math.inf
    out = np.zeros(0, dtype=np.float32)
    for _ in range(repeat):
        start = time.perf_counter()
        out = level(y, rate, chain.target)
        best = min(best, time.perf_counter() - start)
    return (lufs(out, rate) - target, true_peak_db(out) - ceiling, flat_tops(out),
            best * 1000.0)


def run(seconds: float, rate: int, repeat: int) -> list[dict[str, Any]]:
    """One row per (signal, chain): both level stages' figures."""
    rows = []
    for signal_name, make in SIGNALS.items():
        x = make(seconds, rate, np.random.default_rng(22))
        for chain_name in CHAINS:
            chain = load_chain(chain_name)
            y = apply_effects(x, rate, chain).astype(np.float64)
            row: dict[str, Any] = {"signal": signal_name, "chain": chain_name,
                                   "input_lufs": lufs(x, rate)}
            for key, level in LEVELS.items():
                row[key] = measure(level, y, rate, chain, repeat)
            rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]], seconds: float, rate: int) -> str:
    """The Markdown table, with a verdict per stage against the criteria."""
    lines = [
        f"Level stage of the mastering chains: {seconds:g} s stereo at {rate} Hz, "
        f"Python {platform.python_version()}, pedalboard {version('pedalboard')}, "
        f"{platform.machine()}.",
        "",
        "| signal (input LUFS) | chain | "
        + " | ".join(f"({k}) LU error | ({k}) TP over dB | ({k}) flat | ({k}) ms"
                     for k in LEVELS) + " |",
        "|---|---|" + "--:|" * (4 * len(LEVELS)),
    ]
    for r in rows:
        cells = [f"{r['signal']} ({r['input_lufs']:.1f})", r["chain"]]
        for key in LEVELS:
            err, over, flat, ms = r[key]
            cells += [f"{err:+.2f}", f"{over:+.2f}", str(flat), f"{ms:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for key, level in LEVELS.items():
        errs = [abs(r[key][0]) for r in rows]
        overs = [r[key][1] for r in rows]
        times = [r[key][3] for r in rows]
        met = sum(abs(r[key][0]) <= CRITERIA_LU and r[key][1] <= CRITERIA_TP_DB for r in rows)
        name = (level.__doc__ or "").split(":")[0]
        lines.append(f"- {name}: meets the criteria (<= {CRITERIA_LU} LU, <= "
                     f"+{CRITERIA_TP_DB} dB) in {met} of {len(rows)} cases; worst |error| "
                     f"{max(errs):.2f} LU, worst true peak over {max(overs):+.2f} dB, at most "
                     f"{max(r[key][2] for r in rows)} flat-topped samples, "
                     f"{min(times):.0f}-{max(times):.0f} ms.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.mastering", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each signal")
    p.add_argument("--rate", type=int, default=44100, help="sample rate in Hz")
    p.add_argument("--repeat", type=int, default=3, help="timing runs (the best is shown)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(markdown(run(args.seconds, args.rate, max(1, args.repeat)), args.seconds,
                   args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
