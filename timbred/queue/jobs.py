"""The durable job queue: persistence and the job state machine, nothing else.

No RPC, no asyncio and no worker live here. The daemon calls :class:`JobStore` from worker
threads (``anyio.to_thread.run_sync``); every method is blocking, short and thread-safe.

Durability contract:

* ``submit``/``retry`` and every state transition are committed with ``synchronous=FULL``
  before the method returns, so an accepted job survives a crash or a power cut.
* ``set_progress`` is committed with ``synchronous=NORMAL``: it survives the daemon crashing
  but may be lost on a power cut, which is fine because progress is advisory.
* ``recover()`` runs once at daemon start and repairs what it loads, the way pueue does: a job
  that was running when the daemon stopped becomes ``interrupted`` (never silently re-run),
  queued jobs keep their place.

Threading: one connection guarded by one lock (see :class:`JobStore`).
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from timbred.daemon import ids
from timbred.daemon.sqlite_store import SQLiteStore, migrate_in_steps
from timbred.errors import (
    Cancelled,
    Interrupted,
    InvalidJobState,
    InvalidParams,
    JobNotFound,
    QueueFull,
    StoreError,
    TimbreError,
    map_errors,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MIGRATIONS",
    "RUNNING_STATES",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Job",
    "JobState",
    "JobStore",
    "RecoveryReport",
    "migrate",
    "request_digest",
]


class JobState(StrEnum):
    """Where a job is in its life. The string values are what the RPC layer sends."""

    QUEUED = "queued"
    LOADING = "loading"
    GENERATING = "generating"
    ENCODING = "encoding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


_S = JobState

#: The one table of legal transitions; anything else raises InvalidJobState.
#: Only the daemon's own recover() moves a job to INTERRUPTED, but the transition is legal
#: from every running state so a worker that loses its process can report it the same way.
TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = {
    _S.QUEUED: frozenset({_S.LOADING, _S.CANCELLED}),
    # Back to QUEUED only through requeue(): its executor was lost mid-job (a Ray node),
    # nothing was written, and the job runs again elsewhere under the same id.
    _S.LOADING: frozenset({_S.GENERATING, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED, _S.QUEUED}),
    _S.GENERATING: frozenset({_S.ENCODING, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED,
                              _S.QUEUED}),
    _S.ENCODING: frozenset({_S.DONE, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.INTERRUPTED: frozenset(),
}

TERMINAL_STATES: Final = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
RUNNING_STATES: Final = frozenset({_S.LOADING, _S.GENERATING, _S.ENCODING})
RETRYABLE_STATES: Final = frozenset({_S.FAILED, _S.CANCELLED, _S.INTERRUPTED})
# A failed or interrupted job must say why; a cancelled one may.
_ERROR_REQUIRED: Final = frozenset({_S.FAILED, _S.INTERRUPTED})

#: Bounds on the values a client can choose, so that nothing overflows SQLite's int64.
PRIORITY_RANGE: Final = (-1_000_000, 1_000_000)
MAX_LIST_LIMIT: Final = 500
#: Longest idempotency key accepted (a UUID is 36; room for a client's own prefix).
MAX_KEY_LENGTH: Final = 200

# "TmbJ": marks the file as a Timbre job database so we never migrate someone else's file.
_APPLICATION_ID: Final = 0x546D624A

# --- schema -----------------------------------------------------------------------------------

#: Migration ``i`` (0-based) takes the schema from version ``i`` to ``i + 1``; the version is
#: stored in ``PRAGMA user_version``. Append only: a released migration is never edited,
#: because databases already at that version would never see the edit (tests/test_jobs.py
#: keeps a hand-written copy of version 1 to catch exactly that).
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the jobs table.
    (
        f"PRAGMA application_id = {_APPLICATION_ID}",
        """
        CREATE TABLE jobs (
            -- seq orders the queue (FIFO within a priority) and pages the listing; unlike
            -- created_at it cannot tie or go backwards when the clock does.
            seq              INTEGER PRIMARY KEY AUTOINCREMENT,
            id               TEXT    NOT NULL UNIQUE,
            state            TEXT    NOT NULL CHECK (state IN ('queued', 'loading',
                                 'generating', 'encoding', 'done', 'failed', 'cancelled',
                                 'interrupted')),
            priority         INTEGER NOT NULL,
            model            TEXT    NOT NULL,
            params           TEXT    NOT NULL,            -- JSON object, opaque to the store
            created_at       REAL    NOT NULL,
            started_at       REAL,
            finished_at      REAL,
            progress_step    INTEGER,
            progress_total   INTEGER,
            error            TEXT,                        -- JSON {kind, message, data} or NULL
            outputs          TEXT    NOT NULL DEFAULT '[]',  -- JSON list of paths
            attempts         INTEGER NOT NULL DEFAULT 1,
            retry_of         TEXT    REFERENCES jobs (id),
            recipe           TEXT,                        -- JSON object or NULL
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )
        """,
        # next_queued(): state = 'queued' ORDER BY priority DESC, seq.
        "CREATE INDEX jobs_by_state ON jobs (state, priority DESC, seq)",
        "CREATE INDEX jobs_by_model ON jobs (model, seq)",
    ),
    # 2: where a done job's time went (JSON object, see Job.timings).
    ("ALTER TABLE jobs ADD COLUMN timings TEXT",),
    # 3: a client's key for a submission it may have to repeat (see JobStore.submit_once),
    # and the digest of the request it was first used for.
    (
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN request_digest TEXT",
        "CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key) "
        "WHERE idempotency_key IS NOT NULL",
    ),
    # 4: a hosted job's handles at its provider (JSON: the prediction of each take, so a
    # restart resumes them instead of paying again), and what it cost (JSON, Job.cost).
    (
        "ALTER TABLE jobs ADD COLUMN remote TEXT",
        "ALTER TABLE jobs ADD COLUMN cost TEXT",
    ),
    # 5: where a job ran (JSON, Job.placement: executor, worker, node, actor, device) and
    # the runs it lost on the way (a Ray actor or node gone mid-job).
    ("ALTER TABLE jobs ADD COLUMN placement TEXT",),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


def _store_error(path: str, problem: str) -> StoreError:
    return StoreError(path, f"job database: {problem}")


def check_identity(conn: sqlite3.Connection, path: str, known: int = SCHEMA_VERSION) -> int:
    """The file's job schema version, after checking it is a Timbre database we can read.

    Read-only, so it runs before anything changes the file (journal mode included): another
    application's database must leave exactly as it came. Raises StoreError naming ``path``
    when the file belongs to another application (a foreign ``application_id``, or tables
    without ours) or was written by a newer Timbre.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id != _APPLICATION_ID:
        # Only a brand-new file (no id, version 0, no tables) may become ours; a file with a
        # version but not our id is someone else's, whatever the number says.
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != 0 or version != 0:
            raise _store_error(path, "is not a Timbre job database (wrong application_id "
                               f"{app_id}, user_version {version}); refusing to touch it")
        if tables:
            raise _store_error(
                path, "is a SQLite database but not a Timbre job database; refusing to touch it"
            )
    elif version > known:
        raise _store_error(
            path,
            f"schema version {version} was written by a newer timbred (this one knows up to "
            f"{known}); upgrade timbred, or move the file aside to start empty",
        )
    return version


