"""The watch folder, wired to the daemon: configuration in, the generation service out.

:class:`~timbred.watch.service.WatchService` knows files; this module gives it the daemon's
folders (``watch.folders``, default ``inbox/`` in the output directory), submits its prompts
through the generation service, and resolves each prompt's export options when its file is
claimed (:func:`resolve_export`), so that outputs are named for the format they will really
be written in and every submission of the prompt names that format outright.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timbred import presets
from timbred.config import Settings
from timbred.errors import TimbreError
from timbred.events import EventBus
from timbred.generation import Generation
from timbred.takes.history import History
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


def resolve_export(history: History, request: PromptRequest) -> dict[str, Any]:
    """Every export option a prompt's takes will be written with: the prompt file's own, over
    its preset's ``[export]`` table, over the configuration (as ``generate.submit`` layers
    them). Normalisation switched off is ``loudness_target_lufs: false``, the request's way of
    saying so (a ``None`` would let the preset's target through again).

    The preset is read here, once per claim. A missing or broken one is left out: submitting
    will refuse the prompt, naming it.
    """
    layers: list[Mapping[str, Any]] = []
    if request.preset:
        with contextlib.suppress(TimbreError):
            layers.append(presets.load(request.preset).export)
    export = history.export_options(*layers, request.export).to_dict()
    if export["loudness_target_lufs"] is None:
        export["loudness_target_lufs"] = False
    return export


def make_watch_service(settings: Settings, generation: Generation,
                       bus: EventBus) -> WatchService:
    """A WatchService that submits through ``generation`` and publishes on ``bus``."""

    async def submit(request: dict[str, Any]) -> str:
        # generate.submit takes its params flat, as on the wire. The request is the one
        # resolved when the file was claimed, so a prompt submitted again after a crash is
        # the very request its first attempt sent.
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
        export_for=lambda request: resolve_export(generation.history, request))
