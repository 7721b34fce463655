"""Several local workers: one worker process per device (here two CPU workers on this
2-core machine), each with its own warm models, fed by one scheduler from one SQLite queue.

The real daemon, real worker processes and the tiny MusicGen test fixture (random weights).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST
from tests.test_cli import ctl, ctl_env
from tests.test_generation import events_until_done
from timbrectl.client import Client, connect
from timbred.config import Settings
from timbred.daemon.app import Daemon
from timbred.daemon.events import EventBus
from timbred.queue.pool import Pool
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
async def two(short_tmp: Path, tiny: Path) -> AsyncIterator[Daemon]:
    """A daemon with two CPU workers (``executor.workers = 2``)."""
    async with running_daemon(short_tmp, models__default=str(tiny), executor__workers=2,
                              **FAST) as d:
        yield d


@pytest.fixture
async def client(two: Daemon) -> AsyncIterator[Client]:
    async with connect(two.socket_path) as c:
        await c.subscribe(["*"])
        yield c


async def submit(client: Client, prompt: str, duration: float) -> str:
    reply = await client.call("generate.submit", {"prompt": prompt, "duration": duration})
    return str(reply["job_id"])


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"])


class TestTwoWorkers:
    async def test_two_jobs_decode_at_once_on_different_workers(
            self, client: Client, two: Daemon, short_tmp: Path) -> None:
        """Two jobs that cannot share a batch (different durations) run at the same time,
        each on its own worker process, and each record names its worker and process."""
        first = await submit(client, "one", 6.0)
        second = await submit(client, "two", 5.0)
        a, b = [await client.call("jobs.wait", {"job_id": i, "timeout": 180})
                for i in (first, second)]
        assert a["state"] == b["state"] == "done"
        assert {a["placement"]["worker"], b["placement"]["worker"]} == {"local-0", "local-1"}
        assert a["placement"]["executor"] == b["placement"]["executor"] == "local"
        assert a["placement"]["pid"] != b["placement"]["pid"]
        assert overlap(a, b), (a["started_at"], a["finished_at"], b["started_at"],
                               b["finished_at"])
        workers = (await client.call("daemon.status"))["executor"]["workers"]
        assert [w["name"] for w in workers] == ["local-0", "local-1"]
        assert all(w["models"] and w["alive"] for w in workers)
        pids = {w["pid"] for w in workers}
        assert pids == {a["placement"]["pid"], b["placement"]["pid"]}
        # For people: a row per worker with its process and what it holds warm, and where
        # each job ran.
        env = ctl_env(two.socket_path, short_tmp)
        status = (await ctl("status", env=env)).stdout
        for w in workers:
            assert f"worker   {w['name']}, pid {w['pid']}" in status, status
        assert "nothing warm" not in status
        shown = (await ctl("jobs", "show", first, env=env)).stdout
        assert f"ran on    {a['placement']['worker']}, pid {a['placement']['pid']}" in shown

    async def test_a_job_goes_to_the_worker_that_holds_its_model(
            self, client: Client) -> None:
        """With one worker warm and the other empty, the next job of that model goes to the
        warm one (least busy alone would pick the empty one), with no second load."""
        first, _ = await events_until_done(client, await submit(client, "first", 0.5))
        second, seen = await events_until_done(client, await submit(client, "second", 0.5))
        assert first["placement"]["worker"] == second["placement"]["worker"]
        assert first["placement"]["pid"] == second["placement"]["pid"]
        assert not [e for e in seen if e["type"] == "model.loaded"]
        ps = (await client.call("models.ps"))["models"]
        assert [m["worker"] for m in ps] == [first["placement"]["worker"]]

    async def test_cancel_reaches_the_worker_running_the_job(
            self, client: Client, two: Daemon) -> None:
        """A cancel goes to the worker decoding that job; the other worker's job is left to
        finish."""
        keep = await submit(client, "keep", 4.0)
        drop = await submit(client, "drop", 60.0)
        while True:
            job = await client.call("jobs.get", {"job_id": drop})
            if job["state"] == "generating" and job["progress"]:
                break
            await client.next_event()
        await client.call("jobs.cancel", {"job_id": drop})
        cancelled, kept = [await client.call("jobs.wait", {"job_id": i, "timeout": 180})
                           for i in (drop, keep)]
        assert cancelled["state"] == "cancelled"
        assert kept["state"] == "done"
        assert cancelled["placement"]["worker"] != kept["placement"]["worker"]


class TestChoosing:
    """Pool.choose on a real pool of (not yet started) worker processes."""

    def pool(self, tmp_path: Path, **overrides: Any) -> Pool:
        settings = Settings.defaults(data__database=str(tmp_path / "j.sqlite3"), **overrides)
        return Pool(settings, EventBus())

    def test_devices_make_one_worker_each(self, tmp_path: Path) -> None:
        pool = self.pool(tmp_path, executor__devices=["cpu", "cpu", "cpu"])
        assert [w.name for w in pool.workers] == ["local-0", "local-1", "local-2"]
        assert [w.residency.requested_device for w in pool.workers] == ["cpu"] * 3
        # Three CPU workers share the host's memory for their models.
        assert {w.residency.host_share for w in pool.workers} == {1 / 3}

    def test_the_least_busy_then_avoiding_where_a_job_was_lost(self, tmp_path: Path) -> None:
        pool = self.pool(tmp_path, executor__workers=3)
        a, b, c = pool.workers
        a.batches, b.batches, c.batches = 2, 0, 1
        assert pool.choose("m") is b
        b.claimed = True
        assert pool.choose("m") is c
        assert pool.choose("m", avoid=["local-2"]) is a
        # The others are busy: the job waits for one of them rather than go back.
        a.claimed = True
        assert pool.choose("m", avoid=["local-2"]) is None
        c.claimed = True
        assert pool.choose("m") is None
        # Avoided, but the only one left up: better there than nowhere.
        a.down = b.down = "node gone"
        c.claimed = False
        assert pool.choose("m", avoid=["local-2"]) is c

    def test_a_down_worker_is_never_chosen(self, tmp_path: Path) -> None:
        pool = self.pool(tmp_path, executor__workers=2)
        pool.workers[0].down = "node gone"
        assert pool.choose("m") is pool.workers[1]
        pool.workers[1].claimed = True
        assert pool.choose("m") is None
