"""The watch folder, wired to the daemon: configuration in, the generation service out.

:class:`timbred.watch.WatchService` knows files; this module gives it the daemon's folders
(``watch.folders``, default ``inbox/`` in the output directory), submits its prompts through
the generation service, and names each prompt's output after the format that will really be
written (a preset or the configuration may choose a format the prompt file does not name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timbred import export, presets
from timbred.config import Settings
from timbred.events import EventBus
from timbred.generation import Generation
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

    def final_output(request: dict[str, Any]) -> str | None:
        """The prompt's output path, its suffix matching the format that will be used."""
        output: str | None = request["params"].get("output")
        if output is None or "format" in request["export"]:
            return output  # the prompt file chose the format (or the name implies it)
        layers: list[dict[str, Any]] = []
        if request.get("preset"):
            layers.append(dict(presets.load(request["preset"]).export))
        options = generation.history.export_options(*layers)
        return str(Path(output).with_suffix(export.EXTENSIONS[options.format]))

    async def submit(request: dict[str, Any]) -> str:
        params = {**request["params"], **request["export"]}
        if request.get("preset"):
            params["preset"] = request["preset"]
        params["output"] = final_output(request)
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
        outputs=settings["watch.outputs"], max_file_bytes=settings["watch.max_file_bytes"])
