"""Jobs on a Ray cluster: the daemon as a Ray driver, one actor per device slot.

Ray's actors are long-lived processes placed by resources, which is exactly a warm model:
each :class:`RayActorExecutor` is one :class:`timbred.worker.ray_actor.RayWorker` pinned to
one node (a GPU of it, ``num_gpus=1``, or a CPU, ``num_cpus=1``), speaking the same
:class:`timbred.executors.Executor` protocol as the local worker process, so the scheduler
and residency treat both alike. Audio comes back through Ray's object store; the daemon
writes every take itself. Progress and preview chunks are polled from the actor while a
batch decodes; cancel is a call like any other.

A lost actor or node (its process killed, the machine gone) fails the calls in flight with
:class:`timbred.errors.ExecutorLost`, which the scheduler turns into a requeue on another
actor (``executor.retries``). Ray is imported only here, and only when ``executor.kind``
is ``ray``: it is an optional extra.

Ray's ports have no authentication: the README says to keep a cluster on a private network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from timbred import errors
from timbred.executors import BatchPreviewHandler, ProgressHandler
from timbred.request import Request
from timbred.worker.backend import GenerationOutput, Separation
from timbred.worker.process import (
    CANCELLABLE,
    LoadedModel,
    WorkerInfo,
    check_outputs,
    check_separation,
    generate_payload,
    load_payload,
    separate_payload,
)

log = logging.getLogger(__name__)

__all__ = ["Node", "RayActorExecutor", "connect", "nodes"]

#: How often a decoding actor is asked for its progress and preview messages.
POLL_S = 0.1
#: Calls a busy actor still answers at once (messages, cancel, ps) beside its generate.
ACTOR_CONCURRENCY = 8


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise errors.ClusterUnavailable(
            "(any)", "Ray is not installed; install it with `./install.sh --with ray`, or set "
            "[executor] kind = \"local\"") from exc
    return ray


def connect(address: str, namespace: str) -> dict[str, Any]:
    """Join the cluster at ``address`` as a driver (blocking; a no-op when joined). Returns
    what the cluster says about itself. Raises :class:`errors.ClusterUnavailable`."""
    ray = _ray()
    if ray.is_initialized():
        return {"address": address}
    _probe(address)
    try:
        context = ray.init(address=address, namespace=namespace, log_to_driver=False,
                           configure_logging=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
        raise errors.ClusterUnavailable(address, _one_line(exc)) from exc
    return {"address": address, "gcs_address": getattr(context, "address_info", {}).get(
        "gcs_address")}


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``address``: ``ray.init`` itself keeps retrying an
    unreachable GCS for minutes, logging to stderr, before it gives up."""
    if address == "auto":
        return  # Ray finds the local cluster from its session file, or says there is none
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdecimal():
        raise errors.ClusterUnavailable(address, "the address is not HOST:PORT, "
                                                 "ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise errors.ClusterUnavailable(address, exc.strerror or _one_line(exc)) from None


def disconnect() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class Node:
    """One cluster node as the pool sees it."""

    node_id: str
    ip: str
    alive: bool
    cpus: float
    gpus: int
    head: bool

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "ip": self.ip, "alive": self.alive,
                "cpus": self.cpus, "gpus": self.gpus, "head": self.head}


