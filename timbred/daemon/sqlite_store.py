"""What every SQLite-backed store here shares: one connection, one lock, two transaction kinds.

The job queue, the history and the watch folder's records each keep one connection
(``check_same_thread=False``) behind a lock, because the daemon reaches them from anyio's
worker threads; reads run in a deferred transaction (one snapshot for several statements),
writes in ``BEGIN IMMEDIATE`` (the write lock is taken up front, so check-then-write sequences
cannot interleave with another process and a busy file waits for ``busy_timeout`` instead of
failing half-way). Every ``sqlite3.Error`` becomes the store's :class:`StoreError`, naming the
file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Self, TypeVar

from timbred.errors import StoreError, map_errors

_T = TypeVar("_T")


def casefold(value: object) -> str | None:
    """SQL function ``timbre_casefold``: Unicode case-insensitive matching (SQLite's LIKE and
    lower() fold ASCII only)."""
    return value.casefold() if isinstance(value, str) else None


def migrate_in_steps(conn: sqlite3.Connection, *, target: int,
                     version_of: Callable[[sqlite3.Connection], int],
                     step: Callable[[sqlite3.Connection, int], None],
                     error: Callable[[str], StoreError]) -> tuple[int, int]:
    """Bring a schema from the version ``version_of`` reads up to ``target``, one step at a
    time; return ``(before, after)``.

    ``step(conn, v)`` takes the schema from ``v`` to ``v + 1``, its version bump included.
    Each step runs in its own ``BEGIN IMMEDIATE`` transaction, which also re-reads the
    version: two processes migrating one fresh file at once serialise on the write lock and
    the second finds the work done (reading the version outside the transaction let both run
    a step, and one failed with "table ... already exists"). A failure leaves the file at the
    last good version. ``version_of`` raises the store's StoreError for a file that is not
    its own or is newer than ``target``; a failing statement becomes ``error(problem)``.
    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    before = version = version_of(conn)
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = version_of(conn)
            if version >= target:
                conn.execute("COMMIT")
                return before, version
            step(conn, version)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise error(f"migration to schema version {version + 1} failed: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class SQLiteStore:
    """Base of the stores: subclasses set ``path``, ``_conn``, ``_lock`` and ``_error``."""

    path: str
    _conn: sqlite3.Connection
    _lock: threading.Lock

    def _error(self, problem: str) -> StoreError:
        """The StoreError for ``problem`` (subclasses say which part of the file it is)."""
        return StoreError(self.path, problem)

    #: What to tell the user to do with a corrupt file (after "move it aside").
    _corrupt_advice = ""
    #: Whether opening runs ``quick_check`` (a store opened after another on the same file
    #: need not read it all again).
    _quick_check = True

    def _open(self, busy_timeout_s: float, setup: Callable[[sqlite3.Connection], _T]) -> _T:
        """Connect to ``self.path``, configure the connection, check the file, run ``setup``.

        Every store on the shared file runs the same checks: WAL journaling (the stores'
        ``synchronous`` choices are only safe with it; it fails on some network
        filesystems), ``synchronous = FULL``, foreign keys, the ``timbre_casefold`` function,
        and a ``quick_check`` so that a damaged page is reported now, not mid-run. Returns
        what ``setup`` returns; the connection is closed again if anything fails.
        """
        with map_errors(sqlite3.Error, lambda exc: self._error(f"cannot open: {exc}")):
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,  # sets SQLite's busy_timeout
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        try:
            return self._configure(setup)
        except BaseException:
            self._conn.close()
            raise

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        """Raise StoreError unless the file is Timbre's (or new); must only read.

        Runs before anything is changed, so another application's database is refused
        exactly as it was (its journal mode included).
        """

    def _configure(self, setup: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        advice = f"move it aside{self._corrupt_advice}"
        try:
            # A corrupt header shows up on the first statement that reads the file.
            self._check_owner(conn)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._error(f"cannot use WAL journaling (got {mode!r}); put the "
                                  "database on a local disk")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.create_function("timbre_casefold", 1, casefold, deterministic=True)
            # quick_check is linear in the file size, which stays small here.
            problems = (["ok"] if not self._quick_check
                        else [row[0] for row in conn.execute("PRAGMA quick_check(5)")])
            if problems != ["ok"]:
                raise self._error(f"is corrupt ({'; '.join(problems)}); {advice}")
            return setup(conn)
        except UnicodeDecodeError as exc:
            # Random bytes where SQLite keeps text (the journal mode it reports, a name in
            # the schema) cannot be decoded: the file is damaged, not the code.
            raise self._error(f"is corrupt or not a SQLite database ({exc}); {advice}") from exc
        except sqlite3.Error as exc:
            # A damaged header reads as NOTADB, a damaged page as CORRUPT; anything else
            # (permissions, a directory, a full disk) is not the file's contents' fault.
            if getattr(exc, "sqlite_errorname", "") in {"SQLITE_NOTADB", "SQLITE_CORRUPT"}:
                problem = f"is corrupt or not a SQLite database ({exc}); {advice}"
            else:
                problem = f"cannot open: {exc}"
            raise self._error(problem) from exc

    def close(self) -> None:
        """Close the database; later calls raise StoreError."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _translate(self) -> AbstractContextManager[None]:
        # UnicodeDecodeError: a damaged page holding text that is not UTF-8.
        return map_errors((sqlite3.Error, UnicodeDecodeError),
                          lambda exc: self._error(f"{type(exc).__name__}: {exc}"))

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A deferred transaction, so multi-statement reads see one snapshot."""
        with self._lock, self._translate():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                # Nothing was written; COMMIT just ends the snapshot (unless SQLite already
                # ended it after an error).
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        with self._lock, self._translate():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails (disk full): never leave a transaction open
                # on the shared connection for the next caller to trip over.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
