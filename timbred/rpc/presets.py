"""``presets.*``: what presets exist and what one holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

from timbred import presets

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def list_(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Shipped and user presets (broken ones listed with their problem)."""
    found = await anyio.to_thread.run_sync(presets.list_presets)
    return {"presets": [p.to_dict() for p in found]}


async def show(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """One preset."""
    return (await anyio.to_thread.run_sync(presets.load, params["name"])).to_dict()
