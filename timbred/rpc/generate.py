"""``generate.*``: turn a prompt into a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def submit(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Queue a generation; answers only once the job is committed to the database."""
    job = await ctx.daemon.generation.submit(params)
    return {"job_id": job.id, "job": job.to_dict()}
