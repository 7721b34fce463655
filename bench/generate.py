"""Generation benchmark: ``python -m bench.generate``.

One run measures the same clip (``--duration`` seconds, guidance ``--guidance``, seed 1, one
prompt) made three ways, on one machine, back to back:

(a) **plain transformers**: the script a user would write from the Hugging Face docs
    (``AutoProcessor``/``MusicgenForConditionalGeneration.from_pretrained(dir)``, ``processor``,
    ``model.generate(do_sample=True, guidance_scale=..., max_new_tokens=duration * frame_rate)``,
    ``scipy.io.wavfile.write``), run as a fresh ``python`` process. Timed end to end (interpreter
    start, imports, load, generate, WAV: what the user waits for), and its ``generate()`` call
    alone (a', from inside the script);
(b) **Timbre in-process**: :class:`timbred.worker.musicgen.MusicgenBackend` loads the model
    once, makes one short warm-up clip, then ``generate()`` is timed;
(c) **timbrectl on a warm daemon**: a real ``timbred`` process, one short warm-up job (which
    loads the model into the worker), then ``timbrectl generate ... --json`` is timed end to end
    as a subprocess; (c') is the job's own ``started_at`` -> ``finished_at`` from that record.

With ``--precision`` (repeatable: fp32, int8, bf16) (b) and (c) are measured for each
Timbre precision, against the same float32 (a): the end-to-end speed-up a user sees.

The daemon's overhead over a warm in-process generation is (c) - (b), split into the client's
share (c) - (c') and the daemon's (c') - (b) (IPC, job bookkeeping, WAV encoding and writing).

The model is :mod:`bench.musicgen_small_random`: musicgen-small's (or -medium's) exact
architecture with random weights, built once (offline) and cached. Its output is noise, but a
decoding step costs what it costs with the real weights.

Peak RSS: (a), (b) and the CLI run as child processes and their peaks come from
``os.wait4``, i.e. the kernel's per-child ``ru_maxrss`` (``getrusage(RUSAGE_CHILDREN)`` would
mix all children into one running maximum); (b) runs in its own child for that reason, the
backend and the timer in one process. For (c) it is the inference worker's ``VmHWM`` from
``/proc`` (the worker is the daemon's ``multiprocessing`` spawn child; its peak also covers the
warm-up job, which is shorter). Linux only.

Other load: on a small shared machine a concurrent test run can slow a torch generation
several times over (its OpenMP threads wait on each other), so before each timed run the
benchmark waits (bounded) for the machine to be quiet, measures the CPU that processes other
than ours used during the run (machine-wide busy time from ``/proc/stat`` minus our processes'
own), repeats a disturbed run up to ``--attempts`` times keeping the least disturbed one, and
prints that figure in every row so a disturbed number is never silently reported.

Everything is bounded (``--timeout`` per child process) and the daemon is always stopped,
with ``daemon.shutdown`` first, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

PROMPT = "lo-fi hip hop beat with chill piano and warm bass"
SEED = 1
#: MusicGen's frame rate (EnCodec 32 kHz, hop 640): decoding steps per second of audio.
FRAME_RATE = 50
#: Length of the warm-up clip in (b) and (c); it only has to load and exercise the model.
WARMUP_DURATION_S = 1.0
PRECISIONS = ("fp32", "int8", "bf16")
DAEMON_START_TIMEOUT_S = 60.0
SIZES = ("small", "medium")
#: Rows during which other processes used more than this many cores are marked disturbed.
DISTURBED_CORES = 0.25

_T = TypeVar("_T")

#: (a): the plain script, as a user would write it. Only the timer and the JSON line are ours.
PLAIN_SCRIPT = '''\
import json, sys, time

t_start = time.perf_counter()
import scipy.io.wavfile
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

model_dir, prompt, duration, guidance, seed, wav_path, report = sys.argv[1:8]
t_import = time.perf_counter()
processor = AutoProcessor.from_pretrained(model_dir)
model = MusicgenForConditionalGeneration.from_pretrained(model_dir)
t_load = time.perf_counter()
inputs = processor(text=[prompt], padding=True, return_tensors="pt")
frame_rate = model.config.audio_encoder.frame_rate
max_new_tokens = int(float(duration) * frame_rate)
torch.manual_seed(int(seed))
t0 = time.perf_counter()
audio_values = model.generate(**inputs, do_sample=True, guidance_scale=float(guidance),
                              max_new_tokens=max_new_tokens)
t1 = time.perf_counter()
sampling_rate = model.config.audio_encoder.sampling_rate
scipy.io.wavfile.write(wav_path, rate=sampling_rate, data=audio_values[0, 0].numpy())
t_end = time.perf_counter()
with open(report, "w") as f:
    json.dump({"import_s": t_import - t_start, "load_s": t_load - t_import,
               "generate_s": t1 - t0, "write_s": t_end - t1, "steps": max_new_tokens,
               "samples": int(audio_values.shape[-1]), "sample_rate": sampling_rate,
               "threads": torch.get_num_threads(), "torch": torch.__version__}, f)
'''


class BenchError(RuntimeError):
    """Raised when a child process or the daemon fails, so the run has no trustworthy numbers."""


@dataclass(frozen=True)
class Timed:
    """A finished child process: its wall time, exit code, output and peak RSS."""

    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    maxrss_kib: int
    cpu_s: float
    """User plus system CPU time of the child (and its reaped descendants)."""
    other_cores: float
    """CPU the rest of the machine used meanwhile, in cores (see :class:`CpuWindow`)."""


@dataclass
class Row:
    """One line of the results table (medians over ``--runs``)."""

    key: str
    label: str
    walls: list[float]
    audio_s: float
    steps: int
    rss_kib: int | None
    rss_what: str
    others: list[float]
    """Other processes' CPU during each timed run, in cores."""

    @property
    def wall_s(self) -> float:
        return statistics.median(self.walls)

    @property
    def other_cores(self) -> float:
        return max(self.others)

    @property
    def disturbed(self) -> bool:
        return self.other_cores > DISTURBED_CORES

    @property
    def rtf(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def ms_per_step(self) -> float:
        return self.wall_s / self.steps * 1000


@dataclass
class Results:
    """Everything one benchmark run measured."""

    model_dir: Path
    size: str
    duration_s: float
    guidance: float
    runs: int
    quiet_cores: float
    """Before each timed run, wait until other work uses less CPU than this ..."""
    quiet_limit_s: float
    """... but no longer than this."""
    attempts: int
    """Tries per timed run while other work disturbs it; the least disturbed one is kept."""
    precisions: tuple[str, ...] = ("fp32",)
    """Timbre's decoder precision for (b) and (c); (a) is always float32."""
    rows: dict[str, Row] = field(default_factory=dict)
    waited_s: float = 0.0
    repeated: int = 0
    """Timed runs thrown away because other work disturbed them."""
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def least_disturbed(self, measure: Callable[[], _T], other: Callable[[_T], float],
                        ours: Callable[[], Sequence[int]] = tuple) -> _T:
        """:func:`least_disturbed` with this run's settings; counts the repeats."""
        result, tries = least_disturbed(measure, other, ours, attempts=self.attempts,
                                        quiet_cores=self.quiet_cores,
                                        quiet_limit_s=self.quiet_limit_s)
        self.waited_s += tries.waited_s
        self.repeated += tries.repeated
        return result


# --- child processes ----------------------------------------------------------------------


def run_timed(argv: Sequence[str], *, env: dict[str, str], timeout: float,
              also_ours: Sequence[int] = ()) -> Timed:
    """Run ``argv`` to completion; wall time from spawn to reaping, peak RSS from wait4.

    Output goes to temporary files (not pipes), so a chatty child can never block on a full
    pipe while we wait. ``also_ours``: other processes working for this run (the daemon and
    its worker), whose CPU does not count as disturbance. Raises :class:`BenchError` if it
    runs past ``timeout`` seconds.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        killed = threading.Event()
        window = CpuWindow(also_ours)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        other = window.other_cores(extra_own_s=usage.ru_utime + usage.ru_stime)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if killed.is_set():
        raise BenchError(f"{argv[0]} ran past {timeout:g} s and was killed:\n{_tail(stderr)}")
    return Timed(wall, proc.returncode, stdout, stderr, usage.ru_maxrss,  # KiB on Linux
                 usage.ru_utime + usage.ru_stime, other)


# --- other load on the machine -------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, steal included)."""
    with Path("/proc/stat").open() as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is inside user


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a live process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """Measures how much CPU *other* work used over a window, in cores.

    Machine-wide busy time minus the time of our own processes (``ours``, read from /proc,
    plus whatever the caller adds at the end, e.g. a reaped child's rusage). On a shared
    2-core machine a concurrent test run can slow a torch generation several times over
    (its OpenMP threads wait for each other), so every row reports this number.
    """

    def __init__(self, ours: Sequence[int] = ()) -> None:
        self.ours = tuple(ours)
        self.start = time.perf_counter()
        self.busy = machine_busy_s()
        self.own = sum(process_cpu_s(pid) for pid in self.ours)

    def other_cores(self, extra_own_s: float = 0.0) -> float:
        elapsed = time.perf_counter() - self.start
        busy = machine_busy_s() - self.busy
        own = sum(process_cpu_s(pid) for pid in self.ours) - self.own + extra_own_s
        return max(0.0, busy - own) / elapsed if elapsed > 0 else 0.0


def wait_quiet(ours: Sequence[int] = (), *, threshold: float, limit_s: float,
               sample_s: float = 2.0) -> float:
    """Wait until other work uses less than ``threshold`` cores; return the seconds waited.

    Gives up after ``limit_s`` (the measurement then goes ahead and its row shows the load).
    """
    began = time.perf_counter()
    while True:
        window = CpuWindow(ours)
        time.sleep(sample_s)
        waited = time.perf_counter() - began
        if window.other_cores() < threshold or waited >= limit_s:
            return waited


@dataclass
class Tries:
    """How :func:`least_disturbed` got its result."""

    waited_s: float = 0.0
    repeated: int = 0


def least_disturbed(measure: Callable[[], _T], other: Callable[[_T], float],
                    ours: Callable[[], Sequence[int]] = tuple, *, attempts: int,
                    quiet_cores: float, quiet_limit_s: float) -> tuple[_T, Tries]:
    """Run ``measure`` after a quiet wait; repeat while ``other(result)`` says disturbed.

    At most ``attempts`` tries; returns the least disturbed result (not the fastest: that
    would pick the lucky run, where this picks the cleanest one).
    """
    tries = Tries()
    best: _T | None = None
    for attempt in range(attempts):
        tries.waited_s += wait_quiet([os.getpid(), *ours()], threshold=quiet_cores,
                                     limit_s=quiet_limit_s)
        result = measure()
        if best is None or other(result) < other(best):
            best = result
        if other(result) <= DISTURBED_CORES:
            break
        if attempt + 1 < attempts:
            tries.repeated += 1
            print(f"bench.generate: other processes used {other(result):.2f} cores meanwhile; "
                  "measuring again", file=sys.stderr)
    if best is None:
        raise ValueError("attempts must be at least 1")
    return best, tries


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _check(timed: Timed, what: str) -> None:
    if timed.returncode != 0:
        raise BenchError(f"{what} exited with status {timed.returncode}:\n{_tail(timed.stderr)}")


def child_env() -> dict[str, str]:
    """The caller's environment, offline, without TIMBRE_* settings that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMBRE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def backend_child(spec_path: Path) -> int:
    """(b), inside its own process: load once, warm up, time ``generate()``; write a report."""
    spec = json.loads(spec_path.read_text())
    import torch  # here only: the orchestrating process never imports torch

    from timbred.request import Request
    from timbred.worker.musicgen import MusicgenBackend

    def params(duration: float) -> Request:
        return Request(prompt=spec["prompt"], duration=duration, seed=spec["seed"],
                                options={"guidance": spec["guidance"]})

    steps: list[int] = []

    def progress(step: int, total: int) -> None:
        steps.append(step)

    backend = MusicgenBackend(precision=spec["precision"])
    t0 = time.perf_counter()
    backend.load(spec["model_dir"], device="cpu", dtype="float32")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.generate(params(spec["warmup_duration"]))
    warmup_s = time.perf_counter() - t0
    def measure() -> dict[str, Any]:
        steps.clear()
        window = CpuWindow([os.getpid()])
        t0 = time.perf_counter()
        output = backend.generate(params(spec["duration"]), progress)
        return {"generate_s": time.perf_counter() - t0, "steps": steps[-1],
                "other_cores": window.other_cores(),
                "samples": int(output.audio.shape[-1]), "sample_rate": output.sample_rate}

    runs = []
    all_tries = Tries()
    for _ in range(spec["runs"]):
        run, tries = least_disturbed(measure, lambda r: float(r["other_cores"]),
                                     attempts=spec["attempts"], quiet_cores=spec["quiet_cores"],
                                     quiet_limit_s=spec["quiet_limit_s"])
        runs.append(run)
        all_tries.waited_s += tries.waited_s
        all_tries.repeated += tries.repeated
    report = {"load_s": load_s, "warmup_s": warmup_s, "runs": runs,
              "waited_s": all_tries.waited_s, "repeated": all_tries.repeated,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    Path(spec["report"]).write_text(json.dumps(report))
    return 0


# --- the daemon ----------------------------------------------------------------------------


class DaemonProcess:
    """A ``python -m timbred`` child with everything (socket, jobs, takes) under ``base``."""

    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.env = dict(env or {})
        self.socket_path = base / "run" / "timbred.sock"
        self.log_path = base / "timbred.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the daemon; return once it sends READY=1, else raise BenchError."""
        self.socket_path.parent.mkdir(mode=0o700)
        config = self.base / "timbred.toml"
        config.write_text("# bench.generate: built-in defaults\n")
        env = child_env()
        for xdg in ("CONFIG", "DATA", "STATE", "CACHE"):
            env[f"XDG_{xdg}_HOME"] = str(self.base / xdg.lower())
        notify_path = str(self.base / "notify")
        env.update(TIMBRE_SOCKET=str(self.socket_path), TIMBRE_CONFIG=str(config),
                   TIMBRE_DATA_DATABASE=str(self.base / "jobs.sqlite3"),
                   TIMBRE_OUTPUT_DIR=str(self.base / "music"), TIMBRE_DAEMON_DEVICE="cpu",
                   TIMBRE_MODELS_DTYPE="float32", NOTIFY_SOCKET=notify_path,
                   PYTHONUNBUFFERED="1")
        env.update(self.env)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            notify.settimeout(0.1)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "timbred"],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             env=env, close_fds=True)
            deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    message = notify.recv(4096).decode(errors="replace")
                except TimeoutError:
                    message = ""
                if "READY=1" in message.split("\n"):
                    return
                if self.proc.poll() is not None:
                    raise BenchError(f"timbred exited with status {self.proc.returncode} "
                                     f"before it was ready:\n{self.log_tail()}")
        raise BenchError(f"timbred was not ready within {DAEMON_START_TIMEOUT_S:g} s:\n"
                         f"{self.log_tail()}")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the daemon was not started")
        return self.proc.pid

    def worker_pid(self) -> int:
        """The inference worker: the daemon's child started by multiprocessing's spawn."""
        candidates = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # exited meanwhile
            if _status_field(status, "PPid") == self.pid and "spawn_main" in cmdline:
                candidates.append(int(entry.name))
        if len(candidates) != 1:
            raise BenchError(f"expected one inference worker under pid {self.pid}, "
                             f"found {candidates}")
        return candidates[0]

    def log_tail(self, lines: int = 12) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """``daemon.shutdown`` over the socket, then SIGTERM, then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b'{"jsonrpc":"2.0","method":"daemon.shutdown",'
                             b'"params":{"reason":"bench.generate finished"},"id":1}\n')
                sock.recv(65536)
        except OSError as exc:
            print(f"bench.generate: daemon.shutdown failed ({exc}); terminating",
                  file=sys.stderr)
            proc.terminate()
        for signal_next in (proc.terminate, proc.kill):
            try:
                proc.wait(timeout=30.0)
                return
            except subprocess.TimeoutExpired:
                print("bench.generate: timbred did not exit; signalling it", file=sys.stderr)
                signal_next()
        proc.wait(timeout=30.0)


def _status_field(status: str, name: str) -> int | None:
    """An integer field of /proc/<pid>/status (``VmHWM`` in KiB, ``PPid``, ...)."""
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def vmhwm_kib(pid: int) -> int:
    """Peak resident set size of a live process, from /proc."""
    value = _status_field(Path(f"/proc/{pid}/status").read_text(), "VmHWM")
    if value is None:
        raise BenchError(f"no VmHWM for pid {pid}")
    return value


def _timbrectl() -> list[str]:
    exe = Path(sys.executable).with_name("timbrectl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "timbrectl"]


def _wav_seconds(path: str) -> float:
    import soundfile

    info = soundfile.info(path)
    return float(info.frames) / float(info.samplerate)


# --- the three measurements ----------------------------------------------------------------


def measure_plain(res: Results, work: Path, timeout: float) -> None:
    """(a) and (a'): the plain script, ``--runs`` fresh processes."""
    script = work / "plain_musicgen.py"
    script.write_text(PLAIN_SCRIPT)
    report_path, wav_path = work / "plain.json", work / "plain.wav"

    def measure() -> tuple[Timed, dict[str, Any]]:
        report_path.unlink(missing_ok=True)
        wav_path.unlink(missing_ok=True)
        timed = run_timed([sys.executable, str(script), str(res.model_dir), PROMPT,
                           f"{res.duration_s:g}", f"{res.guidance:g}", str(SEED),
                           str(wav_path), str(report_path)],
                          env=child_env(), timeout=timeout)
        _check(timed, "the plain transformers script")
        return timed, json.loads(report_path.read_text())

    kept = []
    for i in range(res.runs):
        print(f"bench.generate: (a) plain transformers, run {i + 1}/{res.runs} ...",
              file=sys.stderr)
        kept.append(res.least_disturbed(measure, lambda r: r[0].other_cores))
    last, report = kept[-1]
    start_s = last.wall_s - sum(report[k] for k in ("import_s", "load_s", "generate_s",
                                                    "write_s"))
    audio_s = report["samples"] / report["sample_rate"]
    steps = int(report["steps"])
    others = [t.other_cores for t, _ in kept]
    res.rows["a"] = Row("a", "(a) plain transformers script, end to end",
                        [t.wall_s for t, _ in kept], audio_s, steps,
                        max(t.maxrss_kib for t, _ in kept), "process", others)
    res.rows["a'"] = Row("a'", "(a') … its `model.generate()` call alone",
                         [r["generate_s"] for _, r in kept], audio_s, steps, None, "", others)
    res.info["threads"] = report["threads"]
    res.notes.append(
        f"(a) last run: Python start {start_s:.1f} s, importing torch, transformers and "
        f"scipy {report['import_s']:.1f} s, load {report['load_s']:.1f} s (the checkpoint "
        f"was in the page cache), generate {report['generate_s']:.1f} s, WAV write "
        f"{report['write_s']:.2f} s. `max_new_tokens = int({res.duration_s:g} x "
        f"{FRAME_RATE})` = {steps} steps gives {audio_s:.2f} s of audio: MusicGen's delay "
        "pattern spends the last 3 steps completing codebooks, so the plain script comes out "
        "60 ms short (Timbre takes 3 more steps to return exactly the duration asked).")


def key(row: str, precision: str) -> str:
    """A Timbre row's key: ``b``/``c``/``c'`` for fp32, ``b int8`` and so on otherwise."""
    return row if precision == "fp32" else f"{row} {precision}"


def measure_backend(res: Results, work: Path, timeout: float, precision: str) -> None:
    """(b): MusicgenBackend in one child process: load, warm up, ``--runs`` timed generates."""
    print(f"bench.generate: (b) Timbre MusicgenBackend in-process, {precision}, "
          f"{res.runs} run(s) ...", file=sys.stderr)
    spec: dict[str, Any] = {
        "model_dir": str(res.model_dir), "prompt": PROMPT, "seed": SEED,
        "guidance": res.guidance, "duration": res.duration_s,
        "warmup_duration": WARMUP_DURATION_S, "runs": res.runs,
        "report": str(work / "backend.json"), "attempts": res.attempts,
        "quiet_cores": res.quiet_cores, "quiet_limit_s": res.quiet_limit_s,
        "precision": precision,
    }
    spec_path = work / "backend-spec.json"
    spec_path.write_text(json.dumps(spec))
    timed = run_timed([sys.executable, "-m", "bench.generate", "--backend-child",
                       str(spec_path)], env=child_env(), timeout=timeout)
    _check(timed, "the MusicgenBackend child")
    report = json.loads(Path(spec["report"]).read_text())
    first = report["runs"][0]
    b = key("b", precision)
    res.rows[b] = Row(b, f"({b}) Timbre `MusicgenBackend.generate()`, in-process, warm",
                        [r["generate_s"] for r in report["runs"]],
                        first["samples"] / first["sample_rate"], int(first["steps"]),
                        timed.maxrss_kib, "process", [r["other_cores"] for r in report["runs"]])
    res.waited_s += report["waited_s"]
    res.repeated += report["repeated"]
    res.notes.append(
        f"({b}) model load {report['load_s']:.1f} s and a {WARMUP_DURATION_S:g} s warm-up clip "
        f"{report['warmup_s']:.1f} s, both untimed; torch threads {report['threads']}. It "
        "runs in its own child process (backend and timer in one process) so that its peak "
        "RSS is its own.")


def measure_daemon(res: Results, work: Path, timeout: float, precision: str) -> None:
    """(c) and (c'): timbrectl against a warm daemon, ``--runs`` CLI invocations."""
    base = Path(tempfile.mkdtemp(prefix="tb-"))  # short: sun_path holds ~100 bytes
    daemon = DaemonProcess(base, env={"TIMBRE_MODELS_PRECISION": precision})
    c, c1 = key("c", precision), key("c'", precision)
    try:
        daemon.start()
        ours: list[int] = [daemon.pid]

        def cli(duration: float) -> tuple[Timed, dict[str, Any]]:
            daemon_cpu = process_cpu_s(daemon.pid)
            timed = run_timed([*_timbrectl(), "generate", PROMPT, "-d", f"{duration:g}",
                               "--seed", str(SEED), "--guidance", f"{res.guidance:g}",
                               "-m", str(res.model_dir), "--socket",
                               str(daemon.socket_path), "--json"],
                              env=child_env(), timeout=timeout, also_ours=ours)
            _check(timed, "timbrectl generate")
            job: dict[str, Any] = json.loads(timed.stdout)
            if job.get("state") != "done":
                raise BenchError(f"job ended {job.get('state')}: {job.get('error')}")
            job["bench_daemon_cpu_s"] = process_cpu_s(daemon.pid) - daemon_cpu
            return timed, job

        print(f"bench.generate: ({c}) warm-up job (loads the model into the daemon) ...",
              file=sys.stderr)
        warm, _ = cli(WARMUP_DURATION_S)
        worker = daemon.worker_pid()
        ours.append(worker)
        kept = []
        for i in range(res.runs):
            print(f"bench.generate: ({c}) timbrectl generate, run {i + 1}/{res.runs} ...",
                  file=sys.stderr)
            kept.append(res.least_disturbed(lambda: cli(res.duration_s),
                                            lambda r: r[0].other_cores, lambda: ours))
        worker_rss = vmhwm_kib(worker)
        daemon_rss = vmhwm_kib(daemon.pid)
        audio_s = _wav_seconds(kept[-1][1]["outputs"][0])
        b = key("b", precision)
        steps = res.rows[b].steps if b in res.rows else round(res.duration_s * FRAME_RATE)
        others = [t.other_cores for t, _ in kept]
        res.rows[c] = Row(c, f"({c}) `timbrectl generate`, warm daemon, end to end",
                            [t.wall_s for t, _ in kept], audio_s, steps, worker_rss, "worker",
                            others)
        res.rows[c1] = Row(c1, f"({c1}) … the job's `started_at` → `finished_at`",
                             [j["finished_at"] - j["started_at"] for _, j in kept], audio_s,
                             steps, None, "", others)
        res.notes.append(
            f"({c}) warm-up job ({WARMUP_DURATION_S:g} s clip, model load included) took "
            f"{warm.wall_s:.1f} s through the CLI. Peak RSS of the other processes: daemon "
            f"{daemon_rss / 1024:.0f} MiB, `timbrectl` "
            f"{max(t.maxrss_kib for t, _ in kept) / 1024:.0f} MiB. The worker's peak "
            "(VmHWM) also covers the warm-up job, a shorter clip. During the (last) timed "
            f"job the daemon process used {kept[-1][1]['bench_daemon_cpu_s']:.2f} CPU-s and "
            f"`timbrectl` {kept[-1][0].cpu_s:.2f} CPU-s, on the cores the worker's torch "
            "threads also use.")
        timings = kept[-1][1].get("timings")
        if timings:
            res.notes.append(
                f"({c}) the daemon's own account of the (last) timed job (`timings` in its "
                f"record): load {timings['load_s']:.3f} s, decode {timings['decode_s']:.2f} s "
                f"(timed inside the worker), export {timings['export_s']:.3f} s, other "
                f"{timings['other_s'] * 1000:.0f} ms (IPC, bookkeeping). Daemon overhead "
                "over an in-process generate by that account (all but decode): "
                f"**{(timings['load_s'] + timings['export_s'] + timings['other_s']) * 1000:.0f}"
                f" ms**, of which {timings['other_s'] * 1000:.0f} ms is not writing the take.")
    except BenchError as exc:
        raise BenchError(f"{exc}\nlast lines of the daemon's log:\n{daemon.log_tail()}") from exc
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- reporting -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and library versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = _status_field(Path("/proc/meminfo").read_text(), "MemTotal") or 0
    versions = {}
    for dist in ("torch", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "ram_gib": mem_kib / 1024 / 1024,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kernel": f"{platform.system()} {platform.release()}", **versions,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def markdown(res: Results, info: dict[str, Any], runtime_s: float) -> str:
    """The results fragment: machine, table, derived overheads, interpretation, notes."""
    r = res.rows
    a = r["a"]
    runs = f"median of {res.runs} runs" if res.runs > 1 else "one run"
    lines = [
        f"## Generation: plain transformers vs Timbre (musicgen-{res.size} shapes, CPU)",
        "",
        f"`python -m bench.generate --size {res.size} --duration {res.duration_s:g} "
        f"--guidance {res.guidance:g} --runs {res.runs}"
        + "".join(f" --precision {p}" for p in res.precisions)
        + f"`: one {res.duration_s:g} s clip, guidance {res.guidance:g}, seed {SEED}, prompt "
        f"\"{PROMPT}\", on CPU; (a) in float32, Timbre's rows in the precision their key "
        f"names (no suffix: fp32); {runs} per row; the whole benchmark took "
        f"{runtime_s / 60:.1f} min.",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores, "
        f"{info['ram_gib']:.1f} GiB RAM; {info['python']}; torch {info['torch']} "
        f"({res.info.get('threads', '?')} threads); transformers {info['transformers']}; "
        f"{info['kernel']}; load average at start "
        f"{' / '.join(str(x) for x in info['loadavg_at_start'])}.",
        "",
        f"Model: `bench/musicgen_small_random.py`, musicgen-{res.size}'s exact architecture "
        "with random weights (noise, not music; a decoding step costs the same). ms/step is "
        "wall time ÷ decoding steps (one step per 20 ms frame; guidance doubles the batch "
        "rows, not the steps), so it is the decoding speed only in the generate-only rows. "
        "Other CPU is what the rest of the machine used during the timed window, in cores "
        f"({info['usable_cores']} usable cores here; rows above {DISTURBED_CORES:g} are "
        "marked \\*).",
        "",
        "| | wall s | audio s | real-time factor | steps | ms/step | peak RSS MiB "
        "| wall ÷ (a) | RSS ÷ (a) | other CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in r.values():
        rss = "—" if row.rss_kib is None else f"{row.rss_kib / 1024:,.0f} ({row.rss_what})"
        rss_ratio = "—" if row.rss_kib is None or a.rss_kib is None else _ratio(
            row.rss_kib, a.rss_kib)
        mark = " \\*" if row.disturbed else ""
        lines.append(
            f"| {row.label} | {row.wall_s:.1f} | {row.audio_s:.2f} | {row.rtf:.3f} "
            f"| {row.steps} | {row.ms_per_step:.0f} | {rss} | {_ratio(row.wall_s, a.wall_s)} "
            f"| {rss_ratio} | {row.other_cores:.2f}{mark} |")
    if res.runs > 1:
        lines += ["", "All runs (s): " + "; ".join(
            f"{row.key} " + ", ".join(f"{w:.1f}" for w in row.walls) for row in r.values())]
    lines += ["", *derived(res), "", "Notes:", ""]
    lines += [f"- {note}" for note in res.notes]
    lines.append(
        f"- Before each timed run the benchmark waited for other CPU use to drop below "
        f"{res.quiet_cores:g} cores (at most {res.quiet_limit_s:g} s each; "
        f"{res.waited_s:.0f} s in all), and measured again when other processes used more "
        f"than {DISTURBED_CORES:g} cores meanwhile (up to {res.attempts} tries, the least "
        f"disturbed kept; {res.repeated} run(s) thrown away). (a') and (c') are inside the "
        "windows of (a) and (c) and show their other-CPU figure.")
    return "\n".join(lines) + "\n"


def derived(res: Results) -> list[str]:
    """The overheads and the interpretation, worded from the numbers."""
    lines: list[str] = []
    for precision in res.precisions:
        lines += _derived_for(res, precision)
    r = res.rows
    disturbed = [row.key for row in r.values() if row.disturbed]
    if disturbed:
        lines.append(
            f"- **Caution:** other processes used more than {DISTURBED_CORES:g} cores during "
            f"({'), ('.join(disturbed)}); on 2 cores that slows torch a lot, so those rows "
            "overstate the time. Re-run on a quiet machine before trusting them.")
    return lines


def _derived_for(res: Results, precision: str) -> list[str]:
    r = res.rows
    a, a1 = r["a"], r["a'"]
    b, c, c1 = (r[key(k, precision)] for k in ("b", "c", "c'"))
    overhead = c.wall_s - b.wall_s
    client = c.wall_s - c1.wall_s
    server = c1.wall_s - b.wall_s
    startup = a.wall_s - a1.wall_s
    step_ratio = b.ms_per_step / a1.ms_per_step
    lines = [
        f"**{precision}.** End to end, `timbrectl generate` on a warm daemon takes "
        f"{_ratio(c.wall_s, a.wall_s)} the plain float32 script's wall time "
        f"(**{a.wall_s / c.wall_s:.2f}x faster**). Daemon overhead over a warm in-process "
        f"generate: ({c.key}) - ({b.key}) = {overhead:+.2f} s ({overhead / b.wall_s:+.1%} of "
        f"({b.key})); of which client side ({c.key}) - ({c1.key}) = {client:+.2f} s "
        "(interpreter start, connect, submit, following events, printing) and daemon side "
        f"({c1.key}) - ({b.key}) = {server:+.2f} s (worker IPC, job bookkeeping, WAV "
        "encoding and writing, and any decoding slowdown from sharing the cores).",
        "",
        "Interpretation:",
        "",
        f"- The warm model saves the plain script's {startup:.1f} s outside `generate()` "
        f"(of its {a.wall_s:.1f} s: Python start, importing torch and transformers, loading "
        "the weights, writing the WAV), which a warm daemon pays once, not per clip.",
    ]
    if precision != "fp32":
        lines.append(
            f"- Decoding: Timbre's {precision} decoder takes {b.ms_per_step:.0f} ms/step "
            f"(wall ÷ steps, text encoding and EnCodec included) against "
            f"{a1.ms_per_step:.0f} ms/step for the plain float32 `generate()` "
            f"({a1.ms_per_step / b.ms_per_step:.2f}x faster).")
    else:
        if abs(step_ratio - 1) <= 0.1:
            same = "Decoding is not faster"
        elif a1.disturbed or b.disturbed:
            same = ("Per-step times differ because other processes were busy during "
                    f"{'(a)' if a1.disturbed else '(b)'}, not because of a faster decoder")
        else:
            same = ("Per-step times differ: the same float32 arithmetic, but Timbre's "
                    "decoder appends to a preallocated KV cache instead of re-copying it")
        lines.append(
            f"- {same}: Timbre's backend takes {b.ms_per_step:.0f} ms/step against "
            f"{a1.ms_per_step:.0f} ms/step for the plain `generate()` ({step_ratio:.2f}x); "
            "both run transformers' decoding loop in float32 on the same threads (Timbre "
            "adds a per-step callback and 3 steps to complete the last frames).")
    verdict = f"- The daemon adds {overhead:.1f} s per clip over the in-process backend " \
        f"({overhead / b.wall_s:.1%})"
    if res.runs > 1:
        spread = max(max(row.walls) - min(row.walls) for row in (b, c))
        verdict += (f"; the runs of ({b.key}) and ({c.key}) spread over up to {spread:.1f} s, "
                    "so this is " + ("within run-to-run noise." if abs(overhead) <= spread
                                     else "more than run-to-run noise."))
    else:
        verdict += ("; with one run per row this includes run-to-run variation of a few "
                    "percent (use `--runs 3` to see it).")
    lines.append(verdict)
    if c.rss_kib is not None and a.rss_kib is not None and b.rss_kib is not None:
        lines.append(
            f"- Memory: the worker peaks at {c.rss_kib / 1024:,.0f} MiB against "
            f"{a.rss_kib / 1024:,.0f} MiB for the plain script and {b.rss_kib / 1024:,.0f} MiB "
            "in-process.")
    lines.append("")
    return lines


# --- entry point ---------------------------------------------------------------------------


def write_report(out: Path, text: str) -> None:
    """Write a benchmark's Markdown fragment to ``out`` (making its folder) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)


def default_model_dir(size: str) -> Path:
    """Where the random-weight checkpoint is cached between runs."""
    return Path(platformdirs.user_cache_dir("timbre")) / "bench" / f"musicgen-{size}-random"


def build_model(dest: Path, size: str, timeout: float) -> None:
    """Build (or reuse) the checkpoint in a child, so this process never holds the weights."""
    print(f"bench.generate: model {dest} (built once, then reused) ...", file=sys.stderr)
    timed = run_timed([sys.executable, "-m", "bench.musicgen_small_random", str(dest),
                       "--size", size], env=child_env(), timeout=timeout)
    _check(timed, "the model builder")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be greater than 0 and at most 600")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.generate",
        description="Time one clip made by plain transformers, Timbre's backend in-process, "
        "and timbrectl against a warm daemon.")
    p.add_argument("--duration", type=_positive, default=10.0, metavar="SECONDS",
                   help="clip length (default 10; at most one 30 s window is meaningful)")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3)")
    p.add_argument("--size", choices=SIZES, default="small", help="model shapes (default small)")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="timed repetitions per method, medians reported (default 1)")
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-generate.md"),
                   metavar="FILE", help="Markdown results (default bench/RESULTS-generate.md)")
    p.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="where to build/reuse the random-weight checkpoint "
                   "(default: the user cache directory)")
    p.add_argument("--timeout", type=_positive_timeout, default=1800.0, metavar="SECONDS",
                   help="limit for each child process (default 1800)")
    p.add_argument("--quiet-cores", type=float, default=0.15, metavar="CORES",
                   help="before each timed run, wait until other processes use less CPU than "
                   "this (default 0.15 cores) ...")
    p.add_argument("--quiet-wait", type=float, default=300.0, metavar="SECONDS",
                   help="... but at most this long (default 300; 0: do not wait)")
    p.add_argument("--attempts", type=int, default=3, metavar="N",
                   help="tries per timed run while other processes disturb it (more than "
                   f"{DISTURBED_CORES:g} cores); the least disturbed is kept (default 3)")
    p.add_argument("--precision", choices=PRECISIONS, action="append",
                   help="Timbre's decoder precision for (b) and (c); repeat for several "
                   "(default fp32). (a) is always the plain float32 script.")
    p.add_argument("--backend-child", type=Path, help=argparse.SUPPRESS)
    return p


def _positive_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend_child is not None:
        return backend_child(args.backend_child)
    if not 1 <= args.runs <= 20:
        build_parser().error("--runs must be from 1 to 20")
    if not 1 <= args.attempts <= 10:
        build_parser().error("--attempts must be from 1 to 10")
    if args.guidance < 0:
        build_parser().error("--guidance must be >= 0")
    began = time.monotonic()
    info = machine()
    model_dir = (args.model_dir or default_model_dir(args.size)).absolute()
    res = Results(model_dir, args.size, args.duration, args.guidance, args.runs,
                  args.quiet_cores, max(0.0, args.quiet_wait), args.attempts,
                  precisions=tuple(dict.fromkeys(args.precision or ["fp32"])))
    work = Path(tempfile.mkdtemp(prefix="tb-gen-"))
    try:
        build_model(model_dir, args.size, args.timeout)
        measure_plain(res, work, args.timeout)
        for precision in res.precisions:
            measure_backend(res, work, args.timeout, precision)
            measure_daemon(res, work, args.timeout, precision)
    except BenchError as exc:
        print(f"bench.generate: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(res, info, time.monotonic() - began)
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
