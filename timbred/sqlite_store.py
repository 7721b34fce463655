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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from timbred.errors import StoreError


class SQLiteStore:
    """Base of the stores: subclasses set ``path``, ``_conn``, ``_lock`` and ``_error``."""

    path: str
    _conn: sqlite3.Connection
    _lock: threading.Lock

    def _error(self, problem: str) -> StoreError:
        """The StoreError for ``problem`` (subclasses say which part of the file it is)."""
        return StoreError(self.path, problem)

    def close(self) -> None:
        """Close the database; later calls raise StoreError."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(f"{type(exc).__name__}: {exc}") from exc

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
