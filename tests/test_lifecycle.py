"""The daemon as a real process: readiness, signals, one instance, kill -9, sd_notify, exits.

These tests spawn ``python -m timbred`` (the only place the binary is needed) and wait for
readiness through a test NOTIFY_SOCKET, exactly as systemd would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 30.0


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = TIMEOUT) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if key in msg:
                return msg
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                raw = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            msg = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
            self.messages.append(msg)
            if key in msg:
                return msg
        raise AssertionError(f"no {key} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """A timbred subprocess with its own socket, notify socket and captured stderr."""

    def __init__(self, base: Path, name: str = "d", extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.socket = base / "run" / "timbred.sock"
        self.notify = NotifyListener(base / f"notify-{name}")
        self.stderr_path = base / f"stderr-{name}"
        env = dict(os.environ, TIMBRE_SOCKET=str(self.socket), NOTIFY_SOCKET=str(self.notify.path),
                   TIMBRE_CONFIG=str(base / "none.toml"), PYTHONUNBUFFERED="1",
                   TIMBRE_DATA_DATABASE=str(base / "jobs.sqlite3"),
                   TIMBRE_OUTPUT_DIR=str(base / "music"),
                   **(extra_env or {}))
        if not (base / "none.toml").exists():
            (base / "none.toml").write_text("")
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "timbred", *(args or [])],
                                         env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.notify.close()


def ping(sock_path: Path) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(sock_path))
        s.sendall(b'{"jsonrpc":"2.0","method":"daemon.status","id":1}\n')
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(65536)
    reply: dict[str, object] = json.loads(data)
    return reply


@pytest.fixture
def spawn(short_tmp: Path) -> Iterator[type[Daemon]]:
    started: list[Daemon] = []

    class Tracked(Daemon):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for d in started:
        d.stop()


def test_ready_and_status_via_sd_notify(short_tmp: Path, spawn: type[Daemon]) -> None:
    """READY=1 (with STATUS and MAINPID) is sent once the socket accepts; status answers."""
    d = spawn(short_tmp)
    ready = d.notify.wait_for("READY")
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(d.proc.pid)
    assert "listening on" in ready["STATUS"]
    reply = ping(d.socket)
    assert reply["result"]["pid"] == d.proc.pid  # type: ignore[index]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(short_tmp: Path, spawn: type[Daemon], sig: int) -> None:
    """SIGTERM and SIGINT stop the daemon with status 0, STOPPING=1, and the socket removed."""
    d = spawn(short_tmp)
    d.notify.wait_for("READY")
    d.proc.send_signal(sig)
    assert d.wait() == 0, d.stderr
    assert d.notify.wait_for("STOPPING")["STOPPING"] == "1"
    assert not d.socket.exists()
    assert "Traceback" not in d.stderr


def test_second_instance_refused_and_first_untouched(short_tmp: Path,
                                                     spawn: type[Daemon]) -> None:
    """A second timbred exits 3 with a clear message and never steals the first's socket."""
    first = spawn(short_tmp, "a")
    first.notify.wait_for("READY")
    inode = first.socket.lstat().st_ino
    second = spawn(short_tmp, "b")
    assert second.wait() == 3
    assert f"already running (pid {first.proc.pid}" in second.stderr
    assert first.socket.lstat().st_ino == inode
    assert ping(first.socket)["result"]["pid"] == first.proc.pid  # type: ignore[index]


def test_recovers_after_kill_9(short_tmp: Path, spawn: type[Daemon]) -> None:
    """After SIGKILL the stale socket stays behind; the next start recovers it unaided."""
    first = spawn(short_tmp, "a")
    first.notify.wait_for("READY")
    first.proc.kill()
    first.wait()
    assert first.socket.exists()  # stale: nobody cleaned up
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as s:
        s.connect(str(first.socket))
    second = spawn(short_tmp, "b")
    second.notify.wait_for("READY")
    assert ping(second.socket)["result"]["pid"] == second.proc.pid  # type: ignore[index]


def test_bad_config_exits_4_naming_file_key_and_expectation(short_tmp: Path,
                                                             spawn: type[Daemon]) -> None:
    """A bad value in the config file: exit 4 and a message with the file, key and expectation."""
    cfg = short_tmp / "bad.toml"
    cfg.write_text("[limits]\nmax_batch = 0\n")
    d = spawn(short_tmp, args=["--config", str(cfg)])
    assert d.wait() == 4
    assert str(cfg) in d.stderr and "limits.max_batch" in d.stderr and "from 1 to" in d.stderr


def test_unsafe_directory_exits_5(short_tmp: Path, spawn: type[Daemon]) -> None:
    """An unsafe socket directory: exit 5 before anything is bound."""
    (short_tmp / "run").mkdir(mode=0o777)
    (short_tmp / "run").chmod(0o777)
    d = spawn(short_tmp)
    assert d.wait() == 5
    assert "mode 0777" in d.stderr
    assert not d.socket.exists()


def test_journald_format_under_systemd(short_tmp: Path, spawn: type[Daemon]) -> None:
    """With JOURNAL_STREAM set, log lines carry sd-daemon priority prefixes."""
    d = spawn(short_tmp, extra_env={"JOURNAL_STREAM": "8:12345"})
    d.notify.wait_for("READY")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait() == 0
    lines = [line for line in d.stderr.splitlines() if line]
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines
    assert any(line.startswith("<6>timbred.daemon.app: timbred") for line in lines)


def test_shutdown_over_rpc_exits_0(short_tmp: Path, spawn: type[Daemon]) -> None:
    """daemon.shutdown answers, then the process exits 0 and removes its socket."""
    d = spawn(short_tmp)
    d.notify.wait_for("READY")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(d.socket))
        s.sendall(b'{"jsonrpc":"2.0","method":"daemon.shutdown","id":1}\n')
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    replies = [json.loads(line) for line in data.splitlines()]
    assert {"jsonrpc": "2.0", "result": {"stopping": True}, "id": 1} in replies
    assert d.wait() == 0
    assert not d.socket.exists()
