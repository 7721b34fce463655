"""Tests for timbred.takes.library: the history of takes, on real SQLite files shared with
JobStore."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import timbred.takes.library as library_module
from timbred.errors import InvalidParams, StoreError, TakeNotFound
from timbred.queue.jobs import SCHEMA_VERSION as JOBS_SCHEMA_VERSION
from timbred.queue.jobs import JobStore
from timbred.takes.library import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Library,
    Migration,
    Take,
    migrate,
    normalise_tag,
)

T0 = 1_700_000_000.0  # 2023-11-14, a fixed "now" for the clock


class Clock:
    """A settable clock for the library."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "timbre.sqlite3"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lib(db_path: Path, clock: Clock) -> Iterator[Library]:
    with Library(db_path, clock=clock) as library:
        yield library


def record(lib: Library, **overrides: Any) -> Take:
    """Record a take with plausible defaults; overrides win."""
    index = overrides.pop("take_index", 1)
    job_id = overrides.pop("job_id", "j-000000001")
    args: dict[str, Any] = {
        "job_id": job_id,
        "session": None,
        "prompt": "lofi hip hop, rainy night piano",
        "take_index": index,
        "path": f"/music/Timbre/{job_id}-{index}.wav",
        "format": "wav",
        "sample_rate": 32000,
        "channels": 1,
        "duration_s": 10.0,
        "loudness_before": -19.5,
        "loudness_after": -14.0,
        "recipe": {"model": "musicgen-small", "seed": 7},
    }
    args.update(overrides)
    return lib.record_take(**args)


def many(lib: Library, n: int, **overrides: Any) -> list[Take]:
    """Record ``n`` takes of distinct jobs."""
    return [record(lib, job_id=f"j-{i:09d}", **overrides) for i in range(n)]


def ids(takes: list[Take]) -> list[str]:
    return [t.id for t in takes]


# --- recording and reading ----------------------------------------------------------------------


