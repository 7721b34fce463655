"""The daemon as a library function: ``serve(settings)`` wires everything and runs until stopped.

Tests start it in-process with ``await task_group.start(serve, settings)``, which returns the
:class:`Daemon` once the socket accepts; the ``timbred`` command is a thin wrapper around
:func:`run`.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from timbred import PROTOCOL_VERSION, __version__, models
from timbred.config import Settings
from timbred.daemon.events import EventBus
from timbred.daemon.logs import log_file_path
from timbred.daemon.notify import Notifier
from timbred.daemon.runtime import (
    acquire_lock,
    bind_socket,
    check_socket_path,
    default_socket_path,
    ensure_private_dir,
)
from timbred.daemon.server import Connection, Limits, check_peer, refuse
from timbred.errors import PeerRefused, TimbreError, TooManyConnections
from timbred.protocol.jsonrpc import Dispatcher
from timbred.queue.generation import Generation
from timbred.watch.daemon import make_watch_service

log = logging.getLogger(__name__)

#: How long connections get to flush their last replies during a graceful stop.
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class RequestContext:
    """What a handler gets besides its params: the daemon and the calling connection."""

    daemon: Daemon
    connection: Connection


def _family_of(model: str) -> str | None:
    """The family of ``model`` (a name or a directory), or ``None`` when it cannot be resolved
    now: status reports a misconfigured default, it does not fail over it (a submit without a
    model says precisely what is wrong)."""
    try:
        return models.resolve(model).backend
    except (TimbreError, OSError, ValueError):
        return None


class Daemon:
    """State shared by every connection and handler of one daemon run."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        from timbred.rpc import handlers  # the rpc package imports this module's types

        self.settings = settings
        configured = settings["daemon.socket"]
        self.socket_path = check_socket_path(configured or default_socket_path())
        self.runtime_dir = self.socket_path.parent
        self.log_file = log_file_path(settings["daemon.log_file"])
        self.limits = Limits(
            max_message_bytes=settings["limits.max_message_bytes"],
            message_deadline_s=settings["limits.message_deadline_s"],
            max_output_bytes=settings["limits.max_output_bytes"],
            write_timeout_s=settings["limits.write_timeout_s"],
            max_inflight=settings["limits.max_inflight"],
            max_connections=settings["limits.max_connections"],
        )
        self.bus = EventBus(settings["limits.event_buffer"])
        self.dispatcher: Dispatcher[RequestContext] = Dispatcher(
            handlers(), max_batch=settings["limits.max_batch"])
        self.notifier = notifier or Notifier()
        self.generation = Generation(settings, self.bus)
        # After Generation: the job store must create the database file first.
        self.watch = make_watch_service(settings, self.generation, self.bus)
        self.connections: dict[int, Connection] = {}
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        self._ids = itertools.count(1)
        self.stop_requested = anyio.Event()
        self.stop_reason = ""
        # Accepted streams whose task has not started yet: a task cancelled before its first
        # step never runs its cleanup, so serve() closes these itself.
        self.unserved: set[anyio.abc.SocketStream] = set()

    def context(self, connection: Connection) -> RequestContext:
        return RequestContext(self, connection)

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop (idempotent: the first reason wins)."""
        if not self.stop_requested.is_set():
            log.info("stopping: %s", reason)
            self.stop_reason = reason
            self.stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    async def status(self) -> dict[str, Any]:
        """The ``daemon.status`` result."""
        gen = self.generation
        queue = await anyio.to_thread.run_sync(gen.queue)
        default = str(self.settings["models.default"])
        return {
            "version": __version__,
            "protocol_version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "started_at": self.started_at,
            "socket": str(self.socket_path),
            "runtime_dir": str(self.runtime_dir),
            "config_path": None if self.settings.config_path is None
            else str(self.settings.config_path),
            "log_file": None if self.log_file is None else str(self.log_file),
            "default_model": {"name": default,
                              "backend": await anyio.to_thread.run_sync(_family_of, default)},
            "device": {"requested": self.settings["daemon.device"],
                       "active": gen.pool.device()},
            "models": gen.pool.ps(),
            "executor": gen.pool.status(),
            "queue": queue,
            "connections": len(self.connections),
            "events": {"epoch": self.bus.epoch, "seq": self.bus.seq},
        }

    async def serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        """Check the peer and the connection cap, then serve the connection to its end."""
        self.unserved.discard(stream)
        try:
            creds = check_peer(stream)
        except PeerRefused as exc:
            log.warning("refused a connection from uid %s: %s", exc.data["uid"], exc)
            await refuse(stream, exc)
            return
        if len(self.connections) >= self.limits.max_connections or self.stopping:
            log.warning("refused a connection from pid %s: connection cap of %d reached",
                        creds.pid, self.limits.max_connections)
            await refuse(stream, TooManyConnections(self.limits.max_connections))
            return
        conn = Connection(next(self._ids), stream, creds, self)
        self.connections[conn.id] = conn
        log.debug("connection %d from pid %s", conn.id, creds.pid)
        self.bus.publish("daemon.client_connected", {
            "connection": conn.id, "pid": creds.pid, "connections": len(self.connections)})
        try:
            await conn.run()
        except Exception:
            # Last resort: whatever one connection hits ends that connection only.
            log.exception("connection %d failed; closing it", conn.id)
        finally:
            del self.connections[conn.id]
            for sub_id in list(conn.subscriptions):
                self.bus.unsubscribe(sub_id)
            self.bus.publish("daemon.client_disconnected", {
                "connection": conn.id, "connections": len(self.connections)})


async def _accept(daemon: Daemon, listener: anyio.abc.SocketListener,
                  task_group: anyio.abc.TaskGroup) -> None:
    while True:
        try:
            stream = await listener.accept()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        except OSError as exc:
            # EMFILE and friends: back off rather than spin; existing clients keep working.
            log.error("accept failed: %s", exc)
            await anyio.sleep(0.1)
            continue
        daemon.unserved.add(stream)
        task_group.start_soon(daemon.serve_connection, stream)


async def _run_watch(daemon: Daemon, scope: anyio.CancelScope, *,
                     task_status: anyio.abc.TaskStatus[None]) -> None:
    with scope:
        await daemon.watch.run(task_status=task_status)


async def _watch_signals(daemon: Daemon, scope: anyio.CancelScope, *,
                         task_status: anyio.abc.TaskStatus[None]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()  # handlers are installed: READY may be announced after this
        async for signum in signals:
            if daemon.stopping:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                scope.cancel()
                return
            daemon.request_stop(f"received {signal.Signals(signum).name}")


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = False,
    notifier: Notifier | None = None,
    task_status: anyio.abc.TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a daemon until it is asked to stop; ``task_status.started(daemon)`` once it accepts.

    Raises RuntimeDirError for an unsafe socket directory and AlreadyRunning when another
    daemon holds the lock, before touching the socket path.
    """
    # The instance lock comes before the database: two daemons started at once on a fresh
    # file must not both migrate it (one would fail with "table jobs already exists" and exit
    # 6 instead of the 3 that says "already running").
    socket_path = check_socket_path(settings["daemon.socket"] or default_socket_path())
    ensure_private_dir(socket_path.parent)
    lock = acquire_lock(socket_path)
    try:
        await _serve_locked(settings, notifier, handle_signals, task_status)
    except BaseExceptionGroup as group:
        # A task group wraps what one of its tasks raised; a caller (and ``timbred``'s exit
        # status) must see the one TimbreError, e.g. the StoreError of a damaged queue row.
        sole = _sole_error(group)
        if sole is None:
            raise
        raise sole from None
    finally:
        lock.release()


