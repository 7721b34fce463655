"""``watch.*``: the folders the daemon watches for prompt files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def add(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Watch another folder (remembered across restarts)."""
    return await ctx.daemon.watch.add(params["path"])


async def remove(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Stop watching a folder."""
    return await ctx.daemon.watch.remove(params["path"])


async def list_(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """The watched folders and their state."""
    return {"folders": ctx.daemon.watch.list()}
