"""The history library: every take ever made, with its session, prompt, rating and tags.

No RPC, no asyncio and no file deletion live here. The daemon records a take when a job
writes it and calls :class:`Library` from worker threads (``anyio.to_thread.run_sync``);
every method is blocking, short and thread-safe, like :class:`timbred.queue.jobs.JobStore`.

One file, two owners. The library lives in the same SQLite file as the job queue
(``timbre.sqlite3``) but keeps its own schema version in the one-row table
``library_schema``; ``PRAGMA user_version`` and ``application_id`` belong to the job store
and the library never sets them itself. Because :func:`timbred.queue.jobs.migrate` refuses a file
at ``user_version`` 0 that already holds tables (it could be anybody's), the library brings a
brand-new file through the job store's own :func:`timbred.queue.jobs.migrate` first. Either can
therefore open the file first, and both check that it is a Timbre database.

Tables (schema version 2)::

    library_schema (id = 1, version)             -- the library's schema version
    sessions  (id, name UNIQUE, created_at)       -- a named group of takes; default: "YYYY-MM-DD"
    prompts   (id, session_id, text, created_at)  -- UNIQUE (session_id, text): deduplicated
    takes     (seq, id UNIQUE "t-<9 base32>", job_id, prompt_id, session_id, take_index,
               path, format, sample_rate, channels, duration_s, loudness_before_lufs,
               loudness_after_lufs, created_at, recipe JSON, deleted_at)
               -- UNIQUE (job_id, take_index); job_id is not a foreign key, so pruning old
               -- jobs never breaks the history
    ratings   (take_id PK, value -1 | 1 | NULL, note, updated_at)
               -- NULL value: a note without a verdict; no row: unrated, no note
    tags      (take_id, tag) PRIMARY KEY          -- ratings and tags go with their take
    prompts_fts                                   -- FTS5 index of prompts.text (version 2)

Versions: 1 made the tables; 2 added the full-text index over prompts (backfilled from the
prompts already there, kept current by triggers) and the indexes that page the history
newest first, overall and per session.

Full-text search: SQLite's FTS5 with the ``unicode61 remove_diacritics 2`` tokenizer, so
matching ignores case and accents ("cafe" finds "Café"). Each whitespace-separated word of
the query is a quoted prefix term and all must match: ``hip hop pian`` finds "Hip-hop piano".
User text never reaches FTS5's query syntax unquoted. When this SQLite was built without
FTS5 at migration time, no index is made and search falls back to case-folded substring
matching of every word over the (deduplicated, hence small) prompts table; a file with the
index cannot then be opened by a SQLite without FTS5 (StoreError says so).

Paging: newest first by ``(created_at, seq)``. ``created_at`` can be supplied (imports), so
it does not always follow insertion; ``seq`` breaks ties. The cursor is the position of the
last take shown (keyset paging), so takes recorded while paging never shift a page.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from timbred.daemon import ids
from timbred.daemon.sqlite_store import SQLiteStore, migrate_in_steps
from timbred.errors import InvalidParams, StoreError, TakeNotFound, map_errors
from timbred.queue import jobs

__all__ = [
    "MAX_SEARCH_LIMIT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Library",
    "Migration",
    "RatingFilter",
    "RatingValue",
    "Session",
    "Take",
    "migrate",
    "normalise_tag",
]

RatingValue = Literal["up", "down", "none"]
RatingFilter = Literal["up", "down", "unrated"]

MAX_SEARCH_LIMIT: Final = 500
MAX_TAG_LENGTH: Final = 40
MAX_TAGS_PER_TAKE: Final = 64
MAX_NOTE_LENGTH: Final = 2000
MAX_SESSION_NAME_LENGTH: Final = 100
MAX_PROMPT_LENGTH: Final = 4000  # as generate.submit's prompt
_RATING_TO_INT: Final[Mapping[str, int | None]] = {"up": 1, "down": -1, "none": None}
_INT_TO_RATING: Final[Mapping[int, Literal["up", "down"]]] = {1: "up", -1: "down"}


# --- schema -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. ``fts`` statements run only when this SQLite has FTS5."""

    statements: tuple[str, ...]
    fts: tuple[str, ...] = ()