def nodes() -> list[Node]:
    """The cluster's nodes, alive or not (blocking)."""
    ray = _ray()
    out = []
    for entry in ray.nodes():
        resources = entry.get("Resources") or {}
        out.append(Node(node_id=str(entry["NodeID"]), ip=str(entry.get("NodeManagerAddress")),
                        alive=bool(entry.get("Alive")), cpus=float(resources.get("CPU", 0)),
                        gpus=int(resources.get("GPU", 0)),
                        head="node:__internal_head__" in resources))
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class RayActorExecutor:
    """One actor slot: a :class:`~timbred.worker.ray_actor.RayWorker` on ``node`` with
    ``gpu`` (one GPU) or one CPU. Started (placed) on first use, again after a loss."""

    def __init__(self, name: str, node: Node, *, gpu: bool, threads: int = 0,
                 start_timeout_s: float = 300.0) -> None:
        self.name = name
        self.node = node
        self.gpu = gpu
        self._threads = threads
        self._start_timeout_s = start_timeout_s
        self._actor: Any = None
        self._info: WorkerInfo | None = None
        self._where: dict[str, Any] = {}
        self._lost: str | None = None
        self._ids = itertools.count(1)
        self._generating: set[int] = set()
        self._lifecycle = anyio.Lock()

    # --- what it is ---------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._actor is not None and self._lost is None

    @property
    def info(self) -> WorkerInfo | None:
        return self._info

    @property
    def pid(self) -> int | None:
        return self._where.get("pid")

    def where(self) -> dict[str, Any]:
        """Where it runs: node, its address, the actor's id and process."""
        return {"executor": "ray", "worker": self.name, "node": self.node.node_id,
                "node_ip": self._where.get("node_ip", self.node.ip),
                "actor": self._where.get("actor_id"), "pid": self._where.get("pid")}

    def _lost_error(self, reason: str) -> errors.ExecutorLost:
        actor = self._where.get("actor_id") or "?"
        return errors.ExecutorLost(f"Ray actor {actor[:12]} on node {self.node.node_id[:12]} "
                                   f"({self.node.ip})", reason)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lifecycle:
            if self.alive:
                return
            await self._discard()
            ray = _ray()
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from timbred.worker.ray_actor import RayWorker

            # Pinned to its node (soft=False): a slot is a place, and a requeued job avoids
            # the slot it was lost on, so it lands on another node when there is one.
            resources = {"num_gpus": 1, "num_cpus": 0} if self.gpu else {"num_cpus": 1}
            actor_class = ray.remote(RayWorker).options(
                max_concurrency=ACTOR_CONCURRENCY, max_restarts=0, max_task_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(self.node.node_id,
                                                                   soft=False),
                **resources)
            self._lost = None
            self._actor = actor_class.remote(self._threads)
            try:
                with anyio.fail_after(self._start_timeout_s):
                    info = await self._get(self._actor.info.remote())
            except TimeoutError:
                await self._discard()
                raise errors.WorkerCrashed(
                    f"the Ray actor on node {self.node.node_id[:12]} was not placed and ready "
                    f"within {self._start_timeout_s:g} s (does the node have a free "
                    f"{'GPU' if self.gpu else 'CPU'}?)") from None
            except errors.ExecutorLost:
                await self._discard()
                raise
            self._info = WorkerInfo.from_dict(info)
            self._where = {"node_ip": info.get("node_ip"), "actor_id": info.get("actor_id"),
                           "pid": info.get("pid")}
            log.info("Ray actor %s ready on node %s (%s), pid %s", str(info.get("actor_id"))[:12],
                     self.node.node_id[:12], info.get("node_ip"), info.get("pid"))

    async def stop(self) -> None:
        async with self._lifecycle:
            if self._actor is not None and self._lost is None:
                with contextlib.suppress(errors.TimbreError), anyio.move_on_after(10):
                    await self._get(self._actor.shutdown.remote())
            await self._discard()

    async def _discard(self) -> None:
        actor, self._actor, self._info = self._actor, None, None
        self._generating.clear()
        if actor is not None:
            ray = _ray()
            with contextlib.suppress(Exception):  # already dead, or the cluster is gone
                await anyio.to_thread.run_sync(ray.kill, actor)

    # --- requests -----------------------------------------------------------------------

    async def load(self, model_id: str, source: str, device: str = "cpu",
                   dtype: str = "float32", *, backend: str = "musicgen",
                   options: Mapping[str, Any] | None = None) -> LoadedModel:
        payload = load_payload(model_id, source, device, dtype, backend, options)
        return LoadedModel.from_dict(await self._call("load", payload))

    async def unload(self, model_id: str) -> bool:
        return bool(await self._call("unload", {"model_id": model_id}))

    async def ps(self) -> list[LoadedModel]:
        actor = self._require()
        return [LoadedModel.from_dict(d) for d in await self._get(actor.ps.remote())]

    async def generate_batch(self, model_id: str, items: Sequence[Request],
                             on_progress: ProgressHandler | None = None, *,
                             on_preview: BatchPreviewHandler | None = None,
                             preview_chunk_s: float = 1.0) -> list[GenerationOutput]:
        payload = generate_payload(model_id, items, preview_chunk_s if on_preview else None)
        return check_outputs(await self._call("generate", payload, on_progress, on_preview),
                             len(items))

    async def separate(self, model_id: str, audio: npt.NDArray[np.float32], sample_rate: int,
                       options: Mapping[str, Any],
                       on_progress: ProgressHandler | None = None) -> Separation:
        payload = separate_payload(model_id, audio, sample_rate, options)
        return check_separation(await self._call("separate", payload, on_progress))

    async def cancel(self, item: int | None = None) -> None:
        if self._actor is None or self._lost is not None:
            return
        for rid in list(self._generating):
            self._actor.cancel.remote(rid, item)  # fire and forget: the batch answers

    # --- plumbing -----------------------------------------------------------------------

    def _require(self) -> Any:
        if self._lost is not None:
            raise self._lost_error(self._lost)
        if self._actor is None:
            raise errors.WorkerCrashed("the Ray actor is not running (call start() first)")
        return self._actor

    async def _get(self, ref: Any) -> Any:
        """Await one Ray call's result without blocking the event loop."""
        ray = _ray()
        try:
            return await asyncio.wrap_future(ref.future())
        except ray.exceptions.RayActorError as exc:  # the actor died, or its node did
            self._lost = _one_line(exc).split(" The actor is dead")[0]
            raise self._lost_error(_reason(exc)) from None
        except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
                ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            self._lost = _one_line(exc)
            raise self._lost_error(_reason(exc)) from None
        except ray.exceptions.RayTaskError as exc:  # a bug in the actor's own code
            raise errors.InternalError(f"the Ray actor failed: {_one_line(exc)}") from None

    async def _call(self, op: str, payload: dict[str, Any],
                    on_progress: ProgressHandler | None = None,
                    on_preview: BatchPreviewHandler | None = None) -> Any:
        actor = self._require()
        rid = next(self._ids)
        ref = actor.call.remote(op, rid, payload)
        if op in CANCELLABLE:
            self._generating.add(rid)
        try:
            if op in CANCELLABLE:
                reply = await self._follow(actor, rid, ref, on_progress, on_preview)
            else:
                reply = await self._get(ref)
        except BaseException:
            if op in CANCELLABLE and self._lost is None and self._actor is actor:
                # Our caller was cancelled (or lost interest): do not leave the actor busy.
                actor.cancel.remote(rid, None)
            raise
        finally:
            self._generating.discard(rid)
        kind, _, value = reply
        if kind == "error":
            code, message, data = value
            raise errors.error_from_wire(code, message, data)
        return value

    async def _follow(self, actor: Any, rid: int, ref: Any,
                      on_progress: ProgressHandler | None,
                      on_preview: BatchPreviewHandler | None) -> Any:
        """Wait for a generate call, relaying its progress and previews as they come."""
        done = asyncio.wrap_future(ref.future())

        async def relay() -> None:
            for kind, _, body in await self._get(actor.messages.remote(rid)):
                if kind == "progress" and on_progress is not None:
                    on_progress(int(body[0]), int(body[1]))
                elif kind == "preview" and on_preview is not None:
                    on_preview(int(body[0]), int(body[1]), body[2])

        last = time.monotonic()
        while not done.done():
            await asyncio.wait({done}, timeout=POLL_S)
            if time.monotonic() - last >= POLL_S or done.done():
                last = time.monotonic()
                await relay()
        return await self._get(ref)


def _reason(exc: BaseException) -> str:
    """Ray's long death notice, cut to what a user needs: which process, and how."""
    text = _one_line(exc)
    for marker in ("Worker exit detail:", "The actor is dead because", "The node"):
        at = text.find(marker)
        if at >= 0:
            return text[at:at + 200].rstrip()
    return text[:200]
