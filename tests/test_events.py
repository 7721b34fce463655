"""Events: filters, sequence numbers, replay after a reconnect, missed detection, restarts."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import Raw, RawConnection, check_event, check_result, req
from timbrectl.client import connect, follow_events
from timbred.daemon.app import Daemon
from timbred.daemon.events import EventBus
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


class TestEventBus:
    def test_seq_is_monotonic_and_replay_is_exact(self) -> None:
        """Replay after seq N returns exactly the buffered events N+1.. that match."""
        bus = EventBus(buffer_size=100)
        for i in range(10):
            bus.publish("job.progress" if i % 2 else "job.done", {"i": i})
        _, replay = bus.subscribe(["job.progress"], lambda s, e: True, after_seq=4)
        assert [e.seq for e in replay.events] == [6, 8, 10]
        assert not replay.missed

    def test_missed_when_the_buffer_has_moved_on(self) -> None:
        """Asking for events older than the buffer holds reports missed=True."""
        bus = EventBus(buffer_size=16)
        for i in range(40):
            bus.publish("x", {"i": i})
        _, replay = bus.subscribe(["*"], lambda s, e: True, after_seq=10)
        assert replay.missed
        assert [e.seq for e in replay.events] == list(range(25, 41))
        _, replay = bus.subscribe(["*"], lambda s, e: True, after_seq=24)
        assert not replay.missed

    def test_other_epoch_replays_everything_and_says_missed(self) -> None:
        """A seq from another daemon run (epoch) means nothing: replay all, missed=True."""
        bus = EventBus(buffer_size=16)
        bus.publish("x", {})
        _, replay = bus.subscribe(["*"], lambda s, e: True, after_seq=1, epoch="old-run")
        assert replay.missed and [e.seq for e in replay.events] == [1]
        _, replay = bus.subscribe(["*"], lambda s, e: True, after_seq=999)
        assert replay.missed

    def test_sink_refusing_removes_the_subscription(self) -> None:
        """A sink that returns False (it could not keep up) is unsubscribed by the bus."""
        bus = EventBus()
        bus.subscribe(["*"], lambda s, e: False)
        bus.publish("x", {})
        assert bus.subscriptions == 0


class TestSubscriptions:
    async def test_filters_and_schema(self, daemon: Daemon, raw: Raw) -> None:
        """A subscriber gets only matching types; every event matches schemas/openrpc.json."""
        watcher = await raw()
        sub = check_result("events.subscribe", await watcher.call(
            req("events.subscribe", {"types": ["daemon.client_dis*"]})))
        other = await raw()
        await other.call(req("daemon.ping"))
        await other.aclose()
        msg = await watcher.recv()
        assert msg["method"] == "event" and "id" not in msg
        check_event(msg["params"])
        assert msg["params"]["type"] == "daemon.client_disconnected"
        assert msg["params"]["subscription"] == sub["subscription"]
        assert msg["params"]["seq"] > sub["seq"]

    async def test_unsubscribe_stops_delivery(self, daemon: Daemon, raw: Raw) -> None:
        """After events.unsubscribe no more events arrive for it."""
        watcher = await raw()
        sub = (await watcher.reply(req("events.subscribe")))["result"]
        check_result("events.unsubscribe", await watcher.reply(
            req("events.unsubscribe", {"subscription": sub["subscription"]})))
        await (await raw()).call(req("daemon.ping"))
        # The next message is the reply to this ping: no event was queued before it.
        assert (await watcher.call(req("daemon.ping", id_="last")))["id"] == "last"
        assert daemon.bus.subscriptions == 0

    async def test_replay_after_reconnect_loses_nothing(self, daemon: Daemon) -> None:
        """A client that reconnects with after_seq gets exactly the events it missed, in order."""
        first = await RawConnection.open(daemon.socket_path)
        sub = (await first.call(req("events.subscribe", {"types": ["test.*"]})))["result"]
        daemon.bus.publish("test.tick", {"i": 0})
        seen = [(await first.recv())["params"]]
        await first.aclose()
        for i in range(1, 6):  # published while the client is away
            daemon.bus.publish("test.tick", {"i": i})
        second = await RawConnection.open(daemon.socket_path)
        await second.send_json(req("events.subscribe", {
            "types": ["test.*"], "after_seq": seen[-1]["seq"], "epoch": sub["epoch"]}))
        reply: dict[str, Any] | None = None
        while reply is None or len(seen) < 6:
            msg = await second.recv()
            if "result" in msg:
                reply = msg["result"]
            else:
                seen.append(msg["params"])
        assert [p["data"]["i"] for p in seen] == list(range(6))
        assert reply["replayed"] == 5 and reply["missed"] is False
        daemon.bus.publish("test.tick", {"i": 6})  # and live events continue after the replay
        assert (await second.recv())["params"]["data"]["i"] == 6
        await second.aclose()


class Recorder:
    """Collects items and lets a test wait for a condition on them without polling."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self.items):
                await self._changed.wait()