class TestRecording:
    def test_a_take_round_trips(self, lib: Library, db_path: Path) -> None:
        """Every recorded field reads back, by id, by path and from a second connection."""
        take = record(lib, session="demo", created_at=T0 - 5)
        assert take.id.startswith("t-") and len(take.id) == 11
        assert (take.job_id, take.session, take.prompt, take.take_index) == (
            "j-000000001", "demo", "lofi hip hop, rainy night piano", 1)
        assert (take.format, take.sample_rate, take.channels, take.duration_s) == (
            "wav", 32000, 1, 10.0)
        assert (take.loudness_before_lufs, take.loudness_after_lufs) == (-19.5, -14.0)
        assert take.created_at == T0 - 5
        assert take.recipe == {"model": "musicgen-small", "seed": 7}
        assert (take.rating, take.note, take.tags, take.deleted) == (None, None, (), False)
        assert lib.get(take.id) == take
        assert lib.get(Path(take.path)) == take
        with Library(db_path) as other:
            assert other.get(take.id) == take

    def test_to_dict_is_plain_json(self, lib: Library) -> None:
        """to_dict carries the rating, note, tags, session name and prompt as JSON types."""
        take = record(lib, session="demo")
        lib.rate(take.id, "up", "nice bass")
        take = lib.tag(take.id, add=["Chill", "piano"])
        d = take.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d["rating"] == "up" and d["note"] == "nice bass"
        assert d["tags"] == ["chill", "piano"]
        assert d["session"] == "demo" and d["prompt"] == "lofi hip hop, rainy night piano"
        d["recipe"]["seed"] = 99
        assert take.recipe["seed"] == 7

    def test_prompts_are_stored_once_per_session(self, lib: Library, db_path: Path) -> None:
        """Takes of the same prompt in one session share a prompt row; another session not."""
        record(lib, job_id="j-a", session="one")
        record(lib, job_id="j-b", session="one")
        record(lib, job_id="j-c", session="two")
        record(lib, job_id="j-d", session="two", prompt="techno")
        with closing(sqlite3.connect(db_path)) as raw:
            rows = raw.execute("SELECT s.name, p.text FROM prompts p JOIN sessions s "
                               "ON s.id = p.session_id ORDER BY p.id").fetchall()
        assert rows == [("one", "lofi hip hop, rainy night piano"),
                        ("two", "lofi hip hop, rainy night piano"), ("two", "techno")]

    def test_sessions_get_or_create_and_default_to_the_day(
        self, lib: Library, clock: Clock
    ) -> None:
        """session(name) is get-or-create; None names the session by the local date."""
        first = lib.session("  album  ")
        assert first.name == "album"
        assert lib.session("album") == first
        day = lib.session(None)
        assert day.name == dt.datetime.fromtimestamp(T0).strftime("%Y-%m-%d")
        take = record(lib)
        assert take.session == day.name
        clock.now = T0 + 86_400
        tomorrow = record(lib, job_id="j-next")
        assert tomorrow.session == dt.datetime.fromtimestamp(T0 + 86_400).strftime("%Y-%m-%d")
        names = [s.name for s in lib.sessions()]
        assert names == [tomorrow.session, day.name, "album"]
        assert record(lib, job_id="j-x", session=first).session == "album"

    def test_recording_again_is_idempotent(self, lib: Library) -> None:
        """The same job and take index with the same path returns the existing take."""
        take = record(lib)
        assert record(lib) == take
        with pytest.raises(InvalidParams) as info:
            record(lib, path="/elsewhere/x.wav")
        assert info.value.data["param"] == "take_index"

    def test_takes_for_job_in_take_order(self, lib: Library) -> None:
        """takes_for_job lists a job's takes by index, deleted ones included."""
        third = record(lib, take_index=3)
        first = record(lib, take_index=1)
        second = record(lib, take_index=2)
        lib.mark_deleted(second.id)
        assert ids(lib.takes_for_job("j-000000001")) == [first.id, second.id, third.id]
        assert lib.takes_for_job("j-none") == []

    def test_ids_sort_by_recording_even_when_the_clock_steps_back(
        self, db_path: Path, clock: Clock
    ) -> None:
        """Take ids are strictly increasing across connections despite a clock step back."""
        got = []
        for i, now in enumerate([T0, T0, T0 - 1000, T0 + 0.001]):
            clock.now = now
            with Library(db_path, clock=clock) as lib:
                got.append(record(lib, job_id=f"j-{i}").id)
        assert got == sorted(got) and len(set(got)) == 4

    def test_unknown_takes(self, lib: Library) -> None:
        """Unknown ids and paths raise TakeNotFound naming what was asked for."""
        with pytest.raises(TakeNotFound, match="t-nothing"):
            lib.get("t-nothing")
        with pytest.raises(TakeNotFound):
            lib.get(Path("/no/such.wav"))
        for call in (lambda: lib.rate("t-x", "up"), lambda: lib.tag("t-x", add=["a"]),
                     lambda: lib.mark_deleted("t-x"), lambda: lib.forget("t-x")):
            with pytest.raises(TakeNotFound):
                call()

    def test_get_by_path_prefers_the_live_take(self, lib: Library) -> None:
        """When a path was reused after a deletion, get(path) returns the live take."""
        old = record(lib, job_id="j-old", path="/music/same.wav")
        lib.mark_deleted(old.id)
        new = record(lib, job_id="j-new", path="/music/same.wav")
        assert lib.get("/music/same.wav").id == new.id
        lib.mark_deleted(new.id)
        assert lib.get("/music/same.wav").id == new.id

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("job_id", ""),
            ("session", "   "),
            ("prompt", ""),
            ("prompt", "x" * 4001),
            ("take_index", -1),
            ("take_index", True),
            ("path", "relative.wav"),
            ("format", "WAV"),
            ("format", "w/v"),
            ("sample_rate", 0),
            ("channels", 65),
            ("duration_s", float("nan")),
            ("duration_s", -1.0),
            ("loudness_before", float("inf")),
            ("loudness_after", "loud"),
            ("recipe", {"x": float("nan")}),
            ("recipe", ["not", "an", "object"]),
            ("created_at", float("nan")),
        ],
    )
    def test_bad_arguments_are_refused(self, lib: Library, field: str, value: Any) -> None:
        """Malformed arguments raise InvalidParams naming the parameter; nothing is written."""
        with pytest.raises(InvalidParams) as info:
            record(lib, **{field: value})
        assert info.value.data["param"] == field
        assert lib.search()[0] == []


