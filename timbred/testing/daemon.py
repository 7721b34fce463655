"""An in-process daemon for tests (shipped in the package, like httpcore's mock transport).

``running_daemon(base)`` starts a real :func:`timbred.daemon.app.serve` on a real Unix socket under
``base`` (keep it short: socket paths are limited to ~100 bytes) and stops it gracefully.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from timbred.config import Settings
from timbred.daemon.app import Daemon, serve
from timbred.errors import TimbreError


def test_settings(base: Path, **overrides: Any) -> Settings:
    """Defaults with socket, job database and takes under ``base``, plus overrides."""
    overrides.setdefault("daemon__socket", str(base / "run" / "timbred.sock"))
    overrides.setdefault("data__database", str(base / "data" / "jobs.sqlite3"))
    overrides.setdefault("output__dir", str(base / "music"))
    return Settings.defaults(**overrides)


@asynccontextmanager
async def running_daemon(base: Path, settings: Settings | None = None,
                         **overrides: Any) -> AsyncIterator[Daemon]:
    """Run a daemon for the duration of the ``async with`` block."""
    settings = settings or test_settings(base, **overrides)
    try:
        async with anyio.create_task_group() as tg:
            daemon: Daemon = await tg.start(serve, settings)
            try:
                yield daemon
            finally:
                daemon.request_stop("test finished")
    except BaseExceptionGroup as group:
        # A start-up failure (unsafe directory, already running) surfaces as itself.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], TimbreError):
            raise group.exceptions[0] from None
        raise
