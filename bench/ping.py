"""Round-trip benchmark of timbred's socket: ``python -m bench.ping``.

Starts a real ``python -m timbred`` subprocess (so the daemon has its own event loop and its own
GIL), then runs each scenario for ``--seconds`` and prints one Markdown table:

* ``daemon.ping`` from N clients (``--clients 1,50``), each on its own connection making
  sequential calls, once through :mod:`timbrectl.client` ("library") and once through a raw
  socket client that sends pre-encoded request bytes and only waits for the reply's newline
  ("raw"; it never parses replies after the first), so the library's own cost shows as a ratio;
* pipelining: one client sending batches of 64 pings per message, again library and raw.

Load generation: clients run in ``--procs`` spawned worker processes (default: the CPU count),
each driving its share of connections as tasks on one asyncio loop, rather than one process per
client. The daemon is single-threaded, so on a 2-core machine it can use at most one core; the
workers get the rest, and 50 Python processes on 2 cores would mostly measure the scheduler.
The daemon's, the workers' and everything else's CPU use over each window are reported: a
daemon near 1.00 core is the limit, workers near their core budget mean the generator was, and
rows where other processes were busy are marked as disturbed.

The daemon runs hermetically: an empty config file, no ``TIMBRE_*`` variables from the caller,
and XDG directories under a private temporary directory that is removed at the end. It is always
stopped with ``daemon.shutdown``, then terminated or killed if it does not exit in time.
Linux only: CPU use is read from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from timbrectl import spawn
from timbrectl.client import connect

Kind = Literal["library", "raw"]
KINDS: tuple[Kind, ...] = ("library", "raw")

#: Pings per message in the pipelined scenario (the daemon's default ``limits.max_batch``).
BATCH = 64
#: Calls each client makes before the window opens (connection set-up, lazy imports, caches).
WARMUP_CALLS = 20
#: Hard bound on the calls one client makes in a window, whatever ``--seconds`` says.
MAX_CALLS_PER_CLIENT = 10_000_000
#: Seconds allowed for starting the daemon, spawning workers and connecting their clients.
STARTUP_TIMEOUT_S = 30.0
#: Seconds allowed past the window for the last calls and teardown.
GRACE_S = 10.0
RECV_BYTES = 65536
#: Cores used by other processes during a window above which its row is flagged as disturbed.
NOISY_OTHER_CPU = 0.25


def _request_bytes(batch: int) -> bytes:
    """``daemon.ping`` as one framed message: a single request, or a batch of ``batch``."""
    if batch == 1:
        body: Any = {"jsonrpc": "2.0", "method": "daemon.ping", "id": 1}
    else:
        body = [{"jsonrpc": "2.0", "method": "daemon.ping", "id": i} for i in range(1, batch + 1)]
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _check_pongs(results: Sequence[Any], batch: int) -> None:
    """Raise RuntimeError unless ``results`` are ``batch`` successful ping results."""
    ok = len(results) == batch and all(isinstance(r, dict) and r.get("pong") is True
                                       for r in results)
    if not ok:
        raise RuntimeError(f"daemon.ping answered {results!r:.300}, expected {batch} pongs")


# --- the load generator (runs in worker processes) -----------------------------------------


class _Phase:
    """One worker's clients: they connect and warm up, wait for ``go``, then run to a deadline."""

    def __init__(self, clients: int) -> None:
        self.not_ready = clients
        self.running = clients
        self.all_ready = anyio.Event()
        self.go = anyio.Event()
        self.start = 0.0  # time.monotonic(), comparable across processes on Linux
        self.deadline = 0.0  # time.perf_counter()
        self.end = 0.0
        self.cpu_start = 0.0
        self.cpu_end = 0.0
        self.latencies = array("d")

    async def ready(self) -> None:
        self.not_ready -= 1
        if self.not_ready == 0:
            self.all_ready.set()
        await self.go.wait()

    def open(self, seconds: float) -> None:
        self.cpu_start = time.process_time()
        self.start = time.monotonic()
        self.deadline = time.perf_counter() + seconds
        self.go.set()

    def finish(self, latencies: array[float]) -> None:
        self.latencies.extend(latencies)
        self.running -= 1
        if self.running == 0:
            self.end = time.monotonic()
            self.cpu_end = time.process_time()


