"""``events.*``: subscriptions delivered as notifications on the calling connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timbred.errors import ShuttingDown, SubscriptionNotFound

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def subscribe(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Subscribe, replaying buffered events after ``after_seq`` first."""
    if ctx.daemon.stopping:
        raise ShuttingDown()
    conn, bus = ctx.connection, ctx.daemon.bus
    sub, replay = bus.subscribe(params.get("types", ["*"]), conn.deliver,
                                after_seq=params.get("after_seq"), epoch=params.get("epoch"))
    conn.subscriptions[sub.id] = sub
    replayed = 0
    for event in replay.events:
        if not conn.deliver(sub, event):
            bus.unsubscribe(sub.id)
            break
        replayed += 1
    return {"subscription": sub.id, "epoch": bus.epoch, "seq": bus.seq,
            "replayed": replayed, "missed": replay.missed}


async def unsubscribe(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Remove one of this connection's subscriptions."""
    sub_id = params["subscription"]
    if ctx.connection.subscriptions.pop(sub_id, None) is None:
        raise SubscriptionNotFound(sub_id)
    ctx.daemon.bus.unsubscribe(sub_id)
    return {"unsubscribed": True}
