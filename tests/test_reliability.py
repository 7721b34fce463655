"""Reliability promises of the job pipeline: an idle worker's death costs nothing, a slow
subscriber is told why it was cut, a failed write names the file it tried."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from tests.support import RawConnection, req
from tests.test_generation import events_until_done
from timbrectl.client import Client
from timbred.daemon.app import Daemon
from timbred.errors import OutputError
from timbred.testing.daemon import running_daemon

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


class TestFullDiskNamesTheTake:
    def test_write_next_take_names_the_file_it_would_have_written(self, tmp_path: Path
                                                                  ) -> None:
        """On a full disk the OutputError names ``take-<n>`` that the take would have got
        (take-2 beside an existing take-1), never ``take-0``, a name never used."""
        from tests.test_export import SR, metadata, noise, tmpfs
        from timbred.takes import writer as export
        from timbred.takes.options import ExportOptions

        mount = tmp_path / "small"
        with tmpfs(mount, "64k"):
            (mount / "take-1.wav").write_bytes(b"")
            with pytest.raises(OutputError) as info:
                export.write_next_take(mount, noise(1.0), SR,
                                       ExportOptions(wav_subtype="FLOAT"), metadata())
            assert info.value.data["reason"] == "the disk is full"
            assert Path(info.value.data["path"]).name == "take-2.wav"


class TestStalledSubscriber:
    async def test_gets_its_notice_before_the_write_timeout_cuts_it(self, short_tmp: Path
                                                                   ) -> None:
        """A subscriber that stops reading (below the output bound, so only the write
        timeout notices) has its subscription ended with events.dropped, which it reads when
        it reads again; before, the connection was cut with no notice."""
        async with running_daemon(short_tmp, limits__max_output_bytes=64 * 1024 * 1024,
                                  limits__write_timeout_s=1.0) as d:
            slow = await RawConnection.open(d.socket_path)
            sub = (await slow.call(req("events.subscribe", {"types": ["test.*"]})))["result"]
            base = d.bus.seq
            for i in range(4000):  # ~4 MB: far past the socket buffer, far below the bound
                d.bus.publish("test.big", {"i": i, "blob": "x" * 1000})
            await anyio.sleep(1.5)  # past one write timeout, before a second
            seen: list[int] = []
            with anyio.fail_after(20):
                while True:
                    msg = await slow.recv(timeout=10)
                    if msg.get("method") == "events.dropped":
                        break
                    seen.append(msg["params"]["data"]["i"])
            assert msg["params"]["subscription"] == sub["subscription"]
            assert "read nothing" in msg["params"]["reason"]
            assert seen == list(range(len(seen)))
            assert msg["params"]["last_seq"] == base + len(seen)  # resume right after them
            assert d.bus.subscriptions == 0
            assert (await slow.call(req("daemon.ping", id_="after")))["id"] == "after"
            await slow.aclose()