async def _run_client(phase: _Phase, call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(WARMUP_CALLS):
        await call()
    await phase.ready()
    latencies = array("d")
    deadline = phase.deadline
    for _ in range(MAX_CALLS_PER_CLIENT):
        start = time.perf_counter()
        if start >= deadline:
            break
        await call()
        latencies.append(time.perf_counter() - start)
    phase.finish(latencies)


async def _library_client(socket_path: str, batch: int, phase: _Phase) -> None:
    async with connect(socket_path) as client:
        if batch == 1:
            async def call() -> object:
                return await client.call("daemon.ping")

            _check_pongs([await call()], 1)
        else:
            calls: list[tuple[str, None]] = [("daemon.ping", None)] * batch

            async def call() -> object:
                return await client.batch(calls)

            _check_pongs(await client.batch(calls), batch)
        await _run_client(phase, call)


async def _raw_client(socket_path: str, batch: int, phase: _Phase) -> None:
    loop = asyncio.get_running_loop()
    request = _request_bytes(batch)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, socket_path)

        async def call() -> bytes:
            # One request outstanding and no subscriptions: the reply is exactly one line.
            await loop.sock_sendall(sock, request)
            reply = await loop.sock_recv(sock, RECV_BYTES)
            while not reply.endswith(b"\n"):
                more = await loop.sock_recv(sock, RECV_BYTES)
                if not more:
                    raise ConnectionError("the daemon closed the connection")
                reply += more
            return reply

        parsed = json.loads(await call())
        replies = parsed if isinstance(parsed, list) else [parsed]
        _check_pongs([r.get("result") for r in replies], batch)
        await _run_client(phase, call)


async def _drive(socket_path: str, kind: Kind, clients: int, batch: int, seconds: float,
                 barrier: Barrier) -> dict[str, Any]:
    phase = _Phase(clients)
    client = _library_client if kind == "library" else _raw_client
    with anyio.fail_after(2 * STARTUP_TIMEOUT_S + seconds + GRACE_S):
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client, socket_path, batch, phase)
            with anyio.fail_after(STARTUP_TIMEOUT_S):
                await phase.all_ready.wait()
            await anyio.to_thread.run_sync(barrier.wait, STARTUP_TIMEOUT_S)
            phase.open(seconds)
    return {"latencies": phase.latencies.tobytes(), "start": phase.start, "end": phase.end,
            "cpu_s": phase.cpu_end - phase.cpu_start}


def _describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, or of each leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _worker(socket_path: str, kind: Kind, clients: int, batch: int, seconds: float,
            barrier: Barrier, out: Connection) -> None:
    """Worker process entry point: drive ``clients`` connections, send one report to ``out``."""
    try:
        report = anyio.run(_drive, socket_path, kind, clients, batch, seconds, barrier,
                           backend="asyncio")
    except Exception as exc:
        barrier.abort()
        report = {"error": _describe(exc)}
    out.send(report)
    out.close()


