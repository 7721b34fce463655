"""The workers local jobs run on: one or more executors, each with the models it holds warm.

A *worker* here is one executor (a local worker process on one device, or one Ray actor on
one GPU or CPU of a cluster node) with its own :class:`~timbred.queue.residency.Residency`
and at most one batch at a time. The scheduler (:mod:`timbred.queue.generation`) asks the
pool for a free worker for a job's model: one that already holds it warm, else the least
busy; several workers decode several batches at once.

``[executor] kind = "local"`` makes one worker per entry of ``executor.devices`` (or
``executor.workers`` on ``daemon.device``); ``kind = "ray"`` joins the cluster at
``executor.address`` and makes one worker per GPU of each node (``executor.cpu_actors`` on
a node without one), found again as nodes come and go. A cluster that cannot be reached at
start falls back to one local worker, or fails each job saying why (``executor.fallback``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from timbred.config import Settings
from timbred.daemon.events import EventBus
from timbred.errors import ClusterUnavailable, InvalidJobState, TimbreError
from timbred.executors import Executor
from timbred.queue.jobs import Job
from timbred.queue.residency import Loaded, Residency
from timbred.worker.process import WorkerHandle

log = logging.getLogger(__name__)

__all__ = ["Pool", "Worker"]

#: How often a Ray pool looks at the cluster's nodes (new ones get workers, lost ones stop
#: being offered jobs).
REFRESH_S = 5.0
#: Longest the daemon waits for the cluster at start before saying it cannot be reached.
CONNECT_TIMEOUT_S = 60.0


@dataclass
class Worker:
    """One executor and what it holds; runs one batch at a time."""

    name: str
    executor: Executor
    residency: Residency
    #: The jobs of the batch it decodes now, in batch order.
    running: list[Job] = field(default_factory=list)
    #: Taken by the scheduler for a batch that is being gathered.
    claimed: bool = False
    #: Why it takes no jobs now (its node left the cluster), or None.
    down: str | None = None
    #: Running jobs a cancel was asked for -> their request index in the batch.
    cancel_jobs: dict[str, int] = field(default_factory=dict)
    #: Of those, the cancels still to be sent again once the executor reports progress.
    cancel_repeats: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    @property
    def busy(self) -> bool:
        return self.claimed or bool(self.running)

    def holds(self, model: str) -> bool:
        return any(model in (e.name, e.model_id) for e in self.residency.loaded.values())

    def placement(self) -> dict[str, Any]:
        """Where a job on this worker runs (``Job.placement``)."""
        device = (self.residency.device or {}).get("device")
        return {**self.executor.where(), "worker": self.name, "device": device}

    def status(self) -> dict[str, Any]:
        where = self.executor.where()
        return {"name": self.name, **where, "worker": self.name,
                "device": (self.residency.device or {}).get("device"),
                "alive": self.executor.alive, "busy": self.busy, "down": self.down,
                "jobs": [job.id for job in self.running],
                "models": sorted(e.name for e in self.residency.loaded.values())}


class Pool:
    """The workers of one daemon (see the module docstring)."""

    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.bus = bus
        self.kind: str = settings["executor.kind"]
        self.workers: list[Worker] = []
        #: The cluster, once joined: its address and nodes (``daemon.status``).
        self.cluster: dict[str, Any] | None = None
        #: Why a Ray pool runs locally instead (the cluster was unreachable at start).
        self.fallback: str | None = None
        #: What every job fails with when there is nowhere to run it (fallback = "fail").
        self.error: TimbreError | None = None
        self._nodes: dict[str, Any] = {}
        self._refreshed = 0.0
        if self.kind == "local":
            self._add_local()

    # --- building -----------------------------------------------------------------------

    def _add_local(self) -> None:
        devices = list(self.settings["executor.devices"]) or (
            [self.settings["daemon.device"]] * int(self.settings["executor.workers"]))
        threads = int(self.settings["daemon.threads"])
        if threads == 0 and len(devices) > 1:
            # CPU workers share the cores; torch's default (all of them each) would have
            # them fight over every core.
            threads = max(1, (os.cpu_count() or 1) // len(devices))
        share = 1.0 / max(1, sum(1 for d in devices if not str(d).startswith("cuda")))
        for index, device in enumerate(devices):
            handle = WorkerHandle(threads=threads)
            residency = Residency(self.settings, self.bus, handle, device=str(device),
                                  host_share=share)
            self.workers.append(Worker(f"local-{index}", handle, residency))

    async def start(self) -> None:
        """Join the cluster (a Ray pool); the local workers start with their first job."""
        if self.kind != "ray":
            return
        address = str(self.settings["executor.address"])
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                await anyio.to_thread.run_sync(self._connect, address, abandon_on_cancel=True)
        except (ClusterUnavailable, TimeoutError) as exc:
            reason = (exc if isinstance(exc, ClusterUnavailable)
                      else ClusterUnavailable(address, f"no answer within "
                                                       f"{CONNECT_TIMEOUT_S:g} s"))
            if self.settings["executor.fallback"] == "local":
                self.fallback = reason.message
                log.warning("%s; running jobs on this machine's worker instead "
                            "([executor] fallback = \"local\")", reason)
                self.kind = "local"
                self._add_local()
            else:
                self.error = reason
                log.error("%s; jobs fail until it can be reached and timbred restarts "
                          "([executor] fallback = \"fail\")", reason)
            return
        self.cluster = {"address": address, "nodes": []}
        await self.refresh(force=True)
        log.info("joined the Ray cluster at %s: %d node(s), %d worker(s)", address,
                 len(self._nodes), len(self.workers))

    def _connect(self, address: str) -> None:
        from timbred.executors import ray as ray_executor

        ray_executor.connect(address, str(self.settings["executor.namespace"]))

    async def refresh(self, *, force: bool = False) -> None:
        """A Ray pool: workers for nodes that joined, none offered on nodes that left."""
        if self.cluster is None or (not force and time.monotonic() - self._refreshed
                                    < REFRESH_S):
            return
        self._refreshed = time.monotonic()
        from timbred.executors import ray as ray_executor

        try:
            found = await anyio.to_thread.run_sync(ray_executor.nodes)
        except Exception as exc:  # the cluster itself went away: say so, keep what we have
            log.warning("cannot list the Ray cluster's nodes: %s", exc)
            return
        known = {w.name for w in self.workers}
        for node in found:
            self._nodes[node.node_id] = node
            short = node.node_id[:8]
            if node.alive:
                slots = ([(f"ray-{short}-gpu{i}", True) for i in range(node.gpus)]
                         or [(f"ray-{short}-cpu{i}", False)
                             for i in range(int(self.settings["executor.cpu_actors"]))])
                for name, gpu in slots:
                    if name not in known:
                        executor = ray_executor.RayActorExecutor(
                            name, node, gpu=gpu, threads=int(self.settings["daemon.threads"]))
                        residency = Residency(self.settings, self.bus, executor, device="auto")
                        self.workers.append(Worker(name, executor, residency))
            for worker in self.workers:
                if worker.name.startswith(f"ray-{short}-"):
                    worker.down = None if node.alive else f"node {short} ({node.ip}) is gone"
        self.cluster = {**self.cluster, "nodes": [n.to_dict() for n in self._nodes.values()]}

    async def stop(self) -> None:
        for worker in self.workers:
            with anyio.CancelScope(shield=True):
                await worker.executor.stop()
        if self.cluster is not None:
            from timbred.executors import ray as ray_executor

            await anyio.to_thread.run_sync(ray_executor.disconnect)

    # --- choosing -----------------------------------------------------------------------

    def usable(self) -> list[Worker]:
        return [w for w in self.workers if w.down is None]

    def choose(self, model: str, avoid: Iterable[str] = ()) -> Worker | None:
        """A free worker for a job of ``model``: one that holds it warm, else the least
        busy. ``avoid``: workers the job was lost on (ignored when no other is left)."""
        usable = self.usable()
        others = [w for w in usable if w.name not in set(avoid)]
        free = [w for w in (others or usable) if not w.busy]
        if not free:
            return None
        warm = [w for w in free if w.holds(model)]
        if warm:
            return warm[0]
        return min(free, key=lambda w: (len(w.residency.loaded), w.batches))

    def running(self) -> list[Job]:
        return [job for w in self.workers for job in w.running]

    def worker_of(self, job_id: str) -> Worker | None:
        return next((w for w in self.workers if any(j.id == job_id for j in w.running)), None)

    # --- what it holds ------------------------------------------------------------------

    def device(self) -> dict[str, Any] | None:
        """The first started worker's device (``daemon.status``' ``device.active``)."""
        return next((w.residency.device for w in self.workers if w.residency.device), None)

    def ps(self) -> list[dict[str, Any]]:
        return [{**entry, "worker": w.name} for w in self.workers for entry in w.residency.ps()]

    def loaded_names(self) -> set[str]:
        return {e.name for w in self.workers for e in w.residency.loaded.values()}

    async def load_model(self, model: str, keep_alive: float | None) -> Loaded:
        """Load ``model`` on the worker a job of it would go to (an idle one if any)."""
        worker = self.choose(model) or next(iter(self.usable()), None)
        if worker is None:
            raise self.error or ClusterUnavailable(
                str(self.settings["executor.address"]), "no worker is available")
        return await worker.residency.load_model(model, keep_alive)

    async def unload_model(self, model: str, *,
                           busy: Callable[[Worker], InvalidJobState | None]) -> bool:
        """Unload ``model`` from every worker holding it; ``busy(worker)`` says why not."""
        unloaded = False
        for worker in self.workers:
            def refusal(worker: Worker = worker) -> InvalidJobState | None:
                return busy(worker)

            if await worker.residency.unload_model(model, busy=refusal):
                unloaded = True
        return unloaded

    async def expire(self) -> None:
        async with anyio.create_task_group() as tg:
            for worker in self.workers:
                tg.start_soon(worker.residency.expire)
            # Workers for nodes that join later expire their models too.
            started = {w.name for w in self.workers}
            while True:
                await anyio.sleep(REFRESH_S)
                await self.refresh()
                for worker in self.workers:
                    if worker.name not in started:
                        started.add(worker.name)
                        tg.start_soon(worker.residency.expire)

    def status(self) -> dict[str, Any]:
        """``daemon.status``' ``executor``: the workers, and the cluster's nodes."""
        return {"kind": self.kind, "address": (self.cluster or {}).get("address"),
                "fallback": self.fallback,
                "error": None if self.error is None else self.error.message,
                "workers": [w.status() for w in self.workers],
                "nodes": list((self.cluster or {}).get("nodes", []))}
