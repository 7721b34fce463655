"""Bounds that keep one client from hurting the others: size, deadline, cap, output, slowness."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import anyio
import pytest

from tests.support import RawConnection, check_error, req
from timbred.daemon.events import Event
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


class TestMessageSize:
    async def test_oversized_message_is_refused_and_closed(self, short_tmp: Path) -> None:
        """A message past the limit gets -32001 with id null, then the connection closes."""
        async with running_daemon(short_tmp, limits__max_message_bytes=4096) as d:
            bystander = await RawConnection.open(d.socket_path)
            conn = await RawConnection.open(d.socket_path)
            await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","id":1}\n')
            await conn.send(b"x" * 5000)  # no newline: refused while still reading
            replies = await conn.recv_until_closed()
            assert replies[0]["id"] == 1 and replies[0]["result"]["pong"] is True
            err = check_error(replies[-1], -32001, "message_too_large")
            assert replies[-1]["id"] is None and err["data"]["limit"] == 4096
            # Another client is unaffected.
            assert (await bystander.call(req("daemon.ping")))["result"]["pong"]
            await bystander.aclose()
            await conn.aclose()

    async def test_message_exactly_at_the_limit_is_accepted(self, short_tmp: Path) -> None:
        """The limit is inclusive: a message of exactly max bytes (plus newline) is served."""
        async with running_daemon(short_tmp, limits__max_message_bytes=4096) as d:
            conn = await RawConnection.open(d.socket_path)
            body = json.dumps(req("daemon.ping", id_="x")).encode()
            padded = body[:-1] + b" " * (4096 - len(body)) + b"}"
            assert len(padded) == 4096
            await conn.send(padded + b"\n")
            assert (await conn.recv())["id"] == "x"
            await conn.aclose()

    async def test_default_limit_is_one_mib(self, short_tmp: Path) -> None:
        """With defaults, 1 MiB + 1 byte without a newline is refused."""
        async with running_daemon(short_tmp) as d:
            conn = await RawConnection.open(d.socket_path)
            await conn.send(b"[" + b" " * (1024 * 1024))
            replies = await conn.recv_until_closed()
            check_error(replies[-1], -32001, "message_too_large")
            await conn.aclose()


class TestUnterminated:
    async def test_deadline_for_a_started_message(self, short_tmp: Path) -> None:
        """A message not finished within the deadline gets -32002 and the connection closes."""
        async with running_daemon(short_tmp, limits__message_deadline_s=0.3) as d:
            conn = await RawConnection.open(d.socket_path)
            start = time.monotonic()
            await conn.send(b'{"jsonrpc":"2.0",')
            replies = await conn.recv_until_closed(timeout=5)
            err = check_error(replies[-1], -32002, "message_incomplete")
            assert err["data"]["reason"] == "deadline"
            assert 0.25 < time.monotonic() - start < 3
            await conn.aclose()

    async def test_idle_connection_is_not_a_started_message(self, short_tmp: Path) -> None:
        """A connection that sends nothing is not closed by the message deadline."""
        async with running_daemon(short_tmp, limits__message_deadline_s=0.2) as d:
            conn = await RawConnection.open(d.socket_path)
            await anyio.sleep(0.6)
            assert (await conn.call(req("daemon.ping")))["result"]["pong"]
            await conn.aclose()

    async def test_eof_in_the_middle_of_a_message(self, short_tmp: Path) -> None:
        """Closing the write side mid-message gets -32002 (end of stream), id null."""
        async with running_daemon(short_tmp) as d:
            conn = await RawConnection.open(d.socket_path)
            await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","id":1}\n{"jsonrpc"')
            await conn.stream.send_eof()
            replies = await conn.recv_until_closed()
            assert replies[0]["id"] == 1
            err = check_error(replies[-1], -32002, "message_incomplete")
            assert err["data"]["reason"] == "end of stream"
            await conn.aclose()


class TestConnections:
    async def test_connection_cap(self, short_tmp: Path) -> None:
        """Past the cap a new client gets -32004 and is closed; existing ones keep working."""
        async with running_daemon(short_tmp, limits__max_connections=3) as d:
            conns = [await RawConnection.open(d.socket_path) for _ in range(3)]
            for c in conns:  # make sure all three are registered
                await c.call(req("daemon.ping"))
            extra = await RawConnection.open(d.socket_path)
            replies = await extra.recv_until_closed()
            err = check_error(replies[0], -32004, "too_many_connections")
            assert err["data"]["limit"] == 3
            assert (await conns[0].call(req("daemon.ping")))["result"]["pong"]
            for c in [*conns, extra]:
                await c.aclose()

    async def test_a_cancelled_daemon_closes_every_socket(self, short_tmp: Path) -> None:
        """When the daemon is torn down by cancellation (not a graceful stop), each accepted
        socket is closed at once: clients see end-of-stream, and nothing is left for GC."""

        class Boom(Exception):
            pass

        conns: list[RawConnection] = []
        with pytest.raises(BaseExceptionGroup) as info:
            async with running_daemon(short_tmp, limits__max_connections=3) as d:
                conns = [await RawConnection.open(d.socket_path) for _ in range(3)]
                for c in conns:
                    await c.call(req("daemon.ping"))
                await conns[0].send(b'{"jsonrpc":"2.0","method":"daemon.ping"')  # half a line
                raise Boom
        assert info.group_contains(Boom)
        for c in conns:
            assert await c.recv_until_closed(timeout=5) == []
            await c.aclose()
        gc.collect()  # a socket that was left open would raise ResourceWarning here

    async def test_slow_clients_do_not_delay_ping(self, short_tmp: Path) -> None:
        """200 clients dribbling bytes of unfinished messages never delay a ping by > 1 s."""
        async with running_daemon(short_tmp) as d:
            stop = anyio.Event()
            all_connected = anyio.Event()

            def on_connect(_: object, event: Event) -> bool:
                if event.data["connections"] >= 200:
                    all_connected.set()
                return True

            d.bus.subscribe(["daemon.client_connected"], on_connect)

            async def dribbler() -> None:
                conn = await RawConnection.open(d.socket_path)
                try:
                    await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","params":[')
                    while not stop.is_set():
                        await conn.send(b"1,")
                        await anyio.sleep(0.1)
                finally:
                    await conn.aclose()

            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(dribbler)
                # Let them all connect and start dribbling. How long that takes depends on the
                # machine's load, which is not what this test measures: wait for it, bounded.
                with anyio.fail_after(30):
                    await all_connected.wait()
                await anyio.sleep(0.3)  # every dribbler has sent a few partial chunks
                probe = await RawConnection.open(d.socket_path)
                worst = 0.0
                for i in range(30):
                    t0 = time.monotonic()
                    reply = await probe.call(req("daemon.ping", id_=i))
                    worst = max(worst, time.monotonic() - t0)
                    assert reply["id"] == i
                    await anyio.sleep(0.03)
                await probe.aclose()
                stop.set()
            assert worst < 1.0, f"a ping took {worst:.3f} s behind 200 slow clients"


class TestOutputBound:
    async def test_slow_subscriber_is_dropped_with_a_notice(self, short_tmp: Path) -> None:
        """A subscriber that does not read is dropped with a final events.dropped notice;
        publishing never waits and other clients are served meanwhile."""
        async with running_daemon(short_tmp, limits__max_output_bytes=64 * 1024) as d:
            slow = await RawConnection.open(d.socket_path)
            sub = (await slow.call(req("events.subscribe", {"types": ["test.*"]})))["result"]
            blob = "x" * 1000
            base = d.bus.seq
            t0 = time.monotonic()
            for i in range(3000):  # ~3 MB, far past the kernel buffer and the bound
                d.bus.publish("test.big", {"i": i, "blob": blob})
            assert time.monotonic() - t0 < 2.0, "publish must never wait for a subscriber"
            assert d.bus.subscriptions == 0
            bystander = await RawConnection.open(d.socket_path)
            assert (await bystander.call(req("daemon.ping")))["result"]["pong"]
            # Now read what the slow client got: events in order, then the notice.
            seen: list[int] = []
            while True:
                msg = await slow.recv()
                if msg.get("method") == "events.dropped":
                    break
                seen.append(msg["params"]["data"]["i"])
            assert seen == list(range(len(seen))) and 0 < len(seen) < 3000
            assert msg["params"]["subscription"] == sub["subscription"]
            assert msg["params"]["last_seq"] == base + len(seen)
            # The connection itself is still usable and can resubscribe.
            assert (await slow.call(req("daemon.ping", id_="after")))["id"] == "after"
            await slow.aclose()
            await bystander.aclose()

    async def test_client_not_reading_replies_is_disconnected(self, short_tmp: Path) -> None:
        """A client that pipelines requests and never reads is cut off after the write timeout;
        another client is served throughout."""
        async with running_daemon(short_tmp, limits__max_output_bytes=64 * 1024,
                                  limits__write_timeout_s=0.5) as d:
            bystander = await RawConnection.open(d.socket_path)
            await bystander.call(req("events.subscribe", {"types": ["daemon.client_*"]}))
            hog = await RawConnection.open(d.socket_path)
            assert (await bystander.recv())["params"]["type"] == "daemon.client_connected"
            line = json.dumps(req("daemon.status")).encode() + b"\n"
            with anyio.move_on_after(5):
                try:
                    for _ in range(20000):
                        await hog.send(line)
                except (anyio.BrokenResourceError, OSError):
                    pass
            # The daemon cuts the hog off by itself (we never closed it) ...
            gone = await bystander.recv(timeout=10)
            assert gone["params"]["type"] == "daemon.client_disconnected"
            assert len(d.connections) == 1
            # ... and served the bystander throughout.
            assert (await bystander.call(req("daemon.ping", id_="p")))["id"] == "p"
            await hog.aclose()
            await bystander.aclose()
