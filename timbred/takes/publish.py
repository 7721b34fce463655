"""Where takes go, and how a file appears there: atomically, never over an existing file.

Every file Timbre publishes (a take, its sidecar, an export) is written under a temporary name
in its final directory, flushed and fsynced, then *linked* to its final name: ``os.link`` fails
with EEXIST if the name exists, so nothing is ever overwritten, not even by a concurrent writer
in another thread or process. The temporary name is then removed and the directory fsynced. A
crash at any point leaves at most a partial file (see :data:`PARTIAL_SUFFIX`), never a
truncated file under a final name; :func:`sweep_partials` removes those at start-up. The one
file Timbre rewrites, a watch folder's result file, goes through :func:`rewrite`: the same
partial file, renamed over the old one.

Layout: ``<root>/YYYY/MM/DD/[<session>/]take-<n>.<ext>`` (:func:`session_dir`,
:func:`link_numbered`); the daemon's older per-job names (:func:`default_paths`) and a
user-chosen output (:func:`explicit_paths`, :func:`check_output`) are kept.

Foreign errors are translated here: every :class:`OSError` becomes an
:class:`~timbred.errors.OutputError` whose reason says what happened (disk full, read-only
file system, permission denied, file size limit).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred.errors import InvalidParams, OutputError, os_reason

#: Every temporary file ends with this suffix; its full name is
#: ``.<final name>.<8 hex digits>.partial`` (hidden, in the final directory). This is the one
#: pattern :func:`partial_path` makes and :func:`is_partial_name` / :func:`sweep_partials` match.
PARTIAL_SUFFIX = ".partial"
_PARTIAL_RE = re.compile(r"^\..+\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX) + r"$", re.DOTALL)

#: Longest session directory name, in UTF-8 bytes (file names are limited to 255).
SESSION_NAME_MAX_BYTES = 64

#: How many numbers :func:`link_numbered` tries before giving up.
MAX_NUMBER_ATTEMPTS = 10_000

_TAKE_NAME_RE = re.compile(r"^take-([1-9][0-9]*)\.")


# --- layout ----------------------------------------------------------------------------------


def default_paths(root: Path, job_id: str, count: int, *, now: dt.datetime | None = None,
                  ext: str = "wav") -> list[Path]:
    """``root/YYYY/MM/DD/<job>-<n>.<ext>`` for takes 1..count."""
    day = (now or dt.datetime.now()).strftime("%Y/%m/%d")
    return [root / day / f"{job_id}-{n}.{ext}" for n in range(1, count + 1)]


def explicit_paths(output: Path, count: int) -> list[Path]:
    """The names for a user-chosen output: the path itself, or ``stem-<n>`` for variations."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(1, count + 1)]


def check_output(output: str, count: int, *,
                 extensions: Collection[str] = (".wav",)) -> list[Path]:
    """Validate a requested output path at submit time; InvalidParams naming ``output``.

    ``extensions`` are the accepted suffixes (lower case, with the dot); the default keeps the
    daemon's float-WAV writer honest. Pass ``timbred.takes.options.EXTENSIONS.values()`` once
    the caller writes through :func:`timbred.takes.writer.write_take`.
    """
    path = Path(output)
    if not path.is_absolute():
        raise InvalidParams("output must be an absolute path (clients resolve relative ones)",
                            param="output")
    allowed = sorted(extensions)
    if path.suffix.lower() not in allowed:
        raise InvalidParams(f"output {output!r}: the extension must be one of "
                            f"{', '.join(allowed)}", param="output", allowed=allowed)
    # A missing folder is made when the take is written (as for sessions), so `-o
    # ~/out/pads.flac` works on a fresh machine; a file where a folder must be, or a folder
    # we cannot write in, is refused.
    missing = _missing_folders(path.parent)
    ancestor = missing[-1].parent if missing else path.parent
    if not ancestor.is_dir():
        raise InvalidParams(f"output {output!r}: {ancestor} is not a directory",
                            param="output")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InvalidParams(f"output {output!r}: cannot write in {ancestor} (permission "
                            "denied); choose a folder of yours", param="output")
    paths = explicit_paths(path, count)
    for p in paths:
        if p.exists():
            raise InvalidParams(f"{p} already exists; Timbre never overwrites a file",
                                param="output")
    return paths


