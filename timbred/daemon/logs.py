"""Logging set-up: journald-friendly on stderr, optionally also to a file.

Under systemd (``$JOURNAL_STREAM`` set) each line starts with an sd-daemon ``<N>`` priority
prefix and carries no timestamp (journald adds its own); in a terminal lines carry a time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

import platformdirs

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` for journald's stream parser."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def log_file_path(setting: str) -> Path | None:
    """The log file for the ``daemon.log_file`` setting (``""`` none, ``"default"``, a path)."""
    if not setting:
        return None
    if setting == "default":
        return Path(platformdirs.user_log_dir("timbre")) / "timbred.log"
    return Path(setting).expanduser()


def setup(level: str, log_file: Path | None) -> None:
    """Configure the root logger for the daemon process."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        stderr.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        stderr.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(stderr)
    # watchfiles logs every batch of changes at INFO; the watch service reports what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"))
        root.addHandler(handler)
