"""Batching and streaming benchmark: ``python -m bench.throughput``.

Against a real, warm ``timbred`` (musicgen-small's architecture with random weights, see
:mod:`bench.musicgen_small_random`), for each ``--precision``, side by side in one run:

* **sequential**: ``--jobs`` jobs (same duration, different prompts and seeds), each
  submitted once the previous one is done: what a queue without batching gives;
* **concurrent**: the same jobs submitted together (as several clients or a script loop
  would), which the daemon decodes as one batch (``jobs.max_batch_takes``);
* **time to first audio**: one job submitted with ``preview: true``; the time from submit
  to its first ``job.preview`` event (the first playable chunk is on disk), and to done.

Reported: wall time of each, aggregate throughput (seconds of audio per second), the
concurrent/sequential ratio, and TTFA. Timings are taken by an in-process client of
:mod:`timbrectl.client` from submit to the event that ends each phase, so they include the
daemon's queueing, IPC, export and writing of the takes.
"""

from __future__ import annotations

import argparse
import shutil
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
from timbrectl.client import Client, connect

PRECISIONS = ("fp32", "int8", "bf16")


async def _wait_done(client: Client, ids: set[str], timeout: float) -> dict[str, float]:
    """Wait for job.state done for every id; the monotonic time each finished."""
    finished: dict[str, float] = {}
    with anyio.fail_after(timeout):
        while len(finished) < len(ids):
            ev = await client.next_event()
            if ev["type"] != "job.state":
                continue
            job = ev["data"]["job"]
            if job["id"] in ids and job["state"] in ("done", "failed", "cancelled"):
                if job["state"] != "done":
                    raise BenchError(f"job {job['id']} ended {job['state']}: {job['error']}")
                finished[job["id"]] = time.monotonic()
    return finished


def _request(i: int, duration: float, guidance: float, **extra: Any) -> dict[str, Any]:
    return {"prompt": f"lo-fi hip hop beat number {i} with warm bass", "duration": duration,
            "seed": 100 + i, "guidance": guidance, "loudness_target_lufs": False, **extra}


async def measure(socket_path: Path, jobs: int, duration: float, guidance: float,
                  timeout: float) -> dict[str, Any]:
    async with connect(socket_path) as client:
        await client.subscribe(["job.state", "job.preview"])
        # Warm-up: loads the model into the worker (untimed).
        warm = await client.call("generate.submit", _request(99, 1.0, guidance))
        await _wait_done(client, {warm["job_id"]}, timeout)

        print(f"bench.throughput:   sequential, {jobs} jobs ...", file=sys.stderr)
        began = time.monotonic()
        for i in range(jobs):
            sub = await client.call("generate.submit", _request(i, duration, guidance))
            await _wait_done(client, {sub["job_id"]}, timeout)
        sequential = time.monotonic() - began

        print(f"bench.throughput:   concurrent, {jobs} jobs ...", file=sys.stderr)
        began = time.monotonic()
        ids = set()
        for i in range(jobs):
            ids.add((await client.call("generate.submit",
                                       _request(i, duration, guidance)))["job_id"])
        await _wait_done(client, ids, timeout)
        concurrent = time.monotonic() - began
        batch = (await client.call("jobs.get", {"job_id": min(ids)}))["recipe"].get("batch")

        print("bench.throughput:   time to first audio ...", file=sys.stderr)
        began = time.monotonic()
        sub = await client.call("generate.submit", _request(50, duration, guidance,
                                                            preview=True))
        first = None
        with anyio.fail_after(timeout):
            while True:
                ev = await client.next_event()
                data = ev["data"]
                if ev["type"] == "job.preview" and data["job_id"] == sub["job_id"] \
                        and first is None:
                    first = time.monotonic() - began
                    first_chunk_s = data["duration_s"]
                if ev["type"] == "job.state" and data["job"]["id"] == sub["job_id"] \
                        and data["job"]["state"] in ("done", "failed", "cancelled"):
                    break
        streamed_total = time.monotonic() - began
    if first is None:
        raise BenchError("no job.preview event arrived")
    return {"sequential_s": sequential, "concurrent_s": concurrent,
            "batch_size": len(batch["requests"]) if batch else 1,
            "ttfa_s": first, "first_chunk_s": first_chunk_s, "streamed_total_s": streamed_total}


def run_precision(model_dir: Path, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="tb-"))  # short: sun_path holds ~100 bytes
    daemon = DaemonProcess(base, env={
        "TIMBRE_MODELS_DEFAULT": str(model_dir), "TIMBRE_MODELS_PRECISION": precision,
        "TIMBRE_JOBS_MAX_BATCH_TAKES": str(args.jobs),
        "TIMBRE_PREVIEW_CHUNK_S": f"{args.chunk:g}"})
    try:
        daemon.start()
        return anyio.run(measure, daemon.socket_path, args.jobs, args.duration, args.guidance,
                         args.timeout)
    except BenchError as exc:
        raise BenchError(f"{exc}\nlast lines of the daemon's log:\n{daemon.log_tail()}") from exc
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def markdown(rows: dict[str, dict[str, Any]], args: argparse.Namespace,
             info: dict[str, Any]) -> str:
    audio = args.jobs * args.duration
    lines = [
        f"### Batching and streaming (`python -m bench.throughput`, {args.jobs} x "
        f"{args.duration:g} s, guidance {args.guidance:g})", "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; "
        f"torch {info.get('torch', '?')}. musicgen-small architecture, random weights; a warm "
        "daemon per precision. Sequential: each job submitted when the previous one is done. "
        "Concurrent: all submitted together (decoded as one batch). Throughput: seconds of "
        "audio per wall second. TTFA: submit -> first `job.preview` event (chunk on disk), "
        f"preview chunks of {args.chunk:g} s (the first is half that).", "",
        "| precision | sequential | concurrent | batch | throughput seq. | throughput conc. | "
        "conc. / seq. | TTFA | first chunk | streamed job total |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for precision, r in rows.items():
        lines.append(
            f"| {precision} | {r['sequential_s']:.1f} s | {r['concurrent_s']:.1f} s | "
            f"{r['batch_size']} | {audio / r['sequential_s']:.3f} | "
            f"{audio / r['concurrent_s']:.3f} | "
            f"**{r['sequential_s'] / r['concurrent_s']:.2f}x** | **{r['ttfa_s']:.2f} s** | "
            f"{r['first_chunk_s']:.2f} s | {r['streamed_total_s']:.1f} s |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split(
        "\n", 1)[0])
    p.add_argument("--precision", choices=PRECISIONS, action="append",
                   help="repeatable (default: fp32 and int8)")
    p.add_argument("--jobs", type=int, default=4, help="concurrent jobs (default 4)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per job (default 10)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--chunk", type=float, default=1.0, help="preview chunk seconds (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-throughput.md"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.jobs <= 64 or not 0 < args.duration <= 600:
        build_parser().error("--jobs must be 1..64 and --duration in (0, 600]")
    model_dir = (args.model_dir or default_model_dir("small")).absolute()
    rows: dict[str, dict[str, Any]] = {}
    try:
        build_model(model_dir, "small", args.timeout)
        for precision in args.precision or ["fp32", "int8"]:
            print(f"bench.throughput: precision {precision} ...", file=sys.stderr)
            rows[precision] = run_precision(model_dir, precision, args)
    except BenchError as exc:
        print(f"bench.throughput: {exc}", file=sys.stderr)
        return 1
    text = markdown(rows, args, machine())
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
