"""An unusable XDG_RUNTIME_DIR never puts the socket in /tmp, for the daemon and its clients.

platformdirs answers ``/tmp/runtime-<uid>`` for an XDG_RUNTIME_DIR that is not private, a
path another local user can create first; Timbre uses its documented fallback instead, and
``timbrectl``/the studio compute the same path as the daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from timbrectl.client import connect, resolve_socket_path
from timbred.daemon.runtime import default_runtime_dir
from timbred.testing.daemon import running_daemon


@pytest.fixture
def env(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache and config home under ``short_tmp``; no TIMBRE_SOCKET."""
    monkeypatch.delenv("TIMBRE_SOCKET", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(short_tmp / "c"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(short_tmp / "cfg"))
    monkeypatch.setenv("TIMBRE_CONFIG", str(short_tmp / "none.toml"))
    (short_tmp / "none.toml").write_text("")
    return short_tmp


def _fallback(base: Path) -> Path:
    run_user = Path(f"/run/user/{os.geteuid()}")
    if run_user.is_dir() and run_user.stat().st_uid == os.geteuid():
        return run_user / "timbre"
    return base / "c" / "timbre" / "run"


class TestUnusableXdgRuntimeDir:
    @pytest.mark.parametrize("mode", [0o755, 0o777, 0o710])
    def test_a_shared_directory_is_not_used(self, env: Path, monkeypatch: pytest.MonkeyPatch,
                                            mode: int) -> None:
        """XDG_RUNTIME_DIR open to group or others: the documented fallback, never /tmp."""
        xdg = env / "xdg"
        xdg.mkdir()
        xdg.chmod(mode)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        path = default_runtime_dir()
        assert not str(path).startswith("/tmp/runtime-")
        assert path == _fallback(env)

    @pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
    def test_another_users_directory_is_not_used(self, env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """XDG_RUNTIME_DIR owned by another uid: the fallback, never /tmp."""
        xdg = env / "xdg"
        xdg.mkdir(mode=0o700)
        os.chown(xdg, 65534, 65534)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        assert default_runtime_dir() == _fallback(env)

    def test_a_symlink_is_not_used(self, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A symlink as XDG_RUNTIME_DIR is not trusted (its target may change)."""
        (env / "real").mkdir(mode=0o700)
        (env / "xdg").symlink_to(env / "real")
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(env / "xdg"))
        assert default_runtime_dir() == _fallback(env)

    def test_a_private_directory_is_used(self, env: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """The normal case is unchanged: $XDG_RUNTIME_DIR/timbre."""
        (env / "xdg").mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(env / "xdg"))
        assert default_runtime_dir() == env / "xdg" / "timbre"

    @pytest.mark.anyio
    async def test_daemon_and_client_agree(self, env: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """With XDG_RUNTIME_DIR at 0755 the daemon listens on the fallback, and the client
        (which the studio uses too) finds it there without being told."""
        xdg = env / "xdg"
        xdg.mkdir()
        xdg.chmod(0o755)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        if _fallback(env).parent != env / "c" / "timbre":
            pytest.skip("/run/user/<uid> exists here; the test must not use the real one")
        async with running_daemon(env, daemon__socket="") as daemon:
            assert daemon.socket_path == _fallback(env) / "timbred.sock"
            assert resolve_socket_path() == daemon.socket_path
            async with connect(resolve_socket_path()) as client:
                status = await client.call("daemon.status")
            assert status["socket"] == str(daemon.socket_path)
