"""The watch folder, wired to the daemon: configuration in, the generation service out.

:class:`~timbred.watch.service.WatchService` knows files; this module gives it the daemon's
folders (``watch.folders``, default ``inbox/`` in the output directory), submits its prompts
through the generation service, and resolves each prompt's whole request (model, preset,
defaults, seed, export options) when its file is claimed (:func:`resolve`), so that outputs
are named for the format they will really be written in and every submission of the prompt
is that very request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timbred.config import Settings
from timbred.daemon.events import EventBus
from timbred.errors import TimbreError
from timbred.queue.generation import Generation
from timbred.watch.promptfile import PromptRequest
from timbred.watch.service import WatchService


def watch_folders(settings: Settings, output_root: Path) -> list[Path]:
    """The configured folders, or ``<output dir>/inbox`` (created) when none are."""
    configured = [Path(p).expanduser().absolute() for p in settings["watch.folders"]]
    if configured:
        return configured
    inbox = output_root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return [inbox]


def _wire_params(params: Mapping[str, Any], export: Mapping[str, Any],
                 preset: str | None) -> dict[str, Any]:
    """A prompt as ``generate.submit`` takes it: its params and export options flat."""
    out = {**params, **export}
    if preset:
        out["preset"] = preset
    return out


def resolve(generation: Generation, request: PromptRequest) -> dict[str, Any] | None:
    """The whole request a prompt's takes will be made from, as :meth:`Generation.resolve`
    makes it (the preset read once, here; the seed drawn), or None when the daemon would
    refuse it: submitting the plain request then refuses the prompt, naming why."""
    params = _wire_params(request.params, request.export, request.preset)
    try:
        model, job_params = generation.resolve(params)
    except TimbreError:
        return None
    return {"model": model, "params": job_params}


def make_watch_service(settings: Settings, generation: Generation,
                       bus: EventBus) -> WatchService:
    """A WatchService that submits through ``generation`` and publishes on ``bus``."""

    async def submit(request: dict[str, Any]) -> str:
        # The request resolved when the file was claimed, so a prompt submitted again after
        # a crash is the very request its first attempt sent.
        resolved = request.get("resolved")
        if resolved is not None:
            params = {**resolved["params"], "output": request["params"]["output"]}
            return (await generation.submit_resolved(
                resolved["model"], params,
                idempotency_key=request.get("idempotency_key"))).id
        # Claims from before whole requests were resolved (or one the daemon would refuse):
        # generate.submit's params, flat as on the wire, with the export resolved at claim.
        params = _wire_params(request["params"], request["export"], request.get("preset"))
        params["idempotency_key"] = request.get("idempotency_key")
        return (await generation.submit(params)).id

    async def wait(job_id: str) -> dict[str, Any]:
        return (await generation.wait(job_id, None)).to_dict()

    def publish(event_type: str, data: dict[str, Any]) -> None:
        bus.publish(event_type, data)

    return WatchService(
        watch_folders(settings, generation.output_root),
        database=generation.store.path, submit=submit, wait=wait, publish=publish,
        max_inflight_files=settings["watch.max_inflight_files"],
        stable_checks=settings["watch.stable_checks"],
        stable_interval_s=settings["watch.stable_interval_s"],
        outputs=settings["watch.outputs"], max_file_bytes=settings["watch.max_file_bytes"],
        resolve_for=lambda request: resolve(generation, request))