def _follower(rec: Recorder, sock: Path
              ) -> Callable[[anyio.abc.TaskStatus[None]], Coroutine[Any, Any, None]]:
    """A task that records everything follow_events yields; started at its first item."""
    async def consume(task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        async for item in follow_events(sock, ["test.*"], retry_interval=0.05):
            rec.add(item)
            if not started:
                started = True
                task_status.started()

    return consume


async def test_follow_events_survives_a_daemon_restart(short_tmp: Path) -> None:
    """follow_events reports the disconnect, reconnects to the new daemon, flags missed events,
    and delivers the new run's events without treating their small seqs as duplicates."""
    rec = Recorder()
    got = rec.items
    sock = short_tmp / "run" / "timbred.sock"

    consume = _follower(rec, sock)

    async with anyio.create_task_group() as tg:
        async with running_daemon(short_tmp) as d1:
            await tg.start(consume)
            for _ in range(20):
                d1.bus.publish("test.a", {"n": 1})
            await rec.until(lambda g: sum(1 for x in g if x["method"] == "event") == 20)
        async with running_daemon(short_tmp) as d2:
            await rec.until(lambda g: any(x.get("state") == "connected" for x in g[21:]))
            d2.bus.publish("test.b", {"n": 2})
            await rec.until(lambda g: any(x.get("type") == "test.b" for x in g))
        tg.cancel_scope.cancel()
    states = [g["state"] for g in got if g["method"] == "connection"]
    assert states[0] == "connected"
    assert "connected" in states[states.index("disconnected"):]  # back after the restart
    reconnect = [g for g in got if g["method"] == "connection" and g["state"] == "connected"][-1]
    assert reconnect["missed"] is True  # a new epoch: the old run's tail may be lost
    events = [g for g in got if g["method"] == "event"]
    assert len(events) == 21 and events[-1]["seq"] < 20  # the new run's small seq got through
    assert events[-1]["epoch"] != events[0]["epoch"]


async def test_client_library_events(daemon: Daemon) -> None:
    """Client.subscribe + next_event deliver the daemon's notifications."""
    async with connect(daemon.socket_path) as client:
        await client.subscribe(["test.*"])
        daemon.bus.publish("test.x", {"v": 1})
        ev = await client.next_event(timeout=5)
        assert ev["type"] == "test.x" and ev["data"] == {"v": 1}


async def test_a_restart_is_missed_events_even_before_the_first_event(short_tmp: Path) -> None:
    """A client that saw no event yet still learns, on reconnecting to a new daemon run,
    that it may have missed some (so the studio reloads instead of showing stale jobs)."""
    rec = Recorder()
    sock = short_tmp / "run" / "timbred.sock"

    consume = _follower(rec, sock)

    async with anyio.create_task_group() as tg:
        async with running_daemon(short_tmp):
            await tg.start(consume)
        async with running_daemon(short_tmp):
            await rec.until(lambda g: [x.get("state") for x in g][-1:] == ["connected"]
                            and len(g) > 1)
        tg.cancel_scope.cancel()
    marks = [g["missed"] for g in rec.items
             if g["method"] == "connection" and g["state"] == "connected"]
    assert marks == [False, True], marks
