"""Reliability promises of the job pipeline: an idle worker's death costs nothing, a slow
subscriber is told why it was cut, a failed write names the file it tried."""

from __future__ import annotations

import os
import signal

import pytest

from tests.test_generation import events_until_done
from timbrectl.client import Client
from timbred.app import Daemon

pytestmark = pytest.mark.anyio


class TestIdleWorkerDeath:
    async def test_the_next_job_gets_a_fresh_worker(self, client: Client, gen: Daemon) -> None:
        """A worker killed while no job runs fails nothing: the next job, submitted at once
        (while the dead process may still be tearing down), runs on a fresh worker."""
        first, _ = await events_until_done(client, (await client.call(
            "generate.submit", {"prompt": "warm", "duration": 0.5}))["job_id"])
        assert first["state"] == "done"
        pid = gen.generation.worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        job, _ = await events_until_done(client, (await client.call(
            "generate.submit", {"prompt": "next", "duration": 0.5}))["job_id"])
        assert job["state"] == "done", job["error"]
        assert gen.generation.worker.pid != pid
