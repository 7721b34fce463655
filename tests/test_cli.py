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
from timbred.daemon.app import Daemon
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


class TestGlobalOptions:
    """--json, --socket and --timeout mean the same before the command as after it."""

    @pytest.mark.anyio
    async def test_json_before_or_after_the_command(self, daemon: Daemon,
                                                    short_tmp: Path) -> None:
        """`--json status`, `status --json` and `jobs --json list` all print JSON."""
        env = ctl_env(daemon.socket_path, short_tmp)
        for argv in (["--json", "status"], ["status", "--json"], ["daemon", "--json", "status"]):
            proc = await ctl(*argv, env=env)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["pid"] == os.getpid(), argv
        proc = await ctl("--json", "jobs", "list", env=env)
        assert json.loads(proc.stdout)["jobs"] == []

    @pytest.mark.anyio
    async def test_socket_before_the_command_is_used(self, daemon: Daemon,
                                                     short_tmp: Path) -> None:
        """`--socket ELSEWHERE ping` asks ELSEWHERE (nobody: exit 3), not $TIMBRE_SOCKET's
        daemon; after the command it is the same; --socket names the running one: exit 0."""
        env = ctl_env(daemon.socket_path, short_tmp)
        elsewhere = str(short_tmp / "elsewhere.sock")
        for argv in (["--socket", elsewhere, "ping"], ["ping", "--socket", elsewhere]):
            proc = await ctl(*argv, env=env)
            assert proc.returncode == 3 and elsewhere in proc.stderr, (argv, proc.stderr)
        env["TIMBRE_SOCKET"] = elsewhere
        proc = await ctl("--socket", str(daemon.socket_path), "ping", env=env)
        assert proc.returncode == 0, proc.stderr

    @pytest.mark.anyio
    async def test_timeout_before_the_command_is_used(self, daemon: Daemon,
                                                      short_tmp: Path) -> None:
        """A tiny --timeout before the command fails the call (exit 4 or, if even connecting
        took longer, 3), in one line; an option after the command overrides one before."""
        env = ctl_env(daemon.socket_path, short_tmp)
        proc = await ctl("--timeout", "0.000001", "status", env=env)
        assert proc.returncode in (3, 4), proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("timbrectl: ")
        proc = await ctl("--timeout", "0.000001", "status", "--timeout", "30", env=env)
        assert proc.returncode == 0, proc.stderr

    def test_bad_values_are_usage_errors_in_the_clis_words(self) -> None:
        """Out-of-range values are refused before anything is sent: exit 2, naming the option
        and its range in plain words (no JSON-Schema wording), wherever the option sits."""
        cases = [(["generate", "x", "-d", "0"], "-d/--duration: must be between 0.1 and 600 "
                  "(got 0)"),
                 (["generate", "x", "-n", "17"], "must be between 1 and 16 (got 17)"),
                 (["generate", "x", "--seed", "-1"], "--seed: must be at least 0 (got -1)"),
                 (["generate", "x", "--temperature", "nan"], "must be between 0 and 10"),
                 (["jobs", "list", "--limit", "0"], "--limit: must be between 1 and 500"),
                 (["takes", "export", "t-1", "--ceiling", "3"], "--ceiling: must be between"),
                 (["--timeout", "0", "status"], "--timeout: must be more than 0 seconds"),
                 (["history", "--since", "yesterday"], "--since: 'yesterday' is not a date")]
        for argv, words in cases:
            proc = subprocess.run([sys.executable, "-m", "timbrectl", *argv],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert proc.returncode == 2, (argv, proc.stderr)
            assert words in proc.stderr, (argv, proc.stderr)
            assert "minimum" not in proc.stderr


class TestErrorsAreOneLine:
    """A daemon's error reaches the user as one `timbrectl: ...` line, the way forward first."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("offline", [False, True])
    async def test_models_pull_without_network(self, daemon: Daemon, short_tmp: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               offline: bool) -> None:
        """`models pull` with no Hub reachable: exit 1, one line (no traceback, no exception
        group), the offline advice first; HF_HUB_OFFLINE=1 is advised only when not set.
        With --json the error object is on stdout."""
        monkeypatch.setenv("HF_HUB_CACHE", str(short_tmp / "hub"))
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        env = ctl_env(daemon.socket_path, short_tmp)
        for argv in (["models", "pull", "musicgen-small"],
                     ["--json", "models", "pull", "musicgen-small"]):
            proc = await ctl(*argv, env=env)
            assert proc.returncode == 1, proc.stderr
            assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith("timbrectl: to work offline, put musicgen-small in ")
            assert ("set HF_HUB_OFFLINE=1" in proc.stderr) is not offline, proc.stderr
            if "--json" in argv:
                assert json.loads(proc.stdout)["error"]["data"]["kind"] == "network_unavailable"
            else:
                assert proc.stdout == ""

    @pytest.mark.anyio
    async def test_every_kind_of_failure_is_one_line(self, gen: Daemon,
                                                     short_tmp: Path) -> None:
        """Errors raised inside the commands' task groups (generate, replay, jobs wait, an
        unknown take, a missing model) each come out as one line with their exit status."""
        env = ctl_env(gen.socket_path, short_tmp)
        cases = [(["generate", "x", "-d", "1", "-m", "no/such-model-here"], 1),
                 (["generate", "x", "-d", "1", "--preset", "nope"], 1),
                 (["replay", "t-nosuchtake"], 1),
                 (["jobs", "wait", "j-nosuchjob"], 1),
                 (["takes", "show", "t-nosuchtake"], 1),
                 (["models", "load", str(short_tmp / "nowhere")], 1)]
        for argv, status in cases:
            proc = await ctl(*argv, env=env)
            assert proc.returncode == status, (argv, proc.stderr)
            assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, \
                (argv, proc.stderr)
            assert proc.stderr.startswith("timbrectl: "), proc.stderr


class TestBrokenPipe:
    """A reader that goes away (`| head -1`) ends the output quietly, as Unix tools do."""

    @staticmethod
    def run_into_closed_pipe(argv: list[str], env: dict[str, str] | None = None
                             ) -> subprocess.CompletedProcess[str]:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first write: every write is EPIPE
        try:
            return subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, env=env,
                                  text=True, timeout=60, check=False)
        finally:
            os.close(write)

    @pytest.mark.anyio
    async def test_timbrectl(self, daemon: Daemon, short_tmp: Path) -> None:
        """`timbrectl status` and `--json jobs list` into a closed pipe: no traceback."""
        env = ctl_env(daemon.socket_path, short_tmp)
        for argv in (["status"], ["--json", "jobs", "list"], ["--help"]):
            command = [sys.executable, "-m", "timbrectl", *argv]
            proc = await anyio.to_thread.run_sync(self.run_into_closed_pipe, command, env)
            assert proc.stderr == "", (argv, proc.stderr)
            assert proc.returncode == (0 if argv == ["--help"] else 1), argv  # argparse: 0

    def test_timbred(self, short_tmp: Path) -> None:
        """`timbred --check-config` and `--print-config` into a closed pipe: no traceback."""
        env = ctl_env(short_tmp / "timbred.sock", short_tmp)
        for flag in ("--check-config", "--print-config"):
            proc = self.run_into_closed_pipe([sys.executable, "-m", "timbred", flag], env)
            assert proc.stderr == "" and proc.returncode == 1, (flag, proc.stderr)

    def test_timbre(self) -> None:
        """`timbre --help` into a closed pipe: no traceback (argparse's own exit 0)."""
        proc = self.run_into_closed_pipe([sys.executable, "-m", "timbre_tui", "--help"])
        assert proc.stderr == "" and proc.returncode == 0, proc.stderr


async def made_take(client: Client, prompt: str = "pads") -> str:
    """Generate a 1 s take with the tiny model; its path."""
    submitted = await client.call("generate.submit", {"prompt": prompt, "duration": 1.0})
    job = await client.call("jobs.wait", {"job_id": submitted["job_id"], "timeout": 120})
    assert job["state"] == "done", job["error"]
    path: str = job["outputs"][0]
    return path


class TestWhatAUserReads:
    """The lines of output a person reads, each the way the README shows it."""

    @pytest.mark.anyio
    async def test_a_multi_line_prompt_stays_on_its_row(self, gen: Daemon, client: Client,
                                                        short_tmp: Path) -> None:
        """`jobs list` and `history` show a multi-line prompt on the job's one row."""
        await made_take(client, "two\nlines\n\tof prompt")
        env = ctl_env(gen.socket_path, short_tmp)
        for argv in (["jobs", "list"], ["history"]):
            proc = await ctl(*argv, env=env)
            assert proc.returncode == 0 and proc.stdout.count("\n") == 1, proc.stdout
            assert "two lines of prompt" in proc.stdout

    @pytest.mark.anyio
    async def test_tag_plus_and_minus(self, gen: Daemon, client: Client,
                                      short_tmp: Path) -> None:
        """`takes tag TAKE +pads -draft` (the README's example) adds and removes tags, in any
        order; no tag, or an unknown --option, is still a usage error."""
        take = await made_take(client)
        env = ctl_env(gen.socket_path, short_tmp)
        await client.call("takes.tag", {"take": take, "add": ["draft"], "remove": []})
        proc = await ctl("takes", "tag", take, "+pads", "-draft", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["tags"] == ["pads"]
        proc = await ctl("takes", "tag", take, "-pads", "keys", env=env)
        assert proc.returncode == 0 and proc.stdout.endswith("  tags     keys\n")
        assert (await ctl("takes", "tag", take, env=env)).returncode == 2
        assert (await ctl("takes", "tag", take, "+x", "--bogus", env=env)).returncode == 2

    @pytest.mark.anyio
    async def test_a_second_export_picks_a_free_name(self, gen: Daemon, client: Client,
                                                     short_tmp: Path) -> None:
        """A second `takes export` to a format that exists beside the take picks a free name
        (as generate does); an explicit -o that exists is still refused."""
        take = await made_take(client)
        env = ctl_env(gen.socket_path, short_tmp)
        first = await ctl("takes", "export", take, "-f", "mp3", "--bitrate", "256", env=env)
        second = await ctl("takes", "export", take, "-f", "mp3", env=env)
        assert (first.returncode, second.returncode) == (0, 0), second.stderr
        stem = Path(take).with_suffix("")
        assert first.stdout == f"{stem}.mp3\n" and second.stdout == f"{stem}-2.mp3\n"
        explicit = await ctl("takes", "export", take, "-o", f"{stem}.mp3", env=env)
        assert explicit.returncode == 1 and "already exists" in explicit.stderr

    @pytest.mark.anyio
    async def test_models_rm_without_a_terminal_refuses(self, gen: Daemon, short_tmp: Path,
                                                        tiny: Path) -> None:
        """`models rm` with no terminal to ask on and no --yes deletes nothing and exits 2,
        the same as `takes rm`."""
        env = ctl_env(gen.socket_path, short_tmp)
        rm = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "timbrectl", "models", "rm", str(tiny)], env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False))
        assert rm.returncode == 2 and "--yes" in rm.stderr, rm.stderr
        assert (tiny / "config.json").is_file()

    @pytest.mark.anyio
    async def test_models_list_and_presets_show_for_people(self, daemon: Daemon,
                                                           short_tmp: Path) -> None:
        """Plain `models list` shows the catalogue (not only --json); `presets show` prints
        the preset for people, not JSON."""
        env = ctl_env(daemon.socket_path, short_tmp)
        listed = await ctl("models", "list", env=env)
        assert listed.returncode == 0 and "facebook/musicgen-small" in listed.stdout
        assert "timbrectl models pull NAME" in listed.stdout
        shown = await ctl("presets", "show", "lofi", env=env)
        assert shown.returncode == 0 and shown.stdout.startswith("lofi\n"), shown.stdout
        assert "  params " in shown.stdout and "  export " in shown.stdout


def test_jobs_show_says_cancel_requested_only_while_it_is_pending() -> None:
    """`(cancel requested)` is news while the job still runs; a cancelled job just says so."""
    from timbrectl.render import job_detail
    job = {"id": "j-1", "state": "generating", "cancel_requested": True, "model": "m",
           "params": {"prompt": "p", "duration": 1.0, "options": {}}, "priority": 0,
           "attempts": 1, "retry_of": None, "progress": None, "error": None, "outputs": []}
    assert "generating (cancel requested)" in job_detail(job)
    shown = job_detail({**job, "state": "cancelled"})
    assert "cancelled\n" in shown and "requested" not in shown
    assert "options   none" in shown
