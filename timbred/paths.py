"""Where the daemon's socket is, computed the same way by the daemon and by every client.

Pure path arithmetic plus ``lstat``: no sockets, locks or binding (those are in
:mod:`timbred.daemon.runtime`, which only the daemon needs). Clients (``timbrectl``, the studio)
import this module and :mod:`timbred.errors` and the protocol core, nothing else from
``timbred``, so that starting a client stays cheap; ``tests/test_client_light.py`` holds them
to that.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import platformdirs

from timbred.errors import RuntimeDirError

APP = "timbre"
SOCKET_NAME = "timbred.sock"
# sun_path is 108 bytes on Linux and 104 on the BSDs/macOS, including the terminating NUL.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


def default_runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The private directory for the socket and lock; the daemon and every client agree on it.

    ``$XDG_RUNTIME_DIR/timbre`` when XDG_RUNTIME_DIR is an absolute path to a directory that
    is ours and gives no access to group or others (what the XDG spec requires of it); on
    macOS, platformdirs' per-user directory. Otherwise ``/run/user/<uid>/timbre`` when that
    directory is ours and private, else a ``run`` directory in the user's cache directory,
    which is inside their home. Never platformdirs' ``user_runtime_dir`` on Linux: for an
    unusable XDG_RUNTIME_DIR it answers ``/tmp/runtime-<uid>``, a predictable path another
    local user can create first (and so stop the daemon from starting).
    """
    env = os.environ if environ is None else environ
    if sys.platform == "darwin":
        return Path(platformdirs.user_runtime_dir(APP))
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/") and _private_dir(Path(xdg)):
        return Path(xdg) / APP
    run_user = Path(f"/run/user/{os.geteuid()}")
    if _private_dir(run_user):
        return run_user / APP
    return Path(platformdirs.user_cache_dir(APP)) / "run"


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is a real directory (not a symlink), ours, with no group/other access."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """``timbred.sock`` in :func:`default_runtime_dir`."""
    return default_runtime_dir(environ) / SOCKET_NAME


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """Refuse abstract-namespace names, relative paths and paths too long for ``sun_path``."""
    text = os.fspath(path)
    if text.startswith(("\0", "@")):
        raise RuntimeDirError(
            repr(text), "abstract-namespace sockets are refused: they have no file permissions, "
            "so any local user could connect; give a filesystem path"
        )
    if not text:
        raise RuntimeDirError(repr(text), "the socket path is empty")
    resolved = Path(text).expanduser().absolute()
    size = len(os.fsencode(resolved))
    if size > MAX_SOCKET_PATH:
        raise RuntimeDirError(
            str(resolved),
            f"socket path is {size} bytes; Unix sockets allow at most {MAX_SOCKET_PATH} here. "
            "Set daemon.socket (or $TIMBRE_SOCKET) to a shorter path",
        )
    return resolved
