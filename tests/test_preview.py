"""Streaming preview through the real daemon: the tiny MusicGen test fixture in a real worker
process, chunk files in the private runtime directory read back by a second decoder
(miniaudio), job.preview events validated against the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import miniaudio
import numpy as np
import pytest

from tests.conftest import FAST
from tests.test_generation import events_until_done
from timbrectl.client import Client, connect
from timbred.daemon.app import Daemon
from timbred.queue.preview import PreviewWriter
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio

SR = 32000


def previews_of(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in seen if e["type"] == "job.preview"]


def decode(path: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    wav = miniaudio.wav_read_file_f32(path)
    assert wav.sample_rate == SR and wav.nchannels == 1
    return np.asarray(wav.samples, dtype=np.float32)


async def until_gone(path: Path, timeout: float = 20) -> None:
    """Poll (removal is a side effect with no event) until ``path`` no longer exists."""
    for _ in range(int(timeout / 0.05)):
        if not await anyio.Path(path).exists():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{path} still exists after {timeout} s")


@pytest.fixture
async def quick(short_tmp: Path, tiny: Path) -> Any:
    """A daemon on the tiny fixture that keeps finished jobs' previews for half a second."""
    async with running_daemon(short_tmp, models__default=str(tiny), preview__chunk_s=0.4,
                              preview__keep_s=0.5, **FAST) as d, connect(d.socket_path) as c:
        await c.subscribe(["*"])
        yield d, c


async def test_chunks_stream_while_generating_and_tile_the_take(quick: Any) -> None:
    daemon, client = quick
    submitted = await client.call("generate.submit", {
        "prompt": "tape hiss", "duration": 2.0, "seed": 4, "variations": 2, "preview": True,
        "loudness_target_lufs": False})
    job, seen = await events_until_done(client, submitted["job_id"])
    assert job["state"] == "done", job["error"]
    chunks = previews_of(seen)
    assert [c["index"] for c in chunks] == list(range(len(chunks))) and len(chunks) >= 4
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    # The first chunk came while decoding still ran, long before the job was done.
    first = seen.index(next(e for e in seen if e["type"] == "job.preview"))
    last_step = max(i for i, e in enumerate(seen) if e["type"] == "job.progress")
    assert first < last_step
    position = 0
    streams: list[list[np.ndarray[Any, np.dtype[np.float32]]]] = [[], []]
    for chunk in chunks:
        assert chunk["start_sample"] == position and chunk["channels"] == 1
        assert len(chunk["paths"]) == 2
        for stream, path in zip(streams, chunk["paths"], strict=True):
            assert Path(path).parent == daemon.runtime_dir / "previews" / job["id"]
            audio = decode(path)
            assert audio.shape == (chunk["frames"],)
            stream.append(audio)
        position += chunk["frames"]
    assert position == 2 * SR
    # The final chunk is the take itself (here not loudness-normalised), to 16-bit precision.
    for stream, take in zip(streams, job["outputs"], strict=True):
        tail = decode(take)[-chunks[-1]["frames"]:]
        assert np.abs(stream[-1] - tail).max() < 2 / 32768 + 1e-6
    # Removed preview.keep_s after the job ended.
    await until_gone(daemon.runtime_dir / "previews" / job["id"])


async def test_no_preview_unless_asked(client: Client, gen: Daemon) -> None:
    submitted = await client.call("generate.submit", {"prompt": "quiet", "duration": 1.0})
    job, seen = await events_until_done(client, submitted["job_id"])
    assert job["state"] == "done" and previews_of(seen) == []
    assert job["params"]["preview"] is False
    assert not (gen.runtime_dir / "previews" / job["id"]).exists()


async def test_a_preview_that_cannot_be_written_does_not_fail_the_job(quick: Any) -> None:
    daemon, client = quick
    (daemon.runtime_dir / "previews").write_text("not a folder")
    submitted = await client.call("generate.submit", {"prompt": "x", "duration": 1.0,
                                                      "preview": True})
    job, seen = await events_until_done(client, submitted["job_id"])
    assert job["state"] == "done", job["error"]
    assert previews_of(seen) == []
    assert len(job["outputs"]) == 1 and decode(job["outputs"][0]).size == SR


async def test_leftover_previews_are_swept_at_start(short_tmp: Path, tiny: Path) -> None:
    leftover = short_tmp / "run" / "previews" / "0123-old-job"
    leftover.mkdir(parents=True, mode=0o700)
    (leftover / "chunk-0000-1.wav").write_bytes(b"RIFF")
    (short_tmp / "run").chmod(0o700)
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as daemon:
        await until_gone(leftover)
        assert daemon.runtime_dir == short_tmp / "run"


async def test_a_chunk_the_writer_cannot_write_stops_the_preview_only(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    writer = PreviewWriter(tmp_path, "j-1", sample_rate=SR, channels=1, total_samples=SR,
                           publish=events.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.put(0, np.zeros((1, 2, 100), dtype=np.float32))  # two channels, one expected
        writer.put(100, np.zeros((1, 1, 100), dtype=np.float32))
        await writer.close()
    assert writer.failed and events == []