def migrate(
    conn: sqlite3.Connection,
    path: str,
    migrations: Sequence[Sequence[str]] = MIGRATIONS,
) -> tuple[int, int]:
    """Bring the database on ``conn`` up to ``len(migrations)``; return ``(before, after)``.

    One transaction per migration, the version re-read inside it, so two processes
    migrating one fresh file at once cannot both run migration 1 (see
    :func:`~timbred.daemon.sqlite_store.migrate_in_steps`). Raises StoreError naming
    ``path`` when the file belongs to another application, was written by a newer Timbre, or
    a migration fails.
    """
    target = len(migrations)

    def step(conn: sqlite3.Connection, version: int) -> None:
        for statement in migrations[version]:
            conn.execute(statement)
        # PRAGMA takes no parameters; version is an int we computed.
        conn.execute(f"PRAGMA user_version = {version + 1}")

    # check_identity is read-only: a foreign file is refused before anything is written.
    return migrate_in_steps(conn, target=target,
                            version_of=lambda c: check_identity(c, path, target), step=step,
                            error=lambda problem: _store_error(path, problem))


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored. ``params`` and ``recipe`` are opaque JSON objects to the store.

    Instances are snapshots: each read builds fresh ones, so mutating a dict inside a Job
    changes nothing in the database.
    """

    id: str
    state: JobState
    priority: int
    model: str
    params: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: tuple[int, int] | None = None
    error: dict[str, Any] | None = None
    outputs: tuple[str, ...] = ()
    attempts: int = 1
    retry_of: str | None = None
    recipe: dict[str, Any] | None = None
    cancel_requested: bool = False
    #: Seconds by phase once done (``load_s``, ``decode_s``, ``export_s``, ``other_s``);
    #: opaque to the store, like ``recipe``.
    timings: dict[str, float] | None = None
    #: The client's key when it was submitted with one (:meth:`JobStore.submit_once`).
    idempotency_key: str | None = None
    #: A hosted job's handles at its provider (``{"provider", "calls": [...]}``), recorded
    #: before it waits on them; opaque to the store.
    remote: dict[str, Any] | None = None
    #: What a hosted job cost (``{"usd", "estimate", "basis", "provider"}``); opaque too.
    cost: dict[str, Any] | None = None
    #: Where it ran (``{"executor", "worker", "device", "node", "node_ip", "actor", "pid"}``)
    #: and ``interruptions``, the runs it lost before (see :meth:`JobStore.requeue`).
    placement: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change state."""
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON types (fresh copies), for the RPC layer."""
        return {
            "id": self.id,
            "state": self.state.value,
            "priority": self.priority,
            "model": self.model,
            "params": copy.deepcopy(self.params),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": (
                None
                if self.progress is None
                else {"step": self.progress[0], "total": self.progress[1]}
            ),
            "error": copy.deepcopy(self.error),
            "outputs": list(self.outputs),
            "attempts": self.attempts,
            "retry_of": self.retry_of,
            "recipe": copy.deepcopy(self.recipe),
            "cancel_requested": self.cancel_requested,
            "timings": copy.deepcopy(self.timings),
            "idempotency_key": self.idempotency_key,
            "remote": copy.deepcopy(self.remote),
            "cost": copy.deepcopy(self.cost),
            "placement": copy.deepcopy(self.placement),
        }


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :meth:`JobStore.recover` repaired at daemon start."""

    #: Jobs that were running and are now ``interrupted``, oldest first.
    interrupted: tuple[str, ...] = ()
    #: Jobs that were running with a cancel already requested; now ``cancelled``.
    cancelled: tuple[str, ...] = ()
    #: Jobs still queued, in the order they will run.
    queued: tuple[str, ...] = ()
    #: Jobs stopped while encoding whose takes had all been written; now ``done``.
    done: tuple[str, ...] = ()
    #: Hosted jobs left running at their provider (their handles recorded): still running,
    #: to be resumed, not interrupted.
    resumed: tuple[str, ...] = ()

    @property
    def queued_count(self) -> int:
        """How many jobs remain queued."""
        return len(self.queued)


