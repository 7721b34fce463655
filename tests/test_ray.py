"""Jobs on a real Ray cluster: two simulated nodes on this machine (``ray.cluster_utils``),
each with one CPU, so one Timbre actor each; the daemon joins as a Ray driver and runs the
tiny MusicGen test fixture (random weights: noise, not music) in the actors.

What is held here: a job runs on an actor and its record names the node and the actor; a
second job of the model runs on the same warm actor without a second load; an actor's process
killed mid-job requeues the job once, it completes on the other node, and the queue and the
history hold exactly one take; an unreachable cluster falls back to the local worker, or
fails each job saying why.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import soundfile as sf
from ray.cluster_utils import Cluster

from tests.conftest import FAST
from tests.support import check_result
from tests.test_cli import ctl, ctl_env
from tests.test_generation import events_until_done, wait_progress
from timbrectl.client import Client, connect
from timbred.daemon.app import Daemon
from timbred.errors import ModelNotFound
from timbred.testing.daemon import running_daemon
from timbred.worker.ray_actor import node_source

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Nothing leaves this machine: no usage report from the clusters started here.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and one more node, one CPU each (about 4 s to start here)."""
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
async def ray_daemon(short_tmp: Path, tiny: Path, cluster: Cluster) -> AsyncIterator[Daemon]:
    async with running_daemon(short_tmp, models__default=str(tiny), executor__kind="ray",
                              executor__address=cluster.address, **FAST) as d:
        yield d


@pytest.fixture
async def client(ray_daemon: Daemon) -> AsyncIterator[Client]:
    async with connect(ray_daemon.socket_path) as c:
        await c.subscribe(["*"])
        yield c


