"""Jobs decoded together: the real daemon, the tiny MusicGen test fixture in a real worker
process, a real SQLite queue; replays checked bit for bit.

The daemons here use int8 decoding: its activations are quantized per batch, so a row's
numbers really do depend on its neighbours there, and only a replay of the whole batch
can be bit-identical (which is what Timbre records and does).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import miniaudio
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FAST
from tests.test_generation import events_until_done, wait_progress
from timbrectl.client import Client, connect
from timbred.protocol.schema import load as load_schema
from timbred.takes.sidecars import sidecar_path
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
async def batching(short_tmp: Path, tiny: Path) -> AsyncIterator[Client]:
    """A client of a daemon that waits long enough for a test's submissions to batch."""
    async with running_daemon(short_tmp, models__default=str(tiny), models__precision="int8",
                              jobs__batch_window_s=1.0, **FAST) as d, \
            connect(d.socket_path) as c:
        await c.subscribe(["*"])
        yield c


async def submit_all(client: Client, *requests: dict[str, Any]) -> list[str]:
    return [(await client.call("generate.submit", r))["job_id"] for r in requests]


async def wait_all(client: Client, ids: list[str]) -> list[dict[str, Any]]:
    return [await client.call("jobs.wait", {"job_id": i, "timeout": 120}) for i in ids]


def samples(path: str) -> list[float]:
    return list(miniaudio.wav_read_file_f32(path).samples)


