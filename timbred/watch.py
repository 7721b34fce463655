"""Watch folders: drop a prompt file into a folder, get a take.

:class:`WatchService` watches folders (non-recursively) with watchfiles inside the daemon's event
loop, and turns each complete prompt file (:mod:`timbred.promptfile`) into generation jobs
exactly once. Per folder it keeps three subfolders of its own, which it never watches:
``done/`` (taken files, each with ``<name>.result.json``), ``rejected/`` (refused files, each
with ``<name>.error.txt`` saying exactly what was wrong) and ``outbox/`` (the takes; or the
takes go beside the prompt files, in the watched folder itself, with ``outputs="beside"``).
Names that clash in those folders get a numeric suffix (``a.2.txt``, ``song.2.wav``); nothing
is ever overwritten.

Outputs
    Each prompt's take is ``<output dir>/<name><ext>``: the prompt's ``output`` name, else the
    file's stem (``<stem>-<n>`` when the file holds several prompts), the first of ``name``,
    ``name.2``, ... whose files (variations add ``-1``, ``-2``; and their ``.json`` sidecars)
    exist nowhere and are promised to no unfinished claim. ``ext`` is that of the format the
    takes will be written in, fixed when the file is claimed: the one the prompt names
    (``format``, or the output name's suffix), else (in the daemon) its preset's or the
    configured one, else ``.wav``.

What is taken
    Regular files named ``*.txt``, ``*.toml`` or ``*.json`` (any case), in the folder itself
    (subfolders are not watched). Hidden files, editor and download temporaries (``~``,
    ``#…#``, ``.swp``, ``.tmp``, ``.part``, ``.crdownload``, …), take sidecars
    (``*.wav.json`` …), other suffixes and directories are left alone. Symbolic links are all
    refused (moved to ``rejected/``, the link itself, never its target), and files are opened
    with ``O_NOFOLLOW``: nothing outside the folder is ever read. Files over
    ``max_file_bytes`` are refused by their ``lstat`` size, unread.

When a file is complete (the stability rule)
    Every ``stable_interval_s`` the service ``lstat``s each waiting file. A file is taken once
    its (device, inode, size, mtime) was the same on ``stable_checks`` consecutive checks
    (defaults: 3 checks 0.5 s apart, so unchanged for at least 1 s), or at once when it
    arrived by rename or hard link: a non-empty file whose ctime is later than its mtime
    (renaming or linking changes the ctime, not the mtime; writing sets both to the same
    instant). A writer that pauses longer than the stability window mid-file, or that
    ``chmod``s before it finishes writing, can have a partial file taken: write elsewhere
    (or under a hidden or ``.part`` name) and rename into the folder to be safe.

Exactly once
    The database row is the claim. For each complete, valid file the service, in order:

    1. records a claim (content SHA-256, size, (st_dev, st_ino), name, the parsed requests
       and the output paths it reserved), committed with ``synchronous=FULL``. An open claim
       with the same folder, identity and hash means this file is already ours (a rescan, a
       restart); it is never claimed twice;
    2. moves the file into ``done/`` (``link`` + ``unlink``; never overwriting), so that a
       touch, a rename inside the folder or a rescan can no longer see it;
    3. per prompt: commits ``submitting`` (the first one also records where the file went),
       calls ``submit``, commits ``submitted`` and the job id (a refused prompt is recorded
       with its error; if every prompt is refused the file goes on to ``rejected/``);
    4. writes ``<name>.result.json`` and waits for the jobs; the final result file is
       rewritten (and fsynced) when the last one finishes, then the claim is closed.

    So ``done/`` means *taken*: the result file's ``state`` says ``submitted`` until the jobs
    end, then ``done`` or ``failed``. A one-prompt file costs four commits.

    After a crash: a claim whose file was not moved yet is found by its identity (in the
    folder, also under a new name, or in ``done/``) and finished (a file deleted before
    anything was submitted is given up: ``failed``). Prompts still ``pending`` were never
    handed to ``submit`` and are submitted, once. A prompt caught ``submitting`` may or may
    not have become a job (the daemon died inside ``submit``): every prompt is submitted
    under an idempotency key fixed by its claim (``watch:<claim>:<created>:<index>``), so it
    is submitted again under that key and gets the job its first attempt made, if it made
    one, else a new one: exactly one job either way. Submitted jobs are waited for again,
    never resubmitted. A graceful stop shields each ``submit`` and the commit after it. The
    same content dropped again later as a new file (another inode), or moved back from
    ``done/``, is a new request and makes new takes. In a folder where files cannot be
    moved (read-only), the finished claim keeps the file from being taken again.

Bounded work
    At most ``max_inflight_files`` files are taken but not finished (read, claimed, submitted,
    waited for) at once, across folders; the rest wait their turn as small entries of
    name and ``lstat`` result.

Folders that go away
    The service notices within ``stable_interval_s`` when a watched folder is deleted,
    replaced or unmounted (its device and inode change), publishes ``watch.folder`` with
    status ``missing``, and retries with backoff (``retry_initial_s`` doubling to
    ``retry_max_s``) until it is back, then re-attaches and rescans. A full rescan also runs
    every ``rescan_interval_s`` in case the OS dropped events.

Events
    ``watch.file`` ``{folder, file, status: accepted|rejected|done|failed, jobs, reason}``
    and ``watch.folder`` ``{folder, status: watching|missing, reason}``.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.to_thread
from watchfiles import Change, awatch

from timbred import promptfile
from timbred.errors import (
    InternalError,
    InvalidParams,
    QueueFull,
    ShuttingDown,
    StoreError,
    TimbreError,
    WatchFolderError,
)
from timbred.promptfile import PromptRequest
from timbred.sqlite_store import SQLiteStore
from timbred.takes import publish

__all__ = [
    "DONE_DIR",
    "OUTBOX_DIR",
    "REJECTED_DIR",
    "FileRecord",
    "WatchService",
    "WatchStore",
    "is_candidate_name",
]

log = logging.getLogger(__name__)

Submit = Callable[[dict[str, Any]], Awaitable[str]]
Wait = Callable[[str], Awaitable[dict[str, Any]]]
Publish = Callable[[str, dict[str, Any]], None]
FormatFor = Callable[[PromptRequest], str]
OutputsMode = Literal["outbox", "beside"]

DONE_DIR: Final = "done"
REJECTED_DIR: Final = "rejected"
OUTBOX_DIR: Final = "outbox"
OWN_SUBFOLDERS: Final = frozenset({DONE_DIR, REJECTED_DIR, OUTBOX_DIR})
RESULT_SUFFIX: Final = ".result.json"
ERROR_SUFFIX: Final = ".error.txt"

_TEMP_SUFFIXES: Final = (".swp", ".swo", ".swx", ".tmp", ".temp", ".part", ".partial",
                         ".crdownload", ".download", ".bak", RESULT_SUFFIX, ERROR_SUFFIX)
#: Takes written to an explicit output get ``<take file name>.json`` beside them.
_SIDECAR_SUFFIX: Final = ".json"
_TERMINAL_JOB_STATES: Final = frozenset({"done", "failed", "cancelled", "interrupted"})
#: Refusals that say "not now" rather than "never": the prompt is retried with backoff.
_TRANSIENT: Final = (QueueFull, ShuttingDown)
_LINK_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                                      errno.EXDEV, errno.ENOSYS})


def is_candidate_name(name: str) -> bool:
    """Whether a directory entry's name is one the service considers taking."""
    if name.startswith(".") or name.endswith("~") or (name.startswith("#") and
                                                       name.endswith("#")):
        return False
    folded = name.casefold()
    if folded.endswith(_TEMP_SUFFIXES):
        return False
    if folded.endswith(_SIDECAR_SUFFIX) and Path(folded[:-len(_SIDECAR_SUFFIX)]).suffix in \
            promptfile.AUDIO_SUFFIXES:
        return False  # a take's sidecar (take.wav.json), written beside it in "beside" mode
    return promptfile.prompt_kind(name) is not None


# --- the database ---------------------------------------------------------------------------

#: Migration ``i`` takes the watch tables from version ``i`` to ``i + 1``. Append only. The
#: version lives in ``watch_schema`` (``PRAGMA user_version`` belongs to the job store).
WATCH_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE watch_folders (
            path     TEXT PRIMARY KEY,   -- folders added at run time (config ones are not here)
            added_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE watch_files (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            folder      TEXT    NOT NULL,
            name        TEXT    NOT NULL,           -- the name it was taken under
            size        INTEGER NOT NULL,
            sha256      TEXT    NOT NULL,
            identity    TEXT    NOT NULL,           -- "st_dev:st_ino" (may exceed int64)
            state       TEXT    NOT NULL CHECK (state IN ('claimed', 'waiting', 'finished')),
            outcome     TEXT    CHECK (outcome IN ('done', 'failed', 'rejected', 'abandoned')),
            location    TEXT,                       -- path relative to folder once moved
            prompts     TEXT    NOT NULL,           -- JSON list, see FileRecord.prompts
            created_at  REAL    NOT NULL,
            updated_at  REAL    NOT NULL,
            finished_at REAL
        )
        """,
        # claim()'s look-up of this file among earlier claims; open_records() scans.
        "CREATE INDEX watch_files_identity ON watch_files (folder, identity, sha256)",
    ),
    (
        # The `watch list` counters, kept across restarts (version 1 counted from zero each
        # run). Backfilled from the claims: files refused before any claim were not recorded.
        """
        CREATE TABLE watch_counts (
            folder   TEXT PRIMARY KEY,
            taken    INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        INSERT INTO watch_counts (folder, taken, rejected)
        SELECT folder, COUNT(*), SUM(outcome IS 'rejected') FROM watch_files GROUP BY folder
        """,
    ),
)
WATCH_SCHEMA_VERSION: Final = len(WATCH_MIGRATIONS)
#: The job store's PRAGMA application_id ("TmbJ"); a file with another one is not ours.
_JOB_APPLICATION_ID: Final = 0x546D624A


@dataclass
class FileRecord:
    """One taken prompt file as stored.

    ``prompts`` holds one dict per prompt: ``request`` (:meth:`PromptRequest.to_dict`),
    ``output`` (the reserved absolute path, its suffix the takes' format), ``status``
    (``pending`` → ``submitting`` → ``submitted`` → ``done`` | ``failed``; or ``refused``;
    ``unknown`` is only found in claims from versions that did not resubmit after a crash
    inside ``submit``), ``job_id``, ``outputs`` and ``error`` (``{kind, message}``).
    """

    id: int
    folder: str
    name: str
    size: int
    sha256: str
    identity: str
    state: str
    prompts: list[dict[str, Any]]
    created_at: float
    location: str | None = None
    outcome: str | None = None
    finished_at: float | None = None

    @property
    def job_ids(self) -> list[str]:
        return [p["job_id"] for p in self.prompts if p.get("job_id")]


class WatchStore(SQLiteStore):
    """The watch tables in the shared ``timbre.sqlite3``: blocking, short, thread-safe calls.

    One connection guarded by one lock, WAL and ``synchronous=FULL`` (a claim survives a power
    cut once ``claim`` returns), the same as the job store. Its tables are versioned in their
    own ``watch_schema`` table. Open it after the job store has created the file: on a brand
    new file the job store refuses to start if other tables already exist.

    Raises StoreError naming the file when it cannot be opened, belongs to another
    application, or holds watch tables newer than this code.
    """

    _quick_check = False  # the job store, opened first, has just checked the file

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._open(busy_timeout_s, self._setup)

    def _error(self, problem: str) -> StoreError:
        return StoreError(self.path, f"watch tables: {problem}")

    def _setup(self, conn: sqlite3.Connection) -> None:
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        if app_id not in (0, _JOB_APPLICATION_ID):
            raise self._error("is not a Timbre database (wrong application_id)")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS watch_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM watch_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(WATCH_MIGRATIONS):
                raise self._error(
                    f"schema version {version} was written by a newer timbred (this one knows "
                    f"up to {len(WATCH_MIGRATIONS)}); upgrade timbred")
            for statements in WATCH_MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO watch_schema (version) VALUES (?)",
                             (len(WATCH_MIGRATIONS),))
            else:
                conn.execute("UPDATE watch_schema SET version = ?", (len(WATCH_MIGRATIONS),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- folders ------------------------------------------------------------------------------

    def folders(self) -> list[str]:
        """Folders added at run time, oldest first."""
        with self._lock, self._translate():
            rows = self._conn.execute("SELECT path FROM watch_folders ORDER BY added_at, path")
            return [r[0] for r in rows]

    def add_folder(self, path: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO watch_folders (path, added_at) VALUES (?, ?)",
                         (path, time.time()))

    def remove_folder(self, path: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM watch_folders WHERE path = ?", (path,)).rowcount > 0

    def counts(self) -> dict[str, tuple[int, int]]:
        """Each folder's ``(taken, rejected)`` files, ever."""
        with self._lock, self._translate():
            rows = self._conn.execute("SELECT folder, taken, rejected FROM watch_counts")
            return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def count(self, folder: str, *, taken: int = 0, rejected: int = 0) -> None:
        """Add to ``folder``'s counters."""
        with self._write() as conn:
            conn.execute("INSERT INTO watch_counts (folder, taken, rejected) VALUES (?, ?, ?) "
                         "ON CONFLICT (folder) DO UPDATE SET taken = taken + excluded.taken, "
                         "rejected = rejected + excluded.rejected", (folder, taken, rejected))

    # --- files ------------------------------------------------------------------------------

    # The columns _record reads, in its order; queries append constant clauses only.
    _SELECT: Final = ("SELECT id, folder, name, size, sha256, identity, state, prompts, "
                      "created_at, location, outcome, finished_at FROM watch_files")

    @staticmethod
    def _record(row: Sequence[Any]) -> FileRecord:
        (rid, folder, name, size, sha256, identity, state, prompts, created_at, location,
         outcome, finished_at) = row
        return FileRecord(rid, folder, name, size, sha256, identity, state, json.loads(prompts),
                          created_at, location, outcome, finished_at)

    def claim(self, *, folder: str, name: str, size: int, sha256: str, identity: str,
              prompts: list[dict[str, Any]]) -> tuple[FileRecord, bool]:
        """Record a claim, unless this file (same folder, identity and hash) is claimed already.

        "Already" means an open claim, or a finished one whose file could not be moved out of
        the folder (a read-only folder). Returns ``(record, True)`` for a new claim,
        ``(existing, False)`` otherwise.
        """
        with self._write() as conn:
            row = conn.execute(
                self._SELECT + " WHERE folder = ? AND identity = ? AND sha256 = ? "
                "AND (state != 'finished' OR location = name) ORDER BY id LIMIT 1",
                (folder, identity, sha256)).fetchone()
            if row is not None:
                return self._record(row), False
            now = time.time()
            cur = conn.execute(
                "INSERT INTO watch_files (folder, name, size, sha256, identity, state, prompts, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'claimed', ?, ?, ?)",
                (folder, name, size, sha256, identity, json.dumps(prompts), now, now))
            rid = cur.lastrowid
            assert rid is not None  # an INSERT always sets it
            return FileRecord(rid, folder, name, size, sha256, identity, "claimed",
                              json.loads(json.dumps(prompts)), now), True

    def save(self, record: FileRecord) -> None:
        """Commit the record's state, outcome, location and prompts."""
        with self._write() as conn:
            conn.execute(
                "UPDATE watch_files SET state = ?, outcome = ?, location = ?, prompts = ?, "
                "updated_at = ?, finished_at = ? WHERE id = ?",
                (record.state, record.outcome, record.location, json.dumps(record.prompts),
                 time.time(), record.finished_at, record.id))

    def open_records(self) -> list[FileRecord]:
        """Claims not finished yet, oldest first (what a restart resumes)."""
        with self._lock, self._translate():
            rows = self._conn.execute(
                self._SELECT + " WHERE state != 'finished' ORDER BY id").fetchall()
            return [self._record(r) for r in rows]

    def records(self, folder: str | None = None) -> builtins.list[FileRecord]:
        """Every record (of one folder), oldest first."""
        with self._lock, self._translate():
            if folder is None:
                rows = self._conn.execute(self._SELECT + " ORDER BY id").fetchall()
            else:
                rows = self._conn.execute(self._SELECT + " WHERE folder = ? ORDER BY id",
                                          (folder,)).fetchall()
            return [self._record(r) for r in rows]


# --- file system helpers (blocking; run in worker threads) --------------------------------------


@dataclass(frozen=True)
class _Sig:
    """What one ``lstat`` says about a directory entry."""

    kind: Literal["file", "link", "dir", "other"]
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Sig:
        mode = st.st_mode
        kind: Literal["file", "link", "dir", "other"] = (
            "file" if stat.S_ISREG(mode) else "link" if stat.S_ISLNK(mode)
            else "dir" if stat.S_ISDIR(mode) else "other")
        return cls(kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def stable_key(self) -> tuple[int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns)

    @property
    def renamed_in(self) -> bool:
        """A complete file that arrived by rename or link (see the module's stability rule)."""
        return self.kind == "file" and self.size > 0 and self.ctime_ns > self.mtime_ns


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _folder_identity(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise WatchFolderError(str(path), "does not exist") from exc
    except OSError as exc:
        raise WatchFolderError(str(path), exc.strerror or str(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise WatchFolderError(str(path), "is not a directory")
    return st.st_dev, st.st_ino


@dataclass
class _Survey:
    gone: str | None = None
    found: list[str] = field(default_factory=list)
    stats: dict[str, _Sig | None] = field(default_factory=dict)


def _survey(path: Path, identity: tuple[int, int], names: list[str],
            known: set[str] | None) -> _Survey:
    """Check the folder is still the one attached, list it if ``known`` is given, lstat names."""
    try:
        if _folder_identity(path) != identity:
            return _Survey(gone="was replaced (another directory now has its path)")
    except WatchFolderError as exc:
        return _Survey(gone=exc.data["problem"])
    survey = _Survey()
    if known is not None:
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name not in known and is_candidate_name(entry.name):
                        survey.found.append(entry.name)
        except FileNotFoundError:  # went away between the stat and the listing
            return _Survey(gone="does not exist")
        except OSError as exc:
            return _Survey(gone=exc.strerror or str(exc))
    for name in (*names, *survey.found):
        try:
            survey.stats[name] = _Sig.of(os.lstat(path / name))
        except OSError:
            survey.stats[name] = None
    return survey


def _numbered(name: str, *, keep_suffix: bool = True) -> Iterator[str]:
    """``name``, then ``stem.2.suffix``, ``stem.3.suffix``, ... (``name.2`` ... without
    ``keep_suffix``)."""
    yield name
    dot = name.rfind(".")
    stem, suffix = (name[:dot], name[dot:]) if dot > 0 and keep_suffix else (name, "")
    n = 2
    while True:
        yield f"{stem}.{n}{suffix}"
        n += 1


def _own_format(request: PromptRequest) -> str:
    """The format the prompt file names, else WAV."""
    return str(request.export.get("format", "wav"))


def _idempotency_key(record: FileRecord, prompt: Mapping[str, Any]) -> str:
    """The key a claim's prompt is submitted under, the same on every attempt (the claim's
    row id and creation time make it unique to this claim for as long as jobs are kept)."""
    return f"watch:{record.id}:{record.created_at:.6f}:{prompt['request']['index']}"


def _move_into(src: Path, dest_dir: Path, name: str, companion: str) -> Path:
    """Move ``src`` into ``dest_dir`` under a free name (also free with ``companion`` appended).

    Never overwrites: the file is hard-linked to its new name (which fails if the name exists)
    and then unlinked; file systems without hard links fall back to a checked rename.
    """
    dest_dir.mkdir(exist_ok=True)
    for candidate in _numbered(name):
        dst = dest_dir / candidate
        if os.path.lexists(dst) or os.path.lexists(dest_dir / (candidate + companion)):
            continue
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            src.rename(dst)  # no hard links here; only this service writes dest_dir
            return dst
        src.unlink()
        return dst
    raise AssertionError("unreachable")  # _numbered never ends


def _write_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` through a hidden temporary file, (fsync,) rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _locate(record: FileRecord, *, resuming: bool) -> Path | None:
    """Where a claimed file is now: in ``done/`` (moved) or still under its name.

    A fresh claim's file is under its name; only after a crash (``resuming``) can it be in
    ``done/`` without the record saying so, or in both (linked, not yet unlinked).
    """
    folder = Path(record.folder)

    def ours(p: Path) -> bool:
        try:
            return _identity(os.lstat(p)) == record.identity
        except OSError:
            return False

    def find(directory: Path) -> Path | None:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if ours(directory / entry.name):
                    return directory / entry.name
        return None

    original = folder / record.name
    if not ours(original):  # renamed inside the folder in the instant after the claim?
        original = find(folder) or original
    in_folder = ours(original)
    if in_folder and not resuming and record.location is None:
        return original
    moved = folder / record.location if record.location else None
    if moved is None or not ours(moved):
        moved = find(folder / DONE_DIR)
    if moved is not None and in_folder:  # a crash between link and unlink
        original.unlink()
    return moved or (original if in_folder else None)


@dataclass
class _Valid:
    st: os.stat_result
    sha256: str
    requests: list[PromptRequest]


@dataclass
class _Refused:
    st: os.stat_result
    reason: str


class _Changed(Exception):
    """The file changed or went away between the stability check and reading it."""


def _read_candidate(path: Path, sig: _Sig, max_bytes: int) -> _Valid | _Refused:
    """Read and parse a file that was found complete; never follows a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise _Changed from exc
    if stat.S_ISLNK(st.st_mode):
        try:
            target = str(path.readlink())
        except OSError:
            target = "?"
        return _Refused(st, f"{path.name}: is a symbolic link (to {target!r}); links are "
                        "refused so that nothing outside the watched folder is ever read; "
                        "copy or move the file itself into the folder")
    if not stat.S_ISREG(st.st_mode):
        return _Refused(st, f"{path.name}: not a regular file (a FIFO, socket or device)")
    if _Sig.of(st).stable_key != sig.stable_key:
        raise _Changed
    try:
        promptfile.check_size(path.name, st.st_size, max_bytes)
    except InvalidParams as exc:
        return _Refused(st, exc.message)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT):
            raise _Changed from exc  # replaced by a link, or gone, since the lstat
        return _Refused(st, f"{path.name}: cannot be read: {exc.strerror or exc}")
    try:
        fst = os.fstat(fd)
        if _identity(fst) != _identity(st):
            raise _Changed
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise _Changed
    data = b"".join(chunks)
    try:
        requests = promptfile.parse(path.name, data, max_bytes=max_bytes)
    except InvalidParams as exc:
        return _Refused(st, exc.message)
    return _Valid(st, hashlib.sha256(data).hexdigest(), requests)


# --- the service --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    """A directory entry waiting to be taken."""

    state: Literal["checking", "ready", "taking", "held"] = "checking"
    sig: _Sig | None = None
    count: int = 0


@dataclass(eq=False)
class _Folder:
    path: Path
    source: Literal["config", "added"]
    state: str = "starting"
    problem: str | None = None
    pending: dict[str, _Pending] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    ready_event: anyio.Event = field(default_factory=anyio.Event)
    stop: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    polling: bool = False
    inflight: int = 0
    taken: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        waiting = sum(1 for e in self.pending.values() if e.state in ("checking", "ready"))
        return {"path": str(self.path), "source": self.source, "state": self.state,
                "problem": self.problem, "pending": waiting, "inflight": self.inflight,
                "taken": self.taken, "rejected": self.rejected}


class WatchService:
    """Watch folders and turn each complete prompt file into generation jobs, exactly once.

    ``folders`` are absolute paths (WatchFolderError otherwise); ones that do not exist yet
    are waited for. ``database`` is the shared ``timbre.sqlite3`` (opened in :meth:`run`,
    after the job store created it). ``submit(request)`` gets ``{"params": {generate.submit
    params, "output" an absolute path in the output folder}, "export": {format, ...},
    "preset": name | None}`` and returns the job id once the job is committed, or raises a
    TimbreError when the request is refused (QueueFull and ShuttingDown are retried with
    backoff; any other refuses that prompt). ``wait(job_id)`` returns the finished job as a
    dict with ``state``, ``outputs`` and ``error``. ``publish(type, data)`` publishes a daemon
    event and must not block. ``format_for(request)`` names the format a prompt's takes will
    be written in (default: the prompt file's, else WAV); it is asked once, when the file is
    claimed, and the output path it implies is recorded with the claim, so a prompt submitted
    again after a crash is the same request even if a preset or the configuration changed
    in between. The other settings are described in the module's docstring;
    ``max_file_bytes`` caps a prompt file's size.
    """

    def __init__(
        self,
        folders: Iterable[str | os.PathLike[str]],
        *,
        database: str | os.PathLike[str],
        submit: Submit,
        wait: Wait,
        publish: Publish,
        max_inflight_files: int = 16,
        stable_checks: int = 3,
        stable_interval_s: float = 0.5,
        outputs: OutputsMode = "outbox",
        max_file_bytes: int = promptfile.MAX_FILE_BYTES,
        rescan_interval_s: float = 30.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        format_for: FormatFor | None = None,
    ) -> None:
        if max_inflight_files < 1:
            raise ValueError(f"max_inflight_files must be at least 1, got {max_inflight_files}")
        if stable_checks < 1:
            raise ValueError(f"stable_checks must be at least 1, got {stable_checks}")
        if stable_interval_s <= 0 or rescan_interval_s <= 0 or retry_initial_s <= 0:
            raise ValueError("intervals must be positive")
        if outputs not in ("outbox", "beside"):
            raise ValueError(f"outputs must be 'outbox' or 'beside', got {outputs!r}")
        self.database = Path(database)
        self.max_inflight_files = max_inflight_files
        self.stable_checks = stable_checks
        self.stable_interval_s = stable_interval_s
        self.outputs: OutputsMode = outputs
        self.max_file_bytes = max_file_bytes
        self.rescan_interval_s = rescan_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self._submit = submit
        self._format_for: FormatFor = format_for or _own_format
        self._wait = wait
        self._publish = publish
        self._folders: dict[Path, _Folder] = {}
        for raw in folders:
            path = _normalise(raw)
            self._folders.setdefault(path, _Folder(path, "config"))
        self._store: WatchStore | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots = anyio.Semaphore(max_inflight_files)
        self._driving: set[int] = set()  # record ids some task is taking care of
        self._reserved: set[str] = set()  # output paths promised to open claims
        self._reserved_lock = threading.Lock()
        #: Files taken and not finished right now, and the most there ever were.
        self.inflight = 0
        self.max_inflight_seen = 0

    # --- public API ------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Open the tables, resume unfinished claims, watch every folder until cancelled."""
        store = await anyio.to_thread.run_sync(WatchStore, self.database)
        self._store = store
        try:
            for raw in await anyio.to_thread.run_sync(store.folders):
                path = Path(raw)
                self._folders.setdefault(path, _Folder(path, "added"))
            counts = await anyio.to_thread.run_sync(store.counts)
            for path, folder in self._folders.items():
                folder.taken, folder.rejected = counts.get(str(path), (0, 0))
            unfinished = await anyio.to_thread.run_sync(store.open_records)
            with self._reserved_lock:
                for record in unfinished:
                    for p in record.prompts:
                        self._reserved.update(_take_paths(p))
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for record in unfinished:
                    self._driving.add(record.id)
                    tg.start_soon(self._resume, record)
                for folder in self._folders.values():
                    self._start_folder(folder)
                if unfinished:
                    log.info("resuming %d unfinished watch-folder file(s)", len(unfinished))
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            for folder in self._folders.values():
                folder.stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.close)
            self._store = None

    async def add(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Watch one more folder, now and after restarts; return its :meth:`list` entry.

        Raises WatchFolderError when the path is not absolute, does not exist, is not a
        directory, or is one of a watched folder's own subfolders (or holds one as such).
        Adding a folder already watched returns its entry.
        """
        if self._store is None or self._tg is None:
            raise WatchFolderError(str(path), "the watch service is not running")
        folder_path = _normalise(path)
        existing = self._folders.get(folder_path)
        if existing is not None:
            return existing.to_dict()
        for watched in self._folders:
            if folder_path.parent == watched and folder_path.name in OWN_SUBFOLDERS:
                raise WatchFolderError(str(folder_path), f"it is the {folder_path.name}/ "
                                       f"subfolder of the watched folder {watched}")
            if watched.parent == folder_path and watched.name in OWN_SUBFOLDERS:
                raise WatchFolderError(str(folder_path), f"its {watched.name}/ subfolder is "
                                       "watched as a folder of its own; remove that first")
        await anyio.to_thread.run_sync(_folder_identity, folder_path)
        await anyio.to_thread.run_sync(self._store.add_folder, str(folder_path))
        folder = _Folder(folder_path, "added")
        counts = await anyio.to_thread.run_sync(self._store.counts)
        folder.taken, folder.rejected = counts.get(str(folder_path), (0, 0))
        self._folders[folder_path] = folder
        self._start_folder(folder)
        log.info("watching %s", folder_path)
        return folder.to_dict()

    async def remove(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Stop watching a folder; files already taken still finish. Return its last entry.

        A folder added with :meth:`add` is forgotten for good; one from the configuration is
        watched again after a restart (remove it from the configuration to stop that).
        Raises WatchFolderError when the folder is not watched.
        """
        folder_path = _normalise(path)
        folder = self._folders.pop(folder_path, None)
        if folder is None:
            raise WatchFolderError(str(folder_path), "is not watched")
        folder.stop.set()
        if folder.scope is not None:
            folder.scope.cancel()
        folder.state = "stopped"
        if folder.source == "added" and self._store is not None:
            await anyio.to_thread.run_sync(self._store.remove_folder, str(folder_path))
        log.info("stopped watching %s", folder_path)
        return folder.to_dict()

    def list(self) -> builtins.list[dict[str, Any]]:
        """One entry per watched folder: path, source (config|added), state
        (starting|watching|missing), problem, pending, inflight, taken, rejected."""
        return [f.to_dict() for f in self._folders.values()]

    # --- folders -----------------------------------------------------------------------------

    def _start_folder(self, folder: _Folder) -> None:
        assert self._tg is not None  # only called while run() is running
        folder.scope = anyio.CancelScope()
        self._tg.start_soon(self._folder_task, folder, folder.scope)

    async def _folder_task(self, folder: _Folder, scope: anyio.CancelScope) -> None:
        with scope:
            delay = self.retry_initial_s
            while True:
                try:
                    identity = await anyio.to_thread.run_sync(_folder_identity, folder.path)
                except WatchFolderError as exc:
                    problem = exc.data["problem"]
                    if folder.state != "missing" or folder.problem != problem:
                        log.warning("watch folder %s %s; retrying until it is back",
                                    folder.path, problem)
                        self._publish("watch.folder", {"folder": str(folder.path),
                                                       "status": "missing", "reason": problem})
                    folder.state, folder.problem = "missing", problem
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                delay = self.retry_initial_s
                if folder.state == "missing":
                    log.info("watch folder %s is back", folder.path)
                if folder.state != "watching":
                    folder.state, folder.problem = "watching", None
                    self._publish("watch.folder", {"folder": str(folder.path),
                                                   "status": "watching", "reason": None})
                gone = await self._attached(folder, identity)
                if gone is None:
                    folder.polling = True  # notify failed once (watch limit?): poll instead
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                log.warning("watch folder %s %s", folder.path, gone)
                folder.state, folder.problem = "missing", gone
                self._publish("watch.folder", {"folder": str(folder.path), "status": "missing",
                                               "reason": gone})

    async def _attached(self, folder: _Folder, identity: tuple[int, int]) -> str | None:
        """Watch one incarnation of the folder; return why it went away, or None when the
        watcher itself failed (then it is re-attached, polling from then on)."""
        folder.stop = stop = anyio.Event()
        folder.pending.clear()
        folder.ready.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_events, folder, stop)
            tg.start_soon(self._dispatch, folder)
            try:
                gone = await self._tick(folder, identity, stop)
            finally:
                stop.set()  # lets awatch's thread return now, not at its timeout
                tg.cancel_scope.cancel()
        return gone

    async def _watch_events(self, folder: _Folder, stop: anyio.Event) -> None:
        try:
            async for changes in awatch(folder.path, stop_event=stop, watch_filter=None,
                                        recursive=False, debounce=400, step=50,
                                        rust_timeout=1000, ignore_permission_denied=True,
                                        force_polling=folder.polling):
                for change, raw in changes:
                    path = Path(raw)
                    if path == folder.path:
                        if change == Change.deleted:
                            stop.set()  # the folder itself went; _tick confirms and detaches
                        continue
                    if path.parent != folder.path or not is_candidate_name(path.name):
                        continue
                    # Events are hints (one batch is an unordered set: a "deleted" for the
                    # file just moved out may come with an "added" for a new one of the same
                    # name); the next lstat decides what is there.
                    entry = folder.pending.get(path.name)
                    if entry is None:
                        if change != Change.deleted:
                            folder.pending[path.name] = _Pending()
                    elif entry.state in ("held", "ready"):
                        entry.state, entry.count = "checking", 0
        except Exception as exc:  # the notify backend failed: re-attach (rescan) via _tick
            log.warning("watching %s failed (%s: %s); re-attaching", folder.path,
                        type(exc).__name__, exc)
            stop.set()

    async def _tick(self, folder: _Folder, identity: tuple[int, int],
                    stop: anyio.Event) -> str | None:
        next_rescan = 0.0
        while True:
            now = anyio.current_time()
            rescan = now >= next_rescan
            names = [n for n, e in folder.pending.items() if e.state == "checking"]
            known = set(folder.pending) if rescan else None
            survey = await anyio.to_thread.run_sync(_survey, folder.path, identity, names,
                                                    known)
            if survey.gone is not None:
                return survey.gone
            if stop.is_set():
                return None  # the watcher ended on its own: re-attach
            if rescan:
                next_rescan = now + self.rescan_interval_s
            self._apply(folder, survey)
            with anyio.move_on_after(self.stable_interval_s):
                await stop.wait()

    def _apply(self, folder: _Folder, survey: _Survey) -> None:
        for name in survey.found:
            folder.pending.setdefault(name, _Pending())
        for name, sig in survey.stats.items():
            entry = folder.pending.get(name)
            if entry is None or entry.state != "checking":
                continue
            if sig is None or sig.kind == "dir":
                del folder.pending[name]
                continue
            if entry.sig is not None and sig.stable_key == entry.sig.stable_key:
                entry.count += 1
            else:
                entry.sig, entry.count = sig, 1
            if sig.kind != "file" or entry.count >= self.stable_checks or sig.renamed_in:
                entry.state = "ready"
                folder.ready.append(name)
                folder.ready_event.set()

    async def _dispatch(self, folder: _Folder) -> None:
        """Hand ready files to take tasks, one slot of the in-flight bound each."""
        while True:
            if not folder.ready:
                folder.ready_event = anyio.Event()
                await folder.ready_event.wait()
                continue
            await self._slots.acquire()
            while folder.ready:
                name = folder.ready.popleft()
                entry = folder.pending.get(name)
                if entry is not None and entry.state == "ready" and self._tg is not None:
                    entry.state = "taking"
                    self._occupy(folder)
                    self._tg.start_soon(self._take, folder, name, entry)
                    break
            else:
                self._slots.release()

    def _occupy(self, folder: _Folder) -> None:
        self.inflight += 1
        folder.inflight += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self.inflight)

    def _vacate(self, folder: _Folder | None) -> None:
        self.inflight -= 1
        if folder is not None:
            folder.inflight -= 1
        self._slots.release()

    # --- one file --------------------------------------------------------------------------

    async def _take(self, folder: _Folder, name: str, entry: _Pending) -> None:
        try:
            await self._take_file(folder, name, entry)
        except Exception as exc:  # the database or the disk failed (or a bug): keep serving
            log.error("watch folder %s: %s: %s: %s", folder.path, name, type(exc).__name__, exc,
                      exc_info=not isinstance(exc, TimbreError | OSError))
            entry.state = "held"
            self._publish("watch.file", {"folder": str(folder.path), "file": name,
                                         "status": "failed", "jobs": [], "reason": str(exc)})
        finally:
            if folder.pending.get(name) is entry and entry.state == "taking":
                del folder.pending[name]
            self._vacate(folder)

    async def _take_file(self, folder: _Folder, name: str, entry: _Pending) -> None:
        assert entry.sig is not None and self._store is not None  # ready entries have a sig
        path = folder.path / name
        try:
            result = await anyio.to_thread.run_sync(_read_candidate, path, entry.sig,
                                                    self.max_file_bytes)
        except _Changed:
            if folder.pending.get(name) is entry:
                entry.state, entry.count = "checking", 0
            return
        if isinstance(result, _Refused):
            await self._reject(folder, path, result.st, result.reason)
            entry.state = "held"  # until the watcher reports it gone (moved) or changed
            return
        requests = [r.with_base(folder.path) for r in result.requests]
        record, new = await anyio.to_thread.run_sync(
            self._claim, folder.path, name, result, requests)
        if not new and (record.id in self._driving or record.state == "finished"):
            entry.state = "held"  # ours already (being handled, or stuck in a read-only folder)
            return
        if new:  # a claim resumed after a restart was counted when it was made
            folder.taken += 1
            await self._count(folder.path, taken=1)
        if folder.pending.get(name) is entry:
            # The file leaves the folder now; a new file under its name gets its own entry.
            del folder.pending[name]
        self._driving.add(record.id)
        try:
            await self._drive(record, resuming=not new)
        finally:
            self._driving.discard(record.id)

    def _claim(self, folder: Path, name: str, valid: _Valid,
               requests: Sequence[PromptRequest]) -> tuple[FileRecord, bool]:
        assert self._store is not None
        out_dir = folder / OUTBOX_DIR if self.outputs == "outbox" else folder
        stem = Path(name).stem[:150] or "take"
        several = len(requests) > 1
        prompts: builtins.list[dict[str, Any]] = []
        # Asked before taking the lock: the daemon's answer may read a preset file.
        exts = [promptfile.FORMAT_EXTENSIONS.get(self._format_for(req), ".wav")
                for req in requests]
        with self._reserved_lock:
            for req, ext in zip(requests, exts, strict=True):
                base = req.output or (f"{stem}-{req.index}" if several else stem)
                output = self._free_output(out_dir, base, ext,
                                           int(req.params.get("variations", 1)))
                prompt: dict[str, Any] = {
                    "request": req.to_dict(), "output": str(output), "status": "pending",
                    "job_id": None, "outputs": [], "error": None}
                self._reserved.update(_take_paths(prompt))
                prompts.append(prompt)
        try:
            record, new = self._store.claim(
                folder=str(folder), name=name, size=valid.st.st_size, sha256=valid.sha256,
                identity=_identity(valid.st), prompts=prompts)
        except BaseException:
            self._unreserve(prompts)
            raise
        if not new:
            self._unreserve(prompts)
        return record, new

    def _free_output(self, out_dir: Path, base: str, ext: str, variations: int) -> Path:
        """The first ``base``, ``base.2``, ... whose take files (and their sidecars) exist
        nowhere and are promised to no open claim (caller holds ``_reserved_lock``)."""
        for candidate in _numbered(base, keep_suffix=False):
            output = out_dir / f"{candidate}{ext}"
            paths = publish.explicit_paths(output, variations)
            if not any(os.path.lexists(p) or str(p) in self._reserved
                       or os.path.lexists(p.with_name(p.name + _SIDECAR_SUFFIX))
                       for p in paths):
                return output
        raise AssertionError("unreachable")  # _numbered never ends

    def _unreserve(self, prompts: Iterable[Mapping[str, Any]]) -> None:
        with self._reserved_lock:
            for p in prompts:
                self._reserved.difference_update(_take_paths(p))

    async def _resume(self, record: FileRecord) -> None:
        await self._slots.acquire()
        folder = self._folders.get(Path(record.folder))
        self.inflight += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self.inflight)
        if folder is not None:
            folder.inflight += 1
        try:
            await self._drive(record, resuming=True)
        except Exception as exc:
            log.error("watch folder %s: %s: cannot resume: %s: %s", record.folder, record.name,
                      type(exc).__name__, exc, exc_info=not isinstance(exc, TimbreError | OSError))
        finally:
            self._driving.discard(record.id)
            self._vacate(folder)

    async def _save(self, record: FileRecord) -> None:
        assert self._store is not None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._store.save, record)

    async def _drive(self, record: FileRecord, *, resuming: bool = False) -> None:
        """Carry a claim to its end from wherever it stands (fresh, or after a restart).

        Commits for a one-prompt file: the claim, ``submitting`` (with the file's place in
        done/), ``submitted`` (with the state ``waiting``), and ``finished``.
        """
        folder_path = Path(record.folder)
        if record.state == "claimed":
            with anyio.CancelScope(shield=True):
                found = await anyio.to_thread.run_sync(self._move_to_done, record, resuming)
            if not found:
                await self._abandon(record)
                return
            for p in record.prompts:
                if p["status"] == "submitting":
                    # Stopped inside submit: it may or may not have become a job. Submitted
                    # again under the same idempotency key, it gets that job if there is one.
                    p["status"] = "pending"
            if not any(p["status"] == "pending" for p in record.prompts):
                await self._save(record)  # else the first "submitting" commit carries it
            await self._submit_all(record)
            if not any(p["status"] in ("submitted", "unknown") for p in record.prompts):
                await self._refused(record)
                return
            if record.state != "waiting":
                record.state = "waiting"
                await self._save(record)
            await anyio.to_thread.run_sync(self._write_result, record, False)
            self._publish("watch.file", self._event(record, "accepted", self._problems(record)))
        for p in record.prompts:
            if p["status"] == "submitted":
                self._settle(p, await self._wait_job(p["job_id"]))
        record.state = "finished"
        record.outcome = "done" if all(p["status"] == "done" for p in record.prompts) \
            else "failed"
        record.finished_at = time.time()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write_result, record)
            await self._save(record)
        self._unreserve(record.prompts)
        self._publish("watch.file", self._event(record, record.outcome, self._problems(record)))
        log.info("watch folder %s: %s %s", folder_path, record.name, record.outcome)

    def _move_to_done(self, record: FileRecord, resuming: bool) -> bool:
        """Find the claimed file and move it into done/; False if it is gone unsubmitted."""
        located = _locate(record, resuming=resuming)
        if located is None:
            # Moved before (then a prompt may be submitted already): carry on without it.
            return record.location is not None
        folder = Path(record.folder)
        if located.parent == folder:
            try:
                located = _move_into(located, folder / DONE_DIR, record.name, RESULT_SUFFIX)
            except OSError as exc:  # a read-only folder: the claim still holds it once
                log.warning("cannot move %s into %s/: %s", located, DONE_DIR, exc)
        record.location = str(located.relative_to(folder))
        return True

    async def _submit_all(self, record: FileRecord) -> None:
        for p in record.prompts:
            if p["status"] != "pending":
                continue
            delay = self.retry_initial_s
            while p["status"] == "pending":
                req = PromptRequest.from_dict(p["request"])
                payload = {"params": {**req.params, "output": p["output"]},
                           "export": dict(req.export), "preset": req.preset,
                           "idempotency_key": _idempotency_key(record, p)}
                p["status"] = "submitting"
                await self._save(record)
                transient: TimbreError | None = None
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(_make_parent, Path(p["output"]))
                        job_id = await self._submit(payload)
                    except _TRANSIENT as exc:
                        p["status"], transient = "pending", exc
                    except TimbreError as exc:
                        p["status"], p["error"] = "refused", _error_dict(exc)
                    except Exception as exc:
                        log.exception("submit failed unexpectedly")
                        p["status"] = "refused"
                        p["error"] = _error_dict(InternalError(f"{type(exc).__name__}: {exc}"))
                    else:
                        p["status"], p["job_id"] = "submitted", job_id
                    if transient is None and not any(q["status"] == "pending"
                                                     for q in record.prompts):
                        record.state = "waiting"  # the last submit: one commit for both
                    await self._save(record)
                if transient is not None:
                    log.info("%s: prompt %d not accepted yet (%s); retrying in %.1f s",
                             record.name, p["request"]["index"], transient, delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)

    async def _wait_job(self, job_id: str) -> dict[str, Any]:
        while True:
            try:
                job = await self._wait(job_id)
            except TimbreError as exc:
                return {"state": "failed", "outputs": [], "error": _error_dict(exc)}
            if job.get("state") in _TERMINAL_JOB_STATES:
                return job
            await anyio.sleep(1.0)

    @staticmethod
    def _settle(p: dict[str, Any], job: Mapping[str, Any]) -> None:
        if job.get("state") == "done":
            p["status"], p["outputs"] = "done", list(job.get("outputs") or [])
            return
        p["status"] = "failed"
        error = job.get("error")
        if isinstance(error, Mapping):
            p["error"] = {"kind": error.get("kind", "failed"),
                          "message": error.get("message", str(error))}
        else:
            p["error"] = {"kind": str(job.get("state")), "message": f"the job ended "
                          f"{job.get('state')}"}

    async def _refused(self, record: FileRecord) -> None:
        """Every prompt was refused at submit: the file goes to rejected/ with the reasons."""
        reason = self._problems(record) or "refused"
        folder = Path(record.folder)

        def move() -> None:
            if record.location is not None:
                src = folder / record.location
                try:
                    dst = _move_into(src, folder / REJECTED_DIR, record.name, ERROR_SUFFIX)
                except OSError as exc:
                    log.warning("cannot move %s into %s/: %s", src, REJECTED_DIR, exc)
                    return
                record.location = str(dst.relative_to(folder))
                _write_atomic(dst.with_name(dst.name + ERROR_SUFFIX),
                              (self._problems(record, "\n") or reason) + "\n")

        record.state, record.outcome, record.finished_at = "finished", "rejected", time.time()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(move)
            await self._save(record)
        self._unreserve(record.prompts)
        live = self._folders.get(folder)
        if live is not None:
            live.rejected += 1
        with anyio.CancelScope(shield=True):
            await self._count(folder, rejected=1)
        self._publish("watch.file", self._event(record, "rejected", reason))

    async def _count(self, folder: Path, *, taken: int = 0, rejected: int = 0) -> None:
        """Persist a counter step; losing one is harmless, so a store error is only logged."""
        store = self._store
        if store is None:
            return
        try:
            await anyio.to_thread.run_sync(
                lambda: store.count(str(folder), taken=taken, rejected=rejected))
        except StoreError as exc:
            log.warning("watch counters of %s not saved: %s", folder, exc)

    async def _abandon(self, record: FileRecord) -> None:
        reason = "the file disappeared after it was claimed and before anything was submitted; " \
                 "nothing was submitted"
        for p in record.prompts:
            p["status"], p["error"] = "refused", {"kind": "abandoned", "message": reason}
        record.state, record.outcome, record.finished_at = "finished", "abandoned", time.time()
        await self._save(record)
        self._unreserve(record.prompts)
        self._publish("watch.file", self._event(record, "failed", reason))

    async def _reject(self, folder: _Folder, path: Path, st: os.stat_result,
                      reason: str) -> None:
        """An invalid file: into rejected/ with ``<name>.error.txt`` holding the reason."""

        def move() -> None:
            try:
                if _identity(os.lstat(path)) != _identity(st):
                    return  # replaced meanwhile: the new file gets its own turn
            except FileNotFoundError:
                return
            dst = _move_into(path, folder.path / REJECTED_DIR, path.name, ERROR_SUFFIX)
            _write_atomic(dst.with_name(dst.name + ERROR_SUFFIX), reason + "\n")

        try:
            await anyio.to_thread.run_sync(move)
        except OSError as exc:
            log.warning("cannot move %s into %s/: %s", path, REJECTED_DIR, exc)
        folder.rejected += 1
        await self._count(folder.path, rejected=1)
        log.info("watch folder %s: rejected %s: %s", folder.path, path.name, reason)
        self._publish("watch.file", {"folder": str(folder.path), "file": path.name,
                                     "status": "rejected", "jobs": [], "reason": reason})

    # --- results -----------------------------------------------------------------------------

    def _write_result(self, record: FileRecord, durable: bool = True) -> None:
        if record.location is None:
            return
        target = Path(record.folder) / record.location
        result = {
            "file": record.name,
            "folder": record.folder,
            "taken_as": str(target),
            "sha256": record.sha256,
            "size": record.size,
            "state": record.outcome or "submitted",
            "taken_at": record.created_at,
            "finished_at": record.finished_at,
            "prompts": [{
                "index": p["request"]["index"],
                "prompt": p["request"]["params"]["prompt"],
                "status": p["status"],
                "job_id": p["job_id"],
                "output": p["output"],
                "outputs": p["outputs"],
                "export": p["request"]["export"],
                "preset": p["request"]["preset"],
                "error": p["error"],
            } for p in record.prompts],
        }
        try:
            _write_atomic(target.with_name(target.name + RESULT_SUFFIX),
                          json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                          fsync=durable)
        except OSError as exc:
            log.warning("cannot write the result file of %s: %s", target, exc)

    @staticmethod
    def _problems(record: FileRecord, sep: str = "; ") -> str | None:
        lines = [f"prompt {p['request']['index']}: {p['error']['message']}"
                 for p in record.prompts if p.get("error")]
        return sep.join(lines) or None

    @staticmethod
    def _event(record: FileRecord, status: str, reason: str | None) -> dict[str, Any]:
        return {"folder": record.folder, "file": record.name, "status": status,
                "jobs": record.job_ids, "reason": reason}


def _normalise(path: str | os.PathLike[str]) -> Path:
    raw = os.fspath(path)
    if not Path(raw).is_absolute():
        raise WatchFolderError(raw, "is not an absolute path (clients resolve relative ones)")
    return Path(os.path.normpath(raw))


def _make_parent(path: Path) -> None:
    path.parent.mkdir(exist_ok=True)


def _take_paths(prompt: Mapping[str, Any]) -> list[str]:
    """The files a prompt's job will write (variations add -1, -2 ...)."""
    count = int(prompt["request"]["params"].get("variations", 1))
    return [str(p) for p in publish.explicit_paths(Path(prompt["output"]), count)]


def _error_dict(exc: TimbreError) -> dict[str, Any]:
    return {"kind": exc.kind, "message": exc.message}