def _sole_error(group: BaseExceptionGroup[BaseException]) -> TimbreError | None:
    """The one TimbreError in ``group`` (cancellations aside), or None when there is not."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [e for e in leaves if not isinstance(e, anyio.get_cancelled_exc_class())]
    if len(errors) == 1 and isinstance(errors[0], TimbreError):
        return errors[0]
    return None


async def _serve_locked(
    settings: Settings,
    notifier: Notifier | None,
    handle_signals: bool,
    task_status: anyio.abc.TaskStatus[Daemon],
) -> None:
    daemon = Daemon(settings, notifier)
    bound: tuple[int, int] | None = None
    sock: socket.socket | None = None
    try:
        sock = bind_socket(daemon.socket_path)
        st = daemon.socket_path.lstat()
        bound = (st.st_dev, st.st_ino)
        listener = await anyio.abc.SocketListener.from_socket(sock)
        async with anyio.create_task_group() as main:
            if handle_signals:
                await main.start(_watch_signals, daemon, main.cancel_scope)
            # Recover the queue before the first client can ask about it.
            await main.start(daemon.generation.run)
            watch_scope = anyio.CancelScope()
            if daemon.settings["watch.enabled"]:
                await main.start(_run_watch, daemon, watch_scope)
            async with anyio.create_task_group() as clients:
                clients.start_soon(_accept, daemon, listener, clients)
                log.info("timbred %s listening on %s (pid %d)", __version__,
                         daemon.socket_path, os.getpid())
                daemon.notifier.ready(f"listening on {daemon.socket_path}")
                task_status.started(daemon)
                await daemon.stop_requested.wait()

                daemon.notifier.stopping(f"stopping: {daemon.stop_reason}")
                daemon.bus.publish("daemon.stopping", {"reason": daemon.stop_reason})
                await listener.aclose()
                watch_scope.cancel()
                # Interrupt (and record) the running job before clients are let go, so that
                # a jobs.wait in flight still answers with the job's final state.
                await daemon.generation.close()
                async with anyio.create_task_group() as closing:
                    for conn in list(daemon.connections.values()):
                        closing.start_soon(conn.finish, SHUTDOWN_GRACE_S)
            main.cancel_scope.cancel()
    finally:
        if sock is not None:
            sock.close()  # a start-up failure (a damaged queue) happens before listener.aclose
        with anyio.CancelScope(shield=True):
            for stream in daemon.unserved:
                await stream.aclose()
        if bound is not None:
            _remove_socket(daemon.socket_path, bound)
        log.info("stopped")


def _remove_socket(path: Path, identity: tuple[int, int]) -> None:
    """Unlink the socket we bound, and nothing else that may have replaced it since."""
    try:
        st = path.lstat()
        if (st.st_dev, st.st_ino) != identity:
            return
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