# --- ratings and tags ---------------------------------------------------------------------------


class TestRatingsAndTags:
    def test_rate_and_unrate_keep_notes_as_asked(self, lib: Library) -> None:
        """up/down set the verdict; none removes it; note None keeps, "" clears, text sets."""
        take = record(lib)
        assert lib.rate(take.id, "up", "  great drums ").rating == "up"
        assert lib.get(take.id).note == "great drums"
        rated = lib.rate(take.id, "down")
        assert (rated.rating, rated.note) == ("down", "great drums")
        unrated = lib.rate(take.id, "none")
        assert (unrated.rating, unrated.note) == (None, "great drums")
        cleared = lib.rate(take.id, "none", "")
        assert (cleared.rating, cleared.note) == (None, None)

    def test_bad_ratings_are_refused(self, lib: Library) -> None:
        """Unknown verdicts and over-long notes raise InvalidParams naming the parameter."""
        take = record(lib)
        with pytest.raises(InvalidParams) as info:
            lib.rate(take.id, "meh")  # type: ignore[arg-type]
        assert info.value.data["param"] == "value"
        with pytest.raises(InvalidParams) as info:
            lib.rate(take.id, "up", "x" * 2001)
        assert info.value.data["param"] == "note"

    def test_tags_are_normalised_added_and_removed(self, lib: Library) -> None:
        """Tags are stripped, case-folded and deduplicated; removing is by normal form."""
        take = record(lib)
        tagged = lib.tag(take.id, add=["  Lo  Fi ", "PIANO", "piano"])
        assert tagged.tags == ("lo fi", "piano")
        assert lib.tag(take.id, remove=["Piano", "absent"]).tags == ("lo fi",)
        assert normalise_tag("Ärger") == "ärger"

    @pytest.mark.parametrize("bad", ["", "   ", "a,b", "x" * 41, "tab\x07bell", 3])
    def test_bad_tags_name_the_tag_param(self, lib: Library, bad: Any) -> None:
        """Empty, long, comma'd, control-char and non-string tags raise InvalidParams(tag)."""
        take = record(lib)
        with pytest.raises(InvalidParams) as info:
            lib.tag(take.id, add=[bad])
        assert info.value.data["param"] == "tag"
        assert lib.get(take.id).tags == ()

    def test_tag_lists_are_checked(self, lib: Library) -> None:
        """A bare string, a tag both added and removed, and too many tags are refused."""
        take = record(lib)
        for kwargs in ({"add": "lofi"}, {"add": ["a"], "remove": ["A"]},
                       {"add": [f"t{i}" for i in range(65)]}):
            with pytest.raises(InvalidParams) as info:
                lib.tag(take.id, **kwargs)
            assert info.value.data["param"] == "tag"
        assert lib.get(take.id).tags == ()


# --- deletion -----------------------------------------------------------------------------------


