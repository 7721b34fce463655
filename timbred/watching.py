"""The watch folder, wired to the daemon: configuration in, the generation service out.

:class:`timbred.watch.WatchService` knows files; this module gives it the daemon's folders
(``watch.folders``, default ``inbox/`` in the output directory), submits its prompts through
the generation service, and tells it the format each prompt will really be written in (a preset
or the configuration may choose one the prompt file does not name), so outputs are named for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from timbred import presets
from timbred.config import Settings
from timbred.errors import TimbreError
from timbred.events import EventBus
from timbred.generation import Generation
from timbred.promptfile import PromptRequest
from timbred.watch import WatchService


def watch_folders(settings: Settings, output_root: Path) -> list[Path]:
    """The configured folders, or ``<output dir>/inbox`` (created) when none are."""
    configured = [Path(p).expanduser().absolute() for p in settings["watch.folders"]]
    if configured:
        return configured
    inbox = output_root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return [inbox]


def make_watch_service(settings: Settings, generation: Generation,
                       bus: EventBus) -> WatchService:
    """A WatchService that submits through ``generation`` and publishes on ``bus``."""

    def format_for(request: PromptRequest) -> str:
        """The format the prompt's takes will be written in: the prompt file's, else its
        preset's, else the configuration's (asked once, when the file is claimed)."""
        if "format" in request.export:
            return str(request.export["format"])
        layers: list[dict[str, Any]] = []
        if request.preset:
            # A missing or broken preset: submitting will refuse the prompt, naming it.
            with contextlib.suppress(TimbreError):
                layers.append(dict(presets.load(request.preset).export))
        return generation.history.export_options(*layers).format

    async def submit(request: dict[str, Any]) -> str:
        # The output path was fixed when the file was claimed (format_for), so a prompt
        # submitted again after a crash is the very request its first attempt sent.
        params = {**request["params"], **request["export"]}
        if request.get("preset"):
            params["preset"] = request["preset"]
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
        format_for=format_for)
