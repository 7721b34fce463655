"""Start timbred in the background and wait until it accepts connections.

Readiness comes from the daemon itself: we hand it a private ``NOTIFY_SOCKET`` (the same
sd_notify protocol systemd uses) and wait for ``READY=1``, rather than polling the socket path.
If the daemon exits first, its exit status and the end of its log say why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

#: timbred's exit statuses (see timbred.daemon.cli), for messages.
DAEMON_EXIT = {1: "unexpected error", 2: "bad command line", 3: "already running",
               4: "bad configuration", 5: "unsafe socket directory"}


@dataclass(frozen=True)
class Started:
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes]


class StartFailed(Exception):
    """Raised when the spawned daemon exits or stays silent instead of becoming ready."""

    def __init__(self, message: str, exit_status: int | None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def spawn_log_path() -> Path:
    """Where a background daemon's stderr goes."""
    return Path(platformdirs.user_log_dir("timbre")) / "timbred.out"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def start(*, socket_path: Path | None, config: Path | None, timeout: float = 30.0,
          environ: Mapping[str, str] | None = None, log_path: Path | None = None) -> Started:
    """Spawn ``python -m timbred`` detached; return once it reports READY=1.

    ``environ`` replaces the inherited environment (benchmarks give the daemon private
    directories); ``log_path`` replaces the default log file.
    """
    log_path = log_path or spawn_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="timbre-") as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify_path = str(Path(tmp) / "notify")
        notify.bind(notify_path)
        notify.settimeout(0.1)
        env = dict(os.environ if environ is None else environ, NOTIFY_SOCKET=notify_path,
                   PYTHONUNBUFFERED="1")
        if socket_path is not None:
            env["TIMBRE_SOCKET"] = str(socket_path)
        argv = [sys.executable, "-m", "timbred"]
        if config is not None:
            argv += ["--config", str(config)]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                message = ""
            if "READY=1" in message.split("\n"):
                return Started(proc.pid, log_path, proc)
            status = proc.poll()
            if status is not None:
                raise StartFailed(
                    f"timbred exited with status {status} "
                    f"({DAEMON_EXIT.get(status, 'see the log')}); last lines of {log_path}:\n"
                    f"{_tail(log_path)}", status)
        proc.terminate()
        raise StartFailed(f"timbred did not become ready within {timeout:g} s; see {log_path}",
                          None)