def sanitise_session(session: str) -> str:
    """A session name that is safe as one directory name.

    Path separators, control characters and other characters that trouble shells or other
    file systems (``\\ / : * ? " < > |``) become ``-``; whitespace runs become one space;
    leading dots and trailing dots or spaces are dropped (no hidden names, no ``..``); the
    result is cut to :data:`SESSION_NAME_MAX_BYTES` UTF-8 bytes on a character boundary. An
    empty result becomes ``session``.
    """
    text = unicodedata.normalize("NFC", str(session))
    out = []
    for ch in text:
        if ch in '/\\:*?"<>|' or unicodedata.category(ch).startswith("C"):
            out.append("-")
        elif ch.isspace():
            out.append(" ")
        else:
            out.append(ch)
    name = re.sub(r" +", " ", "".join(out)).strip(" ").lstrip(".")
    encoded = name.encode("utf-8")[:SESSION_NAME_MAX_BYTES]
    name = encoded.decode("utf-8", errors="ignore").rstrip(". ")
    return name or "session"


def session_dir(root: Path, when: dt.datetime, session: str) -> Path:
    """``root/YYYY/MM/DD/<session>``: the date is ``when``'s own (pass a UTC time for UTC
    days, a local one for local days); the session name is :func:`sanitise_session`'d.

    The day's default session, named by its date (``YYYY-MM-DD``), is the day folder itself,
    so a path says the date once (``2026/12/02/take-1.wav``, not ``.../02/2026-12-02/...``).
    Nothing is created; the writers create missing directories.
    """
    day = Path(root) / when.strftime("%Y") / when.strftime("%m") / when.strftime("%d")
    if session == when.strftime("%Y-%m-%d"):
        return day
    return day / sanitise_session(session)


def take_name(n: int, ext: str) -> str:
    """``take-<n>.<ext>`` (``ext`` without the dot)."""
    return f"take-{n}.{ext.lstrip('.')}"


def allocate_take_path(directory: Path, ext: str) -> Path:
    """``directory/take-<n>.<ext>`` for the smallest ``n`` not used by any ``take-<n>.*``.

    Advisory only: another writer may take the name before you do. To *claim* a name, write
    through :func:`link_numbered` (or :func:`timbred.takes.writer.write_next_take`), which retries
    with the next number on EEXIST.
    """
    return Path(directory) / take_name(_smallest_free(Path(directory), 1), ext)


def _used_numbers(directory: Path) -> set[int]:
    used: set[int] = set()
    try:
        names = [p.name for p in Path(directory).iterdir()]
    except FileNotFoundError:
        return used
    except OSError as exc:
        raise OutputError(str(directory), os_reason(exc)) from exc
    for name in names:
        m = _TAKE_NAME_RE.match(name)
        if m:
            used.add(int(m.group(1)))
    return used


def _smallest_free(directory: Path, start: int) -> int:
    used = _used_numbers(directory)
    n = max(start, 1)
    while n in used:
        n += 1
    return n


# --- atomic publication ----------------------------------------------------------------------


