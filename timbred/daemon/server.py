"""The socket side: accept, check the peer, frame, dispatch, and bound every connection.

Each connection runs a reader (framing with a size cap and a deadline for finishing a started
message, requests dispatched concurrently up to ``max_inflight``) and a writer (one outbound
queue; a client that leaves output unread past ``write_timeout_s`` is disconnected). Events are
pushed without waiting: past ``max_output_bytes`` pending, the subscription is dropped with a
final ``events.dropped`` notice, so a slow subscriber can never stall the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from timbred.daemon.events import Event, Subscription
from timbred.daemon.runtime import PeerCredentials, peer_credentials
from timbred.errors import (
    InternalError,
    MessageIncomplete,
    OutputOverflow,
    PeerRefused,
    TimbreError,
)
from timbred.protocol.framing import LineDecoder, encode
from timbred.protocol.jsonrpc import dumps, error_object, notification

if TYPE_CHECKING:
    from timbred.daemon.app import Daemon

log = logging.getLogger(__name__)
READ_CHUNK = 65536


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds (see the ``limits`` section of the configuration)."""

    max_message_bytes: int
    message_deadline_s: float
    max_output_bytes: int
    write_timeout_s: float
    max_inflight: int
    max_connections: int


class Connection:
    """One accepted client."""

    def __init__(self, cid: int, stream: anyio.abc.SocketStream, peer: PeerCredentials,
                 daemon: Daemon) -> None:
        self.id = cid
        self.peer = peer
        self.daemon = daemon
        self.subscriptions: dict[str, Subscription] = {}
        # The seq of the newest event queued for each subscription (its events.dropped
        # notice says where a client resubscribing should resume).
        self._last_seq: dict[str, int] = {}
        self._stream = stream
        self._limits = daemon.limits
        self._out_send: MemoryObjectSendStream[bytes]
        self._out_recv: MemoryObjectReceiveStream[bytes]
        self._out_send, self._out_recv = anyio.create_memory_object_stream[bytes](math.inf)
        self.pending_bytes = 0
        self._drained = anyio.Event()
        self._drained.set()
        self._read_scope = anyio.CancelScope()
        self._scope = anyio.CancelScope()
        self._requests: anyio.abc.TaskGroup | None = None
        self._reader_done = anyio.Event()
        self._idle = anyio.Event()  # set when the last in-flight request finishes
        self._writer_done = anyio.Event()

    # --- output ------------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        try:
            self._out_send.send_nowait(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        self.pending_bytes += len(data)
        if self.pending_bytes > self._limits.max_output_bytes and self._drained.is_set():
            self._drained = anyio.Event()

    def send_now(self, obj: Any) -> None:
        """Queue a message regardless of the output bound (small control messages only)."""
        self._enqueue(encode(dumps(obj)))

    async def send_reply(self, text: str) -> None:
        """Queue a reply, first waiting (bounded) for the client to read older output."""
        if self.pending_bytes > self._limits.max_output_bytes:
            with anyio.move_on_after(self._limits.write_timeout_s):
                await self._drained.wait()
            if self.pending_bytes > self._limits.max_output_bytes:
                log.warning("connection %d: client not reading, closing", self.id)
                self.abort(OutputOverflow(self._limits.max_output_bytes))
                return
        self._enqueue(encode(text))

    def deliver(self, sub: Subscription, event: Event) -> bool:
        """Event sink for :class:`EventBus`; False (and a final notice) when over the bound."""
        data = encode(dumps(notification("event", event.params(sub.id))))
        if self.pending_bytes + len(data) > self._limits.max_output_bytes:
            self.subscriptions.pop(sub.id, None)
            log.warning("connection %d: subscription %s dropped (slow consumer)", self.id, sub.id)
            self.send_now(notification("events.dropped", {
                "subscription": sub.id,
                "reason": f"more than {self._limits.max_output_bytes} bytes of events unread",
                "last_seq": self._last_seq.pop(sub.id, event.seq - 1),
            }))
            return False
        self._enqueue(data)
        self._last_seq[sub.id] = event.seq
        return True

    def _drop_subscriptions(self, reason: str) -> None:
        """End every subscription of this connection with its ``events.dropped`` notice."""
        for sub_id in list(self.subscriptions):
            self.subscriptions.pop(sub_id, None)
            self.daemon.bus.unsubscribe(sub_id)
            log.warning("connection %d: subscription %s dropped (%s)", self.id, sub_id, reason)
            self.send_now(notification("events.dropped", {
                "subscription": sub_id, "reason": reason,
                "last_seq": self._last_seq.pop(sub_id, self.daemon.bus.seq)}))

    async def _writer(self) -> None:
        try:
            await self._write_all()
        finally:
            self._writer_done.set()

    async def _write_all(self) -> None:
        async with self._out_recv:
            async for data in self._out_recv:
                if not await self._send_one(data):
                    self._scope.cancel()
                    return
                self.pending_bytes -= len(data)
                if self.pending_bytes <= self._limits.max_output_bytes:
                    self._drained.set()

    async def _send_one(self, data: bytes) -> bool:
        """Send ``data`` whole within the write timeout; False when the connection must close.

        A subscriber that stopped reading is owed its ``events.dropped`` notice before it is
        cut: at the first timeout its subscriptions end (no more events pile up), the notices
        are queued behind what is pending, and the send gets one more write timeout. The send
        itself is never interrupted before the connection is given up, because a Unix
        socket may have taken part of the line, and the rest must follow for the framing
        to hold.
        """
        timeout = self._limits.write_timeout_s
        failed: list[BaseException] = []
        sent = anyio.Event()

        async def send() -> None:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                failed.append(exc)
            finally:
                sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.move_on_after(timeout):
                await sent.wait()
            if not sent.is_set() and self.subscriptions:
                self._drop_subscriptions(f"the client read nothing for {timeout:g} s")
                with anyio.move_on_after(timeout):
                    await sent.wait()
            if not sent.is_set():
                log.warning("connection %d: write timed out, closing", self.id)
                tg.cancel_scope.cancel()
                return False
        return not failed

    # --- input -------------------------------------------------------------------------

    def abort(self, error: TimbreError) -> None:
        """Send ``error`` (id null) as the last message, then close the connection."""
        self.send_now(error_object(error))
        self._read_scope.cancel()
        if self._requests is not None:
            self._requests.cancel_scope.cancel()
        self._out_send.close()

    async def _abort_after_inflight(self, slots: anyio.CapacityLimiter,
                                    error: TimbreError) -> None:
        """Let complete requests received before the bad input answer (bounded), then abort."""
        if slots.borrowed_tokens:
            self._idle = anyio.Event()
            with anyio.move_on_after(self._limits.write_timeout_s):
                await self._idle.wait()
        self.abort(error)

    async def _handle(self, line: bytes, slots: anyio.CapacityLimiter, token: object) -> None:
        try:
            reply = await self.daemon.dispatcher.handle(line, self.daemon.context(self))
            if reply is not None:
                await self.send_reply(reply)
        except Exception as exc:
            # The dispatcher answers every handler error itself; reaching here is a bug in
            # the wire code. It costs this one request a -32603, never the connection, let
            # alone the daemon (an exception here would unwind every task group up to serve).
            log.exception("connection %d: a request could not be answered", self.id)
            self.send_now(error_object(InternalError(
                f"the reply could not be sent: {type(exc).__name__}")))
        finally:
            slots.release_on_behalf_of(token)
            if not slots.borrowed_tokens:
                self._idle.set()

    async def _reader(self) -> None:
        limits = self._limits
        decoder = LineDecoder(limits.max_message_bytes)
        slots = anyio.CapacityLimiter(limits.max_inflight)
        started = 0.0  # when the current unterminated message's first byte arrived
        try:
            async with anyio.create_task_group() as requests:
                self._requests = requests
                with self._read_scope:
                    while True:
                        # Idle clients may wait forever (subscribers); a started message must
                        # end within the deadline, counted from its first byte.
                        timeout = None
                        if decoder.pending:
                            timeout = max(0.0, started + limits.message_deadline_s
                                          - anyio.current_time())
                        try:
                            with anyio.fail_after(timeout):
                                data = await self._stream.receive(READ_CHUNK)
                        except TimeoutError:
                            await self._abort_after_inflight(slots, MessageIncomplete(
                                "deadline", received=decoder.pending,
                                deadline_s=limits.message_deadline_s))
                            return
                        except (anyio.EndOfStream, anyio.BrokenResourceError,
                                anyio.ClosedResourceError, OSError):
                            if decoder.pending:
                                await self._abort_after_inflight(slots, MessageIncomplete(
                                    "end of stream", received=decoder.pending))
                                return
                            break
                        was_idle = decoder.pending == 0
                        lines = decoder.feed(data)
                        for line in lines:
                            token = object()  # equal lines must still be distinct borrowers
                            await slots.acquire_on_behalf_of(token)
                            requests.start_soon(self._handle, line, slots, token)
                        if decoder.overflowed:
                            await self._abort_after_inflight(slots, decoder.error())
                            return
                        if decoder.pending and (was_idle or lines):
                            started = anyio.current_time()
        finally:
            self._out_send.close()
            self._reader_done.set()

    async def run(self) -> None:
        """Serve until the client leaves or the connection is closed by a bound or shutdown."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer)
                    await self._reader()
        finally:
            # Also on the daemon's own cancellation (a shutdown past its grace, a failed
            # start-up): the accepted socket must be closed here or it leaks until GC.
            self._out_send.close()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def finish(self, grace: float) -> None:
        """Stop reading, let running requests answer and output drain, for at most ``grace``."""
        self._read_scope.cancel()
        with anyio.move_on_after(grace) as scope:
            await self._reader_done.wait()
            await self._writer_done.wait()
        if scope.cancelled_caught:
            log.info("connection %d: grace period over, closing", self.id)
        self._scope.cancel()


ConnectionHandler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


async def refuse(stream: anyio.abc.SocketStream, error: TimbreError) -> None:
    """Tell a refused client why, then close (closed even when cancelled mid-send)."""
    try:
        with anyio.move_on_after(1.0), contextlib.suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await stream.send(encode(dumps(error_object(error))))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


def check_peer(stream: anyio.abc.SocketStream) -> PeerCredentials:
    """Credentials of the peer; raises PeerRefused for another user."""
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    creds = peer_credentials(raw)
    if creds.uid != os.geteuid():
        raise PeerRefused(creds.uid, os.geteuid())
    return creds