async def replay_first_take(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """Replay ``job``'s first take and wait: the replay job, checked done and recorded as
    a bit-identical replay of that take."""
    take = await client.call("takes.show", {"take": job["outputs"][0]})
    replay_id = (await client.call("takes.replay", {"take": take["id"]}))["job_id"]
    (replay,) = await wait_all(client, [replay_id])
    assert replay["state"] == "done", replay["error"]
    assert replay["recipe"]["replay"] == {"of": take["id"], "bit_identical": True}
    return replay


async def test_jobs_submitted_together_share_a_batch_and_replay_bit_identically(
        batching: Client) -> None:
    client = batching
    ids = await submit_all(
        client,
        {"prompt": "dusty breakbeat", "duration": 1.0, "seed": 1},
        {"prompt": "a much longer prompt about glassy pads", "duration": 1.0, "seed": 2,
         "temperature": 0.7, "top_k": 20},
        {"prompt": "greedy", "duration": 1.0, "seed": 3, "temperature": 0, "guidance": 5},
        {"prompt": "two of these", "duration": 1.0, "seed": 4, "variations": 1},
    )
    jobs = await wait_all(client, ids)
    assert [j["state"] for j in jobs] == ["done"] * 4, [j["error"] for j in jobs]
    requests = jobs[0]["recipe"]["batch"]["requests"]
    assert [r["seed"] for r in requests] == [1, 2, 3, 4]
    for index, job in enumerate(jobs):
        batch = job["recipe"]["batch"]
        assert batch == {"index": index, "requests": requests}
        assert job["recipe"]["info"]["batch_requests"] == 4
        assert requests[index]["prompt"] == job["params"]["prompt"]
        sidecar = json.loads(await anyio.Path(sidecar_path(job["outputs"][0])).read_text())
        jsonschema.validate(sidecar, load_schema("take.schema.json"))
        assert sidecar["recipe"]["batch"] == batch
    # Each job drew from its own seed: same duration and model, four different takes.
    assert len({tuple(samples(j["outputs"][0])[:4000]) for j in jobs}) == 4
    # A replay decodes the whole batch again and keeps its own take: bit for bit.
    replay = await replay_first_take(client, jobs[1])
    assert replay["recipe"]["info"]["batch_requests"] == 4
    assert samples(replay["outputs"][0]) == samples(jobs[1]["outputs"][0])


async def test_only_compatible_jobs_are_decoded_together(batching: Client) -> None:
    client = batching
    ids = await submit_all(
        client,
        {"prompt": "a", "duration": 1.0, "seed": 1},
        {"prompt": "other length", "duration": 1.5, "seed": 2},
        {"prompt": "no guidance", "duration": 1.0, "seed": 3, "guidance": 1},
        {"prompt": "b", "duration": 1.0, "seed": 4, "guidance": 7},
    )
    jobs = await wait_all(client, ids)
    assert [j["state"] for j in jobs] == ["done"] * 4
    batched = [j["recipe"].get("batch") for j in jobs]
    assert batched[0] is not None and batched[0]["index"] == 0
    assert [r["seed"] for r in batched[0]["requests"]] == [1, 4]
    assert batched[3] == {**batched[0], "index": 1}
    assert batched[1] is None and batched[2] is None
    assert jobs[1]["recipe"]["info"]["batch_requests"] == 1


async def test_melody_jobs_batch_with_each_other_only(short_tmp: Path,
                                                      tiny_melody: Path) -> None:
    """On a melody model, jobs with (different) melodies are decoded together; a job
    without a melody and a continuation are not put with them; the melody batch replays
    bit for bit."""
    t = np.arange(16_000) / 16_000
    for name, freq in (("a4.wav", 440.0), ("e4.wav", 329.6)):
        sf.write(short_tmp / name, 0.3 * np.sin(2 * np.pi * freq * t), 16_000)
    async with running_daemon(short_tmp, models__default=str(tiny_melody),
                              models__precision="int8", jobs__batch_window_s=1.0,
                              **FAST) as d, connect(d.socket_path) as client:
        ids = await submit_all(
            client,
            {"prompt": "a", "duration": 1.0, "seed": 1, "melody": str(short_tmp / "a4.wav")},
            {"prompt": "plain", "duration": 1.0, "seed": 2},
            {"prompt": "b", "duration": 1.0, "seed": 3, "melody": str(short_tmp / "e4.wav")},
            {"prompt": "c", "duration": 1.5, "seed": 4, "melody": str(short_tmp / "a4.wav"),
             "continuation": str(short_tmp / "e4.wav")},
        )
        jobs = await wait_all(client, ids)
        assert [j["state"] for j in jobs] == ["done"] * 4, [j["error"] for j in jobs]
        batch = jobs[0]["recipe"]["batch"]
        assert [r["melody"] for r in batch["requests"]] == [
            str(short_tmp / "a4.wav"), str(short_tmp / "e4.wav")]
        assert jobs[2]["recipe"]["batch"] == {**batch, "index": 1}
        assert "batch" not in jobs[1]["recipe"] and "batch" not in jobs[3]["recipe"]
        await replay_first_take(client, jobs[2])


async def test_continuations_of_one_file_batch_together(batching: Client,
                                                       short_tmp: Path) -> None:
    """Jobs continuing the same file share a batch; one continuing another file, or none,
    does not. The batch replays bit for bit."""
    t = np.arange(8_000) / 16_000
    for name, freq in (("riff.wav", 220.0), ("other.wav", 330.0)):
        sf.write(short_tmp / name, 0.3 * np.sin(2 * np.pi * freq * t), 16_000)
    riff, other = str(short_tmp / "riff.wav"), str(short_tmp / "other.wav")
    client = batching
    ids = await submit_all(
        client,
        {"prompt": "a", "duration": 1.5, "seed": 1, "continuation": riff},
        {"prompt": "b", "duration": 1.5, "seed": 2, "continuation": other},
        {"prompt": "c", "duration": 1.5, "seed": 3},
        {"prompt": "d", "duration": 1.5, "seed": 4, "continuation": riff, "temperature": 0.8},
    )
    jobs = await wait_all(client, ids)
    assert [j["state"] for j in jobs] == ["done"] * 4, [j["error"] for j in jobs]
    batch = jobs[0]["recipe"]["batch"]
    assert [(r["seed"], r["continuation"]) for r in batch["requests"]] == [
        (1, riff), (4, riff)]
    assert jobs[3]["recipe"]["batch"] == {**batch, "index": 1}
    assert "batch" not in jobs[1]["recipe"] and "batch" not in jobs[2]["recipe"]
    replay = await replay_first_take(client, jobs[3])
    assert samples(replay["outputs"][0]) == samples(jobs[3]["outputs"][0])


async def test_a_batch_holds_at_most_max_batch_takes(short_tmp: Path, tiny: Path) -> None:
    async with running_daemon(short_tmp, models__default=str(tiny), jobs__batch_window_s=1.0,
                              jobs__max_batch_takes=3, **FAST) as d, \
            connect(d.socket_path) as client:
        ids = await submit_all(client, *[
            {"prompt": f"p{i}", "duration": 0.5, "seed": i, "variations": v}
            for i, v in enumerate([2, 1, 2, 1])])
        jobs = await wait_all(client, ids)
        assert [j["state"] for j in jobs] == ["done"] * 4
        sizes = [len(j["recipe"]["batch"]["requests"]) if "batch" in j["recipe"] else 1
                 for j in jobs]
        # 2 + 1 takes fill the first batch; the third job (2 takes) would overflow it, so
        # it starts the next one, with the fourth.
        assert sizes == [2, 2, 2, 2]
        assert [r["seed"] for r in jobs[0]["recipe"]["batch"]["requests"]] == [0, 1]
        assert [r["seed"] for r in jobs[2]["recipe"]["batch"]["requests"]] == [2, 3]


async def test_cancelling_one_job_of_a_batch_leaves_the_others(batching: Client) -> None:
    client = batching
    ids = await submit_all(client, *[
        {"prompt": f"long {i}", "duration": 20.0, "seed": i} for i in range(3)])
    await wait_progress(client, ids[1])
    cancelled = await client.call("jobs.cancel", {"job_id": ids[1]})
    # Over for its owner at once, while the rest of the batch still decodes.
    assert cancelled["state"] == "cancelled"
    others = [await client.call("jobs.get", {"job_id": i}) for i in (ids[0], ids[2])]
    assert all(j["state"] == "generating" for j in others)
    first, _ = await events_until_done(client, ids[0])
    last, _ = await events_until_done(client, ids[2])
    assert first["state"] == last["state"] == "done"
    assert first["recipe"]["batch"]["index"] == 0 and last["recipe"]["batch"]["index"] == 2
    assert len(first["recipe"]["batch"]["requests"]) == 3
    final = await client.call("jobs.get", {"job_id": ids[1]})
    assert final["state"] == "cancelled" and final["outputs"] == []


async def test_cancelling_every_job_of_a_batch_stops_it(batching: Client) -> None:
    client = batching
    ids = await submit_all(client, *[
        {"prompt": f"long {i}", "duration": 60.0, "seed": i} for i in range(2)])
    await wait_progress(client, ids[0])
    # Progress is stored off the event loop after its first event: wait until it is, or a
    # cancel that lands first leaves the job with none recorded (nothing to compare below).
    with anyio.fail_after(30):
        job = await client.call("jobs.get", {"job_id": ids[0]})
        while job["progress"] is None:
            await anyio.sleep(0.05)
            job = await client.call("jobs.get", {"job_id": ids[0]})
    for job_id in ids:
        await client.call("jobs.cancel", {"job_id": job_id})
    with anyio.fail_after(60):
        status = await client.call("daemon.status")
        while status["queue"]["running"]:
            await anyio.sleep(0.1)
            status = await client.call("daemon.status")
    jobs = [await client.call("jobs.get", {"job_id": i}) for i in ids]
    assert [j["state"] for j in jobs] == ["cancelled", "cancelled"]
    assert jobs[0]["progress"]["step"] < jobs[0]["progress"]["total"]


async def test_a_batched_job_streams_its_own_preview(batching: Client) -> None:
    client = batching
    ids = await submit_all(client, {"prompt": "quiet one", "duration": 1.0, "seed": 1},
                           {"prompt": "streamed", "duration": 1.0, "seed": 2, "variations": 2,
                            "preview": True, "loudness_target_lufs": False})
    job, seen = await events_until_done(client, ids[1])
    assert job["state"] == "done" and job["recipe"]["batch"]["index"] == 1
    chunks = [e["data"] for e in seen if e["type"] == "job.preview"]
    assert chunks and chunks[-1]["final"]
    assert sum(c["frames"] for c in chunks) == 32000
    assert all(len(c["paths"]) == 2 for c in chunks)
    # The last chunk is this job's own take (not its neighbour's), to 16-bit precision.
    for path, take in zip(chunks[-1]["paths"], job["outputs"], strict=True):
        tail = samples(take)[-chunks[-1]["frames"]:]
        assert max(abs(a - b) for a, b in zip(samples(path), tail, strict=True)) < 1e-4
    (other,) = await wait_all(client, ids[:1])
    assert other["state"] == "done"
