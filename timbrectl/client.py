"""The client library: one connection to timbred, concurrent calls, events, reconnect-and-replay.

``Client`` multiplexes calls over one connection (replies are matched by id, so a long
``jobs.wait`` does not hold up a ``daemon.ping``) and queues ``event`` notifications for
:meth:`Client.events`. :func:`follow_events` survives daemon restarts: it reconnects and
resubscribes with the last seen ``seq`` and ``epoch`` so no buffered event is lost, and says when
some were (``missed``). Requests are built and replies parsed with jsonrpcclient; errors come
back as the daemon's own exception classes (:func:`timbred.errors.error_from_wire`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from jsonrpcclient import Error as RpcError
from jsonrpcclient import Ok, parse, request

from timbred.errors import DaemonUnavailable, TimbreError, error_from_wire
from timbred.paths import check_socket_path, default_socket_path
from timbred.protocol.framing import DEFAULT_MAX_MESSAGE_BYTES, LineDecoder, encode

EVENT_QUEUE = 10_000


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$TIMBRE_SOCKET`` / the config file's ``daemon.socket``, else default."""
    if explicit:
        return check_socket_path(explicit)
    # Imported here, not at the top: importing the client loads only the protocol, errors and
    # paths from timbred (tests/test_client_light.py), and only this lookup reads the config.
    from timbred import config

    settings = config.load()
    return check_socket_path(settings["daemon.socket"] or default_socket_path())


@dataclass
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Any = None


