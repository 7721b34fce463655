"""``daemon.*``: liveness, status and graceful shutdown."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def ping(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Answer at once; the daemon's clock lets a client spot skew."""
    return {"pong": True, "time": time.time()}


async def status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Version, paths, device, models, queue."""
    return await ctx.daemon.status()


async def shutdown(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Begin a graceful stop; this reply is still delivered before the connection closes."""
    pid = ctx.connection.peer.pid
    ctx.daemon.request_stop(params.get("reason") or f"daemon.shutdown from pid {pid}")
    return {"stopping": True}
