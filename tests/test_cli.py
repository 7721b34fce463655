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

from tests.support import file_lufs
from timbrectl.client import Client
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


@pytest.mark.anyio
async def test_takes_export_with_a_preset(gen: Daemon, client: Client, user_presets: Path,
                                          short_tmp: Path) -> None:
    """`takes export TAKE --preset NAME` prints the new file: the preset's format at its
    loudness; an explicit --loudness wins; --json is the WrittenTake. An unknown preset is
    exit 1 naming it (the error object on stdout with --json), and nothing is written."""
    (user_presets / "archive.toml").write_text(
        '[export]\nformat = "flac"\nloudness_target_lufs = -20.0\n')
    submitted = await client.call("generate.submit", {"prompt": "x", "duration": 1.0})
    job = await client.call("jobs.wait", {"job_id": submitted["job_id"], "timeout": 120})
    assert job["state"] == "done", job["error"]
    take = job["outputs"][0]
    env = ctl_env(gen.socket_path, short_tmp)

    proc = await ctl("takes", "export", take, "--preset", "archive", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == str(Path(take).with_suffix(".flac")) + "\n"
    assert file_lufs(proc.stdout.strip()) == pytest.approx(-20.0, abs=0.5)

    louder = short_tmp / "louder.flac"
    proc = await ctl("takes", "export", take, "--preset", "archive", "--loudness", "-16",
                     "-o", str(louder), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)
    jsonschema.validate(written, rooted({"$ref": "#/components/schemas/WrittenTake"}))
    assert written["path"] == str(louder) and written["format"] == "flac"
    assert file_lufs(louder) == pytest.approx(-16.0, abs=0.5)

    before = sorted(Path(take).parent.iterdir())
    proc = await ctl("takes", "export", take, "--preset", "nope", "--format", "ogg", "--json",
                     env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("timbrectl: no preset 'nope'")
    assert json.loads(proc.stdout)["error"]["data"]["kind"] == "preset_not_found"
    assert sorted(Path(take).parent.iterdir()) == before


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
