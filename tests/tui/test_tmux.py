"""``timbre`` in a real terminal: tmux at 80x24 and 160x48, against a timbred subprocess with the
tiny model. Keys go in with ``send-keys``; what a person would see comes back from
``capture-pane``; the captured screens are written under the test's tmp dir."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from timbre_tui.layout import MARK
from timbrectl.spawn import start

TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed: this test drives `timbre` inside tmux")


@dataclass
class Daemon:
    socket: Path
    env: dict[str, str]


@pytest.fixture
def daemon_process(short_tmp: Path, tiny: Path) -> Iterator[Daemon]:
    """``python -m timbred`` with private paths and the tiny model, stopped by pid."""
    run = short_tmp / "run"
    run.mkdir(mode=0o700)
    config = short_tmp / "timbred.toml"
    config.write_text("")
    sock = run / "timbred.sock"
    env = dict(os.environ, TIMBRE_SOCKET=str(sock),
               TIMBRE_DATA_DATABASE=str(short_tmp / "data" / "jobs.sqlite3"),
               TIMBRE_OUTPUT_DIR=str(short_tmp / "music"), TIMBRE_MODELS_DEFAULT=str(tiny),
               TIMBRE_MODELS_WINDOW_S="2", TIMBRE_MODELS_STRIDE_S="1",
               TIMBRE_CONFIG=str(config))
    started = start(socket_path=sock, config=config, environ=env,
                    log_path=short_tmp / "timbred.log", timeout=60)
    try:
        yield Daemon(sock, env)
    finally:
        started.process.terminate()
        try:
            started.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait()


class Tmux:
    """A private tmux server (its own socket), so nothing else's sessions are touched."""

    def __init__(self, base: Path) -> None:
        assert TMUX is not None
        self.argv = [TMUX, "-S", str(base / "tmux.sock"), "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=10,
                              check=True)
        return done.stdout

    def capture(self, target: str) -> str:
        return self("capture-pane", "-p", "-t", target)

    def wait(self, target: str, ok: Callable[[str], bool], what: str,
             timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture(target)
            if ok(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{target}: timed out waiting for {what}; the screen:\n{screen}")

    def kill_server(self) -> None:
        subprocess.run([*self.argv, "kill-server"], capture_output=True, timeout=10,
                       check=False)


@pytest.fixture
def tmux(short_tmp: Path) -> Iterator[Tmux]:
    t = Tmux(short_tmp)
    try:
        yield t
    finally:
        t.kill_server()


def studio_command(daemon: Daemon, tui_config: Path, status_file: Path) -> str:
    """The shell command a tmux session runs: the studio, then its exit status to a file."""
    argv = [sys.executable, "-m", "timbre_tui", "--socket", str(daemon.socket),
            "--config", str(tui_config)]
    return (f"{shlex.join(argv)}; echo $? > {shlex.quote(str(status_file))}; sleep 60")


def test_timbre_in_tmux_at_80x24_and_160x48(daemon_process: Daemon, tmux: Tmux,
                                           short_tmp: Path, tmp_path: Path) -> None:
    """At 80x24 the status bar says connected, a prompt sent with Enter appears in the
    timeline and its take line follows; a second studio at 160x48 shows the same take, the
    side panel and queue, and its own prompt reaches the first window live. Resizing the
    small window to 160x48 and back redraws it cleanly, and Ctrl-Q exits both with status
    0."""
    tui_config = short_tmp / "tui.toml"
    tui_config.write_text("")
    env = ["-e", f"TIMBRE_CONFIG={daemon_process.env['TIMBRE_CONFIG']}"]
    small_status, big_status = short_tmp / "small.status", short_tmp / "big.status"

    def save(name: str, screen: str) -> None:
        (tmp_path / f"{name}.txt").write_text(screen)

    tmux("new-session", "-d", "-s", "small", "-x", "80", "-y", "24", *env,
         studio_command(daemon_process, tui_config, small_status))
    screen = tmux.wait("small", lambda s: "● connected" in s, "connected")
    save("80x24-connected", screen)
    assert "No takes yet" in screen

    tmux("send-keys", "-t", "small", "/duration 1")
    tmux.wait("small", lambda s: f"{MARK} /duration 1" in s, "the command typed")
    tmux("send-keys", "-t", "small", "Enter")
    tmux.wait("small", lambda s: "duration: 1s" in s, "the duration set")
    tmux("send-keys", "-t", "small", "warm lofi rhodes with vinyl crackle", "Enter")
    tmux.wait("small", lambda s: f"{MARK} warm lofi rhodes with vinyl crackle" in s, "the prompt")
    screen = tmux.wait("small", lambda s: "take 1" in s and "0:01" in s and "·····" not in s,
                       "the take line and its waveform", timeout=90)
    save("80x24-take", screen)
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "Parameters" not in screen  # the side panel is hidden at 80 columns

    tmux("new-session", "-d", "-s", "big", "-x", "160", "-y", "48", *env,
         studio_command(daemon_process, tui_config, big_status))
    screen = tmux.wait("big", lambda s: "● connected" in s and "take 1" in s,
                       "the shared take")
    assert "Parameters" in screen and "Queue" in screen and "warm lofi rhodes" in screen
    tmux("send-keys", "-t", "big", "/duration 1", "Enter")
    tmux.wait("big", lambda s: "duration: 1s" in s, "the duration set")
    tmux("send-keys", "-t", "big", "a cello answers, slow and warm", "Enter")
    screen = tmux.wait("big", lambda s: s.count("take 1") == 2 and "·····" not in s,
                       "the second take and its waveform", timeout=90)
    save("160x48-take", screen)
    tmux.wait("small", lambda s: "a cello answers" in s and s.count("take 1") >= 1,
              "the second prompt in the first window")

    tmux("resize-window", "-t", "small", "-x", "160", "-y", "48")
    screen = tmux.wait("small", lambda s: "Parameters" in s and len(s.splitlines()) > 24,
                       "the side panel after growing")
    tmux("resize-window", "-t", "small", "-x", "80", "-y", "24")
    screen = tmux.wait("small", lambda s: "Parameters" not in s and "● connected" in s,
                       "a clean redraw after shrinking")
    save("80x24-after-resize", screen)

    for name, status in (("small", small_status), ("big", big_status)):
        tmux("send-keys", "-t", name, "C-q")
        deadline = time.monotonic() + 15
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "0", f"{name} exit status"
