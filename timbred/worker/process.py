"""The inference worker process and the daemon's handle on it.

Models stay warm in one separate process, started with the ``spawn`` method (never
``fork``: the daemon runs threads and an event loop, and CUDA cannot survive a fork). Only
that process imports torch and transformers; this module, which the daemon imports, must
not (``tests/worker/test_process.py`` checks it).

Wire (over one duplex :func:`multiprocessing.Pipe`, pickled tuples)
------------------------------------------------------------------
Requests, parent -> child: ``(op, request_id, payload)`` with ``op`` one of ``load``,
``unload``, ``generate``, ``ps``, ``stop`` and ``cancel`` (whose payload names the
``target`` request). Replies, child -> parent: ``("ready", 0, info)`` once at start-up,
``("progress", id, (step, total))`` while generating (throttled), then ``("ok", id, value)``
or ``("error", id, (code, message, data))``; errors are rebuilt in the parent with
:func:`errors.error_from_wire`, so they arrive as the same :mod:`timbred.errors` class.

In the child, a reader thread owns the receiving end: it answers ``ps`` and ``cancel`` at
once (``cancel`` sets the request's :class:`CancelToken`, so it works mid-generation) and
queues everything else for the main thread, which runs requests one at a time.

In the parent, :class:`WorkerHandle` never blocks the event loop: it waits for the pipe *or*
the process sentinel with :func:`anyio.wait_readable`, so a worker that dies (SIGKILL, the
OOM killer, a segfault, ``os._exit``) fails every request in flight with
:class:`errors.WorkerCrashed` at once instead of hanging. Whichever waiting request task
is first reads the pipe on behalf of all of them (leader/followers), so no background task
or task group has to outlive a call.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import numpy.typing as npt

from timbred import errors
from timbred.backends import registry
from timbred.executors import BatchPreviewHandler, ProgressHandler
from timbred.request import Request
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    Preview,
    Separation,
    validate_device,
    validate_dtype,
)
from timbred.worker.device import CudaDevice, is_oom, oom_reason, release_memory
from timbred.worker.device import probe as probe_devices

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = ["LoadedModel", "WorkerHandle", "WorkerInfo"]

_log = logging.getLogger(__name__)

#: At most this often (seconds) a progress message crosses the pipe; the last step always does.
PROGRESS_INTERVAL_S = 0.05
#: Requests that run long, report progress and can be cancelled.
CANCELLABLE = ("generate", "separate")

_READY_ID = 0


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded in the worker, as :meth:`WorkerHandle.ps` reports it."""

    model_id: str
    source: str
    backend: str
    device: str
    dtype: str
    memory_bytes: int
    capabilities: Capabilities
    warnings: tuple[str, ...] = ()
    """What the load had to give up (:attr:`Backend.load_warnings`); logged by the daemon."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["capabilities"] = self.capabilities.to_dict()
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadedModel:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model_id=str(data["model_id"]),
            source=str(data["source"]),
            backend=str(data["backend"]),
            device=str(data["device"]),
            dtype=str(data["dtype"]),
            memory_bytes=int(data["memory_bytes"]),
            capabilities=Capabilities.from_dict(data["capabilities"]),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
        )


@dataclass(frozen=True)
class WorkerInfo:
    """What the worker reports once it has started."""

    pid: int
    python: str
    torch: str
    threads: int
    cuda_devices: tuple[str, ...]
    cuda: tuple[CudaDevice, ...] = ()
    """The same devices with their memory and bfloat16 support."""

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> WorkerInfo:
        """From the ``ready`` message (:func:`prepare_inference`'s answer)."""
        return cls(
            pid=int(info["pid"]), python=str(info["python"]), torch=str(info["torch"]),
            threads=int(info["threads"]), cuda_devices=tuple(info["cuda_devices"]),
            cuda=tuple(CudaDevice.from_dict(d) for d in info.get("cuda", info["cuda_devices"])),
        )


# --- child side ------------------------------------------------------------------------------


def _backend_factory(name: str, implementation: str) -> Callable[..., Backend]:
    """The backend class at ``implementation`` (``module:Class``, from the daemon's registry,
    which is the only place that maps family names to code)."""
    module, _, attr = implementation.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise errors.ModelLoadFailed(name, f"backend {name!r} cannot be imported from "
                                     f"{implementation}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend) and cls.name == name):
        raise errors.InternalError(f"{implementation} is not the {name!r} backend")
    return cls


@dataclass
class _Slot:
    model_id: str
    source: str
    device: str
    dtype: str
    backend_name: str
    options: dict[str, Any]
    backend: Backend

    def describe(self) -> dict[str, Any]:
        return LoadedModel(
            model_id=self.model_id,
            source=self.source,
            backend=self.backend_name,
            device=self.device,
            dtype=self.dtype,
            memory_bytes=self.backend.memory_bytes(),
            capabilities=self.backend.capabilities,
            warnings=self.backend.load_warnings,
        ).to_dict()


class _Worker:
    """The child's state: loaded models, cancel tokens, and the two loops.

    Also the state of a Ray actor (:mod:`timbred.worker.ray_actor`), which calls
    :meth:`register`, :meth:`run` and :meth:`cancel` itself and hands a ``conn`` whose
    ``send`` keeps progress and preview messages until the driver collects them.
    """

    def __init__(self, conn: Connection | Any) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.inbox: queue.SimpleQueue[tuple[str, int, dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self.lock = threading.Lock()  # guards models and tokens (reader thread vs main)
        self.models: dict[str, _Slot] = {}
        self.tokens: dict[int, list[CancelToken]] = {}  # one per request of a batch

    def send(self, message: tuple[str, int, Any]) -> None:
        # The main thread (replies, progress) and the reader thread (ps) both send.
        with self.send_lock:
            self.conn.send(message)

    def read_loop(self) -> None:
        """Reader thread: answer ps/cancel at once, queue the rest for the main thread."""
        while True:
            try:
                op, rid, payload = self.conn.recv()
            except (EOFError, OSError):
                # The parent is gone: stop whatever runs and let the main loop end.
                with self.lock:
                    for tokens in self.tokens.values():
                        for token in tokens:
                            token.cancel()
                self.inbox.put(None)
                return
            if op == "cancel":
                self.cancel(payload.get("target", -1), payload.get("item"))
            elif op == "ps":
                self._send_quietly(("ok", rid, self.listing()))
            else:
                # Registered before queueing, so a cancel that overtakes the start of the
                # generation still finds its token.
                self.register(op, rid, payload)
                self.inbox.put((op, rid, payload))

    def register(self, op: str, rid: int, payload: Mapping[str, Any]) -> None:
        """A long request's cancel tokens: a generation's, one per request of its batch; a
        separation's, one."""
        if op in CANCELLABLE:
            count = len(payload.get("items", ())) if op == "generate" else 1
            with self.lock:
                self.tokens[rid] = [CancelToken() for _ in range(count)]

    def cancel(self, target: int, item: int | None) -> None:
        with self.lock:
            targets = list(self.tokens.get(target, ()))
        for index, one in enumerate(targets):
            if item is None or item == index:
                one.cancel()

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            return [slot.describe() for slot in self.models.values()]

    def _send_quietly(self, message: tuple[str, int, Any]) -> None:
        with contextlib.suppress(OSError):  # parent gone; read_loop notices on its next recv
            self.send(message)

    def main_loop(self) -> None:
        """Main thread: run requests one at a time until ``stop`` or the parent goes away."""
        while True:
            item = self.inbox.get()
            if item is None:
                break
            op, rid, payload = item
            if op == "stop":
                self._send_quietly(("ok", rid, None))
                break
            try:
                self.send(self.run(op, rid, payload))
            except OSError:
                break
        self.unload_all()

    def run(self, op: str, rid: int, payload: dict[str, Any]) -> tuple[str, int, Any]:
        """One request, answered as its reply message (every failure a wire error)."""
        try:
            result = self.handle(op, rid, payload)
        except errors.TimbreError as exc:
            return ("error", rid, (exc.code, exc.message, exc.data))
        except Exception as exc:
            _log.exception("worker request %s failed", op)
            err = _unexpected(op, payload, exc, self.device_of(payload))
            return ("error", rid, (err.code, err.message, err.data))
        finally:
            with self.lock:
                self.tokens.pop(rid, None)
        return ("ok", rid, result)

    def unload_all(self) -> None:
        with self.lock:
            slots = list(self.models.values())
            self.models.clear()
        for slot in slots:
            slot.backend.unload()

    def device_of(self, payload: Mapping[str, Any]) -> str:
        """The device a request's model is (or was to be) loaded on."""
        with self.lock:
            slot = self.models.get(str(payload.get("model_id")))
        return slot.device if slot is not None else str(payload.get("device", "cpu"))

    def handle(self, op: str, rid: int, payload: dict[str, Any]) -> Any:
        if op == "load":
            return self.load(**payload)
        if op == "unload":
            return self.unload(str(payload["model_id"]))
        if op == "generate":
            return self.generate(rid, str(payload["model_id"]), payload["items"],
                                 payload.get("preview_s"))
        if op == "separate":
            return self.separate(rid, payload)
        raise errors.InternalError(f"unknown worker request {op!r}")

    def load(self, model_id: str, source: str, device: str, dtype: str, backend: str,
             options: dict[str, Any], implementation: str | None = None) -> dict[str, Any]:
        with self.lock:
            existing = self.models.get(model_id)
        wanted = (source, validate_device(device), validate_dtype(dtype), backend, options)
        if existing is not None:
            have = (existing.source, existing.device, existing.dtype, existing.backend_name,
                    existing.options)
            if have == wanted:
                return existing.describe()
            self.unload(model_id)
        # The daemon sends where the family's code is (a family it registered at run time,
        # such as a test's, is unknown to this process's registry); a built-in's is known.
        factory = _backend_factory(backend, implementation or registry.get(backend).implementation)
        try:
            instance = factory(**options)
        except TypeError as exc:
            raise errors.InvalidParams(f"bad backend options: {exc}", param="options") from exc
        instance.load(source, device=wanted[1], dtype=wanted[2])
        slot = _Slot(model_id, source, wanted[1], wanted[2], backend, options, instance)
        with self.lock:
            self.models[model_id] = slot
        return slot.describe()

    def unload(self, model_id: str) -> bool:
        with self.lock:
            slot = self.models.pop(model_id, None)
        if slot is None:
            return False
        device = slot.device
        slot.backend.unload()
        del slot  # the last reference to the backend: its model can go now
        release_memory(device)
        return True

    def generate(self, rid: int, model_id: str, items: Sequence[Mapping[str, Any]],
                 preview_s: float | None = None) -> list[GenerationOutput]:
        with self.lock:
            slot = self.models.get(model_id)
            tokens = self.tokens.get(rid)
        if slot is None:
            raise errors.ModelNotFound(model_id, "it is not loaded in the inference worker")
        batch = [Request.from_dict(item) for item in items]
        if tokens is None or len(tokens) != len(batch):
            tokens = [CancelToken() for _ in batch]
        progress = self._progress(rid)

        def send_preview(start: int, audio: npt.NDArray[np.float32]) -> None:
            row = 0
            for index, params in enumerate(batch):
                rows = audio[row: row + params.variations]
                self.send(("preview", rid, (index, start, np.ascontiguousarray(rows))))
                row += params.variations

        preview = None if preview_s is None else Preview(float(preview_s), send_preview)
        began = time.perf_counter()
        outputs = slot.backend.generate_batch(batch, progress, tokens, preview)
        decode_s = time.perf_counter() - began
        for out in outputs:
            out.info["model_id"] = model_id
            out.decode_s = decode_s
        return outputs

    def _progress(self, rid: int) -> Callable[[int, int], None]:
        """Request ``rid``'s progress messages, about 20 a second (first and last always)."""
        last = 0.0

        def progress(step: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if step == 1 or step >= total or now - last >= PROGRESS_INTERVAL_S:
                last = now
                self.send(("progress", rid, (step, total)))
        return progress

    def separate(self, rid: int, payload: Mapping[str, Any]) -> Separation:
        """A take's audio into stems with a loaded separator (``takes.stems``)."""
        model_id = str(payload["model_id"])
        with self.lock:
            slot = self.models.get(model_id)
            tokens = self.tokens.get(rid)
        if slot is None:
            raise errors.ModelNotFound(model_id, "it is not loaded in the inference worker")
        separate = getattr(slot.backend, "separate", None)
        if separate is None:
            raise errors.InvalidParams(f"{model_id} ({slot.backend_name}) does not separate "
                                       "stems", param="model")
        began = time.perf_counter()
        result: Separation = separate(payload["audio"], int(payload["sample_rate"]),
                                      shifts=int(payload.get("shifts", 1)),
                                      overlap=float(payload.get("overlap", 0.25)),
                                      seed=int(payload.get("seed", 0)),
                                      progress=self._progress(rid),
                                      cancel=tokens[0] if tokens else None)
        result.info["model_id"] = model_id
        result.info["separate_s"] = time.perf_counter() - began
        return result


def _unexpected(op: str, payload: Mapping[str, Any], exc: Exception,
                device: str = "cpu") -> errors.TimbreError:
    reason = f"{type(exc).__name__}: {exc}"
    if is_oom(exc):  # a backend that let torch's own error through
        reason = oom_reason(exc, device)
        release_memory(device)
    if op == "load":
        return errors.ModelLoadFailed(str(payload.get("source", "?")), reason)
    if op in CANCELLABLE:
        return errors.GenerationFailed(reason)
    return errors.InternalError(f"worker request {op} failed: {reason}")


def prepare_inference(threads: int) -> dict[str, Any]:
    """Set up a process that will run backends (a worker, a Ray actor) and say what it is:
    its ``ready`` message's payload (:meth:`WorkerInfo.from_dict`)."""
    # Set before transformers is imported, which reads them once. Loading bars and per-load
    # config warnings would flood the daemon's log; the worker never downloads (the model
    # manager does), so the hub stays offline here whatever the daemon's environment says.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    cuda = probe_devices()
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_devices": tuple(d.name for d in cuda),
        "cuda": [d.to_dict() for d in cuda],
    }


def _child_main(conn: Connection, threads: int) -> None:
    """Entry point of the worker process (run by multiprocessing's spawn)."""
    # Ctrl-C in a terminal reaches the whole process group; the daemon decides when the
    # worker stops (it sends "stop"), so the worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = prepare_inference(threads)
    worker = _Worker(conn)
    worker.send(("ready", _READY_ID, info))
    threading.Thread(target=worker.read_loop, name="timbre-worker-reader", daemon=True).start()
    worker.main_loop()
    conn.close()
    # Every reply is sent and every model unloaded: skip the interpreter's teardown (which,
    # with torch loaded, takes about a second and can hang on library threads).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- parent side -----------------------------------------------------------------------------


#: ``on_preview(start, audio)``: see :data:`timbred.worker.backend.PreviewSink`.
PreviewHandler = Callable[[int, npt.NDArray[np.float32]], None]


class _Pending:
    """One request awaiting its reply."""

    def __init__(self, op: str, on_progress: ProgressHandler | None = None,
                 on_preview: BatchPreviewHandler | None = None) -> None:
        self.op = op
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.callback_error: BaseException | None = None
        self.wakeup = anyio.Event()

    def resolve(self, value: Any) -> None:
        if not self.done:
            self.done, self.value = True, value
            self.wakeup.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done, self.error = True, error
            self.wakeup.set()

    def outcome(self) -> Any:
        # A failing progress callback cancelled the request; its error is the real story.
        if self.callback_error is not None:
            raise self.callback_error
        if self.error is not None:
            raise self.error
        return self.value


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exited with status {exitcode}"


class _Session:
    """One worker process, its pipe and the requests in flight on it.

    A restart makes a new session; a task still reading the old pipe finishes with the
    old session (fails its requests, closes its pipe) and cannot touch the new one.
    """

    def __init__(self, proc: BaseProcess, conn: Connection) -> None:
        self.proc = proc
        self.conn: Connection | None = conn
        self.pending: dict[int, _Pending] = {}
        self.reading = False
        self.stopping = False
        self.crash: errors.WorkerCrashed | None = None

    @property
    def alive(self) -> bool:
        return self.conn is not None and self.crash is None and self.proc.is_alive()

    def crash_error(self) -> errors.WorkerCrashed:
        """A fresh WorkerCrashed for this session (one instance per raising task)."""
        if self.crash is not None:
            return errors.WorkerCrashed(str(self.crash.data["reason"]),
                                        exitcode=self.crash.data.get("exitcode"))
        code = self.proc.exitcode
        return errors.WorkerCrashed(_describe_exit(code), exitcode=code)

    def send(self, message: tuple[str, int, Any]) -> None:
        conn = self.conn
        if conn is None:
            raise self.crash_error()
        try:
            # Requests are small, so this never blocks for long (replies are the big ones).
            conn.send(message)
        except OSError as exc:
            raise self.crash_error() from exc

    def cancel(self, rid: int, item: int | None = None) -> None:
        """Cancel request ``rid`` (``item``: only that request of its batch)."""
        # On failure, the reading task reports the crash to the request itself.
        with contextlib.suppress(errors.WorkerCrashed):
            self.send(("cancel", 0, {"target": rid, "item": item}))

    def cancel_generations(self, item: int | None = None) -> None:
        for rid, pending in list(self.pending.items()):
            if pending.op in CANCELLABLE and not pending.done:
                self.cancel(rid, item)

    async def wait(self, pending: _Pending) -> Any:
        """Wait for ``pending``'s reply, reading the pipe for everyone if nobody else is."""
        while not pending.done:
            if self.reading:
                pending.wakeup = anyio.Event()
                await pending.wakeup.wait()
                continue
            self.reading = True
            try:
                while not pending.done:
                    await self._pump()
            finally:
                self.reading = False
                # Hand the reading over: another waiter becomes the reader.
                for other in list(self.pending.values()):
                    other.wakeup.set()
        return pending.outcome()

    async def _pump(self) -> None:
        """Receive and dispatch one message, or notice that the worker died."""
        conn = self.conn
        if conn is None:
            self.fail_all()
            return
        try:
            if not conn.poll():
                await _readable_either(conn.fileno(), self.proc.sentinel)
            if conn.poll():
                # The message is arriving; receive it whole even if our caller is cancelled
                # meanwhile, or the stream would lose its framing. In a thread, because a
                # large reply (audio) takes a moment to copy.
                with anyio.CancelScope(shield=True):
                    message = await anyio.to_thread.run_sync(conn.recv)
                self._dispatch(message)
                return
        except (EOFError, OSError):
            pass
        await self._on_death()

    def _dispatch(self, message: tuple[str, int, Any]) -> None:
        kind, rid, payload = message
        pending = self.pending.get(rid)
        if pending is None:
            return  # the reply to an abandoned (cancelled) request
        if kind in ("progress", "preview"):
            handler = pending.on_progress if kind == "progress" else pending.on_preview
            if handler is not None and pending.callback_error is None:
                try:
                    handler(*payload)
                except Exception as exc:
                    pending.callback_error = exc
                    self.cancel(rid)
        elif kind in ("ok", "ready"):
            pending.resolve(payload)
        elif kind == "error":
            code, text, data = payload
            pending.fail(errors.error_from_wire(code, text, data))
        else:
            pending.fail(errors.InternalError(f"unknown worker message {kind!r}"))

    async def _on_death(self) -> None:
        # The sentinel fired or the pipe hit EOF: the process is gone or about to be.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.proc.join, 5.0)
            if self.proc.is_alive():  # the pipe broke but the process lingers
                self.proc.kill()
                await anyio.to_thread.run_sync(self.proc.join, 5.0)
        code = self.proc.exitcode
        reason = "the worker was stopped" if self.stopping else _describe_exit(code)
        if self.crash is None:
            self.crash = errors.WorkerCrashed(reason, exitcode=code)
            if not self.stopping:
                _log.error("inference worker (pid %s) died: %s", self.proc.pid, reason)
        self.close()

    def fail_all(self) -> None:
        for pending in list(self.pending.values()):
            pending.fail(self.crash_error())

    def close(self) -> None:
        """Fail what is pending and close the pipe (only when nobody waits on it)."""
        if self.crash is None:
            self.crash = errors.WorkerCrashed("the worker was stopped", exitcode=self.proc.exitcode)
        self.fail_all()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class WorkerHandle:
    """The daemon's async handle on the inference worker process.

    ``threads`` sets torch's intra-op threads in the worker (0: torch's default).
    ``start_timeout_s`` bounds start-up (importing torch can take a while on a cold disk);
    ``stop_timeout_s`` bounds a polite :meth:`stop` before the worker is killed.

    Requests may be made from several tasks at once; the worker runs ``load``, ``unload``
    and ``generate`` one at a time in arrival order, and answers ``ps`` and ``cancel`` at
    once, even mid-generation. If the worker dies, every request in flight raises
    :class:`errors.WorkerCrashed`; later requests raise it too until :meth:`start` is
    called again.
    """

    def __init__(self, *, threads: int = 0, start_timeout_s: float = 120.0,
                 stop_timeout_s: float = 10.0) -> None:
        if threads < 0:
            raise ValueError("threads must be >= 0")
        self._threads = threads
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._session: _Session | None = None
        self._info: WorkerInfo | None = None
        self._ids = itertools.count(1)
        self._lifecycle = anyio.Lock()

    @property
    def pid(self) -> int | None:
        """The worker's process id (also after it died, until the next start or stop)."""
        return None if self._session is None else self._session.proc.pid

    def where(self) -> dict[str, Any]:
        """Where it runs (``Job.placement``): this machine, its process."""
        return {"executor": "local", "pid": self.pid}

    @property
    def alive(self) -> bool:
        """Whether the worker process is running and usable."""
        return self._session is not None and self._session.alive

    @property
    def info(self) -> WorkerInfo | None:
        """What the running worker reported at start-up."""
        return self._info

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker (or restart it after a crash) and wait until it is ready.

        A no-op if it is already running. Raises :class:`errors.WorkerCrashed` if it dies or
        does not become ready within ``start_timeout_s``.
        """
        async with self._lifecycle:
            if self.alive:
                return
            await self._discard()
            ctx = multiprocessing.get_context("spawn")
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_child_main, args=(child_conn, self._threads),
                               name="timbre-worker", daemon=True)
            # spawn's start() forks+execs and writes the preparation data: blocking work.
            await anyio.to_thread.run_sync(proc.start)
            child_conn.close()
            session = self._session = _Session(proc, parent_conn)
            ready = session.pending[_READY_ID] = _Pending("ready")
            try:
                with anyio.fail_after(self._start_timeout_s):
                    info = await session.wait(ready)
            except TimeoutError:
                session.stopping = True
                await _kill(proc)
                session.close()
                raise errors.WorkerCrashed(
                    f"it did not become ready within {self._start_timeout_s:g} s"
                ) from None
            finally:
                session.pending.pop(_READY_ID, None)
            self._info = WorkerInfo.from_dict(info)

    async def stop(self) -> None:
        """Stop the worker: cancel its generations, ask it to exit, kill it if it will not.

        Requests still in flight raise :class:`errors.WorkerCrashed` ("the worker was
        stopped"), or :class:`errors.Cancelled` for generations.
        """
        async with self._lifecycle:
            session = self._session
            if session is None:
                return
            session.stopping = True
            if session.alive:
                session.cancel_generations()
                with contextlib.suppress(errors.WorkerCrashed):
                    session.send(("stop", next(self._ids), {}))
                await anyio.to_thread.run_sync(session.proc.join, self._stop_timeout_s)
            await self._discard()

    async def _discard(self) -> None:
        """Kill and forget the current session (a reading task closes its pipe itself)."""
        session, self._session, self._info = self._session, None, None
        if session is None:
            return
        await _kill(session.proc)
        if not session.reading:
            session.close()

    # --- requests ----------------------------------------------------------------------------

    async def load(self, model_id: str, source: str, device: str = "cpu",
                   dtype: str = "float32", *, backend: str = "musicgen",
                   options: Mapping[str, Any] | None = None) -> LoadedModel:
        """Load ``source`` in the worker as ``model_id`` (replacing another model there).

        Loading the same source/device/dtype/options again is a no-op. ``backend`` names a
        family in :mod:`timbred.backends.registry`; ``options`` are its constructor arguments
        (MusicGen: ``window_s``, ``stride_s``, ``precision``).
        """
        payload = load_payload(model_id, source, device, dtype, backend, options)
        return LoadedModel.from_dict(await self._request("load", payload))

    async def unload(self, model_id: str) -> bool:
        """Unload ``model_id``; returns whether it was loaded."""
        return bool(await self._request("unload", {"model_id": model_id}))

    async def ps(self) -> list[LoadedModel]:
        """The loaded models (answered at once, even while a generation runs)."""
        return [LoadedModel.from_dict(d) for d in await self._request("ps", {})]

    async def generate(self, model_id: str, params: Request,
                       on_progress: ProgressHandler | None = None, *,
                       on_preview: PreviewHandler | None = None,
                       preview_chunk_s: float = 1.0) -> GenerationOutput:
        """Generate with ``model_id``; ``on_progress(step, total)`` runs in this event loop.

        Progress is throttled to about 20 calls a second (the last step always arrives).
        With ``on_preview``, audio chunks of about ``preview_chunk_s`` seconds arrive while
        the generation runs (see :class:`timbred.worker.backend.Preview`), in this event
        loop, before the result.
        Raises :class:`errors.Cancelled` after :meth:`cancel`, the backend's errors as they
        were raised in the worker, or :class:`errors.WorkerCrashed`. If the calling task is
        cancelled, the worker is told to drop the generation.
        """
        def each(index: int, start: int, audio: npt.NDArray[np.float32]) -> None:
            if on_preview is not None:
                on_preview(start, audio)

        (output,) = await self.generate_batch(
            model_id, [params], on_progress, on_preview=None if on_preview is None else each,
            preview_chunk_s=preview_chunk_s)
        return output

    async def generate_batch(self, model_id: str, items: Sequence[Request],
                             on_progress: ProgressHandler | None = None, *,
                             on_preview: BatchPreviewHandler | None = None,
                             preview_chunk_s: float = 1.0) -> list[GenerationOutput]:
        """Decode several requests together (see :meth:`Backend.generate_batch`).

        As :meth:`generate`, with one output per request and ``on_preview(request, start,
        audio)``. :meth:`cancel` with ``item`` drops one request (its rows are still
        decoded, for the others' sake); the call raises Cancelled once all are dropped.
        """
        payload = generate_payload(model_id, items, preview_chunk_s if on_preview else None)
        return check_outputs(await self._request("generate", payload, on_progress, on_preview),
                             len(items))

    async def separate(self, model_id: str, audio: npt.NDArray[np.float32], sample_rate: int,
                       options: Mapping[str, Any],
                       on_progress: ProgressHandler | None = None) -> Separation:
        """A take's audio into stems with the loaded separator ``model_id``
        (:meth:`timbred.worker.stems.DemucsBackend.separate`); cancelled with :meth:`cancel`."""
        payload = separate_payload(model_id, audio, sample_rate, options)
        return check_separation(await self._request("separate", payload, on_progress))

    async def cancel(self, item: int | None = None) -> None:
        """Cancel the generation(s) in flight (``item``: only that request of the batch);
        each one's :meth:`generate` raises Cancelled.

        A generation that finishes before the worker sees the cancel returns normally.
        """
        if self._session is not None:
            self._session.cancel_generations(item)

    async def _request(self, op: str, payload: dict[str, Any],
                       on_progress: ProgressHandler | None = None,
                       on_preview: BatchPreviewHandler | None = None) -> Any:
        session = self._session
        if session is None:
            raise errors.WorkerCrashed("the worker is not running (call start() first)")
        if not session.alive:
            raise session.crash_error()
        rid = next(self._ids)
        pending = session.pending[rid] = _Pending(op, on_progress, on_preview)
        try:
            session.send((op, rid, payload))
            return await session.wait(pending)
        finally:
            session.pending.pop(rid, None)
            if not pending.done and op in CANCELLABLE and session.alive:
                # Our caller was cancelled: do not leave the worker busy for nobody.
                session.cancel(rid)


def load_payload(model_id: str, source: str, device: str, dtype: str, backend: str,
                 options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A ``load`` request (for a worker process or a Ray actor alike)."""
    return {"model_id": model_id, "source": source, "device": device, "dtype": dtype,
            "backend": backend, "options": dict(options or {}),
            "implementation": registry.get(backend).implementation}


def generate_payload(model_id: str, items: Sequence[Request], preview_s: float | None
                     ) -> dict[str, Any]:
    """A ``generate`` request: the batch, and the preview chunk length when one is wanted."""
    return {"model_id": model_id, "items": [p.to_dict() for p in items], "preview_s": preview_s}


def separate_payload(model_id: str, audio: npt.NDArray[np.float32], sample_rate: int,
                     options: Mapping[str, Any]) -> dict[str, Any]:
    """A ``separate`` request: the take's samples and the separation's settings."""
    return {"model_id": model_id, "audio": audio, "sample_rate": sample_rate,
            **{k: options[k] for k in ("shifts", "overlap", "seed") if k in options}}


def check_separation(result: Any) -> Separation:
    """A ``separate`` reply, checked."""
    if not isinstance(result, Separation):
        raise errors.InternalError(f"worker returned {type(result).__name__} for separate")
    return result


def check_outputs(result: Any, count: int) -> list[GenerationOutput]:
    """A ``generate`` reply, checked: one :class:`GenerationOutput` per request."""
    if not isinstance(result, list) or len(result) != count or not all(
            isinstance(out, GenerationOutput) for out in result):
        raise errors.InternalError(f"worker returned {type(result).__name__} for generate")
    return result


async def _kill(proc: BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        await anyio.to_thread.run_sync(proc.join, 2.0)
    if proc.is_alive():
        proc.kill()
        await anyio.to_thread.run_sync(proc.join, 5.0)


async def _readable_either(fd: int, sentinel: int) -> None:
    """Return when ``fd`` (the pipe) or ``sentinel`` (process exit) becomes readable."""
    async with anyio.create_task_group() as tg:

        async def watch(obj: int) -> None:
            await anyio.wait_readable(obj)
            tg.cancel_scope.cancel()

        tg.start_soon(watch, fd)
        tg.start_soon(watch, sentinel)
