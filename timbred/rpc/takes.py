"""``history.*`` and ``takes.*``: search the history, and rate, tag, export, delete, replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def search(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Takes, newest first, with filters and a cursor."""
    library = ctx.daemon.generation.history.library
    found, cursor = await anyio.to_thread.run_sync(lambda: library.search(
        text=params.get("text"), tag=params.get("tag"), rating=params.get("rating"),
        since=params.get("since"), until=params.get("until"), session=params.get("session"),
        include_deleted=params.get("include_deleted", False), limit=params.get("limit", 50),
        cursor=params.get("cursor"), bpm_min=params.get("bpm_min"),
        bpm_max=params.get("bpm_max"), key=params.get("key")))
    return {"takes": [t.to_dict() for t in found], "next_cursor": cursor}


async def show(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """One take."""
    history = ctx.daemon.generation.history
    return (await anyio.to_thread.run_sync(history.show, params["take"])).to_dict()


async def export(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Re-encode a take into another format beside it (or at ``output``), optionally with a
    preset's export settings (:meth:`History.export_take` says how options layer)."""
    history = ctx.daemon.generation.history
    written = await anyio.to_thread.run_sync(history.export_take, params["take"], params)
    return written.to_dict()


async def loop(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """A loop of whole bars cut from a take (:meth:`History.loop_take`)."""
    history = ctx.daemon.generation.history
    written = await anyio.to_thread.run_sync(history.loop_take, params["take"], params)
    return written.to_dict()


async def stems(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Queue the separation of a take into stems (drums, bass, other, vocals): a job like
    a generation's, whose outputs are the stem files beside the take."""
    job = await ctx.daemon.generation.submit_stems(params)
    return {"job_id": job.id, "job": job.to_dict()}


async def rate(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Thumbs up/down/none with an optional note."""
    history = ctx.daemon.generation.history
    take = await anyio.to_thread.run_sync(history.rate, params["take"], params["value"],
                                          params.get("note"))
    ctx.daemon.bus.publish("take.updated", {"take": take.to_dict()})
    return take.to_dict()


async def tag(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Add and remove tags."""
    history = ctx.daemon.generation.history
    take = await anyio.to_thread.run_sync(history.tag, params["take"], params.get("add", []),
                                          params.get("remove", []))
    ctx.daemon.bus.publish("take.updated", {"take": take.to_dict()})
    return take.to_dict()


async def remove(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Delete a take's files; the record stays, marked deleted."""
    history = ctx.daemon.generation.history
    take = await anyio.to_thread.run_sync(history.remove, params["take"])
    ctx.daemon.bus.publish("take.updated", {"take": take.to_dict()})
    return take.to_dict()


async def replay(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Re-render a take from its recipe as a new job."""
    job = await ctx.daemon.generation.replay(params["take"])
    return {"job_id": job.id, "job": job.to_dict()}
