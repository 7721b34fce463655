"""timbrectl as a person or a script uses it: real processes, real socket, exit statuses."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import jsonschema
import pytest

from timbred.app import Daemon
from timbred.protocol.schema import rooted


def ctl_env(sock: Path, tmp: Path) -> dict[str, str]:
    (tmp / "empty.toml").write_text("")
    return dict(os.environ, TIMBRE_SOCKET=str(sock), TIMBRE_CONFIG=str(tmp / "empty.toml"),
                XDG_STATE_HOME=str(tmp / "state"),
                TIMBRE_DATA_DATABASE=str(tmp / "jobs.sqlite3"),
                TIMBRE_OUTPUT_DIR=str(tmp / "music"))


async def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run timbrectl in a child process without blocking the in-process daemon's loop."""
    return await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "timbrectl", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False))


def status_schema() -> dict[str, object]:
    return rooted({"$ref": "#/components/schemas/Status"})


@pytest.mark.anyio
async def test_ping_and_status(daemon: Daemon, short_tmp: Path) -> None:
    """ping and status answer for people; --json output validates against the schema."""
    env = ctl_env(daemon.socket_path, short_tmp)
    ping = await ctl("ping", env=env)
    assert ping.returncode == 0 and ping.stdout.startswith("pong (")
    human = await ctl("status", env=env)
    assert human.returncode == 0
    assert f"pid {os.getpid()}" in human.stdout and str(daemon.socket_path) in human.stdout
    machine = await ctl("status", "--json", env=env)
    doc = json.loads(machine.stdout)
    jsonschema.validate(doc, status_schema())
    assert doc["pid"] == os.getpid()


def test_no_daemon_exits_3(short_tmp: Path) -> None:
    """Without a daemon: exit 3, a clear message, and a JSON error object for scripts."""
    env = ctl_env(short_tmp / "run" / "timbred.sock", short_tmp)
    proc = subprocess.run([sys.executable, "-m", "timbrectl", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert "no timbred answering" in proc.stderr and "timbrectl daemon start" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "timbrectl", "ping", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["error"]["data"]["kind"] == "daemon_unavailable"


def test_usage_error_exits_2() -> None:
    """An unknown command is a usage error (argparse's exit 2)."""
    proc = subprocess.run([sys.executable, "-m", "timbrectl", "frobnicate"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2


def test_bad_local_config_exits_5(short_tmp: Path) -> None:
    """A broken config file (which names the socket) is exit 5 with the file named."""
    bad = short_tmp / "bad.toml"
    bad.write_text("[daemon]\nsocket = 3\n")
    env = dict(os.environ, TIMBRE_CONFIG=str(bad))
    env.pop("TIMBRE_SOCKET", None)
    proc = subprocess.run([sys.executable, "-m", "timbrectl", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 5 and str(bad) in proc.stderr


def test_daemon_start_status_shutdown(short_tmp: Path) -> None:
    """`daemon start` spawns a background daemon and waits for it; a second start says it is
    already running; `shutdown` waits for it to exit; afterwards ping exits 3."""
    env = ctl_env(short_tmp / "run" / "timbred.sock", short_tmp)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    started = run("daemon", "start", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["started"] is True
    try:
        again = run("daemon", "start", "--json")
        assert again.returncode == 0 and json.loads(again.stdout) == {
            "started": False, "pid": info["pid"], "socket": info["socket"]}
        assert run("status").returncode == 0
        stop = run("shutdown")
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert run("ping").returncode == 3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], 9)