class TestDeletion:
    def test_mark_deleted_keeps_the_history(self, lib: Library, clock: Clock) -> None:
        """A deleted take keeps its row, rating and tags; search hides it unless asked."""
        take = record(lib)
        lib.rate(take.id, "up")
        lib.tag(take.id, add=["keeper"])
        clock.now = T0 + 60
        gone = lib.mark_deleted(take.id)
        assert gone.deleted_at == T0 + 60 and gone.rating == "up" and gone.tags == ("keeper",)
        clock.now = T0 + 120
        assert lib.mark_deleted(take.id).deleted_at == T0 + 60
        assert lib.search()[0] == []
        assert ids(lib.search(include_deleted=True)[0]) == [take.id]

    def test_forget_removes_the_take_and_its_orphans(self, lib: Library, db_path: Path) -> None:
        """forget drops the row, its rating and tags, and its prompt once unused."""
        a = record(lib, job_id="j-a", prompt="solo cello")
        b = record(lib, job_id="j-b", prompt="solo cello")
        lib.rate(a.id, "down", "harsh")
        lib.tag(a.id, add=["cello"])
        lib.forget(a.id)
        with pytest.raises(TakeNotFound):
            lib.get(a.id)
        assert ids(lib.search(text="cello")[0]) == [b.id]
        lib.forget(b.id)
        assert lib.search(text="cello")[0] == []
        with closing(sqlite3.connect(db_path)) as raw:
            for table in ("takes", "ratings", "tags", "prompts"):
                assert raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
            assert raw.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


# --- search -------------------------------------------------------------------------------------


