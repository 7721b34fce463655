"""``costs.*`` and ``auth.*``: what hosted jobs cost, and where the daemon finds keys."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from timbred.hosted import keys

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext

#: ``costs.summary`` without ``since``: the last 30 days.
DEFAULT_SINCE_S = 30 * 86_400


async def costs(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Hosted jobs' costs per provider since ``since`` (default: 30 days ago)."""
    since = params.get("since")
    since = time.time() - DEFAULT_SINCE_S if since is None else float(since)
    return await anyio.to_thread.run_sync(ctx.daemon.generation.costs, since)


async def auth_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Where the daemon would find each provider's key (never the key)."""
    executor = ctx.daemon.generation.hosted.executor
    found = await anyio.to_thread.run_sync(lambda: keys.sources(client=executor.client_keys))
    return {"providers": found}
