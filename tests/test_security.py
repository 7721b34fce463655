"""Socket security: a private 0700 directory checked with lstat, a 0600 socket, peer uid checks."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.support import RawConnection, req
from timbred.daemon.runtime import check_socket_path, default_runtime_dir, ensure_private_dir
from timbred.errors import RuntimeDirError
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


class TestPermissions:
    async def test_directory_0700_and_socket_0600(self, short_tmp: Path) -> None:
        """The daemon creates its directory 0700 and its socket 0600, owned by us."""
        async with running_daemon(short_tmp) as d:
            dir_st = d.runtime_dir.lstat()
            sock_st = d.socket_path.lstat()
            assert stat.S_IMODE(dir_st.st_mode) == 0o700
            assert stat.S_ISSOCK(sock_st.st_mode)
            assert stat.S_IMODE(sock_st.st_mode) == 0o600
            assert sock_st.st_uid == os.geteuid()

    async def test_socket_is_0600_even_with_a_permissive_umask(self, short_tmp: Path) -> None:
        """The socket is never created with wider permissions, whatever the umask."""
        old = os.umask(0)
        try:
            async with running_daemon(short_tmp) as d:
                assert stat.S_IMODE(d.socket_path.lstat().st_mode) == 0o600
        finally:
            os.umask(old)

    @pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o770])
    def test_group_or_other_access_is_refused(self, short_tmp: Path, mode: int) -> None:
        """An existing directory that gives any access to group or others is refused."""
        target = short_tmp / "run"
        target.mkdir(mode=0o700)
        target.chmod(mode)
        with pytest.raises(RuntimeDirError, match="chmod 700"):
            ensure_private_dir(target)

    def test_symlink_is_refused(self, short_tmp: Path) -> None:
        """A symlink in place of the directory is refused (lstat, not stat), even to a 0700 dir."""
        real = short_tmp / "real"
        real.mkdir(mode=0o700)
        link = short_tmp / "run"
        link.symlink_to(real)
        with pytest.raises(RuntimeDirError, match="symbolic link"):
            ensure_private_dir(link)

    def test_a_file_in_place_of_the_directory_is_refused(self, short_tmp: Path) -> None:
        """A regular file where the directory should be is refused, not replaced."""
        (short_tmp / "run").write_text("x")
        with pytest.raises(RuntimeDirError, match="not a directory"):
            ensure_private_dir(short_tmp / "run")

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a foreign-owned dir")
    def test_foreign_owner_is_refused(self, short_tmp: Path) -> None:
        """A 0700 directory owned by another user is refused."""
        target = short_tmp / "run"
        target.mkdir(mode=0o700)
        os.chown(target, 65534, 65534)
        with pytest.raises(RuntimeDirError, match="owned by uid 65534"):
            ensure_private_dir(target)

    async def test_daemon_refuses_an_unsafe_directory(self, short_tmp: Path) -> None:
        """serve() fails with RuntimeDirError before binding when the directory is unsafe."""
        (short_tmp / "run").mkdir(mode=0o700)
        (short_tmp / "run").chmod(0o777)
        with pytest.raises(RuntimeDirError):
            async with running_daemon(short_tmp):
                pass  # pragma: no cover
        assert not (short_tmp / "run" / "timbred.sock").exists()

    async def test_a_regular_file_at_the_socket_path_is_never_deleted(
            self, short_tmp: Path) -> None:
        """Only a stale *socket* is replaced; a regular file at the path is left alone."""
        run = short_tmp / "run"
        run.mkdir(mode=0o700)
        (run / "timbred.sock").write_text("precious")
        with pytest.raises(RuntimeDirError, match="not a socket"):
            async with running_daemon(short_tmp):
                pass  # pragma: no cover
        assert (run / "timbred.sock").read_text() == "precious"


class TestSocketPath:
    def test_too_long(self) -> None:
        """A path longer than sun_path allows gets a clear error with the numbers."""
        with pytest.raises(RuntimeDirError, match=r"bytes; Unix sockets allow at most \d+"):
            check_socket_path("/tmp/" + "d" * 120 + "/timbred.sock")

    @pytest.mark.parametrize("path", ["@timbre", "\0timbre"])
    def test_abstract_namespace_is_refused(self, path: str) -> None:
        """Abstract-namespace names are refused: they have no permissions."""
        with pytest.raises(RuntimeDirError, match="abstract-namespace"):
            check_socket_path(path)

    def test_default_without_xdg_runtime_dir_is_not_in_tmp(self, tmp_path: Path) -> None:
        """Without XDG_RUNTIME_DIR the fallback is never a predictable path in /tmp."""
        env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        path = default_runtime_dir(env)
        assert not str(path).startswith("/tmp/runtime-")
        if not str(path).startswith(f"/run/user/{os.geteuid()}"):
            assert str(path).startswith(str(Path.home()))

    def test_default_uses_xdg_runtime_dir(self, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """With XDG_RUNTIME_DIR set, the socket directory is $XDG_RUNTIME_DIR/timbre."""
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        assert default_runtime_dir() == tmp_path / "timbre"


FOREIGN_CLIENT = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"jsonrpc":"2.0","method":"daemon.ping","id":1}\\n')
except BrokenPipeError:
    pass  # the daemon may refuse and close before we write
data = b""
while True:
    try:
        chunk = s.recv(4096)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_foreign_uid_is_refused_and_logged(short_tmp: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A process of another user that reaches the socket is refused (SO_PEERCRED) and logged.

    The directory and socket are opened up *after* start only so that such a process can reach
    the socket at all; the peer check is the last line of defence this test exercises.
    """
    async with running_daemon(short_tmp) as d:
        for p in (short_tmp, d.runtime_dir):
            p.chmod(0o755)
        d.socket_path.chmod(0o666)
        proc = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", FOREIGN_CLIENT, str(d.socket_path)],
            capture_output=True, text=True, timeout=20, check=False))
        assert proc.returncode == 0, proc.stderr
        assert '"code":-32005' in proc.stdout and '"kind":"peer_refused"' in proc.stdout
        assert '"pong"' not in proc.stdout
        assert any("refused a connection from uid 65534" in r.getMessage()
                   for r in caplog.records)
        # Our own uid is still served.
        conn = await RawConnection.open(d.socket_path)
        assert (await conn.call(req("daemon.ping")))["result"]["pong"]
        await conn.aclose()


def test_peer_credentials_of_a_socketpair() -> None:
    """peer_credentials reads our own uid and pid from a connected pair."""
    from timbred.daemon.runtime import peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        creds = peer_credentials(a)
    assert creds.uid == os.geteuid()
    assert creds.pid == os.getpid()