#: Migration ``i`` (0-based) takes the library from version ``i`` to ``i + 1``. Append only:
#: a released migration is never edited (tests/test_library.py keeps a frozen copy of v1).
MIGRATIONS: Final[tuple[Migration, ...]] = (
    # 1: the tables.
    Migration((
        """
        CREATE TABLE library_schema (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )
        """,
        "INSERT INTO library_schema (id, version) VALUES (1, 0)",
        """
        CREATE TABLE sessions (
            id         INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL UNIQUE,
            created_at REAL    NOT NULL
        )
        """,
        """
        CREATE TABLE prompts (
            id         INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions (id),
            text       TEXT    NOT NULL,
            created_at REAL    NOT NULL,
            UNIQUE (session_id, text)
        )
        """,
        """
        CREATE TABLE takes (
            -- seq breaks created_at ties and positions the paging cursor.
            seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
            id                   TEXT    NOT NULL UNIQUE,
            job_id               TEXT    NOT NULL,
            prompt_id            INTEGER NOT NULL REFERENCES prompts (id),
            session_id           INTEGER NOT NULL REFERENCES sessions (id),
            take_index           INTEGER NOT NULL,
            path                 TEXT    NOT NULL,
            format               TEXT    NOT NULL,
            sample_rate          INTEGER NOT NULL,
            channels             INTEGER NOT NULL,
            duration_s           REAL    NOT NULL,
            loudness_before_lufs REAL,
            loudness_after_lufs  REAL,
            created_at           REAL    NOT NULL,
            recipe               TEXT    NOT NULL DEFAULT '{}',  -- JSON object
            deleted_at           REAL,
            UNIQUE (job_id, take_index)
        )
        """,
        "CREATE INDEX takes_by_path ON takes (path)",
        "CREATE INDEX takes_by_prompt ON takes (prompt_id)",
        """
        CREATE TABLE ratings (
            take_id    TEXT PRIMARY KEY REFERENCES takes (id) ON DELETE CASCADE,
            value      INTEGER CHECK (value IN (-1, 1)),
            note       TEXT,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE tags (
            take_id TEXT NOT NULL REFERENCES takes (id) ON DELETE CASCADE,
            tag     TEXT NOT NULL,
            PRIMARY KEY (take_id, tag)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX tags_by_tag ON tags (tag, take_id)",
    )),
    # 2: search: newest-first paging indexes and the full-text index over prompts.
    Migration(
        (
            "CREATE INDEX takes_by_time ON takes (created_at, seq)",
            "CREATE INDEX takes_by_session ON takes (session_id, created_at, seq)",
        ),
        fts=(
            """
            CREATE VIRTUAL TABLE prompts_fts USING fts5 (
                text, content = 'prompts', content_rowid = 'id',
                tokenize = 'unicode61 remove_diacritics 2'
            )
            """,
            """
            CREATE TRIGGER prompts_fts_insert AFTER INSERT ON prompts BEGIN
                INSERT INTO prompts_fts (rowid, text) VALUES (new.id, new.text);
            END
            """,
            """
            CREATE TRIGGER prompts_fts_delete AFTER DELETE ON prompts BEGIN
                INSERT INTO prompts_fts (prompts_fts, rowid, text)
                    VALUES ('delete', old.id, old.text);
            END
            """,
            """
            CREATE TRIGGER prompts_fts_update AFTER UPDATE OF text ON prompts BEGIN
                INSERT INTO prompts_fts (prompts_fts, rowid, text)
                    VALUES ('delete', old.id, old.text);
                INSERT INTO prompts_fts (rowid, text) VALUES (new.id, new.text);
            END
            """,
            # Backfill the prompts recorded under version 1.
            "INSERT INTO prompts_fts (prompts_fts) VALUES ('rebuild')",
        ),
    ),
    # 3: what analysis measured (tempo, key), for `history bpm:118-122 key:Am`. NULL for takes
    # recorded before, or not analysed.
    Migration((
        "ALTER TABLE takes ADD COLUMN bpm REAL",
        "ALTER TABLE takes ADD COLUMN musical_key TEXT",  # as TKEY writes it: "Am", "F#"
        "CREATE INDEX takes_by_bpm ON takes (bpm)",
    )),
    # 4: stems separated from a take (takes.stems), each a file beside it; one row per stem
    # of each separation (a second model's stems are recorded beside the first's).
    Migration((
        """
        CREATE TABLE stems (
            id         INTEGER PRIMARY KEY,
            take_id    TEXT    NOT NULL REFERENCES takes (id) ON DELETE CASCADE,
            job_id     TEXT    NOT NULL,
            stem       TEXT    NOT NULL,
            path       TEXT    NOT NULL,
            format     TEXT    NOT NULL,
            model      TEXT    NOT NULL,
            created_at REAL    NOT NULL,
            deleted_at REAL,
            UNIQUE (job_id, stem)
        )
        """,
        "CREATE INDEX stems_by_take ON stems (take_id, id)",
    )),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


def _store_error(path: str, problem: str) -> StoreError:
    return StoreError(path, f"history library: {problem}")


def _fts5_available(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite can make FTS5 tables (compiled in or loaded)."""
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.timbre_fts5_probe USING fts5 (x)")
    except sqlite3.OperationalError:
        return False
    conn.execute("DROP TABLE temp.timbre_fts5_probe")
    return True


def _library_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'library_schema'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM library_schema WHERE id = 1").fetchone()
    if row is None or not isinstance(row[0], int):
        raise sqlite3.DatabaseError("library_schema has no version row")
    return row[0]


def migrate(
    conn: sqlite3.Connection,
    path: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    fts: bool | None = None,
) -> tuple[int, int]:
    """Bring the library's tables on ``conn`` up to ``len(migrations)``; return (before, after).

    One transaction per step, the version re-read inside it (see
    :func:`~timbred.daemon.sqlite_store.migrate_in_steps`). ``fts`` says whether to make the
    FTS5 index (default: when this SQLite has FTS5). Raises StoreError naming ``path`` for a
    newer schema or a failed migration. The job store's identity checks are
    :func:`timbred.queue.jobs.migrate`'s business.
    """
    if fts is None:
        fts = _fts5_available(conn)

    def version_of(conn: sqlite3.Connection) -> int:
        version = _library_version(conn)
        if version > len(migrations):
            raise _store_error(
                path,
                f"schema version {version} was written by a newer timbred (this one knows "
                f"up to {len(migrations)}); upgrade timbred",
            )
        return version

    def step(conn: sqlite3.Connection, version: int) -> None:
        migration = migrations[version]
        for statement in (*migration.statements, *(migration.fts if fts else ())):
            conn.execute(statement)
        conn.execute("UPDATE library_schema SET version = ? WHERE id = 1", (version + 1,))

    return migrate_in_steps(conn, target=len(migrations), version_of=version_of, step=step,
                            error=lambda problem: _store_error(path, problem))


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A named group of takes (a sitting, a project). The default one is named by the day."""

    id: int
    name: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """The session as plain JSON types."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Take:
    """One take as stored, with what the user said about it. A snapshot: reads build new ones.

    ``rating`` is "up", "down" or None (unrated); ``note`` may exist without a rating.
    ``deleted_at`` is set once the daemon has deleted the file; the row stays for history.
    """

    id: str
    job_id: str
    session: str
    prompt: str
    take_index: int
    path: str
    format: str
    sample_rate: int
    channels: int
    duration_s: float
    loudness_before_lufs: float | None
    loudness_after_lufs: float | None
    created_at: float
    recipe: dict[str, Any]
    deleted_at: float | None = None
    rating: Literal["up", "down"] | None = None
    note: str | None = None
    tags: tuple[str, ...] = ()
    #: The measured tempo and key ("Am"), or None (not analysed, or nothing to measure).
    bpm: float | None = None
    key: str | None = None
    #: Stems separated from it (``takes.stems``), oldest first: each ``{stem, path, format,
    #: model, job_id, created_at, deleted_at}``.
    stems: tuple[dict[str, Any], ...] = ()

    @property
    def deleted(self) -> bool:
        """True once the take's file has been deleted."""
        return self.deleted_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The take as plain JSON types (fresh copies), for the RPC layer."""
        return {
            "id": self.id,
            "job_id": self.job_id,
            "session": self.session,
            "prompt": self.prompt,
            "take_index": self.take_index,
            "path": self.path,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "duration_s": self.duration_s,
            "loudness_before_lufs": self.loudness_before_lufs,
            "loudness_after_lufs": self.loudness_after_lufs,
            "created_at": self.created_at,
            "recipe": json.loads(json.dumps(self.recipe)),
            "deleted_at": self.deleted_at,
            "rating": self.rating,
            "note": self.note,
            "tags": list(self.tags),
            "bpm": self.bpm,
            "key": self.key,
            "stems": [dict(stem) for stem in self.stems],
        }


# --- ids --------------------------------------------------------------------------------------

_ID_PREFIX: Final = "t-"


def _encode_id(n: int) -> str:
    return ids.encode(_ID_PREFIX, n)


def _decode_id(take_id: str) -> int | None:
    return ids.decode(_ID_PREFIX, take_id)


# --- validation -------------------------------------------------------------------------------


def _check_str(value: object, param: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidParams(f"{param} must be a string, got {value!r}", param=param)
    if not 1 <= len(value) <= max_len or not value.strip():
        raise InvalidParams(f"{param} must be 1..{max_len} characters, not blank", param=param)
    return value


def _check_int(value: object, param: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidParams(f"{param} must be an integer in [{lo}, {hi}], got {value!r}",
                            param=param)
    return value


def _check_float(value: object, param: str, *, optional: bool = False,
                 lo: float = -math.inf) -> float | None:
    if value is None and optional:
        return None
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or value < lo):
        bound = "" if lo == -math.inf else f" >= {lo}"
        raise InvalidParams(f"{param} must be a finite number{bound}, got {value!r}",
                            param=param)
    return float(value)


def short_key(text: object) -> str:
    """A key as tags (TKEY) and the library write it: "Am", "F#", from any spelling
    :func:`timbred.takes.analysis.parse_key` reads ("A minor", "a min", "Gbm")."""
    from timbred.takes.analysis import parse_key

    if not isinstance(text, str):
        raise InvalidParams(f"key must be a string like 'Am' or 'F# major', got {text!r}",
                            param="key")
    tonic, mode = parse_key(text)
    return tonic + ("m" if mode == "minor" else "")


def _control_free(value: str) -> bool:
    return all(ch.isprintable() for ch in value)


def normalise_tag(tag: object) -> str:
    """A tag as stored: stripped, inner whitespace collapsed, case-folded; 1..40 characters.

    Raises InvalidParams naming ``tag`` for a non-string, an empty or over-long tag, a comma
    (CLIs split lists on commas) or a control character.
    """
    if not isinstance(tag, str):
        raise InvalidParams(f"a tag must be a string, got {tag!r}", param="tag")
    norm = " ".join(tag.split()).casefold()
    if not 1 <= len(norm) <= MAX_TAG_LENGTH:
        raise InvalidParams(f"tag {tag!r} must be 1..{MAX_TAG_LENGTH} characters", param="tag")
    if "," in norm or not _control_free(norm):
        raise InvalidParams(f"tag {tag!r} must not contain commas or control characters",
                            param="tag")
    return norm


def _tags(values: Iterable[str], param: str) -> set[str]:
    # A bare string would iterate as characters: a client bug, not 5 one-letter tags.
    if isinstance(values, str | bytes):
        raise InvalidParams(f"{param} must be a list of tags, not a string", param="tag")
    return {normalise_tag(v) for v in values}


def _session_name(name: object) -> str:
    value = _check_str(name, "session", MAX_SESSION_NAME_LENGTH).strip()
    if not _control_free(value):
        raise InvalidParams("session must not contain control characters", param="session")
    return value


def _fts_query(text: str) -> str:
    # Every word becomes a quoted prefix term (FTS5 syntax never sees user text unquoted);
    # terms are ANDed. A word with no letters or digits matches nothing, as FTS5 would.
    return " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())


def _parse_cursor(cursor: object) -> tuple[float, int]:
    if isinstance(cursor, str):
        created, sep, seq = cursor.partition(":")
        try:
            created_at = float(created)
        except ValueError:
            created_at = math.nan
        if sep and seq.isdecimal() and math.isfinite(created_at):
            return created_at, int(seq)
    raise InvalidParams(f"invalid cursor {cursor!r}", param="cursor")


# The columns _row_to_take reads, in its order; queries append constant clauses only.
_SELECT_TAKES: Final = """
    SELECT t.seq, t.id, t.job_id, s.name, p.text, t.take_index, t.path, t.format,
           t.sample_rate, t.channels, t.duration_s, t.loudness_before_lufs,
           t.loudness_after_lufs, t.created_at, t.recipe, t.deleted_at, r.value, r.note,
           (SELECT json_group_array(g.tag) FROM tags AS g WHERE g.take_id = t.id),
           t.bpm, t.musical_key,
           (SELECT json_group_array(json(x.stem)) FROM (
                SELECT json_object('stem', stem, 'path', path, 'format', format,
                                   'model', model, 'job_id', job_id,
                                   'created_at', created_at, 'deleted_at', deleted_at) AS stem
                FROM stems WHERE take_id = t.id ORDER BY id) AS x)
    FROM takes AS t
    JOIN prompts AS p ON p.id = t.prompt_id
    JOIN sessions AS s ON s.id = t.session_id
    LEFT JOIN ratings AS r ON r.take_id = t.id
"""


# --- the library ------------------------------------------------------------------------------


class Library(SQLiteStore):
    """The history of takes in the Timbre database file.

    Threading and durability as :class:`timbred.queue.jobs.JobStore`: one connection
    (``check_same_thread=False``) guarded by one lock, WAL journaling, ``synchronous=FULL``
    (a recorded take or rating is fsynced before the method returns), ``BEGIN IMMEDIATE``
    for every read-check-write so other processes on the same file cannot interleave.

    Raises StoreError naming the file when it is corrupt, is not a Timbre database, or holds
    a library schema newer than this code.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._fts = self._open(busy_timeout_s, self._setup)

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        jobs.check_identity(conn, self.path)

    def _setup(self, conn: sqlite3.Connection) -> bool:
        """Migrate (the job store's part first) and say whether search has FTS5."""
        # The file's identity (application_id, user_version) is the job store's: on a new
        # file its migration runs first, so that JobStore accepts the file afterwards.
        jobs.migrate(conn, self.path)
        fts_available = _fts5_available(conn)
        migrate(conn, self.path, fts=fts_available)
        has_fts = bool(conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'prompts_fts'"
        ).fetchone()[0])
        if has_fts and not fts_available:
            raise _store_error(
                self.path, "has a full-text index but this SQLite was built without FTS5"
            )
        return has_fts

    # --- plumbing ---------------------------------------------------------------------------

    def _error(self, problem: str) -> StoreError:
        return _store_error(self.path, problem)

    def _row_to_take(self, row: Sequence[Any]) -> Take:
        (_seq, take_id, job_id, session, prompt, take_index, path, fmt, sample_rate, channels,
         duration_s, before, after, created_at, recipe, deleted_at, value, note, tags, bpm,
         key, stems) = row
        with map_errors((ValueError, TypeError, KeyError),
                        lambda exc: self._error(f"take {take_id} is unreadable: {exc}")):
            return Take(
                id=take_id, job_id=job_id, session=session, prompt=prompt,
                take_index=take_index, path=path, format=fmt, sample_rate=sample_rate,
                channels=channels, duration_s=duration_s, loudness_before_lufs=before,
                loudness_after_lufs=after, created_at=created_at, recipe=json.loads(recipe),
                deleted_at=deleted_at,
                rating=None if value is None else _INT_TO_RATING[value],
                note=note, tags=tuple(sorted(json.loads(tags))), bpm=bpm, key=key,
                stems=tuple(json.loads(stems)),
            )

    def _fetch(self, conn: sqlite3.Connection, take_id: object) -> Take:
        if not isinstance(take_id, str):
            raise InvalidParams(f"take id must be a string, got {take_id!r}", param="take")
        row = conn.execute(_SELECT_TAKES + " WHERE t.id = ?", (take_id,)).fetchone()
        if row is None:
            raise TakeNotFound(take_id)
        return self._row_to_take(row)

    def _new_id(self, conn: sqlite3.Connection) -> str:
        # Milliseconds, strictly increasing after the newest id in the file (we hold the write
        # lock), so ids sort by recording order even when the clock steps back.
        now_ms = math.floor(self._clock() * 1000)
        newest = conn.execute("SELECT max(id) FROM takes").fetchone()[0]
        last = _decode_id(newest) if isinstance(newest, str) else None
        return _encode_id(now_ms if last is None or now_ms > last else last + 1)

    def _get_or_create_session(self, conn: sqlite3.Connection, name: str | None) -> Session:
        if name is None:
            name = dt.datetime.fromtimestamp(self._clock()).strftime("%Y-%m-%d")
        conn.execute(
            "INSERT INTO sessions (name, created_at) VALUES (?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, self._clock()),
        )
        row = conn.execute("SELECT id, name, created_at FROM sessions WHERE name = ?",
                           (name,)).fetchone()
        return Session(id=row[0], name=row[1], created_at=row[2])

    # --- sessions ---------------------------------------------------------------------------

    def session(self, name: str | None = None) -> Session:
        """The session called ``name``, made if new; None: today's session, "YYYY-MM-DD".

        The day is the local date by the library's clock. Names are stripped and must be
        1..100 printable characters (InvalidParams naming ``session``).
        """
        checked = None if name is None else _session_name(name)
        with self._write() as conn:
            return self._get_or_create_session(conn, checked)

    def sessions(self) -> builtins.list[Session]:
        """Every session, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at FROM sessions ORDER BY created_at DESC, id DESC"
            ).fetchall()
        return [Session(id=r[0], name=r[1], created_at=r[2]) for r in rows]

    # --- recording --------------------------------------------------------------------------

    def record_take(
        self,
        *,
        job_id: str,
        session: Session | str | None,
        prompt: str,
        take_index: int,
        path: str | os.PathLike[str],
        format: str,  # shadows the builtin on purpose: the column's and export's name
        sample_rate: int,
        channels: int,
        duration_s: float,
        loudness_before: float | None,
        loudness_after: float | None,
        recipe: Mapping[str, Any],
        created_at: float | None = None,
        bpm: float | None = None,
        key: str | None = None,
    ) -> Take:
        """Record one written take and return it; committed (fsynced) before returning.

        ``session`` is a Session, a session name (made if new) or None for today's session.
        The prompt is stored once per session and shared by its takes. Recording the same
        ``(job_id, take_index)`` again with the same path returns the existing take (a
        daemon that crashed between writing and recording can simply record again); with a
        different path it raises InvalidParams naming ``take_index``. Raises InvalidParams
        for malformed arguments (the path must be absolute).
        """
        _check_str(job_id, "job_id", 200)
        session_name = (session.name if isinstance(session, Session)
                        else None if session is None else _session_name(session))
        _check_str(prompt, "prompt", MAX_PROMPT_LENGTH)
        _check_int(take_index, "take_index", 0, 1_000_000)
        if not isinstance(path, str | os.PathLike):
            raise InvalidParams(f"path must be a path, got {path!r}", param="path")
        path_str = os.fspath(path)
        if not isinstance(path_str, str) or not Path(path_str).is_absolute():
            raise InvalidParams(f"path must be absolute, got {path_str!r}", param="path")
        if not isinstance(format, str) or not (format.isascii() and format.isalnum()
                                               and format.islower() and len(format) <= 16):
            raise InvalidParams(f"format must be a short lower-case name like 'wav', got "
                                f"{format!r}", param="format")
        _check_int(sample_rate, "sample_rate", 1, 1_000_000)
        _check_int(channels, "channels", 1, 64)
        duration = _check_float(duration_s, "duration_s", lo=0.0)
        before = _check_float(loudness_before, "loudness_before", optional=True)
        after = _check_float(loudness_after, "loudness_after", optional=True)
        if not isinstance(recipe, Mapping):
            raise InvalidParams("recipe must be an object", param="recipe")
        recipe_json = jobs.to_json(dict(recipe), "recipe")
        tempo = _check_float(bpm, "bpm", optional=True)
        if key is not None:
            key = _check_str(key, "key", 3)
        when = _check_float(self._clock() if created_at is None else created_at, "created_at")

        with self._write() as conn:
            existing = conn.execute(
                "SELECT id, path FROM takes WHERE job_id = ? AND take_index = ?",
                (job_id, take_index),
            ).fetchone()
            if existing is not None:
                if existing[1] != path_str:
                    raise InvalidParams(
                        f"job {job_id} already has take {take_index} at {existing[1]}",
                        param="take_index",
                    )
                return self._fetch(conn, existing[0])
            sess = self._get_or_create_session(conn, session_name)
            conn.execute(
                "INSERT INTO prompts (session_id, text, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id, text) DO NOTHING",
                (sess.id, prompt, when),
            )
            prompt_id = conn.execute(
                "SELECT id FROM prompts WHERE session_id = ? AND text = ?", (sess.id, prompt)
            ).fetchone()[0]
            take_id = self._new_id(conn)
            conn.execute(
                "INSERT INTO takes (id, job_id, prompt_id, session_id, take_index, path, "
                "format, sample_rate, channels, duration_s, loudness_before_lufs, "
                "loudness_after_lufs, created_at, recipe, bpm, musical_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (take_id, job_id, prompt_id, sess.id, take_index, path_str, format,
                 sample_rate, channels, duration, before, after, when, recipe_json, tempo,
                 key),
            )
            return self._fetch(conn, take_id)

    # --- reading ----------------------------------------------------------------------------

    def get(self, take: str | os.PathLike[str]) -> Take:
        """The take with this id ("t-...") or file path; raises TakeNotFound.

        Several rows can share a path (a file deleted, then written again); the newest
        take that is not deleted wins, else the newest deleted one.
        """
        if not isinstance(take, str | os.PathLike):
            raise InvalidParams(f"take must be an id or a path, got {take!r}", param="take")
        key = os.fspath(take)
        if not isinstance(key, str):
            raise InvalidParams(f"take must be an id or a path, got {take!r}", param="take")
        with self._read() as conn:
            row = conn.execute(_SELECT_TAKES + " WHERE t.id = ?", (key,)).fetchone()
            if row is None:
                row = conn.execute(
                    _SELECT_TAKES + " WHERE t.path = ? "
                    "ORDER BY t.deleted_at IS NOT NULL, t.created_at DESC, t.seq DESC LIMIT 1",
                    (key,),
                ).fetchone()
            if row is None:
                raise TakeNotFound(key)
            return self._row_to_take(row)

    def takes_for_job(self, job_id: str) -> builtins.list[Take]:
        """Every take of a job, deleted ones included, by take index (empty if none)."""
        _check_str(job_id, "job_id", 200)
        with self._read() as conn:
            rows = conn.execute(
                _SELECT_TAKES + " WHERE t.job_id = ? ORDER BY t.take_index, t.seq", (job_id,)
            ).fetchall()
            return [self._row_to_take(r) for r in rows]

    def search(
        self,
        *,
        text: str | None = None,
        tag: str | None = None,
        rating: RatingFilter | None = None,
        since: float | None = None,
        until: float | None = None,
        session: Session | str | None = None,
        include_deleted: bool = False,
        limit: int = 50,
        cursor: str | None = None,
        bpm_min: float | None = None,
        bpm_max: float | None = None,
        key: str | None = None,
    ) -> tuple[builtins.list[Take], str | None]:
        """Takes matching every given filter, newest first; returns (page, next_cursor).

        ``text`` matches prompts word by word (prefixes, any case and accents; see the
        module docstring); ``tag`` is normalised like stored tags; ``rating`` is "up",
        "down" or "unrated"; ``since <= created_at < until`` (unix times); ``session`` is a
        Session or a session name; ``bpm_min <= bpm <= bpm_max`` (measured tempo) and ``key``
        (as tags write it: "Am", "F#"; "A minor" works too). Deleted takes are left out unless
        ``include_deleted``.
        ``next_cursor`` is None on the last page; pass it back to get the next one.
        """
        _check_int(limit, "limit", 1, MAX_SEARCH_LIMIT)
        where: list[str] = []
        args: list[Any] = []
        if text is not None:
            if not isinstance(text, str) or len(text) > MAX_PROMPT_LENGTH:
                raise InvalidParams("text must be a string of at most 4000 characters",
                                    param="text")
            if text.strip():
                if self._fts:
                    where.append("t.prompt_id IN (SELECT rowid FROM prompts_fts "
                                 "WHERE prompts_fts MATCH ?)")
                    args.append(_fts_query(text))
                else:
                    for word in text.split():
                        where.append("t.prompt_id IN (SELECT id FROM prompts WHERE "
                                     "instr(timbre_casefold(text), ?) > 0)")
                        args.append(word.casefold())
        if tag is not None:
            where.append("t.id IN (SELECT take_id FROM tags WHERE tag = ?)")
            args.append(normalise_tag(tag))
        if rating is not None:
            if rating == "up":
                where.append("r.value = 1")
            elif rating == "down":
                where.append("r.value = -1")
            elif rating == "unrated":
                where.append("r.value IS NULL")
            else:
                raise InvalidParams(f"rating must be up, down or unrated, got {rating!r}",
                                    param="rating")
        if since is not None:
            where.append("t.created_at >= ?")
            args.append(_check_float(since, "since"))
        if until is not None:
            where.append("t.created_at < ?")
            args.append(_check_float(until, "until"))
        if session is not None:
            where.append("s.name = ?")
            args.append(session.name if isinstance(session, Session)
                        else _session_name(session))
        for bound, op, name in ((bpm_min, ">=", "bpm_min"), (bpm_max, "<=", "bpm_max")):
            if bound is not None:
                where.append(f"t.bpm {op} ?")
                args.append(_check_float(bound, name, lo=0.0))
        if key is not None:
            where.append("t.musical_key = ?")
            args.append(short_key(key))
        if not include_deleted:
            where.append("t.deleted_at IS NULL")
        if cursor is not None:
            where.append("(t.created_at, t.seq) < (?, ?)")
            args.extend(_parse_cursor(cursor))
        sql = _SELECT_TAKES
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.created_at DESC, t.seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
            takes = [self._row_to_take(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = f"{last[13]!r}:{last[0]}"
        return takes, next_cursor

    # --- what the user says about a take ----------------------------------------------------

    def rate(self, take_id: str, value: RatingValue, note: str | None = None) -> Take:
        """Rate a take "up" or "down", or remove the rating with "none"; return the take.

        ``note`` None keeps the current note, "" removes it, any other text replaces it
        (stripped; at most 2000 characters). A note can stay on an unrated take. Raises
        TakeNotFound, and InvalidParams naming ``value`` or ``note``.
        """
        if not isinstance(value, str) or value not in _RATING_TO_INT:
            raise InvalidParams(f"value must be up, down or none, got {value!r}", param="value")
        number = _RATING_TO_INT[value]
        if note is not None:
            if not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH:
                raise InvalidParams(f"note must be a string of at most {MAX_NOTE_LENGTH} "
                                    "characters", param="note")
            note = note.strip()
        with self._write() as conn:
            self._fetch(conn, take_id)
            row = conn.execute("SELECT note FROM ratings WHERE take_id = ?",
                               (take_id,)).fetchone()
            new_note = (row[0] if row is not None else None) if note is None else (note or None)
            if number is None and new_note is None:
                conn.execute("DELETE FROM ratings WHERE take_id = ?", (take_id,))
            else:
                conn.execute(
                    "INSERT INTO ratings (take_id, value, note, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (take_id) DO UPDATE SET value = excluded.value, "
                    "note = excluded.note, updated_at = excluded.updated_at",
                    (take_id, number, new_note, self._clock()),
                )
            return self._fetch(conn, take_id)

    def tag(self, take_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> Take:
        """Add and remove tags on a take; return the take.

        Tags are normalised (:func:`normalise_tag`); adding a present tag or removing an
        absent one is harmless. A tag both added and removed, or more than 64 tags on one
        take, raise InvalidParams naming ``tag``; an unknown take raises TakeNotFound.
        """
        adding = _tags(add, "add")
        removing = _tags(remove, "remove")
        if both := adding & removing:
            raise InvalidParams(f"tags both added and removed: {', '.join(sorted(both))}",
                                param="tag")
        with self._write() as conn:
            self._fetch(conn, take_id)
            conn.executemany("DELETE FROM tags WHERE take_id = ? AND tag = ?",
                             [(take_id, t) for t in sorted(removing)])
            conn.executemany("INSERT OR IGNORE INTO tags (take_id, tag) VALUES (?, ?)",
                             [(take_id, t) for t in sorted(adding)])
            count = conn.execute("SELECT count(*) FROM tags WHERE take_id = ?",
                                 (take_id,)).fetchone()[0]
            if count > MAX_TAGS_PER_TAKE:
                raise InvalidParams(f"a take can have at most {MAX_TAGS_PER_TAKE} tags",
                                    param="tag")
            return self._fetch(conn, take_id)

    # --- removal ----------------------------------------------------------------------------

    def mark_deleted(self, take_id: str) -> Take:
        """Record that the take's file (and its stems') was deleted; return the take.
        Idempotent: the first deletion time is kept. The row, rating and tags stay, so
        history stays consistent.
        """
        with self._write() as conn:
            self._fetch(conn, take_id)
            now = self._clock()
            conn.execute("UPDATE takes SET deleted_at = coalesce(deleted_at, ?) WHERE id = ?",
                         (now, take_id))
            conn.execute("UPDATE stems SET deleted_at = coalesce(deleted_at, ?) "
                         "WHERE take_id = ?", (now, take_id))
            return self._fetch(conn, take_id)

    # --- stems ------------------------------------------------------------------------------

    def record_stems(self, take_id: str, *, job_id: str, model: str,
                     stems: Iterable[tuple[str, str, str]]) -> Take:
        """Record the stems one separation (job ``job_id``) wrote from a take, each
        ``(stem, absolute path, format)``; return the take. Recording the same job's stems
        again keeps the first record (a daemon that crashed in between can record again).
        """
        _check_str(job_id, "job_id", 200)
        _check_str(model, "model", 4096)
        rows = []
        for stem, path, fmt in stems:
            _check_str(stem, "stem", 64)
            if not Path(_check_str(path, "path", 4096)).is_absolute():
                raise InvalidParams(f"path must be absolute, got {path!r}", param="path")
            rows.append((take_id, job_id, stem, path, _check_str(fmt, "format", 16)))
        with self._write() as conn:
            self._fetch(conn, take_id)
            now = self._clock()
            conn.executemany(
                "INSERT INTO stems (take_id, job_id, stem, path, format, model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, stem) DO NOTHING",
                [(*row, model, now) for row in rows])
            return self._fetch(conn, take_id)

    def forget(self, take_id: str) -> None:
        """Remove a take from the history with its rating and tags (the file is untouched).

        Its prompt goes too when no other take uses it; its session stays. Raises
        TakeNotFound.
        """
        with self._write() as conn:
            self._fetch(conn, take_id)
            prompt_id = conn.execute("SELECT prompt_id FROM takes WHERE id = ?",
                                     (take_id,)).fetchone()[0]
            conn.execute("DELETE FROM takes WHERE id = ?", (take_id,))
            conn.execute(
                "DELETE FROM prompts WHERE id = ? "
                "AND NOT EXISTS (SELECT 1 FROM takes WHERE prompt_id = ?)",
                (prompt_id, prompt_id),
            )