class TestSearch:
    def test_paging_through_120_takes_returns_each_once(
        self, lib: Library, clock: Clock
    ) -> None:
        """Cursor paging yields every take exactly once, newest first, despite new records."""
        recorded = []
        for i in range(120):
            # Ties on created_at (every third take) must be broken by recording order.
            clock.now = T0 + i // 3
            recorded.append(record(lib, job_id=f"j-{i:09d}").id)
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = lib.search(limit=25, cursor=cursor)
            seen.extend(ids(page))
            pages += 1
            # A take recorded while paging is newer than the cursor: it never shifts a page.
            record(lib, job_id=f"j-late-{pages}", created_at=T0 + 10_000)
            if cursor is None:
                break
        assert pages == 5
        assert seen == list(reversed(recorded))

    def test_text_search(self, lib: Library) -> None:
        """Text matches word prefixes in any case and accent; every word must match."""
        cafe = record(lib, job_id="j-1", prompt="Lo-fi hip hop in a rainy Café, 80 bpm")
        techno = record(lib, job_id="j-2", prompt="Driving techno, 130 bpm, hypnotic")
        record(lib, job_id="j-3", prompt="String quartet, pizzicato")

        def found(text: str) -> list[str]:
            return ids(lib.search(text=text)[0])

        assert found("cafe") == [cafe.id]
        assert found("HIP HOP") == [cafe.id]
        assert found("bpm") == [techno.id, cafe.id]
        assert found("bpm hypno") == [techno.id]
        assert found("lo-fi") == [cafe.id]
        assert found("jazz") == []
        assert len(found("   ")) == 3  # blank text is no filter
        # FTS5 query syntax in user text is taken literally, never parsed.
        for hostile in ['"', "NEAR(techno", "techno*", "bpm OR jazz", "-techno", "a:b"]:
            lib.search(text=hostile)

    def test_tag_rating_date_and_session_filters(self, lib: Library) -> None:
        """Each filter narrows the results; filters combine with AND."""
        a = record(lib, job_id="j-a", session="s1", created_at=T0)
        b = record(lib, job_id="j-b", session="s1", created_at=T0 + 100)
        c = record(lib, job_id="j-c", session="s2", created_at=T0 + 200)
        d = record(lib, job_id="j-d", session="s2", created_at=T0 + 300)
        lib.tag(a.id, add=["keeper"])
        lib.tag(c.id, add=["Keeper", "drums"])
        lib.rate(a.id, "up")
        lib.rate(b.id, "down")
        lib.rate(c.id, "none", "a note, no verdict")

        def found(**kw: Any) -> list[str]:
            return ids(lib.search(**kw)[0])

        assert found(tag=" KEEPER ") == [c.id, a.id]
        assert found(tag="nothing") == []
        assert found(rating="up") == [a.id]
        assert found(rating="down") == [b.id]
        assert found(rating="unrated") == [d.id, c.id]
        assert found(since=T0 + 100) == [d.id, c.id, b.id]
        assert found(until=T0 + 100) == [a.id]
        assert found(since=T0 + 100, until=T0 + 300) == [c.id, b.id]
        assert found(session="s1") == [b.id, a.id]
        assert found(session=lib.session("s2")) == [d.id, c.id]
        assert found(session="nobody") == []
        assert found(session="s2", tag="keeper", rating="unrated", text="piano") == [c.id]

    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"cursor": "garbage"}, "cursor"),
            ({"cursor": "nan:3"}, "cursor"),
            ({"rating": "meh"}, "rating"),
            ({"since": float("nan")}, "since"),
            ({"until": "tomorrow"}, "until"),
            ({"tag": "a,b"}, "tag"),
            ({"text": 3}, "text"),
        ],
    )
    def test_bad_search_arguments(self, lib: Library, kwargs: dict[str, Any],
                                  param: str) -> None:
        """Malformed search arguments raise InvalidParams naming the parameter."""
        with pytest.raises(InvalidParams) as info:
            lib.search(**kwargs)
        assert info.value.data["param"] == param

    def test_search_without_fts5_falls_back(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a SQLite without FTS5 no index is made and text search still works by words."""
        monkeypatch.setattr(library_module, "_fts5_available", lambda conn: False)
        with Library(db_path) as lib:
            cafe = record(lib, job_id="j-1", prompt="Lo-fi hip hop in a rainy Café")
            record(lib, job_id="j-2", prompt="Driving techno")
            assert ids(lib.search(text="CAFÉ hip")[0]) == [cafe.id]
            assert lib.search(text="jazz")[0] == []
        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("SELECT count(*) FROM sqlite_master "
                               "WHERE name = 'prompts_fts'").fetchone()[0] == 0


# --- schema and the shared file -----------------------------------------------------------------

# Library schema version 1, frozen as released: never edit (see MIGRATIONS).
V1_SCHEMA = """
CREATE TABLE library_schema (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO library_schema (id, version) VALUES (1, 1);
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at REAL    NOT NULL
);
CREATE TABLE prompts (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions (id),
    text       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    UNIQUE (session_id, text)
);
CREATE TABLE takes (
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
    recipe               TEXT    NOT NULL DEFAULT '{}',
    deleted_at           REAL,
    UNIQUE (job_id, take_index)
);
CREATE INDEX takes_by_path ON takes (path);
CREATE INDEX takes_by_prompt ON takes (prompt_id);
CREATE TABLE ratings (
    take_id    TEXT PRIMARY KEY REFERENCES takes (id) ON DELETE CASCADE,
    value      INTEGER CHECK (value IN (-1, 1)),
    note       TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE tags (
    take_id TEXT NOT NULL REFERENCES takes (id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (take_id, tag)
) WITHOUT ROWID;
CREATE INDEX tags_by_tag ON tags (tag, take_id);

INSERT INTO sessions (id, name, created_at) VALUES (1, 'old days', 1600000000.0);
INSERT INTO prompts (id, session_id, text, created_at)
    VALUES (1, 1, 'Ambient drone with distant choir', 1600000000.0);
INSERT INTO takes (id, job_id, prompt_id, session_id, take_index, path, format, sample_rate,
                   channels, duration_s, loudness_before_lufs, loudness_after_lufs, created_at,
                   recipe)
    VALUES ('t-1fc000000', 'j-1fc000000', 1, 1, 1, '/music/old-1.wav', 'wav', 32000, 1, 30.0,
            -22.0, -16.0, 1600000000.0, '{"seed": 1}');
INSERT INTO ratings (take_id, value, note, updated_at)
    VALUES ('t-1fc000000', 1, 'the first one', 1600000001.0);
INSERT INTO tags (take_id, tag) VALUES ('t-1fc000000', 'drone');
"""


def make_v1(path: Path) -> None:
    """A database as a timbred with library schema version 1 left it (jobs included)."""
    JobStore(path).close()
    with closing(sqlite3.connect(path)) as raw, raw:
        raw.executescript(V1_SCHEMA)


def library_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as raw:
        return int(raw.execute("SELECT version FROM library_schema").fetchone()[0])


class TestSchema:
    def test_a_version_1_database_is_migrated_intact(self, db_path: Path) -> None:
        """A v1 history opens with its rows intact, searchable, with v2's indexes and v3's
        tempo and key columns (empty for its old takes, filled for new ones)."""
        make_v1(db_path)
        with Library(db_path) as lib:
            old = lib.get("t-1fc000000")
            assert (old.session, old.prompt, old.rating, old.note, old.tags, old.recipe) == (
                "old days", "Ambient drone with distant choir", "up", "the first one",
                ("drone",), {"seed": 1})
            # v2's full-text index was backfilled from the v1 prompts.
            assert ids(lib.search(text="choir")[0]) == [old.id]
            new = record(lib, session="old days", prompt="Ambient drone with distant choir")
            assert new.id > old.id
            assert ids(lib.search(text="distant")[0]) == [new.id, old.id]
            assert (old.bpm, old.key) == (None, None)
            tuned = record(lib, job_id="j-000000002", prompt="tuned", bpm=121.5, key="Am")
            assert ids(lib.search(bpm_min=120, bpm_max=122, key="A minor")[0]) == [tuned.id]
            assert ids(lib.search(bpm_min=122)[0]) == []
            assert ids(lib.search(key="C")[0]) == []
        assert library_version(db_path) == SCHEMA_VERSION == 4
        # v4's stems of a take recorded, listed with it, and deleted with it.
        with Library(db_path) as lib:
            with_stems = lib.record_stems(old.id, job_id="j-000000003", model="htdemucs",
                                          stems=[("drums", "/x/old-drums.wav", "wav")])
            assert [(s["stem"], s["path"]) for s in with_stems.stems] == [
                ("drums", "/x/old-drums.wav")]
            assert lib.mark_deleted(old.id).stems[0]["deleted_at"] is not None
        with closing(sqlite3.connect(db_path)) as raw:
            names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        assert {"prompts_fts", "takes_by_time", "takes_by_session"} <= names

    def test_a_failing_migration_leaves_the_last_good_version(self, db_path: Path) -> None:
        """A migration failing half-way is rolled back whole and named in the error."""
        Library(db_path).close()
        broken = (*MIGRATIONS, Migration(("ALTER TABLE takes ADD COLUMN mood TEXT",
                                          "SELECT nonsense")))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
            with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} failed"):
                migrate(raw, str(db_path), broken)
            columns = [row[1] for row in raw.execute("PRAGMA table_info(takes)")]
        assert "mood" not in columns
        assert library_version(db_path) == SCHEMA_VERSION

    def test_pending_migrations_apply_in_order(self, db_path: Path) -> None:
        """migrate() runs only the missing steps, each with its version bump."""
        make_v1(db_path)
        later = (*MIGRATIONS, Migration(("ALTER TABLE takes ADD COLUMN mood TEXT",)))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
            assert migrate(raw, str(db_path), later) == (1, SCHEMA_VERSION + 1)
            assert migrate(raw, str(db_path), later) == (SCHEMA_VERSION + 1,) * 2
        assert library_version(db_path) == SCHEMA_VERSION + 1

    def test_a_newer_schema_is_refused(self, db_path: Path) -> None:
        """A history from a newer timbred is left alone; the error names the file."""
        Library(db_path).close()
        with closing(sqlite3.connect(db_path)) as raw, raw:
            raw.execute("UPDATE library_schema SET version = 99")
        with pytest.raises(StoreError) as info:
            Library(db_path)
        assert str(db_path) in str(info.value) and "99" in str(info.value)
        assert "newer" in str(info.value)

    def test_another_applications_database_is_refused(self, db_path: Path) -> None:
        """A SQLite file of some other program is not touched."""
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("CREATE TABLE songs (title TEXT)")
        with pytest.raises(StoreError, match="not a Timbre") as info:
            Library(db_path)
        assert str(db_path) in str(info.value)
        with closing(sqlite3.connect(db_path)) as raw:
            names = [r[0] for r in raw.execute("SELECT name FROM sqlite_master")]
        assert names == ["songs"]

    def test_connection_settings(self, lib: Library, db_path: Path) -> None:
        """WAL, synchronous FULL and foreign keys, as JobStore."""
        assert lib._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert lib._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class TestSharedFile:
    def pragmas(self, path: Path) -> tuple[int, int]:
        with closing(sqlite3.connect(path)) as raw:
            return (raw.execute("PRAGMA user_version").fetchone()[0],
                    raw.execute("PRAGMA application_id").fetchone()[0])

    def test_job_store_first_then_library(self, db_path: Path) -> None:
        """The library adds its tables to a job database without touching its pragmas."""
        with JobStore(db_path) as store:
            job = store.submit("m", {"prompt": "x"})
        before = self.pragmas(db_path)
        with Library(db_path) as lib:
            take = record(lib, job_id=job.id)
        assert self.pragmas(db_path) == before
        with JobStore(db_path) as store, Library(db_path) as lib:
            assert store.get(job.id) == job
            assert lib.get(take.id) == take

    def test_library_first_then_job_store(self, db_path: Path) -> None:
        """On a new file the library comes first and JobStore still accepts the file."""
        with Library(db_path) as lib:
            take = record(lib)
        assert self.pragmas(db_path)[0] == JOBS_SCHEMA_VERSION
        with JobStore(db_path) as store:
            job = store.submit("m", {"prompt": "x"})
        with JobStore(db_path) as store, Library(db_path) as lib:
            assert store.get(job.id) == job
            assert lib.get(take.id) == take

    def test_both_open_at_once(self, db_path: Path) -> None:
        """A JobStore and a Library on the same file write alternately without locking out."""
        with Library(db_path) as lib, JobStore(db_path) as store:
            for i in range(10):
                job = store.submit("m", {"prompt": f"p{i}"})
                record(lib, job_id=job.id, prompt=f"p{i}")
            assert len(lib.search()[0]) == 10
            assert len(store.list(limit=50)[0]) == 10


class TestDamagedFiles:
    def test_a_garbage_file_names_the_file(self, db_path: Path) -> None:
        """A file that is not SQLite raises StoreError naming the path."""
        db_path.write_bytes(b"definitely not sqlite\n" * 300)
        with pytest.raises(StoreError) as info:
            Library(db_path)
        assert str(db_path) in str(info.value) and "corrupt" in str(info.value)
        assert info.value.data["path"] == str(db_path)

    def test_a_damaged_page_is_caught_at_open(self, db_path: Path) -> None:
        """A history with an overwritten page is reported at open, naming the file."""
        with Library(db_path) as lib:
            for i in range(60):
                record(lib, job_id=f"j-{i}", prompt=f"{i} " + "x" * 400)
        page_size = 4096
        assert db_path.stat().st_size > 10 * page_size
        with db_path.open("r+b") as f:
            f.seek(5 * page_size)
            f.write(b"\xa5" * page_size)
        with pytest.raises(StoreError) as info:
            Library(db_path)
        assert str(db_path) in str(info.value) and "corrupt" in str(info.value)


class TestThreads:
    def test_concurrent_use_from_threads(self, db_path: Path) -> None:
        """Threads recording, rating, tagging and searching on two libraries never clash."""
        libs = [Library(db_path), Library(db_path)]
        barrier = threading.Barrier(6)
        made: list[list[str]] = [[] for _ in range(6)]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait()
                lib = libs[n % 2]
                for i in range(15):
                    take = record(lib, job_id=f"j-{n}-{i}", session=f"s{n % 3}")
                    lib.rate(take.id, "up" if i % 2 else "down")
                    lib.tag(take.id, add=[f"t{n}"])
                    lib.search(text="piano", limit=5)
                    made[n].append(take.id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        all_ids = [i for m in made for i in m]
        assert len(set(all_ids)) == len(all_ids) == 90
        found, cursor = libs[0].search(limit=500)
        assert cursor is None and sorted(ids(found)) == sorted(all_ids)
        assert all(len(t.tags) == 1 and t.rating is not None for t in found)
        for lib in libs:
            lib.close()