async def run(client: Client, prompt: str, duration: float = 1.0
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job_id = (await client.call("generate.submit", {"prompt": prompt,
                                                    "duration": duration}))["job_id"]
    return await events_until_done(client, job_id, timeout=240)


class TestOnTheCluster:
    async def test_a_job_runs_on_an_actor_and_its_record_says_where(
            self, client: Client, cluster: Cluster, ray_daemon: Daemon,
            short_tmp: Path) -> None:
        """The take is written by the daemon as usual; the job names executor, node, actor
        and its process; daemon.status lists both nodes and the workers on them."""
        job, _ = await run(client, "on the cluster")
        assert job["state"] == "done", job["error"]
        place = job["placement"]
        assert place["executor"] == "ray"
        node_ids = {n["node_id"] for n in (await client.call("daemon.status"))
                    ["executor"]["nodes"]}
        assert place["node"] in node_ids and len(node_ids) == 2
        assert len(place["actor"]) >= 16 and place["pid"] != os.getpid()
        assert place["worker"].startswith(f"ray-{place['node'][:8]}-cpu")
        take = await client.call("takes.show", {"take": job["outputs"][0]})
        info = sf.info(take["path"])
        assert info.frames > 0.9 * info.samplerate
        status = check_result("daemon.status", {"jsonrpc": "2.0", "id": 1, "result":
                                                await client.call("daemon.status")})
        ex = status["executor"]
        assert ex["kind"] == "ray" and ex["address"] == cluster.address
        worker = next(w for w in ex["workers"] if w["name"] == place["worker"])
        assert worker["models"] and worker["actor"] == place["actor"]
        shown = (await ctl("status", env=ctl_env(ray_daemon.socket_path, short_tmp))).stdout
        assert f"cluster  Ray at {cluster.address}: 2 node(s) up, 0 GPU(s)" in shown, shown
        assert f"worker   {place['worker']} on node {place['node'][:8]}" in shown

    async def test_the_second_job_of_a_model_runs_on_the_warm_actor(
            self, client: Client) -> None:
        """No second model.loaded: the actor that holds the model takes the job, although the
        other node's actor is idle and holds nothing."""
        first, seen_first = await run(client, "first")
        second, seen_second = await run(client, "second")
        assert first["state"] == second["state"] == "done"
        assert second["placement"]["actor"] == first["placement"]["actor"]
        assert second["placement"]["node"] == first["placement"]["node"]
        loads = [e for e in seen_first + seen_second if e["type"] == "model.loaded"]
        assert len(loads) <= 1  # the first load may be reported before the job's own events
        ps = await client.call("models.ps")
        assert [m["worker"] for m in ps["models"]] == [first["placement"]["worker"]]


    async def test_stems_are_separated_on_an_actor(self, client: Client,
                                                   tiny_demucs: Path) -> None:
        """takes.stems runs on a cluster like a generation: the separator loads on an actor
        (from the same path here: one machine), the take's audio goes through the object
        store, and the daemon writes the stems beside the take."""
        made, _ = await run(client, "to separate")
        assert made["state"] == "done", made["error"]
        job_id = (await client.call("takes.stems", {"take": made["outputs"][0],
                                                    "model": str(tiny_demucs)}))["job_id"]
        job, seen = await events_until_done(client, job_id, timeout=240)
        assert job["state"] == "done", job["error"]
        assert job["placement"]["executor"] == "ray"
        assert any(e["type"] == "job.progress" for e in seen)
        assert len(job["outputs"]) == 4
        for path in job["outputs"]:
            info = await anyio.to_thread.run_sync(sf.info, path)
            assert info.frames == sf.info(made["outputs"][0]).frames


class TestLostActor:
    async def test_killing_the_actor_mid_job_requeues_it_once_on_the_other_node(
            self, client: Client, ray_daemon: Daemon, short_tmp: Path) -> None:
        """SIGKILL to the actor's process while it decodes: the job goes back to the queue
        (job.requeued, the interruption kept in its placement), completes on the other
        node's actor, and exactly one take exists for it in the queue, the history and the
        output folder."""
        job_id = (await client.call("generate.submit", {"prompt": "doomed actor",
                                                        "duration": 30.0}))["job_id"]
        await wait_progress(client, job_id)
        lost = (await client.call("jobs.get", {"job_id": job_id}))["placement"]
        assert lost["executor"] == "ray" and lost["pid"]
        os.kill(lost["pid"], signal.SIGKILL)
        job, seen = await events_until_done(client, job_id, timeout=300)
        assert job["state"] == "done", job["error"]
        requeued = [e["data"] for e in seen if e["type"] == "job.requeued"]
        assert len(requeued) == 1 and requeued[0]["worker"] == lost["worker"]
        assert job["attempts"] == 2
        place = job["placement"]
        assert place["node"] != lost["node"] and place["actor"] != lost["actor"]
        (interruption,) = place["interruptions"]
        assert interruption["node"] == lost["node"]
        assert interruption["error"]["kind"] == "executor_lost"
        assert len(job["outputs"]) == 1
        takes = await client.call("history.search", {})
        mine = [t for t in takes["takes"] if t["job_id"] == job_id]
        assert len(mine) == 1
        out = anyio.Path(ray_daemon.settings["output.dir"])
        assert len([p async for p in out.rglob("*.wav")]) == 1
        # For people: where it ran, and where it was lost before.
        shown = (await ctl("jobs", "show", job_id, env=ctl_env(ray_daemon.socket_path,
                                                               short_tmp))).stdout
        assert f"ran on    {place['worker']} on node {place['node'][:8]}" in shown, shown
        assert f"lost      {lost['worker']} on node {lost['node'][:8]}" in shown
        assert "while generating" in shown

    async def test_with_no_retries_left_the_job_is_interrupted_with_the_reason(
            self, short_tmp: Path, tiny: Path, cluster: Cluster) -> None:
        """executor.retries = 0: the job ends interrupted, naming the lost actor and node."""
        async with running_daemon(short_tmp, models__default=str(tiny), executor__kind="ray",
                                  executor__address=cluster.address, executor__retries=0,
                                  **FAST) as d, connect(d.socket_path) as c:
            await c.subscribe(["*"])
            job_id = (await c.call("generate.submit", {"prompt": "x",
                                                       "duration": 30.0}))["job_id"]
            await wait_progress(c, job_id)
            pid = (await c.call("jobs.get", {"job_id": job_id}))["placement"]["pid"]
            os.kill(pid, signal.SIGKILL)
            job, _ = await events_until_done(c, job_id, timeout=120)
        assert job["state"] == "interrupted"
        assert job["error"]["kind"] == "executor_lost"
        assert "Ray actor" in job["error"]["message"] and job["outputs"] == []


class TestModelFilesOnANode:
    """What an actor loads when the daemon's path to a model is not on the actor's node."""

    REV = "0123456789abcdef0123456789abcdef01234567"

    def test_the_daemons_path_when_the_node_has_it(self, tmp_path: Path) -> None:
        assert node_source(str(tmp_path), "m") == str(tmp_path)

    def test_the_same_revision_from_the_nodes_own_hub_cache(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Another user's cache on the daemon's machine: the node's own copy of that exact
        revision (never another revision)."""
        import huggingface_hub.constants

        cache = tmp_path / "node-cache"
        snap = cache / "models--org--tiny" / "snapshots" / self.REV
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        daemons = f"/home/someone/.cache/huggingface/hub/models--org--tiny/snapshots/{self.REV}"
        assert Path(node_source(daemons, "org/tiny")) == snap
        other = daemons.replace(self.REV, "f" * 40)
        with pytest.raises(ModelNotFound, match=f"hf download org/tiny --revision {'f' * 40}"):
            node_source(other, "org/tiny")

    def test_a_local_directory_missing_on_the_node_says_so(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFound, match="copy the model directory there"):
            node_source(str(tmp_path / "absent"), "mine")


class TestUnreachable:
    async def test_falls_back_to_the_local_worker_and_says_so(
            self, short_tmp: Path, tiny: Path) -> None:
        """Nothing listens at the address: the daemon runs the job locally, and status says
        why it did not use the cluster."""
        with anyio.fail_after(60):
            async with running_daemon(short_tmp, models__default=str(tiny),
                                      executor__kind="ray", executor__address="127.0.0.1:9",
                                      **FAST) as d, connect(d.socket_path) as c:
                await c.subscribe(["*"])
                job, _ = await run(c, "nowhere to go")
                ex = (await c.call("daemon.status"))["executor"]
        assert job["state"] == "done"
        assert job["placement"]["executor"] == "local"
        assert ex["kind"] == "local" and "127.0.0.1:9" in ex["fallback"]

    async def test_fallback_fail_fails_each_job_naming_the_cluster(
            self, short_tmp: Path, tiny: Path) -> None:
        with anyio.fail_after(60):
            async with running_daemon(short_tmp, models__default=str(tiny),
                                      executor__kind="ray", executor__address="127.0.0.1:9",
                                      executor__fallback="fail", **FAST) as d, \
                    connect(d.socket_path) as c:
                await c.subscribe(["*"])
                job, _ = await run(c, "nowhere to go")
        assert job["state"] == "failed"
        assert job["error"]["kind"] == "cluster_unavailable"
        assert job["error"]["message"].startswith("cannot reach the Ray cluster at 127.0.0.1:9")