def partial_path(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (see :data:`PARTIAL_SUFFIX`)."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def is_partial_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`partial_path`'s temporary names."""
    return _PARTIAL_RE.match(name) is not None


def fsync_dir(path: Path) -> None:
    """fsync a directory so that the names just linked or removed in it are durable;
    OutputError naming it when that fails."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(str(path), f"cannot sync the directory: {os_reason(exc)}") from exc


def _missing_folders(directory: Path) -> list[Path]:
    """``directory`` and its parents that do not exist, innermost first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` and its parents, each new name fsynced into its parent so the
    folder survives a crash with the take; OutputError naming it when that fails."""
    directory = Path(directory)
    missing = _missing_folders(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(directory), os_reason(exc)) from exc
    for made in reversed(missing):
        fsync_dir(made.parent)


def write_partial(final: Path, data: bytes, *, sync: bool = True) -> Path:
    """Write ``data`` to a new temporary file beside ``final``, fsynced unless ``sync`` is
    false; return its path.

    On any failure the temporary file is removed and OutputError (naming ``final``) raised.
    """
    tmp = partial_path(final)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o644)
    except OSError as exc:
        raise OutputError(str(final), os_reason(exc)) from exc
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(str(final), os_reason(exc)) from exc
    return tmp


class NameTaken(Exception):
    """Internal: raised by :func:`link_group` when a final name already exists."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def link_group(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Link each ``(temporary, final)`` pair in order, never replacing a file.

    If a final name exists, the names this call already linked are removed again and
    :class:`NameTaken` is raised; other failures likewise undo and raise OutputError. The
    temporary files are left for the caller to remove.
    """
    done: list[Path] = []
    try:
        for tmp, final in pairs:
            try:
                os.link(tmp, final)
            except FileExistsError as exc:
                raise NameTaken(final) from exc
            except OSError as exc:
                raise OutputError(str(final), os_reason(exc)) from exc
            done.append(final)
    except BaseException:
        for final in done:
            final.unlink(missing_ok=True)
        raise


def publish(files: Sequence[tuple[Path, bytes]]) -> list[Path]:
    """Make each ``(final path, data)`` appear atomically, in order; never overwrite.

    Every temporary file is written (and fsynced) before the first link, so a full disk or a
    read-only directory fails before anything appears under a final name. If a final name
    already exists, OutputError is raised and no file of the group is left behind.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for final, data in files:
            ensure_dir(final.parent)
            temps.append((write_partial(final, data), final))
        try:
            link_group(temps)
        except NameTaken as exc:
            raise OutputError(str(exc.path), "a file with that name already exists; it was "
                              "left untouched (Timbre never overwrites a file)") from exc
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    for directory in {final.parent for final, _ in files}:
        fsync_dir(directory)
    return [final for final, _ in files]


def rewrite(path: Path, data: bytes, *, durable: bool = True) -> Path:
    """Make ``data`` appear at ``path`` atomically, replacing the file there if there is one.

    Only for files Timbre itself rewrites as work goes on (a watch folder's result file),
    never for takes, which :func:`publish` never overwrites. The data goes to a partial file
    beside ``path`` that is renamed over it, so a reader sees the old content or the new,
    never a mix. With ``durable`` the data is fsynced before the rename and the directory
    after it, so the new content survives a power cut once this returns; without, only a
    crash of the process is covered (for a state that a later durable write settles).
    OutputError naming ``path`` on failure; the partial file is removed.
    """
    tmp = write_partial(path, data, sync=durable)
    try:
        tmp.replace(path)
    except OSError as exc:
        raise OutputError(str(path), os_reason(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def link_numbered(directory: Path, ext: str, data: bytes,
                  companions: Callable[[Path], Sequence[tuple[Path, bytes]]] | None = None,
                  ) -> Path:
    """Publish ``data`` as ``directory/take-<n>.<ext>`` for the smallest free ``n``.

    ``companions(final)`` may name files to publish with it (a sidecar whose content depends
    on the final name); they are written before and linked after the take, and a taken
    companion name counts as a taken number. On EEXIST the next number is tried, so
    concurrent writers (threads or processes) never collide and never overwrite.
    """
    directory = Path(directory)
    ensure_dir(directory)
    # The data is written beside the name it will most likely get, so that a failure (a
    # full disk) names a file the user would have had, never a take-0 that is never used.
    n = _smallest_free(directory, 1)
    tmp = write_partial(directory / take_name(n, ext), data)
    try:
        for _ in range(MAX_NUMBER_ATTEMPTS):
            n = _smallest_free(directory, n)
            final = directory / take_name(n, ext)
            extra = list(companions(final)) if companions is not None else []
            extra_temps: list[tuple[Path, Path]] = []
            try:
                for path, blob in extra:
                    extra_temps.append((write_partial(path, blob), path))
                link_group([(tmp, final), *extra_temps])
            except NameTaken:
                n += 1
                continue
            finally:
                for t, _ in extra_temps:
                    t.unlink(missing_ok=True)
            fsync_dir(directory)
            return final
    finally:
        tmp.unlink(missing_ok=True)
    raise OutputError(str(directory), f"no free take-<n>.{ext} name after "
                      f"{MAX_NUMBER_ATTEMPTS} attempts")


def write_wav(path: Path, audio: npt.NDArray[np.float32], sample_rate: int) -> Path:
    """Write ``audio`` (channels, samples) to ``path`` atomically as 32-bit float WAV.

    OutputError on failure (including when ``path`` exists). Kept for the daemon's current
    writer; :func:`timbred.takes.writer.write_take` adds formats, loudness, tags and a sidecar.
    """
    buf = io.BytesIO()
    try:
        sf.write(buf, np.ascontiguousarray(audio.T), sample_rate, format="WAV",
                 subtype="FLOAT")
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise OutputError(str(path), f"encoding failed: {exc}") from exc
    publish([(path, buf.getvalue())])
    return path


def sweep_partials(root: Path) -> list[Path]:
    """Remove leftovers of interrupted writes under ``root`` (run at start-up, when no writer
    is active); return what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob(f".*{PARTIAL_SUFFIX}"):
        if not is_partial_name(p.name):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed
