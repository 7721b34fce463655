"""The watch folder's tables in the shared ``timbre.sqlite3``: claims, added folders, counters.

A claim (:class:`FileRecord`) is the watch folder's exactly-once promise: it is committed
before the file is moved or anything is submitted, and it holds each prompt's request as
resolved at claim time, so that a restart resumes the very requests the first run made.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from timbred.daemon.sqlite_store import SQLiteStore
from timbred.errors import StoreError

__all__ = ["WATCH_MIGRATIONS", "WATCH_SCHEMA_VERSION", "FileRecord", "WatchStore"]

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

    ``prompts`` holds one dict per prompt: ``request`` (:meth:`PromptRequest.to_dict`, the
    prompt as its file gave it), ``export`` (the export options resolved at claim, the format
    always named; absent in claims made before they were), ``output`` (the reserved absolute
    path, its suffix the takes' format), ``status``
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

