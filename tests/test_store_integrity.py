"""The database is only ever Timbre's: refused files are left as they came, damage is exit 6,
and simultaneous starts never race on a migration.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from tests.test_lifecycle import Daemon as Spawned
from tests.test_lifecycle import spawn  # noqa: F401  (the fixture)
from timbred.daemon.app import serve
from timbred.daemon.runtime import acquire_lock, ensure_private_dir
from timbred.errors import AlreadyRunning, StoreError
from timbred.queue.jobs import MIGRATIONS, JobStore, migrate
from timbred.testing import daemon as testing_daemon


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


class TestForeignFiles:
    def test_a_foreign_rollback_journal_file_is_not_switched_to_wal(self, db_path: Path) -> None:
        """Another application's file is refused before anything changes: its journal mode,
        its bytes and its size stay as they were."""
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("PRAGMA journal_mode = DELETE")
            raw.execute("CREATE TABLE songs (title TEXT)")
            raw.execute("INSERT INTO songs VALUES ('x')")
            raw.commit()
        before = db_path.read_bytes()
        with pytest.raises(StoreError, match="not a Timbre job database"):
            JobStore(db_path)
        assert db_path.read_bytes() == before
        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    def test_an_empty_foreign_file_with_a_version_is_not_called_newer(self,
                                                                      db_path: Path) -> None:
        """user_version 7 without Timbre's application_id is someone else's file, not one
        "written by a newer timbred"."""
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("PRAGMA user_version = 7")
        with pytest.raises(StoreError) as info:
            JobStore(db_path)
        assert "not a Timbre job database" in str(info.value)
        assert "newer" not in str(info.value)

    def test_a_newer_timbre_file_is_still_called_newer(self, db_path: Path) -> None:
        """The check that replaced it keeps the real case: our id, a higher version."""
        JobStore(db_path).close()
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("PRAGMA user_version = 99")
        with pytest.raises(StoreError, match="newer timbred"):
            JobStore(db_path)


class TestDamage:
    def test_random_bytes_over_every_page_are_a_store_error(self, db_path: Path) -> None:
        """Random bytes over each page's second half (seed 1 makes SQLite report a schema
        name that is not UTF-8, which sqlite3 raised as UnicodeDecodeError): StoreError."""
        JobStore(db_path).close()
        data = bytearray(db_path.read_bytes())
        rng = random.Random(1)
        for page in range(0, len(data), 4096):
            half = page + 2048
            data[half:page + 4096] = rng.randbytes(page + 4096 - half)
        db_path.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="corrupt"):
            JobStore(db_path)

    @pytest.mark.anyio
    async def test_a_queued_row_that_is_not_json_is_the_store_error_itself(
            self, short_tmp: Path) -> None:
        """serve() raises the StoreError itself, not an ExceptionGroup around it (which
        ``timbred`` reported as exit 1 with a traceback)."""
        settings = testing_daemon.test_settings(short_tmp)
        db = Path(settings["data.database"])
        db.parent.mkdir(parents=True)
        with JobStore(db) as store:
            job = store.submit("musicgen-small", {"prompt": "x"})
        with closing(sqlite3.connect(db)) as raw, raw:
            raw.execute("UPDATE jobs SET params = '{not json' WHERE id = ?", (job.id,))
        with pytest.raises(StoreError, match=job.id):
            await serve(settings)

    def test_timbred_exits_6_on_a_damaged_row(self, short_tmp: Path,
                                              spawn: type[Spawned]) -> None:  # noqa: F811
        """The same through the binary: exit 6 and one line naming the file, no traceback."""
        db = short_tmp / "jobs.sqlite3"
        with JobStore(db) as store:
            job = store.submit("musicgen-small", {"prompt": "x"})
        with closing(sqlite3.connect(db)) as raw, raw:
            raw.execute("UPDATE jobs SET params = '{not json' WHERE id = ?", (job.id,))
        d = spawn(short_tmp)
        assert d.wait() == 6, d.stderr
        assert str(db) in d.stderr and "Traceback" not in d.stderr


class TestSimultaneousStarts:
    @pytest.mark.anyio
    async def test_the_lock_is_taken_before_the_database_is_opened(self,
                                                                   short_tmp: Path) -> None:
        """A second daemon fails with AlreadyRunning (exit 3) without creating, opening or
        migrating the database: only the lock holder may touch it."""
        settings = testing_daemon.test_settings(short_tmp)
        socket_path = Path(settings["daemon.socket"])
        ensure_private_dir(socket_path.parent)
        lock = acquire_lock(socket_path)
        try:
            with pytest.raises(AlreadyRunning):
                await serve(settings)
        finally:
            lock.release()
        assert not await anyio.Path(settings["data.database"]).exists()

    def test_migrate_rereads_the_version_inside_its_transaction(self, db_path: Path) -> None:
        """Two migrations of one fresh file: the one that waited for the write lock sees the
        other's work (it read version 0 before, and then failed "table jobs already
        exists")."""
        first = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        second = sqlite3.connect(db_path, isolation_level=None, timeout=30,
                                 check_same_thread=False)
        with closing(first), closing(second):
            first.execute("BEGIN IMMEDIATE")
            outcome: list[object] = []

            def run() -> None:
                try:
                    outcome.append(migrate(second, str(db_path)))
                except StoreError as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(0.5)  # let it read the version and block on BEGIN IMMEDIATE
            for statement in MIGRATIONS[0]:
                first.execute(statement)
            first.execute("PRAGMA user_version = 1")
            first.execute("COMMIT")
            thread.join(30)
        assert outcome == [(0, len(MIGRATIONS))]