class Client:
    """A connection to the daemon. Use :func:`connect` to make one."""

    def __init__(self, stream: anyio.abc.ByteStream, socket_path: Path,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._decoder = LineDecoder(max_message_bytes)
        self._pending: dict[Any, _Pending] = {}
        self._send_lock = anyio.Lock()
        self._events_send: MemoryObjectSendStream[dict[str, Any]]
        self._events_recv: MemoryObjectReceiveStream[dict[str, Any]]
        self._events_send, self._events_recv = anyio.create_memory_object_stream[
            dict[str, Any]](EVENT_QUEUE)
        self.closed = anyio.Event()
        self.close_reason = ""
        #: Error objects the daemon sent with id null (a limit hit, a refusal).
        self.connection_errors: list[TimbreError] = []

    # --- reading --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                        OSError):
                    self.close_reason = "the daemon closed the connection"
                    return
                for line in self._decoder.feed(data):
                    self._on_message(json.loads(line))
                if self._decoder.overflowed:
                    self.close_reason = "the daemon sent an oversized message"
                    return
        finally:
            self._events_send.close()
            self.closed.set()
            for pending in self._pending.values():
                pending.done.set()

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, list):
            for item in msg:
                self._on_message(item)
            return
        if not isinstance(msg, dict):
            return
        if "method" in msg:
            if msg["method"] in ("event", "events.dropped"):
                # If the caller is not reading events, the daemon's output bound drops us.
                with contextlib.suppress(anyio.WouldBlock):
                    self._events_send.send_nowait({"method": msg["method"], **msg["params"]})
            return
        id_ = msg.get("id")
        if id_ is None and "error" in msg:
            err = msg["error"]
            self.connection_errors.append(error_from_wire(err["code"], err["message"],
                                                          err.get("data")))
            return
        pending = self._pending.get(id_)
        if pending is not None:
            pending.reply = msg
            pending.done.set()

    # --- calling --------------------------------------------------------------------------

    async def _send(self, payload: Any) -> None:
        async with self._send_lock:
            try:
                await self._stream.send(encode(json.dumps(payload, ensure_ascii=False)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise DaemonUnavailable(str(self.socket_path), f"connection lost ({exc})") \
                    from exc

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None) -> Any:
        """Call ``method``; return its result or raise the daemon's error as a TimbreError."""
        req = request(method, params=dict(params or {}))
        reply = await self._roundtrip(req, req["id"], timeout)
        return _result(reply)

    async def batch(self, calls: Sequence[tuple[str, Mapping[str, Any] | None]], *,
                    timeout: float | None = None) -> list[Any]:
        """Send one batch; return results in call order (errors as TimbreError instances)."""
        reqs = [request(method, params=dict(params or {})) for method, params in calls]
        pendings = {r["id"]: _Pending() for r in reqs}
        self._pending.update(pendings)
        try:
            await self._send(reqs)
            with anyio.fail_after(timeout):
                for pending in pendings.values():
                    await pending.done.wait()
        finally:
            for id_ in pendings:
                self._pending.pop(id_, None)
        out: list[Any] = []
        for r in reqs:
            try:
                out.append(_result(self._checked(pendings[r["id"]].reply)))
            except TimbreError as exc:
                out.append(exc)
        return out

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a notification (no reply is ever sent)."""
        await self._send({"jsonrpc": "2.0", "method": method, "params": dict(params or {})})

    async def _roundtrip(self, payload: Any, id_: Any, timeout: float | None) -> Any:
        pending = self._pending[id_] = _Pending()
        try:
            await self._send(payload)
            with anyio.fail_after(timeout):
                await pending.done.wait()
        finally:
            self._pending.pop(id_, None)
        return self._checked(pending.reply)

    def _checked(self, reply: Any) -> Any:
        if reply is None:
            if self.connection_errors:
                raise self.connection_errors[-1]
            raise DaemonUnavailable(str(self.socket_path),
                                    self.close_reason or "connection closed")
        return reply

    # --- events ---------------------------------------------------------------------------

    async def subscribe(self, types: Sequence[str] | None = None, *,
                        after_seq: int | None = None, epoch: str | None = None) -> dict[str, Any]:
        """Subscribe; events then arrive through :meth:`events`."""
        params: dict[str, Any] = {}
        if types:
            params["types"] = list(types)
        if after_seq is not None:
            params["after_seq"] = after_seq
        if epoch is not None:
            params["epoch"] = epoch
        result: dict[str, Any] = await self.call("events.subscribe", params)
        return result

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events (``event`` and ``events.dropped`` params, with ``method``) until disconnect."""
        async for item in self._events_recv:
            yield item

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; raises DaemonUnavailable when the connection ends first."""
        with anyio.fail_after(timeout):
            try:
                return await self._events_recv.receive()
            except anyio.EndOfStream:
                raise DaemonUnavailable(str(self.socket_path),
                                        self.close_reason or "connection closed") from None

    async def aclose(self) -> None:
        await self._stream.aclose()


def _result(reply: Any) -> Any:
    parsed = parse(reply)
    if isinstance(parsed, Ok):
        return parsed.result
    if isinstance(parsed, RpcError):
        raise error_from_wire(parsed.code, parsed.message, parsed.data)
    raise TypeError(f"unexpected reply {reply!r}")  # pragma: no cover


@asynccontextmanager
async def connect(socket_path: str | os.PathLike[str] | None = None, *,
                  timeout: float = 5.0) -> AsyncIterator[Client]:
    """Connect to the daemon; raise :class:`DaemonUnavailable` saying why not."""
    path = resolve_socket_path(socket_path)
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(path)
    except TimeoutError as exc:
        raise DaemonUnavailable(str(path), "timed out connecting") from exc
    except FileNotFoundError as exc:
        raise DaemonUnavailable(str(path), "no socket there (is timbred running?)") from exc
    except ConnectionRefusedError as exc:
        raise DaemonUnavailable(str(path), "connection refused (stale socket: timbred is not "
                                "running)") from exc
    except OSError as exc:
        raise DaemonUnavailable(str(path), exc.strerror or str(exc)) from exc
    client = Client(stream, path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read_loop)
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()
                client._events_recv.close()
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
    except BaseExceptionGroup as group:
        # The task group wraps what the caller's block raised (a daemon error, a timeout);
        # callers catch TimbreError or TimeoutError, so a lone exception leaves as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def follow_events(
    socket_path: str | os.PathLike[str] | None = None,
    types: Sequence[str] | None = None,
    *,
    retry_interval: float = 0.5,
    max_retries: float = math.inf,
) -> AsyncIterator[dict[str, Any]]:
    """Yield events forever, reconnecting after a daemon restart with seq replay.

    Besides events it yields ``{"method": "connection", "state": "connected" | "disconnected",
    "missed": bool}`` markers, so a UI can show the connection state and refresh its view when
    events were missed.
    """
    last_seq: int | None = None
    epoch: str | None = None
    retries = 0
    while True:
        try:
            async with connect(socket_path) as client:
                sub = await client.subscribe(types, after_seq=last_seq, epoch=epoch)
                retries = 0
                # Another run than the one we followed: whatever it did before we came back
                # is unknown, also when we had seen no event yet (no after_seq to compare).
                missed = bool(sub["missed"]) or (epoch is not None and sub["epoch"] != epoch)
                if sub["epoch"] != epoch:
                    last_seq = None  # a new daemon run: its seqs start again at 1
                epoch = sub["epoch"]
                yield {"method": "connection", "state": "connected", "missed": missed}
                async for item in client.events():
                    if item["method"] == "event":
                        if last_seq is not None and item["epoch"] == epoch and \
                                item["seq"] <= last_seq:
                            continue  # replayed twice across a reconnect
                        last_seq, epoch = item["seq"], item["epoch"]
                    elif item["method"] == "events.dropped":
                        break  # resubscribe from last_seq on a fresh connection
                    yield item
        except DaemonUnavailable:
            retries += 1
            if retries > max_retries:
                raise
        yield {"method": "connection", "state": "disconnected", "missed": False}
        await anyio.sleep(retry_interval)
