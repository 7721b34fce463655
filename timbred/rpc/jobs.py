"""``jobs.*``: inspect and control the durable queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """One job."""
    return (await ctx.daemon.generation.get(params["job_id"])).to_dict()


async def list_(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """A page of jobs, newest first, with filters."""
    store = ctx.daemon.generation.store
    import anyio.to_thread

    jobs, cursor = await anyio.to_thread.run_sync(lambda: store.list(
        states=params.get("states"), model=params.get("model"), text=params.get("text"),
        limit=params.get("limit", 50), cursor=params.get("cursor")))
    return {"jobs": [j.to_dict() for j in jobs], "next_cursor": cursor}


async def cancel(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Cancel a queued job at once, or a running one within a few decoding steps."""
    return (await ctx.daemon.generation.cancel(params["job_id"])).to_dict()


async def retry(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Queue a failed, cancelled or interrupted job again as a new job."""
    return (await ctx.daemon.generation.retry(params["job_id"])).to_dict()


async def wait(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """The job once finished, or as it is when the timeout runs out."""
    return (await ctx.daemon.generation.wait(params["job_id"], params.get("timeout"))).to_dict()