# --- ids --------------------------------------------------------------------------------------

_ID_PREFIX: Final = "j-"


def _encode_id(n: int) -> str:
    return ids.encode(_ID_PREFIX, n)


def _decode_id(job_id: str) -> int | None:
    return ids.decode(_ID_PREFIX, job_id)


# --- validation helpers -----------------------------------------------------------------------


def to_json(value: object, param: str) -> str:
    """``value`` as compact JSON for a store's column; InvalidParams naming ``param`` when it
    is not plain JSON (NaN, a set, an object). The take library stores with it too."""
    with map_errors((TypeError, ValueError), lambda exc: InvalidParams(
            f"{param} must be plain JSON: {exc}", param=param)):
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _check_int(value: object, param: str, lo: int, hi: int) -> int:
    # bool is an int subclass; True as a priority is a client bug, not a priority of 1.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidParams(f"{param} must be an integer in [{lo}, {hi}], got {value!r}",
                            param=param)
    return value


def _checked_submission(model: object, params: object, priority: object) -> str:
    """Check what :meth:`JobStore.submit` is given; the params as JSON."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidParams("model must be a non-empty string", param="model")
    if not isinstance(params, Mapping):
        raise InvalidParams("params must be an object", param="params")
    _check_int(priority, "priority", *PRIORITY_RANGE)
    return to_json(dict(params), "params")


def _check_key(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH \
            or not value.isprintable():
        raise InvalidParams(f"idempotency_key must be 1 to {MAX_KEY_LENGTH} printable "
                            f"characters, got {value!r:.60}", param="idempotency_key")
    return value


def request_digest(request: Mapping[str, Any]) -> str:
    """SHA-256 of a request's canonical JSON (sorted keys, no whitespace, null values and
    the idempotency key itself left out): what :meth:`JobStore.submit_once` compares."""
    canonical = {k: v for k, v in request.items() if v is not None and k != "idempotency_key"}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _coerce_state(value: JobState | str, param: str) -> JobState:
    known = ", ".join(s.value for s in JobState)
    with map_errors(ValueError, lambda exc: InvalidParams(
            f"{param}: unknown job state {value!r} (one of {known})", param=param)):
        return JobState(value)


def _error_dict(error: TimbreError | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(error, TimbreError):
        return {"kind": error.kind, "message": error.message, "data": dict(error.data)}
    if (
        not isinstance(error.get("kind"), str)
        or not isinstance(error.get("message"), str)
        or not isinstance(error.get("data", {}), Mapping)
    ):
        raise InvalidParams(
            "error must be {kind: str, message: str, data: object}", param="error"
        )
    return {"kind": error["kind"], "message": error["message"],
            "data": dict(error.get("data", {}))}


# The columns _row_to_job reads, in its order. Queries append only constant clauses with
# ? placeholders to these, never values.
_SELECT_JOBS: Final = (
    "SELECT id, state, priority, model, params, created_at, started_at, finished_at, "
    "progress_step, progress_total, error, outputs, attempts, retry_of, recipe, "
    "cancel_requested, timings, idempotency_key, remote, cost, placement FROM jobs"
)
_SELECT_SEQ_AND_JOBS: Final = _SELECT_JOBS.replace("SELECT ", "SELECT seq, ", 1)
_SELECT_JOBS_AND_DIGEST: Final = _SELECT_JOBS.replace(" FROM jobs", ", request_digest FROM jobs")


# --- the store --------------------------------------------------------------------------------


class JobStore(SQLiteStore):
    """The job queue in one SQLite file.

    Threading: one connection (``check_same_thread=False``) guarded by one lock. The daemon
    is the only writer, SQLite serialises writers anyway, and every call is a few index
    lookups, so a connection per thread would buy no parallelism; it would cost a
    connection per anyio worker thread that nobody closes, and ``busy_timeout`` retries where
    a lock simply queues. The lock also makes read-check-write sequences (transitions, the
    queue cap) atomic within the process; ``BEGIN IMMEDIATE`` makes them atomic against
    other processes (``timbrectl`` tools, tests) that open the same file.

    Durability: WAL with ``synchronous=FULL``, so a commit is fsynced before ``submit``
    returns. With ``NORMAL`` a WAL commit survives a process crash but may be lost on power
    loss, which would break the promise that an accepted job exists. ``set_progress`` alone
    drops to ``NORMAL`` for its one statement: a later FULL commit fsyncs the WAL up to and
    including it, so order is kept and only the newest progress can be lost.

    Raises InternalError naming the file when it is corrupt, is not a Timbre job database,
    or has a schema newer than this code.
    """

    _corrupt_advice = " and timbred will start with an empty queue"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_queued: int = 1000,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self.path = os.fspath(path)
        self.max_queued = max_queued
        self._clock = clock
        self._lock = threading.Lock()
        self._open(busy_timeout_s, lambda conn: migrate(conn, self.path))

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        check_identity(conn, self.path)

    # --- plumbing ---------------------------------------------------------------------------

    def _error(self, problem: str) -> StoreError:
        return _store_error(self.path, problem)

    def _row_to_job(self, row: Sequence[Any]) -> Job:
        (job_id, state, priority, model, params, created_at, started_at, finished_at, step,
         total, error, outputs, attempts, retry_of, recipe, cancel_requested, timings,
         idempotency_key, remote, cost, placement) = row
        with map_errors((ValueError, TypeError),
                        lambda exc: self._error(f"job {job_id} is unreadable: {exc}")):
            return Job(
                id=job_id,
                state=JobState(state),
                priority=priority,
                model=model,
                params=json.loads(params),
                created_at=created_at,
                started_at=started_at,
                finished_at=finished_at,
                progress=None if step is None else (step, total),
                error=None if error is None else json.loads(error),
                outputs=tuple(json.loads(outputs)),
                attempts=attempts,
                retry_of=retry_of,
                recipe=None if recipe is None else json.loads(recipe),
                cancel_requested=bool(cancel_requested),
                timings=None if timings is None else json.loads(timings),
                idempotency_key=idempotency_key,
                remote=None if remote is None else json.loads(remote),
                cost=None if cost is None else json.loads(cost),
                placement=None if placement is None else json.loads(placement),
            )

    def _fetch(self, conn: sqlite3.Connection, job_id: str) -> Job:
        if not isinstance(job_id, str):
            raise InvalidParams(f"job id must be a string, got {job_id!r}", param="id")
        row = conn.execute(_SELECT_JOBS + " WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._row_to_job(row)

    def _new_id(self, conn: sqlite3.Connection) -> str:
        # Ids are milliseconds since the epoch, made strictly increasing by starting after the
        # newest id in the file. We hold the write lock, so this is unique across processes
        # too, and ids keep sorting by submission even if the clock steps back.
        now_ms = math.floor(self._clock() * 1000)
        newest = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
        last = _decode_id(newest) if isinstance(newest, str) else None
        return _encode_id(now_ms if last is None or now_ms > last else last + 1)

    def _insert_queued(
        self,
        conn: sqlite3.Connection,
        *,
        model: str,
        params_json: str,
        priority: int,
        attempts: int,
        retry_of: str | None,
        idempotency: tuple[str, str] | None = None,
    ) -> Job:
        active = conn.execute(
            "SELECT count(*) FROM jobs WHERE state NOT IN (?, ?, ?, ?)",
            tuple(s.value for s in TERMINAL_STATES),
        ).fetchone()[0]
        if active + 1 > self.max_queued:
            raise QueueFull(self.max_queued)
        job_id = self._new_id(conn)
        key, digest = idempotency if idempotency is not None else (None, None)
        conn.execute(
            "INSERT INTO jobs (id, state, priority, model, params, created_at, attempts, "
            "retry_of, idempotency_key, request_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, _S.QUEUED.value, priority, model, params_json, self._clock(), attempts,
             retry_of, key, digest),
        )
        return self._fetch(conn, job_id)

    # --- submitting and reading -------------------------------------------------------------

    def submit(self, model: str, params: Mapping[str, Any], priority: int = 0) -> Job:
        """Queue a job; it is committed to disk before this returns.

        Raises QueueFull when the non-terminal jobs would exceed ``max_queued``, and
        InvalidParams when ``model`` is empty, ``params`` is not a JSON object or
        ``priority`` is out of range.
        """
        params_json = _checked_submission(model, params, priority)
        with self._write() as conn:
            return self._insert_queued(conn, model=model, params_json=params_json,
                                       priority=priority, attempts=1, retry_of=None)

    def find_submitted(self, key: str, digest: str) -> Job | None:
        """The job submitted with idempotency ``key``, or None when there is none.

        Raises InvalidParams (``param="idempotency_key"``) when the key was used for a
        request whose ``digest`` differs: a key names one request, never two.
        """
        with self._read() as conn:
            return self._by_key(conn, key, digest)

    def submit_once(self, model: str, params: Mapping[str, Any], priority: int, *,
                    key: str, digest: str) -> tuple[Job, bool]:
        """:meth:`submit` under an idempotency ``key``: the job already submitted with it, or
        a new one, atomically; and whether it is new. ``digest`` identifies the client's
        request (before defaults such as a random seed were filled in), so a repeat is
        recognised and a different request under the same key refused (InvalidParams)."""
        params_json = _checked_submission(model, params, priority)
        with self._write() as conn:
            existing = self._by_key(conn, key, digest)
            if existing is not None:
                return existing, False
            return self._insert_queued(conn, model=model, params_json=params_json,
                                       priority=priority, attempts=1, retry_of=None,
                                       idempotency=(key, digest)), True

    def _by_key(self, conn: sqlite3.Connection, key: str, digest: str) -> Job | None:
        _check_key(key)
        row = conn.execute(_SELECT_JOBS_AND_DIGEST + " WHERE idempotency_key = ?",
                           (key,)).fetchone()
        if row is None:
            return None
        if row[-1] != digest:
            raise InvalidParams(
                f"idempotency_key {key!r} was already used for a different request (job "
                f"{row[0]}); use a new key for a new request", param="idempotency_key")
        return self._row_to_job(row[:-1])

    def get(self, job_id: str) -> Job:
        """The job with this id. Raises JobNotFound."""
        with self._read() as conn:
            return self._fetch(conn, job_id)

    def list(
        self,
        *,
        states: Iterable[JobState | str] | None = None,
        model: str | None = None,
        text: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Job], str | None]:
        """One page of jobs, newest first, and the cursor for the next page (None at the end).

        ``states`` keeps jobs in any of those states; ``model`` matches exactly; ``text`` is
        a case-insensitive substring of ``params["prompt"]``. Pass the returned cursor back
        with the same filters to continue; jobs submitted meanwhile do not shift the pages.
        Raises InvalidParams for an unknown state, a limit outside [1, 500] or a bad cursor.
        """
        _check_int(limit, "limit", 1, MAX_LIST_LIMIT)
        where: builtins.list[str] = []
        args: builtins.list[object] = []
        if isinstance(states, str):
            states = [states]  # one state, not its letters
        if states is not None:
            wanted = sorted({_coerce_state(s, "states").value for s in states})
            if not wanted:
                return [], None
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        if model is not None and not isinstance(model, str):
            raise InvalidParams("model must be a string", param="model")
        if text is not None and not isinstance(text, str):
            raise InvalidParams("text must be a string", param="text")
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if text:
            where.append("instr(timbre_casefold(json_extract(params, '$.prompt')), ?) > 0")
            args.append(text.casefold())
        if cursor is not None:
            # The cursor is the seq of the last job shown: opaque to clients, stable under
            # inserts (keyset paging), unlike an offset.
            if not isinstance(cursor, str) or not cursor.isdecimal():
                raise InvalidParams(f"invalid cursor {cursor!r}", param="cursor")
            where.append("seq < ?")
            args.append(int(cursor))
        sql = _SELECT_SEQ_AND_JOBS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
            jobs = [self._row_to_job(row[1:]) for row in rows[:limit]]
        next_cursor = str(rows[limit - 1][0]) if len(rows) > limit else None
        return jobs, next_cursor

    def next_queued(self, backends: Iterable[str] = (), *, among: bool = False
                    ) -> Job | None:
        """The job that should run next (highest priority, then oldest), or None.

        ``backends`` (the ``backend`` of a job's params) splits the queue into lanes: with
        ``among`` only jobs of those backends, without it only jobs of others (hosted jobs
        run beside the local worker's, each lane in its own order). This only looks; the
        worker claims the job with ``set_state(id, LOADING)``, which raises InvalidJobState
        if someone else (a cancel) got there first.
        """
        names = sorted(backends)
        marks = ", ".join("?" * len(names))
        # A row whose params are not JSON belongs to the local lane, where reading it raises
        # the StoreError that names it; json_extract on it would fail both lanes' queries
        # with a bare "malformed JSON" (and two errors instead of the one timbred reports).
        lane = (f" AND coalesce(CASE WHEN json_valid(params) THEN"
                f" json_extract(params, '$.backend') END, '') "
                f"{'IN' if among else 'NOT IN'} ({marks})") if names else ""
        if among and not names:
            return None
        with self._read() as conn:
            row = conn.execute(
                _SELECT_JOBS + " WHERE state = ?" + lane
                + " ORDER BY priority DESC, seq LIMIT 1",
                (_S.QUEUED.value, *names),
            ).fetchone()
            return None if row is None else self._row_to_job(row)

    def next_queued_batch(
        self,
        model: str,
        *,
        limit: int,
        key: Callable[[Job], Hashable] | None = None,
    ) -> builtins.list[Job]:
        """Up to ``limit`` queued jobs of ``model`` that can be decoded together.

        The first is the model's next job in queue order; the others follow in queue order
        and have the same ``key(job)`` (say, duration and sampling settings). Without a key
        every queued job of the model is compatible. Empty when the model has none queued.
        """
        _check_int(limit, "limit", 1, MAX_LIST_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                _SELECT_JOBS + " WHERE state = ? AND model = ? ORDER BY priority DESC, seq",
                (_S.QUEUED.value, model),
            ).fetchall()
        batch: builtins.list[Job] = []
        head_key: Hashable = None
        for row in rows:
            job = self._row_to_job(row)
            if not batch:
                head_key = None if key is None else key(job)
            elif key is not None and key(job) != head_key:
                continue
            batch.append(job)
            if len(batch) == limit:
                break
        return batch

    def queue_depth(self) -> int:
        """How many jobs are queued (not yet started)."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM jobs WHERE state = ?",
                                    (_S.QUEUED.value,)).fetchone()[0])

    def running(self) -> builtins.list[Job]:
        """Jobs in loading, generating or encoding, in the order they started."""
        with self._read() as conn:
            rows = conn.execute(
                _SELECT_JOBS + " WHERE state IN (?, ?, ?) ORDER BY seq",
                tuple(s.value for s in RUNNING_STATES),
            ).fetchall()
            return [self._row_to_job(row) for row in rows]

    # --- changing jobs ----------------------------------------------------------------------

    def set_state(
        self,
        job_id: str,
        state: JobState | str,
        *,
        error: TimbreError | Mapping[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        recipe: Mapping[str, Any] | None = None,
        timings: Mapping[str, float] | None = None,
    ) -> Job:
        """Move a job to ``state``, committed before returning; return the updated job.

        ``started_at`` is stamped on entering loading and ``finished_at`` on entering a
        terminal state. ``outputs``, ``recipe`` and ``timings`` replace the stored values
        when given.
        ``error`` is required for failed and interrupted, allowed for cancelled, refused
        otherwise. Raises JobNotFound, InvalidJobState for a transition not in TRANSITIONS,
        and InvalidParams for malformed arguments.
        """
        new = _coerce_state(state, "state")
        error_json: str | None = None
        if error is not None:
            if new not in (_ERROR_REQUIRED | {_S.CANCELLED}):
                raise InvalidParams(f"a job moving to {new} cannot carry an error",
                                    param="error")
            error_json = to_json(_error_dict(error), "error")
        elif new in _ERROR_REQUIRED:
            raise InvalidParams(f"a job moving to {new} needs an error saying why",
                                param="error")
        outputs_json: str | None = None
        if outputs is not None:
            if isinstance(outputs, str) or not all(isinstance(p, str) for p in outputs):
                raise InvalidParams("outputs must be a list of paths", param="outputs")
            outputs_json = to_json(list(outputs), "outputs")
        recipe_json: str | None = None
        if recipe is not None:
            if not isinstance(recipe, Mapping):
                raise InvalidParams("recipe must be an object", param="recipe")
            recipe_json = to_json(dict(recipe), "recipe")
        timings_json: str | None = None
        if timings is not None:
            if not isinstance(timings, Mapping):
                raise InvalidParams("timings must be an object", param="timings")
            timings_json = to_json(dict(timings), "timings")

        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if new not in TRANSITIONS[job.state]:
                raise InvalidJobState(job_id, job.state.value, f"it cannot become {new}")
            now = self._clock()
            conn.execute(
                "UPDATE jobs SET state = ?, "
                "started_at = CASE WHEN ? THEN ? ELSE started_at END, "
                "finished_at = CASE WHEN ? THEN ? ELSE finished_at END, "
                "error = coalesce(?, error), outputs = coalesce(?, outputs), "
                "recipe = coalesce(?, recipe), timings = coalesce(?, timings) WHERE id = ?",
                (new.value, new is _S.LOADING, now, new in TERMINAL_STATES, now, error_json,
                 outputs_json, recipe_json, timings_json, job_id),
            )
            return self._fetch(conn, job_id)

    def set_remote(self, job_id: str, remote: Mapping[str, Any]) -> Job:
        """Record a running job's handles at its provider, committed (``synchronous=FULL``)
        before returning: once a prediction exists, a restart must find it."""
        remote_json = to_json(dict(remote), "remote")
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if job.state not in RUNNING_STATES:
                raise InvalidJobState(job_id, job.state.value, "only a running job has handles")
            conn.execute("UPDATE jobs SET remote = ? WHERE id = ?", (remote_json, job_id))
            return self._fetch(conn, job_id)

    def set_placement(self, job_id: str, placement: Mapping[str, Any]) -> Job:
        """Record where a running job runs now (its earlier ``interruptions`` are kept)."""
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if job.state not in RUNNING_STATES:
                raise InvalidJobState(job_id, job.state.value, "only a running job is placed")
            earlier = (job.placement or {}).get("interruptions") or []
            value = {**dict(placement), "interruptions": earlier}
            conn.execute("UPDATE jobs SET placement = ? WHERE id = ?",
                         (to_json(value, "placement"), job_id))
            return self._fetch(conn, job_id)

    def requeue(self, job_id: str, error: TimbreError,
                where: Mapping[str, Any] | None = None) -> Job:
        """Queue a running job again under its own id, one attempt more: its executor was
        lost mid-job and nothing of it was written. Its place in the queue is kept (it runs
        next in its priority), the interruption (``error``, with where it ran) is appended
        to ``placement.interruptions`` with where it ran (``where``, else its placement),
        and its progress is reset."""
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if _S.QUEUED not in TRANSITIONS[job.state]:
                raise InvalidJobState(job_id, job.state.value, "only a job that was loading "
                                      "or generating can be queued again")
            placement = dict(job.placement or {})
            ran = where if where is not None else placement
            lost = {**{k: v for k, v in ran.items() if k != "interruptions"},
                    "at": self._clock(), "state": job.state.value,
                    "error": _error_dict(error)}
            value = {"interruptions": [*(placement.get("interruptions") or []), lost]}
            conn.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, placement = ?, "
                "progress_step = NULL, progress_total = NULL WHERE id = ?",
                (_S.QUEUED.value, to_json(value, "placement"), job_id))
            return self._fetch(conn, job_id)

    def set_cost(self, job_id: str, cost: Mapping[str, Any]) -> Job:
        """Record what a job cost at its provider (``{"usd", "estimate", "basis", ...}``)."""
        usd = cost.get("usd")
        if not isinstance(usd, int | float) or isinstance(usd, bool) or not usd >= 0:
            raise InvalidParams("cost.usd must be a number of at least 0", param="cost")
        cost_json = to_json(dict(cost), "cost")
        with self._write() as conn:
            self._fetch(conn, job_id)
            conn.execute("UPDATE jobs SET cost = ? WHERE id = ?", (cost_json, job_id))
            return self._fetch(conn, job_id)

    def costs(self, since: float) -> builtins.list[tuple[str, float, bool]]:
        """``(backend, usd, estimate)`` of every job that recorded a cost and was created at
        or after ``since``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT coalesce(json_extract(params, '$.backend'), ''), "
                "json_extract(cost, '$.usd'), json_extract(cost, '$.estimate') FROM jobs "
                "WHERE cost IS NOT NULL AND created_at >= ? ORDER BY seq", (since,),
            ).fetchall()
        return [(str(b), float(usd or 0.0), bool(est)) for b, usd, est in rows]

    def pending_estimates(self, backend: str) -> float:
        """The estimated cost (``params.hosted.estimate_usd``) of ``backend``'s jobs that
        have not finished and recorded no cost yet: what they will probably spend."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT total(json_extract(params, '$.hosted.estimate_usd')) FROM jobs "
                "WHERE cost IS NULL AND json_extract(params, '$.backend') = ? "
                "AND state IN (?, ?, ?, ?)",
                (backend, _S.QUEUED.value, *(s.value for s in RUNNING_STATES)),
            ).fetchone()
        return float(row[0] or 0.0)

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        """Record generation progress for a running job.

        Cheap on purpose: committed without an fsync, so the newest progress may be lost on
        a power cut (never a state change). Raises JobNotFound, InvalidJobState when the job
        is not running, and InvalidParams unless ``0 <= step <= total`` and ``total >= 1``.
        """
        _check_int(total, "total", 1, 2**31 - 1)
        _check_int(step, "step", 0, total)
        with self._lock, self._translate():
            # synchronous can only change outside a transaction; the UPDATE is its own.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                changed = self._conn.execute(
                    "UPDATE jobs SET progress_step = ?, progress_total = ? "
                    "WHERE id = ? AND state IN (?, ?, ?)",
                    (step, total, job_id, *(s.value for s in RUNNING_STATES)),
                ).rowcount
            finally:
                self._conn.execute("PRAGMA synchronous = FULL")
            if changed:
                return
            job = self._fetch(self._conn, job_id)
        raise InvalidJobState(job_id, job.state.value, "only a running job has progress")

    def cancel(self, job_id: str) -> Job:
        """Cancel a job and return it.

        A queued job becomes cancelled at once. A running job only gets
        ``cancel_requested`` set (the worker stops it and moves it to cancelled); asking
        again is harmless. Raises JobNotFound, and InvalidJobState for a finished job.
        """
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if job.state is _S.QUEUED:
                conn.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                    (_S.CANCELLED.value, self._clock(), to_json(_error_dict(Cancelled()), "error"),
                     job_id),
                )
            elif job.state in RUNNING_STATES:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise InvalidJobState(job_id, job.state.value, "it has already finished")
            return self._fetch(conn, job_id)

    def retry(self, job_id: str) -> Job:
        """Queue a new job with the same model, params and priority as a finished one.

        The new job has ``retry_of`` set to ``job_id`` and one more attempt. Only failed,
        cancelled and interrupted jobs can be retried. Raises JobNotFound, InvalidJobState
        and QueueFull.
        """
        with self._write() as conn:
            job = self._fetch(conn, job_id)
            if job.state not in RETRYABLE_STATES:
                raise InvalidJobState(
                    job_id, job.state.value, "only failed, cancelled or interrupted jobs can "
                    "be retried"
                )
            return self._insert_queued(
                conn, model=job.model, params_json=to_json(job.params, "params"),
                priority=job.priority, attempts=job.attempts + 1, retry_of=job.id,
            )

    # --- restart ----------------------------------------------------------------------------

    def recover(self, written: Callable[[Job], Sequence[str]] | None = None,
                resumable: Callable[[Job], bool] | None = None) -> RecoveryReport:
        """Repair the queue at daemon start; call once, before the worker starts.

        Jobs left loading, generating or encoding by a daemon that stopped become
        interrupted with an error saying so: they are never re-run behind the user's back
        (``retry`` does that on request). A running job whose cancel was already requested
        becomes cancelled instead, as asked. Queued jobs stay queued in their order.

        ``written(job)`` says which takes of a job were already published (the history
        records a take once its file is in place): a daemon killed while encoding may have
        written some or all of them. They become the job's ``outputs``, so its record and
        its takes agree, and a job whose takes were all written is ``done``, not
        interrupted (retrying it would only duplicate them).

        ``resumable(job)`` says whether a job with no takes written can pick up where it
        was (a hosted job whose predictions are recorded and still run at the provider):
        such jobs keep their state, to be resumed, and are reported as ``resumed``.
        """
        with self._write() as conn:
            rows = conn.execute(
                _SELECT_JOBS + " WHERE state IN (?, ?, ?) ORDER BY seq",
                tuple(s.value for s in RUNNING_STATES),
            ).fetchall()
            now = self._clock()
            interrupted: builtins.list[str] = []
            cancelled: builtins.list[str] = []
            done: builtins.list[str] = []
            resumed: builtins.list[str] = []
            for row in rows:
                job = self._row_to_job(row)
                outputs = list(written(job)) if written is not None else []
                if (not outputs and not job.cancel_requested and resumable is not None
                        and resumable(job)):
                    resumed.append(job.id)
                    continue
                expected = 1 if job.params.get("replay") else job.params.get("variations", 1)
                err: dict[str, Any] | None
                if outputs and len(outputs) >= expected and not job.cancel_requested:
                    new, err = _S.DONE, None
                    done.append(job.id)
                elif job.cancel_requested:
                    new, err = _S.CANCELLED, _error_dict(Cancelled())
                    cancelled.append(job.id)
                else:
                    new = _S.INTERRUPTED
                    problem = Interrupted(job.state.value)
                    if outputs:
                        problem.message += (f"; {len(outputs)} of {expected} takes had been "
                                            "written (see outputs)")
                    err = _error_dict(problem)
                    interrupted.append(job.id)
                conn.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ?, outputs = ? "
                    "WHERE id = ?",
                    (new.value, now, None if err is None else to_json(err, "error"),
                     to_json(outputs, "outputs"), job.id),
                )
            queued = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE state = ? ORDER BY priority DESC, seq",
                    (_S.QUEUED.value,),
                )
            ]
        return RecoveryReport(
            interrupted=tuple(interrupted), cancelled=tuple(cancelled), queued=tuple(queued),
            done=tuple(done), resumed=tuple(resumed),
        )
