"""``models.*``: what is installed, what is loaded, pull, remove, load, unload."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread

from timbred import models
from timbred.backends import registry
from timbred.hosted import provider as load_provider
from timbred.hosted.names import PROVIDERS
from timbred.queue.generation import to_plain
from timbred.request import Request

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext

#: The request a hosted model's price is quoted for in ``models.list``.
EXAMPLE = Request(prompt="example", duration=30.0, seed=0)

#: Pull progress events per second at most (the last one always goes out).
PULL_EVENTS_PER_S = 5


async def list_(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Installed models (the Hugging Face cache) and the catalogue of known names."""
    installed = await anyio.to_thread.run_sync(models.list_installed)
    loaded = ctx.daemon.generation.pool.loaded_names()
    return {
        "installed": [{**to_plain(m), "loaded": m.name in loaded} for m in installed],
        "catalogue": [{"name": e.name, "repo": e.repo, "backend": e.backend,
                       "melody": e.melody, "stereo": e.stereo, "licence": e.licence,
                       "gated": e.gated, "approx_bytes": e.approx_bytes,
                       "task": registry.get(e.backend).task}
                      for e in models.CATALOGUE.values()],
        "hosted": await _hosted(ctx),
    }


async def _hosted(ctx: RequestContext) -> list[dict[str, Any]]:
    """The models each provider suggests, with where the daemon finds its key."""
    executor = ctx.daemon.generation.hosted.executor
    out = []
    for name in PROVIDERS:
        provider = load_provider(name)
        source = await anyio.to_thread.run_sync(executor.key_source, name)
        for model, summary in provider.models.items():
            estimate = provider.estimate(model, EXAMPLE)
            out.append({
                "name": f"{name}:{model}", "provider": name, "summary": summary,
                "key": source, "needs_key": source is None,
                "deterministic": provider.deterministic(model),
                "price": f"~${estimate.usd:.2f} for {EXAMPLE.duration:g} s "
                         f"({'estimate: ' if estimate.estimate else ''}{estimate.basis})"})
    return out


async def pull(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Download a model into the Hugging Face cache, publishing ``model.pull`` events."""
    bus = ctx.daemon.bus
    last = 0.0

    def progress(p: models.PullProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if p.phase == "downloading" and now - last < 1 / PULL_EVENTS_PER_S:
            return
        last = now
        anyio.from_thread.run_sync(bus.publish, "model.pull", to_plain(p))

    installed = await anyio.to_thread.run_sync(
        lambda: models.pull(params["model"], progress=progress, revision=params.get("revision")))
    return dict(to_plain(installed))


async def remove(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Delete a model from the cache (unloading it first)."""
    await ctx.daemon.generation.unload_model(params["model"])
    removed = await anyio.to_thread.run_sync(models.remove, params["model"])
    return dict(to_plain(removed))


async def ps(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Loaded models: memory, device, when each expires."""
    pool = ctx.daemon.generation.pool
    return {"models": pool.ps(), "device": pool.device()}


async def load(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Load a model now (warming it for the next job)."""
    entry = await ctx.daemon.generation.pool.load_model(params["model"],
                                                        params.get("keep_alive"))
    return entry.to_dict()


async def unload(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Unload a model (refused while a running job uses it)."""
    return {"unloaded": await ctx.daemon.generation.unload_model(params["model"])}
