"""``generate.*``: turn a prompt into a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def submit(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Queue a generation; answers only once the job is committed to the database.

    ``credentials`` (keys a client found in its own environment for hosted providers) are
    taken out here, held in memory by the hosted executor, and never reach the job, its
    idempotency digest, an event or a log."""
    credentials = params.pop("credentials", None)
    if credentials:
        ctx.daemon.generation.hosted.executor.remember_keys(credentials)
    job = await ctx.daemon.generation.submit(params)
    return {"job_id": job.id, "job": job.to_dict()}
