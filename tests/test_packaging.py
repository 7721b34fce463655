"""The systemd unit, the LaunchAgent and install.sh, checked with the real tools."""

from __future__ import annotations

import importlib.util
import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "packaging" / "systemd" / "timbred.service"
PLIST = REPO / "packaging" / "launchd" / "org.timbre.timbred.plist"
INSTALL_SH = REPO / "install.sh"
COMMANDS = ("timbred", "timbrectl", "timbre")

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """Parse a unit file into {section: {key: [values in order]}}.

    configparser does not fit: systemd allows a key more than once
    (Environment=) and keys are case-sensitive.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"{path}: not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def run_script(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run install.sh directly (so its shebang and executable bit count too)."""
    return subprocess.run(
        [str(INSTALL_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class TestSystemdUnit:
    def test_has_the_three_sections(self) -> None:
        """The unit parses and has exactly [Unit], [Service] and [Install]."""
        assert set(read_unit(UNIT)) == {"Unit", "Service", "Install"}

    def test_key_directives(self) -> None:
        """The unit runs timbred as a notify service that restarts on crashes only,
        not after exit codes 3-6, with a private umask and a graceful stop."""
        unit = read_unit(UNIT)
        service = unit["Service"]
        assert service["Type"] == ["notify"]
        assert service["NotifyAccess"] == ["main"]
        assert service["ExecStart"] == ["%h/.local/bin/timbred"]
        assert service["Restart"] == ["on-failure"]
        assert service["RestartSec"] == ["2"]
        assert set(service["RestartPreventExitStatus"][0].split()) == {"3", "4", "5", "6"}
        assert service["UMask"] == ["0077"]
        assert service["KillMode"] == ["mixed"]
        assert int(service["TimeoutStopSec"][0]) >= 30
        assert "PYTHONUNBUFFERED=1" in service["Environment"]
        for directive in (
            "NoNewPrivileges",
            "LockPersonality",
            "RestrictRealtime",
            "RestrictSUIDSGID",
        ):
            assert service[directive] == ["yes"], directive
        assert service["SystemCallArchitectures"] == ["native"]
        assert unit["Install"]["WantedBy"] == ["default.target"]
        assert unit["Unit"]["Documentation"][0].endswith("README.md")

    def test_does_not_hide_gpus_or_need_namespaces(self) -> None:
        """No directive hides /dev (GPUs) or needs mount or user namespaces,
        which user managers often cannot set up."""
        service = read_unit(UNIT)["Service"]
        forbidden = {
            "PrivateDevices",
            "DevicePolicy",
            "DeviceAllow",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateUsers",
            "PrivateMounts",
            "MemoryDenyWriteExecute",
        }
        assert forbidden.isdisjoint(service), forbidden & set(service)

    @pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
    )
    def test_passes_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """`systemd-analyze --user verify` accepts the unit without a warning.

        verify checks that ExecStart= is executable, so %h/.local/bin/timbred is a
        link to this Python in a temporary HOME; --user needs an XDG_RUNTIME_DIR.
        """
        home = tmp_path / "home"
        (home / ".local" / "bin").mkdir(parents=True)
        (home / ".local" / "bin" / "timbred").symlink_to(sys.executable)
        runtime = tmp_path / "run"
        runtime.mkdir(mode=0o700)
        unit_copy = tmp_path / "timbred.service"
        shutil.copyfile(UNIT, unit_copy)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
        }
        result = subprocess.run(
            ["systemd-analyze", "--user", "verify", str(unit_copy)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # Warnings (an ignored or misspelled setting) leave the exit status at 0;
        # lines about other units (the distribution's) are not ours to judge.
        assert "timbred.service" not in output, output


class TestLaunchAgent:
    def test_template_parses(self) -> None:
        """The plist template parses and runs timbred at load, restarting it
        only after an unsuccessful exit, with unbuffered Python output."""
        with PLIST.open("rb") as f:
            plist = plistlib.load(f)
        assert plist["Label"] == "org.timbre.timbred"
        assert plist["ProgramArguments"] == ["@HOME@/.local/bin/timbred"]
        assert plist["RunAtLoad"] is True
        assert plist["KeepAlive"] == {"SuccessfulExit": False}
        assert plist["ProcessType"] in {"Interactive", "Standard"}
        assert plist["EnvironmentVariables"]["PYTHONUNBUFFERED"] == "1"

    def test_parses_after_home_substitution(self, tmp_path: Path) -> None:
        """With @HOME@ replaced, the plist still parses, holds no placeholder,
        and logs under ~/Library/Logs/timbre/."""
        home = str(tmp_path / "home")
        text = PLIST.read_text(encoding="utf-8").replace("@HOME@", home)
        assert "@HOME@" not in text
        plist = plistlib.loads(text.encode("utf-8"))
        assert plist["ProgramArguments"] == [f"{home}/.local/bin/timbred"]
        logs = f"{home}/Library/Logs/timbre/"
        assert plist["StandardOutPath"].startswith(logs)
        assert plist["StandardErrorPath"].startswith(logs)


class TestInstallScript:
    def test_bash_syntax(self) -> None:
        """`bash -n install.sh` finds no syntax error."""
        result = subprocess.run(
            ["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr

    @pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
    def test_shellcheck_clean(self) -> None:
        """shellcheck reports nothing for install.sh."""
        result = subprocess.run(
            ["shellcheck", str(INSTALL_SH)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout

    def test_help_exits_zero(self) -> None:
        """--help prints the usage, with every option, to stdout and exits 0."""
        result = run_script("--help")
        assert result.returncode == 0, result.stderr
        for option in ("--editable", "--no-service", "--with ray", "--uninstall", "--help"):
            assert option in result.stdout

    @pytest.mark.parametrize("args", [("--bogus",), ("extra",), ("--uninstall", "--editable"),
                                      ("--with", "bogus"), ("--with",)])
    def test_bad_arguments_are_usage_errors(self, args: tuple[str, ...]) -> None:
        """Unknown flags, positional arguments and contradictory flags exit 2
        before anything is installed."""
        result = run_script(*args)
        assert result.returncode == 2, result.stderr
        assert "--help" in result.stderr

    @pytest.mark.slow
    def test_install_reinstall_uninstall(self, tmp_path: Path) -> None:
        """A real install into a temporary HOME links working commands and, with no
        user service manager, says how to start the daemon; a second install
        succeeds; --uninstall removes the links and the venv but not the user's
        music or config, and succeeds twice.

        The venv sees this test runner's packages (TIMBRE_VENV_SYSTEM_SITE_PACKAGES)
        and pip runs offline with --no-deps, so nothing is downloaded.
        """
        if importlib.util.find_spec("hatchling") is None:
            pytest.skip("building Timbre offline needs hatchling in the test environment")
        home = tmp_path / "home"
        runtime = tmp_path / "run"  # no user manager listens here
        runtime.mkdir(mode=0o700)
        timbre_home = home / ".local" / "share" / "timbre"
        venv = timbre_home / "venv"
        bin_dir = home / ".local" / "bin"
        take = home / "Music" / "Timbre" / "take.wav"
        config = home / ".config" / "timbre" / "timbred.toml"
        take.parent.mkdir(parents=True)
        take.write_bytes(b"RIFF not really a wav")
        config.parent.mkdir(parents=True)
        config.write_text('device = "cpu"\n', encoding="utf-8")

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_RUNTIME_DIR": str(runtime),
            "TIMBRE_HOME": str(timbre_home),
            "TIMBRE_BIN_DIR": str(bin_dir),
            "TIMBRE_PYTHON": sys.executable,
            "TIMBRE_INSTALLER": "pip",
            "TIMBRE_VENV_SYSTEM_SITE_PACKAGES": "1",
            "TIMBRE_PIP_ARGS": "--no-index --no-build-isolation --no-deps",
        }
        # launchctl has no per-test instance: never touch the real LaunchAgents.
        service_args = () if sys.platform.startswith("linux") else ("--no-service",)

        first = run_script(*service_args, env=env, timeout=120)
        assert first.returncode == 0, first.stderr
        if service_args == ():
            assert "No user service manager is available" in first.stderr
        assert "timbrectl daemon start" in first.stderr

        for name in COMMANDS:
            link = bin_dir / name
            assert link.is_symlink(), name
            assert Path(os.readlink(link)) == venv / "bin" / name
            assert link.resolve().is_file() and os.access(link, os.X_OK), name
        if (REPO / "timbrectl" / "cli.py").exists():
            helped = subprocess.run(
                [str(bin_dir / "timbrectl"), "--help"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert helped.returncode == 0, helped.stderr

        second = run_script(*service_args, env=env, timeout=120)
        assert second.returncode == 0, second.stderr
        assert f"reusing {venv}" in second.stderr
        assert all((bin_dir / name).is_symlink() for name in COMMANDS)

        for attempt in ("first", "second"):
            removed = run_script("--uninstall", env=env)
            assert removed.returncode == 0, f"{attempt} uninstall:\n{removed.stderr}"
            assert not venv.exists()
            assert not any((bin_dir / name).is_symlink() for name in COMMANDS)
            assert take.read_bytes() == b"RIFF not really a wav"
            assert config.read_text(encoding="utf-8") == 'device = "cpu"\n'


class TestLock:
    @pytest.mark.parametrize("name", ["app", "dev", "ray"])
    def test_lock_was_resolved_from_todays_inputs(self, name: str) -> None:
        """The lock's ``# inputs:`` digest is that of pyproject.toml's dependencies and
        requirements/*.in as they are now: a dependency changed without ./scripts/lock.sh
        fails here, not on a user's machine."""
        want = subprocess.run([sys.executable, str(REPO / "scripts" / "lock_inputs.py")],
                              capture_output=True, text=True, check=True).stdout.strip()
        lines = (REPO / "requirements" / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        stamps = [line.split()[2] for line in lines if line.startswith("# inputs: ")]
        assert stamps == [want], "run ./scripts/lock.sh --keep and commit the lock"

    @pytest.mark.parametrize("name", ["ray", "dev"])
    def test_the_ray_and_dev_locks_pin_the_apps_versions(self, name: str) -> None:
        """``install.sh --with ray`` gets exactly the app's tested versions plus Ray's own
        packages, and the tests run what users install: each package of the app lock has
        the same pin in the ray and dev locks."""
        def pins(lock: str) -> dict[str, str]:
            text = (REPO / "requirements" / f"{lock}.txt").read_text(encoding="utf-8")
            found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.MULTILINE)
            return {pkg.lower(): version for pkg, version in found}

        app, other = pins("app"), pins(name)
        assert {p: v for p, v in app.items() if other.get(p) != v} == {}
        assert "ray" in other and "ray" not in app


class TestRayUnit:
    UNIT = REPO / "packaging" / "systemd" / "timbre-ray.service"

    def test_runs_ray_start_in_the_foreground_from_timbres_venv(self) -> None:
        """--block keeps the node's processes under systemd; the arguments come from the
        user's ray.env; no usage statistics are sent."""
        service = read_unit(self.UNIT)["Service"]
        (start,) = service["ExecStart"]
        assert start.startswith("%h/.local/share/timbre/venv/bin/ray start ")
        assert "--block" in start and "--disable-usage-stats" in start
        assert start.endswith("$RAY_START_ARGS")
        assert service["EnvironmentFile"] == ["%h/.config/timbre/ray.env"]
        assert "PrivateDevices" not in service

    @pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
    )
    def test_passes_systemd_analyze_verify(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        bin_dir = home / ".local" / "share" / "timbre" / "venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "ray").symlink_to(sys.executable)
        (home / ".config" / "timbre").mkdir(parents=True)
        (home / ".config" / "timbre" / "ray.env").write_text(
            "RAY_START_ARGS=--address=10.0.0.5:6379\n")
        runtime = tmp_path / "run"
        runtime.mkdir(mode=0o700)
        unit_copy = tmp_path / "timbre-ray.service"
        shutil.copyfile(self.UNIT, unit_copy)
        result = subprocess.run(
            ["systemd-analyze", "--user", "verify", str(unit_copy)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                 "XDG_RUNTIME_DIR": str(runtime)},
            capture_output=True, text=True, timeout=60, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "timbre-ray.service" not in output, output
