"""`timbrectl generate` and `jobs` as scripts use them: real processes, a real daemon process
with the tiny test fixture model, paths on stdout, exit statuses, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import miniaudio
import numpy as np
import pytest

from timbrectl import spawn


@pytest.fixture
def env(short_tmp: Path, tiny: Path) -> Iterator[dict[str, str]]:
    """A daemon subprocess using the tiny model; the environment to reach it."""
    (short_tmp / "empty.toml").write_text("")
    e = dict(os.environ, TIMBRE_SOCKET=str(short_tmp / "run" / "timbred.sock"),
             TIMBRE_CONFIG=str(short_tmp / "empty.toml"),
             TIMBRE_DATA_DATABASE=str(short_tmp / "timbre.sqlite3"),
             TIMBRE_OUTPUT_DIR=str(short_tmp / "music"), TIMBRE_MODELS_DEFAULT=str(tiny),
             TIMBRE_MODELS_WINDOW_S="2", TIMBRE_MODELS_STRIDE_S="1")
    started = spawn.start(socket_path=short_tmp / "run" / "timbred.sock",
                          config=short_tmp / "empty.toml", environ=e,
                          log_path=short_tmp / "timbred.log")
    yield e
    started.process.terminate()
    started.process.wait(30)


def ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_generate_prints_paths_and_nothing_else(env: dict[str, str]) -> None:
    """stdout holds exactly the written paths, one per line; no progress bar without a tty."""
    proc = ctl(env, "generate", "warm lofi rhodes", "-d", "1", "-n", "2", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.splitlines()
    assert len(paths) == 2
    for p in paths:
        assert miniaudio.wav_read_file_f32(p).num_frames == 32000
    assert "[#" not in proc.stderr  # stderr is not a terminal here


def test_json_and_no_wait(env: dict[str, str]) -> None:
    """--no-wait prints the job id; jobs wait/show then report it done; --json is the record."""
    proc = ctl(env, "generate", "x", "-d", "0.5", "--no-wait")
    job_id = proc.stdout.strip()
    assert proc.returncode == 0 and job_id.startswith("j-")
    waited = ctl(env, "jobs", "wait", job_id, "--json")
    assert waited.returncode == 0
    record = json.loads(waited.stdout)
    assert record["id"] == job_id and record["state"] == "done"
    listed = ctl(env, "jobs", "list")
    assert job_id in listed.stdout and "done" in listed.stdout
    shown = ctl(env, "jobs", "show", job_id).stdout
    t = record["timings"]
    assert f"decode {t['decode_s']:.2f}s" in shown and f"export {t['export_s']:.2f}s" in shown
    # The export settings are a row of key=value pairs, never a Python dict's repr.
    assert "{" not in shown and "'" not in shown
    export_row = next(line for line in shown.splitlines() if line.strip().startswith("export"))
    assert f"format={record['params']['export']['format']}" in export_row
    as_json = ctl(env, "generate", "y", "-d", "0.5", "--json")
    assert json.loads(as_json.stdout)["state"] == "done"


def test_a_retried_command_with_a_key_gets_the_first_job(env: dict[str, str]) -> None:
    """The same command run again with --idempotency-key prints the first run's paths and
    queues nothing new; the key with another prompt is refused naming it (exit 1)."""
    first = ctl(env, "generate", "twice", "-d", "0.5", "--idempotency-key", "run-7")
    again = ctl(env, "generate", "twice", "-d", "0.5", "--idempotency-key", "run-7")
    assert first.returncode == 0 and again.returncode == 0, (first.stderr, again.stderr)
    assert again.stdout == first.stdout and first.stdout.strip()
    listed = json.loads(ctl(env, "jobs", "list", "--json").stdout)
    assert len(listed["jobs"]) == 1
    other = ctl(env, "generate", "other", "-d", "0.5", "--idempotency-key", "run-7")
    assert other.returncode == 1 and "idempotency_key" in other.stderr


def test_invalid_parameter_exits_1_naming_it(env: dict[str, str]) -> None:
    """An impossible value is a bad command line, refused before anything is sent: exit 2
    naming the option and its range. A daemon's refusal is exit 1 in one line (not a
    traceback of the task group it crossed); with --json also as an error object on stdout."""
    proc = ctl(env, "generate", "x", "-d", "1000")
    assert proc.returncode == 2 and "-d/--duration: must be between 0.1 and 600 (got 1000)" \
        in proc.stderr
    proc = ctl(env, "generate", "x", "-d", "1", "--melody", "/nonexistent/hum.wav")
    assert proc.returncode == 1 and "melody" in proc.stderr
    assert proc.stderr.startswith("timbrectl: ") and proc.stderr.count("\n") == 1
    proc = ctl(env, "jobs", "show", "j-nope", "--json")
    assert (proc.returncode, proc.stderr) == (1, "timbrectl: no job 'j-nope'\n")
    assert json.loads(proc.stdout)["error"]["data"] == {"kind": "job_not_found",
                                                       "job_id": "j-nope"}


def test_ctrl_c_without_a_terminal_cancels(env: dict[str, str]) -> None:
    """SIGINT with no terminal to ask on cancels the job; exit 130; the job is cancelled."""
    proc = subprocess.Popen([sys.executable, "-m", "timbrectl", "generate", "long", "-d",
                             "120", "--json"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    listed = ""
    while time.monotonic() < deadline:  # wait until the job is generating
        listed = ctl(env, "jobs", "list", "--state", "generating").stdout
        if "generating" in listed:
            break
        time.sleep(0.2)
    assert "generating" in listed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out)["state"] == "cancelled"


def test_stream_pipes_the_take_as_it_is_made(env: dict[str, str], tmp_path: Path) -> None:
    """--stream writes one streaming WAV of the first take to stdout (paths to stderr); it is
    the take's audio (before loudness normalisation), exactly as long, read back by numpy."""
    out = tmp_path / "stream.wav"
    with out.open("wb") as sink:
        proc = subprocess.run([sys.executable, "-m", "timbrectl", "generate", "rain", "-d",
                               "2.5", "--seed", "4", "--stream"], env=env, stdout=sink,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert int.from_bytes(data[4:8], "little") == 0xFFFFFFFF  # length unknown: streaming
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    assert (channels, rate) == (1, 32000) and data[36:40] == b"data"
    pcm = np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768
    assert len(pcm) == round(2.5 * rate)
    (take,) = [line for line in proc.stderr.splitlines() if line.endswith(".wav")]
    decoded = miniaudio.wav_read_file_f32(take)
    whole = np.asarray(decoded.samples, dtype=np.float32)
    assert len(whole) == len(pcm) and np.abs(pcm).max() > 0.01
    # Same audio up to the take's loudness gain and limiter, and 16-bit rounding.
    assert np.corrcoef(pcm, whole)[0, 1] > 0.95


def test_stream_refuses_a_terminal_and_json(env: dict[str, str]) -> None:
    proc = ctl(env, "generate", "x", "-d", "0.5", "--stream", "--json")
    assert proc.returncode == 2 and "--stream" in proc.stderr and proc.stdout == ""


def test_ctrl_c_in_a_terminal_asks_and_the_progress_bar_waits(env: dict[str, str]) -> None:
    """In a terminal, Ctrl-C asks whether to cancel, and no progress redraw comes after the
    question until it is answered; answering y cancels (exit 130)."""
    import pty
    import select

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "timbrectl", "generate", "x", "-d", "200"],
                            env=env, stdin=child, stdout=child, stderr=child,
                            start_new_session=True)
    os.close(child)
    seen = b""

    def read_for(seconds: float) -> bytes:
        got, end = b"", time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([main], [], [], 0.05)
            if ready:
                try:
                    got += os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
        return got

    try:
        deadline = time.monotonic() + 60
        while b"generating [" not in seen and time.monotonic() < deadline:
            seen += read_for(0.2)
        assert b"generating [" in seen, seen[-500:]
        proc.send_signal(signal.SIGINT)
        seen = b""
        while b"[Y/n]" not in seen and time.monotonic() < deadline:
            seen += read_for(0.2)
        after = seen.split(b"[Y/n]", 1)[1] + read_for(1.5)  # the job is still generating
        assert b"generating [" not in after, after
        os.write(main, b"y\n")
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