# --- the parent: daemon, scenarios, statistics ---------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """``clients`` connections of one ``kind``, each sending messages of ``batch`` pings."""

    kind: Kind
    clients: int
    batch: int

    @property
    def label(self) -> str:
        who = "1 client" if self.clients == 1 else f"{self.clients} clients"
        how = "sequential" if self.batch == 1 else f"batch of {self.batch}"
        return f"{who}, {how}"


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    procs: int
    messages: int
    window_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    daemon_cpu: float  # fraction of one core
    client_cpu: float  # fraction of one core, all worker processes together
    machine_cpu: float  # cores busy on the whole machine, anything included

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.window_s

    @property
    def pings_per_s(self) -> float:
        return self.messages_per_s * self.scenario.batch

    @property
    def other_cpu(self) -> float:
        """Cores busy with neither the daemon nor the load generator (noise, steal)."""
        return max(0.0, self.machine_cpu - self.daemon_cpu - self.client_cpu)

    @property
    def noisy(self) -> bool:
        return self.other_cpu > NOISY_OTHER_CPU

    @property
    def daemon_us_per_ping(self) -> float:
        """Daemon CPU time per ping answered, in microseconds."""
        return self.daemon_cpu / self.pings_per_s * 1e6

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.scenario.kind, "clients": self.scenario.clients,
                "batch": self.scenario.batch, "procs": self.procs, "messages": self.messages,
                "window_s": round(self.window_s, 4),
                "messages_per_s": round(self.messages_per_s, 1),
                "pings_per_s": round(self.pings_per_s, 1),
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
                "max_ms": self.max_ms, "daemon_cpu": round(self.daemon_cpu, 3),
                "client_cpu": round(self.client_cpu, 3),
                "machine_cpu": round(self.machine_cpu, 3),
                "other_cpu": round(self.other_cpu, 3),
                "daemon_us_per_ping": round(self.daemon_us_per_ping, 1)}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` from 0 to 100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class BenchError(RuntimeError):
    """Raised when the daemon or a worker fails, so the run has no trustworthy numbers."""


class DaemonProcess:
    """A ``python -m timbred`` child in a private temporary directory."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tb-"))  # short: sun_path holds ~100 bytes
        self.socket_path = self.base / "run" / "timbred.sock"
        self.log_path = self.base / "timbred.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None

    def start(self) -> None:
        """Spawn the daemon and return once it sends READY=1; BenchError if it does not."""
        self.socket_path.parent.mkdir(mode=0o700)
        config = self.base / "timbred.toml"
        config.write_text("# bench.ping: built-in defaults\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIMBRE_")}
        for xdg in ("CONFIG", "DATA", "STATE", "CACHE"):
            env[f"XDG_{xdg}_HOME"] = str(self.base / xdg.lower())
        env.update(TIMBRE_SOCKET=str(self.socket_path), TIMBRE_CONFIG=str(config),
                   TIMBRE_OUTPUT_DIR=str(self.base / "music"))
        try:
            started = spawn.start(socket_path=self.socket_path, config=config,
                                  timeout=STARTUP_TIMEOUT_S, environ=env,
                                  log_path=self.log_path)
        except spawn.StartFailed as exc:
            raise BenchError(str(exc)) from exc
        self.proc = started.process

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the daemon was not started")
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time the daemon has used so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Ask for a graceful stop over RPC, wait; terminate, then kill, if it lingers."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5.0)
                    sock.connect(str(self.socket_path))
                    sock.sendall(b'{"jsonrpc":"2.0","method":"daemon.shutdown",'
                                 b'"params":{"reason":"bench.ping finished"},"id":1}\n')
                    sock.recv(RECV_BYTES)
            except OSError as exc:
                print(f"bench.ping: daemon.shutdown failed ({exc}); terminating",
                      file=sys.stderr)
                proc.terminate()
            for signal_next in (proc.terminate, proc.kill):
                try:
                    proc.wait(timeout=10.0)
                    break
                except subprocess.TimeoutExpired:
                    print("bench.ping: timbred did not exit; signalling it", file=sys.stderr)
                    signal_next()
            else:
                proc.wait(timeout=10.0)
        if proc is not None:
            self.exit_status = proc.returncode
        shutil.rmtree(self.base, ignore_errors=True)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, steal included)."""
    with Path("/proc/stat").open() as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is inside user


def run_scenario(daemon: DaemonProcess, scenario: Scenario, seconds: float,
                 procs: int) -> Result:
    """Run one scenario in ``procs`` (at most one per client) worker processes."""
    procs = min(procs, scenario.clients)
    shares = [scenario.clients // procs + (i < scenario.clients % procs) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for share in shares:
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_worker, daemon=True, args=(
                str(daemon.socket_path), scenario.kind, share, scenario.batch, seconds,
                barrier, sender))
            process.start()
            sender.close()
            workers.append((process, receiver))
        try:
            barrier.wait(STARTUP_TIMEOUT_S)
        except Exception:
            barrier.abort()  # reports below say why
        cpu_start, busy_start = daemon.cpu_seconds(), machine_busy_seconds()
        if not barrier.broken:
            time.sleep(seconds)
        daemon_cpu = daemon.cpu_seconds() - cpu_start
        machine_cpu = machine_busy_seconds() - busy_start
        reports: list[dict[str, Any]] = []
        for _, receiver in workers:
            if not receiver.poll(STARTUP_TIMEOUT_S + seconds + GRACE_S):
                raise BenchError(f"{scenario.label} ({scenario.kind}): a worker sent no report")
            reports.append(receiver.recv())
    finally:
        for started, receiver in workers:
            started.join(GRACE_S)
            if started.is_alive():
                started.kill()
                started.join()
            receiver.close()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise BenchError(f"{scenario.label} ({scenario.kind}): {'; '.join(errors)}")
    latencies = array("d")
    for report in reports:
        latencies.frombytes(report["latencies"])
    if not latencies:
        raise BenchError(f"{scenario.label} ({scenario.kind}): no call completed")
    ordered = sorted(latencies)
    window = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    p50, p90, p99, top = (round(percentile(ordered, p) * 1000, 3) for p in (50, 90, 99, 100))
    return Result(scenario, procs, len(ordered), window, p50, p90, p99, top,
                  daemon_cpu=daemon_cpu / seconds,
                  client_cpu=sum(r["cpu_s"] for r in reports) / window,
                  machine_cpu=machine_cpu / seconds)


# --- reporting --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, kernel and load, for the results."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kernel": f"{platform.system()} {platform.release()}",
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def markdown(info: dict[str, Any], results: Sequence[Result], seconds: float) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores; "
        f"{info['python']}; {info['kernel']}; load average at start "
        f"{' / '.join(str(x) for x in info['loadavg_at_start'])}. Window: {seconds:g} s per "
        "row. CPU columns are in cores (1.00 = one core busy for the whole window); "
        "other CPU is whatever else kept the machine busy meanwhile.",
        "",
        "| scenario | client | procs | msgs/s | pings/s | p50 ms | p90 ms | p99 ms | max ms "
        "| daemon CPU | daemon µs/ping | client CPU | other CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario.label} | {r.scenario.kind} | {r.procs} | {r.messages_per_s:,.0f} "
            f"| {r.pings_per_s:,.0f} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} "
            f"| {r.max_ms:.3f} | {r.daemon_cpu:.2f} | {r.daemon_us_per_ping:.0f} "
            f"| {r.client_cpu:.2f} | {r.other_cpu:.2f}{' *' if r.noisy else ''} |")
    if any(r.noisy for r in results):
        lines += ["", f"\\* Other processes kept more than {NOISY_OTHER_CPU:g} of a core busy "
                  "during the rows marked so: treat their numbers as disturbed."]
    pairs = {(r.scenario.clients, r.scenario.batch): r for r in results
             if r.scenario.kind == "library"}
    ratios = []
    for raw in results:
        lib = pairs.get((raw.scenario.clients, raw.scenario.batch))
        if raw.scenario.kind == "raw" and lib is not None:
            ratios.append(f"| {raw.scenario.label} | {lib.p50_ms / raw.p50_ms:.2f} "
                          f"| {raw.pings_per_s / lib.pings_per_s:.2f} |")
    if ratios:
        lines += ["", "Client library overhead (library ÷ raw latency, raw ÷ library "
                  "throughput; 1.00 means none):", "",
                  "| scenario | p50 latency ratio | throughput ratio |", "|---|--:|--:|",
                  *ratios]
    return "\n".join(lines) + "\n"


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not counts or any(not 1 <= n <= 500 for n in counts):
        raise argparse.ArgumentTypeError(
            "client counts must be from 1 to 500 (the daemon allows 512 connections)")
    return counts


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 600:
        raise argparse.ArgumentTypeError("seconds must be from 0.1 to 600")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.ping",
        description="Measure daemon.ping round trips against a freshly started timbred.")
    p.add_argument("--seconds", type=_seconds, default=4.0,
                   help="measuring window per scenario (default 4; there are "
                   "2 x (client counts + 1) scenarios)")
    p.add_argument("--clients", type=_client_counts, default=[1, 50], metavar="N,N",
                   help="concurrent client counts, each its own connection (default 1,50)")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="load-generator processes per scenario (default: CPU count)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.procs < 1:
        build_parser().error("--procs must be at least 1")
    began = time.monotonic()
    info = machine()
    scenarios = [Scenario(kind, n, 1) for n in args.clients for kind in KINDS]
    scenarios += [Scenario(kind, 1, BATCH) for kind in KINDS]
    daemon = DaemonProcess()
    results: list[Result] = []
    try:
        daemon.start()
        for scenario in scenarios:
            print(f"bench.ping: {scenario.label}, {scenario.kind} ...", file=sys.stderr)
            results.append(run_scenario(daemon, scenario, args.seconds, args.procs))
    except BenchError as exc:
        print(f"bench.ping: {exc}\nlast lines of the daemon's log:\n{daemon.log_tail()}",
              file=sys.stderr)
        return 1
    finally:
        daemon.stop()
    runtime = time.monotonic() - began
    sys.stdout.write(markdown(info, results, args.seconds))
    print(f"\nTotal runtime {runtime:.1f} s; timbred exited with status {daemon.exit_status}.")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "machine": info, "seconds": args.seconds, "procs": args.procs,
            "runtime_s": round(runtime, 2), "daemon_exit_status": daemon.exit_status,
            "results": [r.as_json() for r in results]}, indent=2) + "\n")
    return 0 if daemon.exit_status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
