"""Executors side by side: ``python -m bench.executors``.

Against a real ``timbred`` child per row, all in one run on this machine:

* **throughput**: ``--jobs`` short jobs (musicgen-small's architecture with random weights,
  :mod:`bench.musicgen_small_random`) submitted together, with one local worker, two local
  workers (``executor.workers = 2``) and a two-node Ray cluster (``ray.cluster_utils``, one
  CPU per node, so one actor each). Batching is off in these rows (``jobs.max_batch_takes =
  1``) so that they compare executors, not batch sizes; a fourth row gives one worker with
  its default batching for context. Each row is warmed first (every worker holds the model).
* **overhead**: ``--overhead-jobs`` sequential jobs of the tiny MusicGen test fixture (its
  decoding takes milliseconds, so what is left is the executor's own cost) on one local
  worker and on one warm Ray actor, one CPU thread each; Ray's per-job overhead is the
  difference of the median submit-to-done times.

Timings are taken by an in-process :mod:`timbrectl.client` from submit to the ``job.state``
event that ends each job, so they include queueing, IPC or Ray calls, export and writing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from bench.generate import (
    BenchError,
    DaemonProcess,
    build_model,
    default_model_dir,
    machine,
    write_report,
)
from bench.throughput import _wait_done
from timbrectl.client import connect
from timbred.testing.tiny_musicgen import build_tiny_musicgen


def _request(i: int, duration: float) -> dict[str, Any]:
    return {"prompt": f"bench job {i}: dusty drums and a warm bass", "duration": duration,
            "seed": 200 + i, "loudness_target_lufs": False}


async def _together(socket_path: Path, jobs: int, duration: float, warm: int,
                    timeout: float) -> dict[str, Any]:
    """Warm ``warm`` workers, then time ``jobs`` jobs submitted at once."""
    async with connect(socket_path) as client:
        await client.subscribe(["job.state"])
        ids = {(await client.call("generate.submit", _request(900 + i, 0.5)))["job_id"]
               for i in range(warm)}
        await _wait_done(client, ids, timeout)
        began = time.monotonic()
        ids = {(await client.call("generate.submit", _request(i, duration)))["job_id"]
               for i in range(jobs)}
        finished = await _wait_done(client, ids, timeout)
        wall = max(finished.values()) - began
        workers = {(await client.call("jobs.get", {"job_id": i}))["placement"]["worker"]
                   for i in ids}
    return {"wall_s": wall, "workers": len(workers)}


async def _one_by_one(socket_path: Path, jobs: int, duration: float,
                      timeout: float) -> dict[str, Any]:
    """One warm-up job, then ``jobs`` jobs each submitted once the previous is done."""
    async with connect(socket_path) as client:
        await client.subscribe(["job.state"])
        warm = await client.call("generate.submit", _request(999, duration))
        await _wait_done(client, {warm["job_id"]}, timeout)
        times = []
        place: dict[str, Any] = {}
        for i in range(jobs):
            began = time.monotonic()
            job_id = (await client.call("generate.submit", _request(i, duration)))["job_id"]
            finished = await _wait_done(client, {job_id}, timeout)
            times.append(finished[job_id] - began)
            place = (await client.call("jobs.get", {"job_id": job_id}))["placement"]
    return {"median_s": statistics.median(times), "min_s": min(times),
            "executor": place["executor"]}


def _daemon_row(model_dir: Path, env: dict[str, str], measure: Any, *args: Any
                ) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="tb-"))  # short: sun_path holds ~100 bytes
    daemon = DaemonProcess(base, env={"TIMBRE_MODELS_DEFAULT": str(model_dir), **env})
    try:
        daemon.start()
        result: dict[str, Any] = anyio.run(measure, daemon.socket_path, *args)
        return result
    except BenchError as exc:
        raise BenchError(f"{exc}\nlast lines of the daemon's log:\n{daemon.log_tail()}") from exc
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves this machine
    from ray.cluster_utils import Cluster

    small = (args.model_dir or default_model_dir("small")).absolute()
    build_model(small, "small", args.timeout)
    tiny_base = Path(tempfile.mkdtemp(prefix="tb-tiny-"))
    tiny = build_tiny_musicgen(tiny_base / "tiny")
    print("bench.executors: starting a two-node Ray cluster ...", file=sys.stderr)
    began = time.monotonic()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster_start_s = time.monotonic() - began
    ray_env = {"TIMBRE_EXECUTOR_KIND": "ray", "TIMBRE_EXECUTOR_ADDRESS": cluster.address}
    unbatched = {"TIMBRE_JOBS_MAX_BATCH_TAKES": "1"}
    together = (args.jobs, args.duration)
    rows: dict[str, Any] = {}
    try:
        for name, env, warm in (
                ("1 local worker", unbatched, 1),
                ("2 local workers", {**unbatched, "TIMBRE_EXECUTOR_WORKERS": "2"}, 2),
                ("Ray, 2 nodes x 1 actor", {**unbatched, **ray_env}, 2),
                ("1 local worker, batching on (default)",
                 {"TIMBRE_JOBS_MAX_BATCH_TAKES": str(args.jobs)}, 1)):
            print(f"bench.executors: throughput, {name} ...", file=sys.stderr)
            rows[name] = _daemon_row(small, env, _together, *together, warm, args.timeout)
        one_thread = {"TIMBRE_DAEMON_THREADS": "1"}
        overhead = {}
        for name, env in (("local", one_thread), ("ray", {**one_thread, **ray_env})):
            print(f"bench.executors: overhead, {name} ...", file=sys.stderr)
            overhead[name] = _daemon_row(tiny, env, _one_by_one, args.overhead_jobs,
                                         args.overhead_duration, args.timeout)
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(tiny_base, ignore_errors=True)
    return {"throughput": rows, "overhead": overhead, "cluster_start_s": cluster_start_s}


def markdown(result: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    audio = args.jobs * args.duration
    rows = result["throughput"]
    base = rows["1 local worker"]["wall_s"]
    lines = [
        f"### Executors (`python -m bench.executors`, {args.jobs} x {args.duration:g} s)", "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; torch "
        f"{info.get('torch', '?')}. musicgen-small architecture, random weights, fp32. All "
        "jobs submitted at once to a warm daemon; wall time from the first submit to the last "
        "job done. Throughput: seconds of audio per wall second.", "",
        "| executor | wall | throughput | vs 1 worker | workers used |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['wall_s']:.1f} s | {audio / r['wall_s']:.3f} | "
                     f"{base / r['wall_s']:.2f}x | {r['workers']} |")
    o = result["overhead"]
    extra = (o["ray"]["median_s"] - o["local"]["median_s"]) * 1000
    lines += [
        "", f"Per-job overhead ({args.overhead_jobs} sequential jobs of "
            f"{args.overhead_duration:g} s with the tiny test fixture, one warm worker or "
            "actor, one CPU thread each; submit to done):", "",
        "| executor | median | fastest |", "|---|--:|--:|",
        *(f"| {name} | {r['median_s'] * 1000:.0f} ms | {r['min_s'] * 1000:.0f} ms |"
          for name, r in o.items()),
        "", f"**Ray adds {extra:.0f} ms per job** over the local worker (target: under "
            f"100 ms). The cluster itself took {result['cluster_start_s']:.1f} s to start.",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.executors",
                                description=__doc__.split("\n", 1)[0])
    p.add_argument("--jobs", type=int, default=8, help="jobs submitted together (default 8)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds of audio per job (default 2)")
    p.add_argument("--overhead-jobs", type=int, default=20)
    p.add_argument("--overhead-duration", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-executors.md"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.jobs <= 64 or not 0 < args.duration <= 600:
        build_parser().error("--jobs must be 1..64 and --duration in (0, 600]")
    try:
        result = run(args)
    except BenchError as exc:
        print(f"bench.executors: {exc}", file=sys.stderr)
        return 1
    write_report(args.out, markdown(result, args, machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
