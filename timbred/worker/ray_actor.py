"""The Ray actor that keeps models warm on a cluster node: the worker process's state
(:class:`timbred.worker.process._Worker`, the same loads, batches, cancel tokens and errors)
behind Ray method calls instead of a pipe.

Ray runs this class in a worker process of whichever node the daemon placed it on
(:mod:`timbred.executors.ray` wraps it with ``ray.remote`` and calls it); this module itself
imports neither Ray nor torch, so the daemon can import it to name it.

Calls run in the actor's thread pool (``max_concurrency`` > 1), so ``messages``, ``cancel``
and ``ps`` are answered while a ``call("generate", ...)`` decodes. Progress and preview chunks
cannot be pushed to the driver; they wait in an outbox until its next ``messages`` poll.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from timbred import errors
from timbred.worker.process import _Worker, prepare_inference

__all__ = ["RayWorker", "node_source"]

#: A Hugging Face cache snapshot: ``.../models--ORG--NAME/snapshots/REVISION``.
_SNAPSHOT = re.compile(r"/models--(?P<repo>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})/?$")


def node_source(source: str, model: str) -> str:
    """Where this node has the files the daemon found at ``source`` on its own machine.

    The same path when it exists here (one machine, a shared cache, the same user and home).
    Else a Hub model's same revision in this node's own Hugging Face cache (``ray start`` run
    by another user, another cache path). Else :class:`errors.ModelNotFound`, naming the node
    and what to do: a job never runs another revision than the one the daemon resolved.
    """
    if Path(source).is_dir():
        return source
    found = _SNAPSHOT.search(source)
    if found is not None:
        from huggingface_hub import snapshot_download

        repo = found["repo"].replace("--", "/")
        # Any failure means: not in this node's cache (or an incomplete copy of it).
        with contextlib.suppress(Exception):
            return str(snapshot_download(repo, revision=found["revision"],
                                         local_files_only=True))
        hint = (f"not on this Ray node ({socket.gethostname()}): run `hf download {repo} "
                f"--revision {found['revision']}` there as the user who runs `ray start`, "
                f"or share the Hugging Face cache")
    else:
        hint = (f"{source} is not on this Ray node ({socket.gethostname()}): copy the model "
                f"directory there at the same path")
    raise errors.ModelNotFound(model, hint)


class _Outbox:
    """Stands in for the worker's pipe: keeps each request's messages until collected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: defaultdict[int, list[tuple[str, int, Any]]] = defaultdict(list)

    def send(self, message: tuple[str, int, Any]) -> None:
        with self._lock:
            self._messages[message[1]].append(message)

    def take(self, rid: int) -> list[tuple[str, int, Any]]:
        with self._lock:
            return self._messages.pop(rid, [])


class RayWorker:
    """One warm-model holder on one device of one node (see the module docstring)."""

    def __init__(self, threads: int = 0) -> None:
        self._info = prepare_inference(threads)
        self._outbox = _Outbox()
        self._worker = _Worker(self._outbox)
        self._lock = threading.Lock()
        #: Cancels that overtook their generate call (Ray does not order calls across
        #: the actor's threads): applied when it registers.
        self._early: dict[int, int | None] = {}

    def info(self) -> dict[str, Any]:
        """What :meth:`WorkerInfo.from_dict` reads, and where this actor runs."""
        import ray  # a Ray worker process: Ray is there

        context = ray.get_runtime_context()
        return {**self._info, "node_id": context.get_node_id(),
                "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                "actor_id": context.get_actor_id(), "pid": os.getpid()}

    def call(self, op: str, rid: int, payload: dict[str, Any]) -> tuple[str, int, Any]:
        """Run ``load``, ``unload`` or ``generate``: the reply message, as the pipe's."""
        if op == "load":
            try:
                payload = {**payload, "source": node_source(str(payload["source"]),
                                                            str(payload["model_id"]))}
            except errors.TimbreError as exc:
                return ("error", rid, (exc.code, exc.message, exc.data))
        self._worker.register(op, rid, payload)
        with self._lock:
            early = self._early.pop(rid, -1)
        if early != -1:
            self._worker.cancel(rid, early)
        return self._worker.run(op, rid, payload)

    def messages(self, rid: int) -> list[tuple[str, int, Any]]:
        """Progress and preview messages of request ``rid`` since the last poll."""
        return self._outbox.take(rid)

    def cancel(self, rid: int, item: int | None = None) -> None:
        with self._worker.lock:
            known = rid in self._worker.tokens
        if not known:
            with self._lock:
                self._early[rid] = item
        self._worker.cancel(rid, item)

    def ps(self) -> list[dict[str, Any]]:
        return self._worker.listing()

    def shutdown(self) -> None:
        """Release every model (before the driver kills the actor)."""
        self._worker.unload_all()
