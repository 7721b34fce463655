"""Making the socket's place safe before anything binds there.

Order matters and is the point of this module: (1) resolve a private directory (which one is
:mod:`timbred.paths`' business, shared with the clients) and verify it with ``lstat`` (ours, a
real directory, no group/other access); (2) take an ``flock`` on the lock file beside the
socket, so a second daemon fails here and never touches the first one's socket; (3) only then
remove a stale socket left by a killed daemon and bind a new one, created 0600 from the moment
it exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from timbred.errors import AlreadyRunning, RuntimeDirError, map_errors

# The path arithmetic lives in timbred.paths so that clients can compute the socket path
# without importing this module; re-exported here for the daemon side, which has always
# imported it from runtime.
from timbred.paths import APP as APP
from timbred.paths import MAX_SOCKET_PATH as MAX_SOCKET_PATH
from timbred.paths import SOCKET_NAME as SOCKET_NAME
from timbred.paths import check_socket_path as check_socket_path
from timbred.paths import default_runtime_dir as default_runtime_dir
from timbred.paths import default_socket_path as default_socket_path


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700 if needed, verify it with lstat; RuntimeDirError when unsafe."""
    # An existing directory (or anything else there) is not an error yet: lstat checks it below.
    with map_errors(OSError, lambda exc: RuntimeDirError(
            str(path), f"cannot create the directory: {exc.strerror}")), \
            contextlib.suppress(FileExistsError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(str(path), "is a symbolic link; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(str(path), "exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(
            str(path), f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
        )
    if st.st_mode & 0o077:
        raise RuntimeDirError(
            str(path),
            f"has mode {stat.S_IMODE(st.st_mode):04o}; it must give no access to group or "
            f"others (fix with: chmod 700 {path})",
        )


@dataclass
class InstanceLock:
    """An exclusive flock held for the daemon's lifetime (the kernel drops it on any death)."""

    path: Path
    fd: int

    def release(self) -> None:
        """Unlock and close; the file stays (removing it would race with a starting daemon)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def acquire_lock(socket_path: Path) -> InstanceLock:
    """Lock ``<socket>.lock`` or raise :class:`AlreadyRunning` naming the holder's pid."""
    lock_path = socket_path.with_name(socket_path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    with map_errors(OSError, lambda exc: RuntimeDirError(
            str(lock_path), f"cannot open the lock file: {exc.strerror}")):
        fd = os.open(lock_path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise AlreadyRunning(str(lock_path), holder) from exc
        raise RuntimeDirError(str(lock_path), f"cannot lock: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(lock_path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    except (OSError, ValueError):
        return None


def bind_socket(path: Path, backlog: int = 128) -> socket.socket:
    """Bind a listening Unix socket at ``path``, mode 0600 from the moment it exists.

    Call only while holding the instance lock: anything at ``path`` then is a stale socket of
    a dead daemon and is removed. A non-socket file there is never deleted.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeDirError(str(path), "exists and is not a socket; refusing to replace it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask is process-wide; this runs at start-up before any other thread creates files.
    old_umask = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise RuntimeDirError(str(path), f"cannot bind: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    path.chmod(0o600)  # belt and braces: the umask already made it so
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class PeerCredentials:
    """Who is on the other end of an accepted connection."""

    uid: int
    gid: int
    pid: int | None


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """SO_PEERCRED on Linux, LOCAL_PEERCRED (what getpeereid uses) on macOS and the BSDs."""
    if hasattr(socket, "SO_PEERCRED"):
        import struct

        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return PeerCredentials(uid=uid, gid=gid, pid=pid or None)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        import struct

        sol_local, local_peercred, local_peerpid = 0, 0x001, 0x002
        # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t groups[16] }
        raw = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I") + 8)
        _version, uid = struct.unpack_from("II", raw)
        (gid,) = struct.unpack_from("I", raw, struct.calcsize("IIh") + 2)
        try:
            peer_pid: int | None = struct.unpack(
                "i", sock.getsockopt(sol_local, local_peerpid, 4))[0]
        except OSError:
            peer_pid = None
        return PeerCredentials(uid=uid, gid=gid, pid=peer_pid)
    raise RuntimeDirError("socket", f"peer credentials are not supported on {sys.platform}")
