"""``timbrectl auth``, ``costs``, hosted models in ``models list``, and the keys timbrectl
sends with a hosted job, as a person or a script uses them: the real ``timbrectl`` in a child
process. The key is never in its output, whatever the command.

``auth`` needs no daemon; it goes through keyring's own backend loading to the test fixture's
file keyring (``PYTHON_KEYRING_BACKEND``), or to keyring's ``fail`` backend for "no keyring".
``costs``, ``models list`` and ``generate`` talk to a small canned JSON-RPC server on a real
Unix socket, which records what it was asked; the rendering is also checked directly with
results shaped as the contract says.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from timbrectl import render
from timbred.hosted.names import PROVIDERS

KEY = "r8_SecretKey0123456789abcdefXYZ"
FILE_KEYRING = "timbred.testing.file_keyring.FileKeyring"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private directory with a short path (for the socket)."""
    with tempfile.TemporaryDirectory(prefix="tb-") as d:
        yield Path(d)


@pytest.fixture
def env(short_tmp: Path) -> dict[str, str]:
    """timbrectl's environment: the file keyring, no provider variables, a private config
    and a socket where the canned server listens."""
    (short_tmp / "empty.toml").write_text("")
    base = {k: v for k, v in os.environ.items()
            if k not in {p.env_var for p in PROVIDERS.values()}
            and not k.startswith("KEYRING_PROPERTY_")}
    return dict(base, PYTHON_KEYRING_BACKEND=FILE_KEYRING,
                TIMBRE_TEST_KEYRING=str(short_tmp / "keyring.json"),
                TIMBRE_SOCKET=str(short_tmp / "timbred.sock"),
                TIMBRE_CONFIG=str(short_tmp / "empty.toml"),
                XDG_STATE_HOME=str(short_tmp / "state"),
                PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def ctl(*args: str, env: dict[str, str], stdin: str | None = "") -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def no_key_in(proc: subprocess.CompletedProcess[str], key: str = KEY) -> None:
    """Not the key, nor any 8 characters of it, anywhere in what timbrectl wrote."""
    out = proc.stdout + proc.stderr
    assert not any(key[i:i + 8] in out for i in range(len(key) - 7)), out


def stored(env: dict[str, str]) -> dict[str, Any]:
    path = Path(env["TIMBRE_TEST_KEYRING"])
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return data


class TestAuth:
    def test_set_list_rm(self, env: dict[str, str]) -> None:
        """`auth set` stores stdin's line in the keyring and says where; `auth list` says
        keyring for it and none for the others; `auth rm` deletes it, and again is a no-op."""
        proc = ctl("auth", "set", "replicate", env=env, stdin=KEY + "\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"stored the replicate key in the OS keyring ({FILE_KEYRING})\n"
        no_key_in(proc)
        assert stored(env) == {"timbre": {"replicate": KEY}}
        assert stat.S_IMODE(Path(env["TIMBRE_TEST_KEYRING"]).stat().st_mode) == 0o600

        listed = ctl("auth", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[1].split() == ["replicate", "REPLICATE_API_TOKEN", "keyring"]
        assert lines[2].split() == ["stability", "STABILITY_API_KEY", "none"]
        assert lines[3].split() == ["elevenlabs", "ELEVENLABS_API_KEY", "none"]
        assert lines[4] == f"keyring: {FILE_KEYRING}"
        no_key_in(listed)

        machine = ctl("auth", "list", "--json", env=env)
        assert json.loads(machine.stdout) == {
            "providers": [
                {"provider": "replicate", "env_var": "REPLICATE_API_TOKEN", "key": "keyring"},
                {"provider": "stability", "env_var": "STABILITY_API_KEY", "key": None},
                {"provider": "elevenlabs", "env_var": "ELEVENLABS_API_KEY", "key": None}],
            "keyring": {"backend": FILE_KEYRING, "available": True}}
        no_key_in(machine)

        removed = ctl("auth", "rm", "replicate", env=env)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == "removed the replicate key from the OS keyring\n"
        assert stored(env) == {"timbre": {}}
        again = ctl("auth", "rm", "replicate", "--json", env=env)
        assert again.returncode == 0
        assert json.loads(again.stdout) == {"provider": "replicate", "removed": False}
        assert ctl("auth", "list", env=env).stdout.splitlines()[1].split()[-1] == "none"

    def test_the_environment_wins(self, env: dict[str, str]) -> None:
        """With $STABILITY_API_KEY set, list says env; set still stores, and says that the
        variable wins; rm says it is still set."""
        env = dict(env, STABILITY_API_KEY="sk-from-the-environment")
        proc = ctl("auth", "set", "stability", "--json", env=env, stdin=KEY)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"provider": "stability", "stored": "keyring",
                                           "backend": FILE_KEYRING}
        assert "$STABILITY_API_KEY is set here, and wins over the keyring" in proc.stderr
        no_key_in(proc)
        listed = ctl("auth", "list", env=env)
        assert listed.stdout.splitlines()[2].split() == ["stability", "STABILITY_API_KEY",
                                                         "env"]
        no_key_in(listed)
        no_key_in(listed, "sk-from-the-environment")
        removed = ctl("auth", "rm", "stability", env=env)
        assert "$STABILITY_API_KEY is still set here" in removed.stderr

    @pytest.mark.parametrize(("typed", "words"), [
        ("", "the key is empty"),
        ("\n", "the key is empty"),
        (f"{KEY} {KEY}\n", "space"),
        ("r" * 600 + "\n", "600 characters"),
    ], ids=["nothing", "empty-line", "two-words", "too-long"])
    def test_a_key_that_cannot_be_one_is_refused(self, env: dict[str, str], typed: str,
                                                 words: str) -> None:
        """Exit 1, one line saying what is wrong (not the key); nothing stored."""
        proc = ctl("auth", "set", "replicate", env=env, stdin=typed)
        assert proc.returncode == 1
        assert proc.stderr.startswith("timbrectl: ") and words in proc.stderr
        assert proc.stderr.count("\n") == 1
        no_key_in(proc)
        assert "rrrrrrrr" not in proc.stderr
        assert stored(env) == {}

    def test_only_the_first_line_is_the_key(self, env: dict[str, str]) -> None:
        proc = ctl("auth", "set", "elevenlabs", env=env, stdin=f"{KEY}\nsomething else\n")
        assert proc.returncode == 0, proc.stderr
        assert stored(env) == {"timbre": {"elevenlabs": KEY}}

    def test_unknown_provider_is_a_usage_error(self, env: dict[str, str]) -> None:
        proc = ctl("auth", "set", "suno", env=env, stdin=KEY)
        assert proc.returncode == 2
        assert "replicate" in proc.stderr and "elevenlabs" in proc.stderr
        assert stored(env) == {}

    def test_no_keyring_says_the_way_forward_first(self, env: dict[str, str]) -> None:
        """keyring's own fail backend (no OS keyring): exit 5 (bad local set-up), one line
        that starts with setting the variable and names the backend; --json has the object."""
        env = dict(env, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
        proc = ctl("auth", "set", "replicate", env=env, stdin=KEY + "\n")
        assert proc.returncode == 5
        assert proc.stderr.startswith("timbrectl: set $REPLICATE_API_TOKEN in timbred's "
                                      "environment instead (or install a keyring backend")
        assert "keyrings.alt" in proc.stderr
        assert proc.stderr.endswith("(keyring: keyring.backends.fail.Keyring)\n")
        no_key_in(proc)
        machine = ctl("auth", "set", "replicate", "--json", env=env, stdin=KEY + "\n")
        assert machine.returncode == 5
        error = json.loads(machine.stdout)["error"]
        assert error["data"]["kind"] == "keyring_unavailable"
        assert error["data"]["env_var"] == "REPLICATE_API_TOKEN"
        no_key_in(machine)

        listed = ctl("auth", "list", env=env)
        assert listed.returncode == 0
        assert listed.stdout.splitlines()[-1].startswith(
            "keyring: none usable here (keyring.backends.fail.Keyring)")
        assert ctl("auth", "rm", "replicate", env=env).returncode == 0


def on_a_terminal(args: list[str], env: dict[str, str], typed: bytes) -> tuple[int, bytes]:
    """Run timbrectl with a pseudo-terminal as its controlling terminal and stdio; type
    ``typed`` once it asks; return its exit status and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become timbrectl at once
        try:
            os.execve(sys.executable, [sys.executable, "-m", "timbrectl", *args], env)
        finally:
            os._exit(127)
    shown = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            shown += chunk
            if typed and b"(input hidden)" in shown:
                os.write(fd, typed)
                typed = b""
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown


class TestOnATerminal:
    """Typed at a terminal, the key is never echoed (a hidden prompt, or --stdin with echo
    off)."""

    @pytest.mark.parametrize("extra", [[], ["--stdin"]], ids=["prompt", "stdin"])
    def test_the_key_is_not_echoed(self, env: dict[str, str], extra: list[str]) -> None:
        status, shown = on_a_terminal(["auth", "set", "replicate", *extra], env,
                                      KEY.encode() + b"\n")
        assert status == 0, shown
        assert b"Replicate API key (input hidden):" in shown
        assert b"stored the replicate key in the OS keyring" in shown
        assert KEY[:8].encode() not in shown
        assert stored(env) == {"timbre": {"replicate": KEY}}


# --- daemon calls: a canned JSON-RPC server ---------------------------------------------------


class CannedDaemon:
    """Answers each JSON-RPC method on a real Unix socket with a canned result (or
    method_not_found) and records the requests: a stand-in for the parts of the daemon
    (costs.summary, models.list's hosted models) still being written."""

    def __init__(self, path: Path, results: dict[str, Any]) -> None:
        self.results = results
        self.requests: list[dict[str, Any]] = []
        canned = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    req = json.loads(line)
                    canned.requests.append(req)
                    if "id" not in req:
                        continue
                    if req["method"] in canned.results:
                        reply = {"jsonrpc": "2.0", "id": req["id"],
                                 "result": canned.results[req["method"]]}
                    else:
                        reply = {"jsonrpc": "2.0", "id": req["id"], "error": {
                            "code": -32601, "message": f"no method {req['method']}",
                            "data": {"kind": "method_not_found"}}}
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def params(self, method: str) -> dict[str, Any]:
        """The params of the last request for ``method``."""
        last = [r for r in self.requests if r["method"] == method][-1]
        found: dict[str, Any] = last.get("params", {})  # an empty one is left out
        return found

    @contextlib.contextmanager
    def running(self) -> Iterator[CannedDaemon]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(10)


MONTH_START = 1_761_955_200.0  # 2025-11-01 00:00 UTC

COSTS: dict[str, Any] = {
    "since": MONTH_START - 5 * 86_400,
    "month_start": MONTH_START,
    "providers": [
        {"provider": "replicate", "jobs": 4, "usd": 0.8231, "estimated": False,
         "month_usd": 0.5, "monthly_budget": 10.0},
        {"provider": "stability", "jobs": 1, "usd": 0.2, "estimated": True,
         "month_usd": 0.2, "monthly_budget": None},
        {"provider": "elevenlabs", "jobs": 0, "usd": 0.0, "estimated": False,
         "month_usd": 0.0, "monthly_budget": 0.0},
    ],
    "total_usd": 1.0231,
}

HOSTED: list[dict[str, Any]] = [
    {"name": "replicate:meta/musicgen", "provider": "replicate",
     "summary": "MusicGen (Meta) at Replicate", "key": "keyring", "needs_key": False,
     "deterministic": True, "price": "~$0.02 for 10 s (estimate: $0.0023/s of GPU time)"},
    {"name": "stability:stable-audio-2.5", "provider": "stability",
     "summary": "Stable Audio 2.5 (Stability AI)", "key": None, "needs_key": True,
     "deterministic": True, "price": "~$0.20 for 10 s (20 credits x $0.01, published price)"},
    {"name": "elevenlabs:music", "provider": "elevenlabs",
     "summary": "Eleven Music (ElevenLabs)", "key": None, "needs_key": True,
     "deterministic": False, "price": "~$0.15 for 10 s (estimate)"},
]

MODELS: dict[str, Any] = {"installed": [], "catalogue": [], "hosted": HOSTED}


class TestCostsRendering:
    def test_a_row_per_provider_with_estimates_and_budgets(self) -> None:
        text = render.costs_table(COSTS)
        lines = text.splitlines()
        assert lines[0].startswith("hosted spend since 2025-10-2")
        assert lines[2].split() == ["replicate", "4", "$0.82", "$0.50", "$10.00", "(5%)"]
        assert lines[3].split() == ["stability", "1", "~$0.20", "$0.20", "none"]
        assert lines[4].split() == ["elevenlabs", "0", "$0.00", "$0.00", "$0.00"]
        assert lines[5].split() == ["total", "5", "~$1.02"]
        assert lines[6].startswith("this month from 2025-1")
        assert lines[7].startswith("~ estimate:")

    def test_no_estimate_no_marker_and_tiny_sums(self) -> None:
        tiny = {**COSTS["providers"][0], "usd": 0.004, "month_usd": 0.004}
        summary = {**COSTS, "providers": [tiny], "total_usd": 0.004}
        text = render.costs_table(summary)
        assert "~" not in text
        assert text.splitlines()[2].split()[:4] == ["replicate", "4", "<$0.01", "<$0.01"]

    def test_no_hosted_jobs(self) -> None:
        text = render.costs_table({**COSTS, "providers": [], "total_usd": 0.0})
        assert text.endswith(": no hosted jobs") and "\n" not in text


class TestHostedRendering:
    def test_each_model_with_its_key_and_price(self) -> None:
        lines = render.hosted_rows(HOSTED).splitlines()
        assert lines[0].startswith("Hosted")
        assert lines[2].startswith("replicate:meta/musicgen") and " keyring " in lines[2]
        assert lines[2].endswith("~$0.02 for 10 s (estimate: $0.0023/s of GPU time)")
        assert "MusicGen (Meta) at Replicate" in lines[2]
        assert " needs a key " in lines[3] and " needs a key " in lines[4]
        assert lines[5] == ("needs a key: timbrectl auth set elevenlabs; "
                            "timbrectl auth set stability")

    def test_a_key_timbrectl_sends_is_no_missing_key(self) -> None:
        lines = render.hosted_rows(HOSTED, frozenset({"stability"})).splitlines()
        assert " sent " in lines[3]
        assert lines[5] == "needs a key: timbrectl auth set elevenlabs"
        assert lines[6].startswith("sent: timbrectl sends the key")

    def test_no_hosted_models_no_section(self) -> None:
        assert render.hosted_rows([]) == ""


class TestAgainstADaemon:
    def test_costs(self, env: dict[str, str], short_tmp: Path) -> None:
        """`costs --since 7d` asks costs.summary from 7 days ago; without --since the
        daemon's default; --json prints the result as it came; a bad --since is exit 2."""
        with CannedDaemon(short_tmp / "timbred.sock", {"costs.summary": COSTS}).running() \
                as daemon:
            proc = ctl("costs", "--since", "7d", env=env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == render.costs_table(COSTS) + "\n"
            assert daemon.params("costs.summary")["since"] == pytest.approx(
                time.time() - 7 * 86_400, abs=60)
            proc = ctl("costs", "--json", env=env)
            assert json.loads(proc.stdout) == COSTS
            assert daemon.params("costs.summary") == {}
            proc = ctl("costs", "--since", "2025-11-01", env=env)
            assert proc.returncode == 0, proc.stderr
            assert ctl("costs", "--since", "last tuesday", env=env).returncode == 2

    def test_models_list_has_a_hosted_section(self, env: dict[str, str],
                                              short_tmp: Path) -> None:
        """The hosted models follow the local ones; a provider whose key timbrectl's own
        environment holds is "sent", not "needs a key"; the key itself is not shown."""
        env = dict(env, ELEVENLABS_API_KEY=KEY)
        with CannedDaemon(short_tmp / "timbred.sock", {"models.list": MODELS}).running():
            proc = ctl("models", "list", env=env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == ("no models installed\n\n" + render.hosted_rows(
                HOSTED, frozenset({"elevenlabs"})) + "\n")
            assert "elevenlabs:music" in proc.stdout and " sent " in proc.stdout
            no_key_in(proc)
            assert json.loads(ctl("models", "list", "--json", env=env).stdout) == MODELS

    def test_models_list_from_a_daemon_without_hosted_models(self, env: dict[str, str],
                                                              short_tmp: Path) -> None:
        with CannedDaemon(short_tmp / "timbred.sock",
                          {"models.list": {"installed": [], "catalogue": []}}).running():
            proc = ctl("models", "list", env=env)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == "no models installed\n"

    @pytest.fixture
    def submit(self, short_tmp: Path) -> Iterator[CannedDaemon]:
        job = {"id": "j-1", "state": "queued"}
        with CannedDaemon(short_tmp / "timbred.sock", {
            "events.subscribe": {"epoch": "e", "seq": 0, "missed": False},
            "generate.submit": {"job_id": "j-1", "job": job},
            "takes.show": {"path": "/takes/a.wav", "prompt": "rain",
                           "recipe": {"model": "replicate:meta/musicgen"}},
        }).running() as daemon:
            yield daemon

    def test_a_hosted_job_carries_the_key_from_timbrectls_environment(
            self, env: dict[str, str], submit: CannedDaemon) -> None:
        """generate -m PROVIDER:MODEL sends credentials {provider: key} when $VAR is set
        here; never shown."""
        env = dict(env, REPLICATE_API_TOKEN=KEY, STABILITY_API_KEY="sk-other")
        proc = ctl("generate", "rain", "-m", "replicate:meta/musicgen", "--no-wait", env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "j-1\n"
        assert submit.params("generate.submit")["credentials"] == {"replicate": KEY}
        no_key_in(proc)

    def test_an_edit_of_a_hosted_take_carries_it_too(self, env: dict[str, str],
                                                      submit: CannedDaemon) -> None:
        env = dict(env, REPLICATE_API_TOKEN=KEY)
        proc = ctl("takes", "cover", "t-1", "as jazz", "--no-wait", env=env)
        assert proc.returncode == 0, proc.stderr
        params = submit.params("generate.submit")
        assert params["model"] == "replicate:meta/musicgen"
        assert params["credentials"] == {"replicate": KEY}
        no_key_in(proc)

    @pytest.mark.parametrize("args", [
        ["-m", "stability:stable-audio-2.5"],  # hosted, but its variable is not set here
        ["-m", "musicgen-small"],  # local
        [],  # the daemon's default model
    ], ids=["hosted-without-key", "local", "default"])
    def test_otherwise_no_credentials(self, env: dict[str, str], submit: CannedDaemon,
                                      args: list[str]) -> None:
        env = dict(env, REPLICATE_API_TOKEN=KEY)
        proc = ctl("generate", "rain", *args, "--no-wait", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "credentials" not in submit.params("generate.submit")
