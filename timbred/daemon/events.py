"""The daemon's event stream: sequence numbers, filters, a bounded replay buffer.

Publishing never waits: each subscriber's sink takes an event synchronously and answers whether
it could (a sink that cannot keep up is removed, and its connection tells the client with a final
``events.dropped`` notice). Because publish and subscribe never await, a subscriber sees exactly
the events after the ones replayed to it, with no gap and no duplicate.

Sequence numbers start at 1 for each daemon run; ``epoch`` (random per run) tells a reconnecting
client whether its last seen ``seq`` still means anything.
"""

from __future__ import annotations

import fnmatch
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One published event."""

    seq: int
    epoch: str
    type: str
    time: float
    data: Mapping[str, Any]

    def params(self, subscription: str) -> dict[str, Any]:
        """The params of the ``event`` notification carrying this event."""
        return {"subscription": subscription, "seq": self.seq, "epoch": self.epoch,
                "type": self.type, "time": self.time, "data": dict(self.data)}


Sink = Callable[["Subscription", Event], bool]
_ids = itertools.count(1)


@dataclass(eq=False)
class Subscription:
    """A filter and the sink that receives matching events."""

    patterns: tuple[str, ...]
    sink: Sink
    id: str = field(default_factory=lambda: f"s{next(_ids)}")

    def matches(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.patterns)


@dataclass(frozen=True)
class Replay:
    """What a new subscription starts with."""

    events: list[Event]
    missed: bool


class EventBus:
    """Assigns sequence numbers, keeps the last ``buffer_size`` events, fans out to sinks."""

    def __init__(self, buffer_size: int = 4096, *, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.seq = 0
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._subs: dict[str, Subscription] = {}

    def publish(self, event_type: str, data: Mapping[str, Any]) -> Event:
        """Record an event and hand it to every matching subscription, without waiting."""
        self.seq += 1
        event = Event(self.seq, self.epoch, event_type, time.time(), dict(data))
        self._buffer.append(event)
        for sub in list(self._subs.values()):
            if sub.matches(event_type) and not sub.sink(sub, event):
                self._subs.pop(sub.id, None)
        return event

    def subscribe(
        self,
        patterns: Iterable[str],
        sink: Sink,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
    ) -> tuple[Subscription, Replay]:
        """Register a subscription and compute what to replay to it first.

        ``missed`` is true when the client asked for events after ``after_seq`` but some of them
        are gone: fallen out of the buffer, or from another daemon run (another epoch).
        """
        sub = Subscription(tuple(patterns) or ("*",), sink)
        self._subs[sub.id] = sub
        if after_seq is None:
            return sub, Replay([], False)
        other_run = (epoch is not None and epoch != self.epoch) or after_seq > self.seq
        start = 0 if other_run else after_seq
        oldest = self._buffer[0].seq if self._buffer else self.seq + 1
        missed = other_run or start + 1 < oldest
        events = [e for e in self._buffer if e.seq > start and sub.matches(e.type)]
        return sub, Replay(events, missed)

    def unsubscribe(self, subscription_id: str) -> bool:
        """Remove a subscription; False when it was not there."""
        return self._subs.pop(subscription_id, None) is not None

    @property
    def subscriptions(self) -> int:
        return len(self._subs)
