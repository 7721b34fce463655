"""Tests for timbred.queue.jobs: the durable job queue, on real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from timbred.errors import (
    GenerationFailed,
    InvalidJobState,
    InvalidParams,
    JobNotFound,
    QueueFull,
    StoreError,
)
from timbred.queue.jobs import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobState,
    JobStore,
    migrate,
    request_digest,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FAIL = GenerationFailed("out of memory")

# How to bring a fresh job into each state by legal moves only.
PATHS: dict[JobState, list[tuple[JobState, Any]]] = {
    JobState.QUEUED: [],
    JobState.LOADING: [(JobState.LOADING, None)],
    JobState.GENERATING: [(JobState.LOADING, None), (JobState.GENERATING, None)],
    JobState.ENCODING: [
        (JobState.LOADING, None), (JobState.GENERATING, None), (JobState.ENCODING, None)
    ],
    JobState.DONE: [
        (JobState.LOADING, None), (JobState.GENERATING, None), (JobState.ENCODING, None),
        (JobState.DONE, None),
    ],
    JobState.FAILED: [(JobState.LOADING, None), (JobState.FAILED, FAIL)],
    JobState.CANCELLED: [(JobState.CANCELLED, None)],
    JobState.INTERRUPTED: [(JobState.LOADING, None), (JobState.INTERRUPTED, FAIL)],
}


def job_in(store: JobStore, state: JobState, **params: Any) -> Job:
    job = store.submit("musicgen-small", {"prompt": "lofi", **params})
    for step, error in PATHS[state]:
        job = store.set_state(job.id, step, error=error)
    assert job.state is state
    return job


def run_child(code: str, *args: str, returncode: int = 0) -> str:
    """Run Python code in a fresh interpreter that can import timbred; return its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert child.returncode == returncode, child.stderr
    return child.stdout


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[JobStore]:
    with JobStore(db_path, max_queued=1000) as s:
        yield s


# --- durability ---------------------------------------------------------------------------------


class TestDurability:
    def test_submit_is_visible_to_a_second_store(self, store: JobStore, db_path: Path) -> None:
        """A submitted job is committed before submit returns: another connection sees it."""
        job = store.submit("musicgen-small", {"prompt": "rain on a tin roof", "duration": 8.0},
                           priority=3)
        with JobStore(db_path) as other:
            assert other.get(job.id) == job

    def test_submit_survives_the_process_dying(self, db_path: Path) -> None:
        """A job submitted by a process that exits without closing anything is on disk."""
        out = run_child(
            "import os, sys\n"
            "from timbred.queue.jobs import JobStore\n"
            "s = JobStore(sys.argv[1])\n"
            "j = s.submit('musicgen-small', {'prompt': 'durable', 'seed': 7})\n"
            "print(j.id, flush=True)\n"
            "os._exit(0)\n",
            str(db_path),
        )
        job_id = out.strip()
        with JobStore(db_path) as store:
            job = store.get(job_id)
        assert job.state is JobState.QUEUED
        assert job.params == {"prompt": "durable", "seed": 7}

    def test_connection_settings(self, store: JobStore, db_path: Path) -> None:
        """The file is in WAL mode; submit is FULL-synchronous even after a progress write."""
        job = job_in(store, JobState.GENERATING)
        store.set_progress(job.id, 3, 10)
        # set_progress drops to NORMAL for its own statement; it must put FULL back.
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --- ids and ordering ---------------------------------------------------------------------------


class TestOrdering:
    def test_priority_then_fifo(self, store: JobStore) -> None:
        """next_queued returns the highest priority first, oldest first within a priority."""
        submitted = {
            name: store.submit("m", {"prompt": name}, priority=prio)
            for name, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 0)]
        }
        by_id = {job.id: name for name, job in submitted.items()}
        order = []
        while (job := store.next_queued()) is not None:
            order.append(by_id[job.id])
            store.set_state(job.id, JobState.LOADING)
        assert order == ["b", "d", "a", "c", "f", "e"]

    def test_ids_are_short_sortable_and_survive_a_clock_step_back(self, db_path: Path) -> None:
        """Ids are 'j-' plus 9 chars and sort by submission, even when the clock goes back."""
        now = [1_700_000_000.0]
        ids = []
        for t in [1_700_000_000.0, 1_700_000_000.0, 1_600_000_000.0, 1_700_000_000.001]:
            now[0] = t
            # A fresh store each time: the order must come from the file, not from memory.
            with JobStore(db_path, clock=lambda: now[0]) as store:
                ids.append(store.submit("m", {}).id)
        assert all(i.startswith("j-") and len(i) == 11 for i in ids)
        assert ids == sorted(ids)
        assert len(set(ids)) == 4

    def test_next_queued_is_none_when_empty(self, store: JobStore) -> None:
        """With nothing queued (only finished or running jobs), next_queued is None."""
        job_in(store, JobState.DONE)
        job_in(store, JobState.GENERATING)
        assert store.next_queued() is None
        assert store.queue_depth() == 0

    def test_next_queued_batch_groups_by_model_and_key(self, store: JobStore) -> None:
        """A batch starts at the model's next job and takes later ones with the same key."""
        def sub(name: str, model: str, duration: int, priority: int = 0) -> str:
            return store.submit(model, {"prompt": name, "duration": duration},
                                priority=priority).id

        a = sub("a", "m1", 10)
        sub("b", "m2", 10)
        c = sub("c", "m1", 20)
        d = sub("d", "m1", 10)
        sub("e", "m1", 10)
        f = sub("f", "m1", 20, priority=3)

        def by_duration(job: Job) -> object:
            return job.params["duration"]

        def ids(jobs: list[Job]) -> list[str]:
            return [j.id for j in jobs]

        assert ids(store.next_queued_batch("m1", key=by_duration, limit=8)) == [f, c]
        assert ids(store.next_queued_batch("m1", limit=3)) == [f, a, c]
        assert store.next_queued_batch("m3", limit=4) == []
        store.cancel(f)
        store.cancel(c)
        assert ids(store.next_queued_batch("m1", key=by_duration, limit=2)) == [a, d]


# --- listing ------------------------------------------------------------------------------------


class TestListing:
    def test_paging_through_120_jobs_returns_each_once(self, store: JobStore) -> None:
        """Cursor paging yields every job exactly once, newest first, despite new submits."""
        ids = [store.submit("m", {"prompt": f"p{i}"}).id for i in range(120)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = store.list(limit=25, cursor=cursor)
            seen += [j.id for j in page]
            pages += 1
            if pages == 1:
                # Newer jobs must not shift later pages (no repeats, no gaps).
                for _ in range(5):
                    store.submit("m", {"prompt": "late"})
            if cursor is None:
                break
        assert pages == 5
        assert seen == ids[::-1]

    def test_filters(self, store: JobStore) -> None:
        """states, model and text (case-insensitive prompt substring) filter, and combine."""
        queued = store.submit("small", {"prompt": "Café jazz at NIGHT"})
        done = job_in(store, JobState.DONE, prompt="drum and bass")
        failed = job_in(store, JobState.FAILED, prompt="night drive synthwave")
        other = store.submit("large", {"prompt": "night choir"})
        no_prompt = store.submit("small", {"duration": 5})

        def ids(**kw: Any) -> set[str]:
            return {j.id for j in store.list(**kw)[0]}

        assert ids(states=["done", JobState.FAILED]) == {done.id, failed.id}
        assert ids(states="queued") == {queued.id, other.id, no_prompt.id}
        assert ids(model="large") == {other.id}
        assert ids(text="night") == {queued.id, failed.id, other.id}
        assert ids(text="CAFÉ") == {queued.id}
        assert ids(text="night", model="musicgen-small", states=["failed"]) == {failed.id}
        assert ids(states=[]) == set()

    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"cursor": "abc"}, "cursor"),
            ({"states": ["running"]}, "states"),
        ],
    )
    def test_bad_arguments_are_refused(
        self, store: JobStore, kwargs: dict[str, Any], param: str
    ) -> None:
        """Out-of-range limits, malformed cursors and unknown states raise InvalidParams."""
        with pytest.raises(InvalidParams) as info:
            store.list(**kwargs)
        assert info.value.data["param"] == param

    def test_to_dict_is_plain_json(self, store: JobStore) -> None:
        """to_dict round-trips through json and hands out copies, not the job's own dicts."""
        job = job_in(store, JobState.GENERATING, seed=3)
        store.set_progress(job.id, 2, 5)
        job = store.set_state(job.id, JobState.ENCODING)
        data = job.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert data["state"] == "encoding"
        assert data["progress"] == {"step": 2, "total": 5}
        data["params"]["seed"] = 99
        assert job.params["seed"] == 3


# --- the state machine --------------------------------------------------------------------------


class TestTransitions:
    def test_a_successful_job_records_times_outputs_and_recipe(self, store: JobStore) -> None:
        """loading stamps started_at; done stamps finished_at and stores outputs and recipe."""
        job = store.submit("m", {"prompt": "x"})
        assert job.started_at is None
        job = store.set_state(job.id, JobState.LOADING)
        assert job.started_at is not None and job.finished_at is None
        store.set_state(job.id, JobState.GENERATING, recipe={"seed": 1, "device": "cpu"})
        store.set_state(job.id, JobState.ENCODING)
        assert store.get(job.id).timings is None
        timings = {"load_s": 0.0, "decode_s": 1.25, "export_s": 0.5, "other_s": 0.01}
        done = store.set_state(job.id, JobState.DONE, outputs=["/takes/a.wav", "/takes/b.wav"],
                               timings=timings)
        assert done.finished_at is not None and done.finished_at >= job.started_at
        assert done.outputs == ("/takes/a.wav", "/takes/b.wav")
        assert done.recipe == {"seed": 1, "device": "cpu"}
        assert done.timings == timings and done.to_dict()["timings"] == timings
        assert done.terminal

    def test_timings_must_be_an_object(self, store: JobStore) -> None:
        job = job_in(store, JobState.ENCODING)
        with pytest.raises(InvalidParams) as info:
            store.set_state(job.id, JobState.DONE, timings=[1.0])  # type: ignore[arg-type]
        assert info.value.data["param"] == "timings"
        assert store.get(job.id) == job

    @pytest.mark.parametrize("start", list(JobState))
    def test_only_transitions_in_the_table_are_allowed(
        self, store: JobStore, start: JobState
    ) -> None:
        """Every move not in TRANSITIONS raises InvalidJobState and changes nothing."""
        for target in JobState:
            job = job_in(store, start)
            error = FAIL if target in {JobState.FAILED, JobState.INTERRUPTED} else None
            if target in TRANSITIONS[start]:
                assert store.set_state(job.id, target, error=error).state is target
            else:
                with pytest.raises(InvalidJobState) as info:
                    store.set_state(job.id, target, error=error)
                assert info.value.data["state"] == start.value
                assert store.get(job.id) == job

    def test_the_table_is_the_documented_one(self) -> None:
        """TRANSITIONS matches the lifecycle the RPC layer and clients are written against."""
        q, lo, g, e, d, f, c, i = (JobState.QUEUED, JobState.LOADING, JobState.GENERATING,
                                   JobState.ENCODING, JobState.DONE, JobState.FAILED,
                                   JobState.CANCELLED, JobState.INTERRUPTED)
        documented: dict[JobState, set[JobState]] = {
            q: {lo, c},
            # Back to queued only when the executor was lost mid-job (requeue()).
            lo: {g, f, c, i, q},
            g: {e, f, c, i, q},
            e: {d, f, c, i},
            d: set(), f: set(), c: set(), i: set(),
        }
        assert dict(TRANSITIONS) == documented

    def test_terminal_states_have_no_exits(self) -> None:
        """done, failed, cancelled and interrupted are exactly the states with no way out."""
        assert {s.value for s in TERMINAL_STATES} == {"done", "failed", "cancelled",
                                                      "interrupted"}

    def test_failure_needs_an_error_and_keeps_it(self, store: JobStore) -> None:
        """failed without an error is refused; with one, kind, message and data are stored."""
        job = job_in(store, JobState.GENERATING)
        with pytest.raises(InvalidParams):
            store.set_state(job.id, JobState.FAILED)
        with pytest.raises(InvalidParams):
            store.set_state(job.id, JobState.ENCODING, error=FAIL)
        failed = store.set_state(job.id, "failed", error=FAIL)
        assert failed.error == {
            "kind": "generation_failed",
            "message": "generation failed: out of memory",
            "data": {"kind": "generation_failed", "reason": "out of memory"},
        }

    def test_unknown_state_and_job(self, store: JobStore) -> None:
        """An unknown state name is InvalidParams; an unknown id is JobNotFound."""
        job = store.submit("m", {})
        with pytest.raises(InvalidParams):
            store.set_state(job.id, "running")
        with pytest.raises(JobNotFound):
            store.set_state("j-000000000", JobState.LOADING)
        with pytest.raises(JobNotFound):
            store.get("j-nope")

    def test_progress_only_for_running_jobs(self, store: JobStore) -> None:
        """set_progress stores (step, total) on running jobs and refuses others and nonsense."""
        job = job_in(store, JobState.GENERATING)
        store.set_progress(job.id, 4, 50)
        assert store.get(job.id).progress == (4, 50)
        with pytest.raises(InvalidParams):
            store.set_progress(job.id, 51, 50)
        with pytest.raises(InvalidJobState):
            store.set_progress(store.submit("m", {}).id, 1, 2)
        with pytest.raises(JobNotFound):
            store.set_progress("j-000000000", 1, 2)


class TestCancel:
    def test_cancel_queued_is_immediate(self, store: JobStore) -> None:
        """A queued job is cancelled at once and leaves the queue."""
        job = store.submit("m", {})
        cancelled = store.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.finished_at is not None
        assert store.next_queued() is None
        assert store.queue_depth() == 0

    def test_cancel_running_only_requests(self, store: JobStore) -> None:
        """A running job keeps running with cancel_requested set, until the worker stops it."""
        job = job_in(store, JobState.GENERATING)
        requested = store.cancel(job.id)
        assert requested.state is JobState.GENERATING
        assert requested.cancel_requested
        assert store.cancel(job.id).cancel_requested  # asking twice is harmless
        assert [j.id for j in store.running()] == [job.id]
        assert store.set_state(job.id, JobState.CANCELLED).state is JobState.CANCELLED

    @pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
    def test_cancel_finished_is_refused(self, store: JobStore, state: JobState) -> None:
        """Cancelling a finished job raises InvalidJobState."""
        job = job_in(store, state)
        with pytest.raises(InvalidJobState):
            store.cancel(job.id)
        assert store.get(job.id) == job


class TestRetry:
    def test_retry_creates_a_linked_job(self, store: JobStore) -> None:
        """retry queues a new job with the same request, retry_of set and one more attempt."""
        original = store.submit("m", {"prompt": "x", "seed": 5}, priority=2)
        store.set_state(original.id, JobState.LOADING)
        failed = store.set_state(original.id, JobState.FAILED, error=FAIL)
        again = store.retry(original.id)
        assert again.id != original.id
        assert again.state is JobState.QUEUED
        assert (again.model, again.params, again.priority) == ("m", original.params, 2)
        assert (again.retry_of, again.attempts) == (original.id, 2)
        assert store.get(original.id) == failed
        store.cancel(again.id)
        assert store.retry(again.id).attempts == 3

    @pytest.mark.parametrize(
        "state", [JobState.QUEUED, JobState.LOADING, JobState.GENERATING, JobState.ENCODING,
                  JobState.DONE],
    )
    def test_retry_refuses_unfinished_and_done_jobs(
        self, store: JobStore, state: JobState
    ) -> None:
        """Only failed, cancelled and interrupted jobs can be retried."""
        job = job_in(store, state)
        with pytest.raises(InvalidJobState):
            store.retry(job.id)
        assert len(store.list()[0]) == 1


class TestQueueCap:
    def test_queue_cap(self, db_path: Path) -> None:
        """Non-terminal jobs (queued or running) count against max_queued; finished do not."""
        with JobStore(db_path, max_queued=3) as store:
            jobs = [store.submit("m", {}) for _ in range(3)]
            store.set_state(jobs[0].id, JobState.LOADING)
            with pytest.raises(QueueFull) as info:
                store.submit("m", {})
            assert info.value.data["limit"] == 3
            store.cancel(jobs[1].id)
            store.submit("m", {})
            with pytest.raises(QueueFull):
                store.retry(jobs[1].id)  # a retry is a submit
            assert store.queue_depth() == 2
            assert len(store.list()[0]) == 4

    def test_submit_validates(self, store: JobStore) -> None:
        """Empty models, non-JSON params and absurd priorities are refused up front."""
        cases: list[tuple[str, dict[str, Any], Any, str]] = [
            ("", {}, 0, "model"),
            ("m", {"x": float("nan")}, 0, "params"),
            ("m", {"x": object()}, 0, "params"),
            ("m", {}, True, "priority"),
            ("m", {}, 10**12, "priority"),
        ]
        for model, params, priority, param in cases:
            with pytest.raises(InvalidParams) as info:
                store.submit(model, params, priority)
            assert info.value.data["param"] == param
        assert store.list()[0] == []


# --- restart repair -----------------------------------------------------------------------------


class TestRecover:
    def test_recover_interrupts_running_jobs_and_keeps_the_queue(self, db_path: Path) -> None:
        """Running jobs become interrupted with a reason; queued ones keep order; none lost."""
        store = JobStore(db_path)
        q1 = store.submit("m", {"prompt": "q1"})
        loading = job_in(store, JobState.LOADING)
        q2 = store.submit("m", {"prompt": "q2"}, priority=1)
        generating = job_in(store, JobState.GENERATING)
        encoding = job_in(store, JobState.ENCODING)
        store.cancel(encoding.id)
        done = job_in(store, JobState.DONE)
        q3 = store.submit("m", {"prompt": "q3"})
        before = {j.id for j in store.list(limit=500)[0]}
        # No close(): the daemon died.

        with JobStore(db_path) as restarted:
            report = restarted.recover()
            assert report.interrupted == (loading.id, generating.id)
            assert report.cancelled == (encoding.id,)
            assert report.queued == (q2.id, q1.id, q3.id)
            assert report.queued_count == 3
            for job_id, was in [(loading.id, "loading"), (generating.id, "generating")]:
                repaired = restarted.get(job_id)
                assert repaired.state is JobState.INTERRUPTED
                assert repaired.finished_at is not None
                assert repaired.error is not None and repaired.error["kind"] == "interrupted"
                assert f"stopped while this job was {was}" in repaired.error["message"]
            assert restarted.get(encoding.id).state is JobState.CANCELLED
            assert restarted.get(done.id) == done
            assert {j.id for j in restarted.list(limit=500)[0]} == before
            assert restarted.running() == []
            # A second recover finds nothing left to repair.
            again = restarted.recover()
            assert (again.interrupted, again.cancelled) == ((), ())
            assert again.queued == report.queued
            order = []
            while (job := restarted.next_queued()) is not None:
                order.append(job.id)
                restarted.set_state(job.id, JobState.LOADING)
            assert order == [q2.id, q1.id, q3.id]
        store.close()

    def test_recover_after_a_killed_process(self, db_path: Path) -> None:
        """A job a dead process left generating is interrupted; its queued jobs remain."""
        out = run_child(
            "import os, sys\n"
            "from timbred.queue.jobs import JobStore\n"
            "s = JobStore(sys.argv[1])\n"
            "ids = [s.submit('m', {'prompt': str(i)}).id for i in range(3)]\n"
            "s.set_state(ids[0], 'loading'); s.set_state(ids[0], 'generating')\n"
            "s.set_progress(ids[0], 5, 10)\n"
            "print(' '.join(ids), flush=True)\n"
            "os._exit(1)\n",
            str(db_path),
            returncode=1,
        )
        first, *rest = out.split()
        with JobStore(db_path) as store:
            report = store.recover()
            assert report.interrupted == (first,)
            assert report.queued == tuple(rest)
            assert store.get(first).error is not None


# --- schema and damaged files -------------------------------------------------------------------

# Version 1 of the schema exactly as released. Never update this copy: it stands for the
# databases already on users' disks, which migrations must carry forward.
V1_SCHEMA = """
PRAGMA application_id = 1416454730;
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('queued', 'loading', 'generating', 'encoding', 'done',
        'failed', 'cancelled', 'interrupted')),
    priority INTEGER NOT NULL, model TEXT NOT NULL, params TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, progress_step INTEGER,
    progress_total INTEGER, error TEXT, outputs TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 1, retry_of TEXT REFERENCES jobs (id), recipe TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs (state, priority DESC, seq);
CREATE INDEX jobs_by_model ON jobs (model, seq);
INSERT INTO jobs (id, state, priority, model, params, created_at, finished_at, outputs, recipe)
VALUES ('j-1m0000000', 'done', 0, 'musicgen-small', '{"prompt":"old"}', 1.5, 2.5,
        '["/takes/old.wav"]', '{"seed":1}');
INSERT INTO jobs (id, state, priority, model, params, created_at)
VALUES ('j-1m0000001', 'queued', 4, 'musicgen-small', '{"prompt":"waiting"}', 3.0);
PRAGMA user_version = 1;
"""


def make_v1(path: Path) -> None:
    with closing(sqlite3.connect(path)) as raw:
        raw.executescript(V1_SCHEMA)


class TestIdempotency:
    def test_a_repeat_gets_the_first_job_also_after_reopening(self, db_path: Path) -> None:
        """submit_once with a used key and the same digest returns that job (not new),
        across a close and reopen of the file; a new key makes a new job."""
        with JobStore(db_path) as store:
            first, created = store.submit_once("m", {"prompt": "a", "seed": 1}, 0,
                                               key="k-1", digest="d1")
            assert created and first.idempotency_key == "k-1"
            again, created = store.submit_once("m", {"prompt": "a", "seed": 2}, 0,
                                               key="k-1", digest="d1")
            assert not created and again == first  # the stored params, not the new ones
        with JobStore(db_path) as store:
            assert store.find_submitted("k-1", "d1") == first
            assert store.find_submitted("k-2", "d1") is None
            other, created = store.submit_once("m", {"prompt": "a"}, 0, key="k-2",
                                               digest="d1")
            assert created and other.id != first.id
            assert [j.id for j in store.list()[0]] == [other.id, first.id]

    def test_a_used_key_with_another_request_is_refused(self, store: JobStore) -> None:
        """The same key for a different request is InvalidParams naming the parameter and
        the job; nothing is queued."""
        job, _ = store.submit_once("m", {"prompt": "a"}, 0, key="k", digest="d1")
        for call in (lambda: store.find_submitted("k", "d2"),
                     lambda: store.submit_once("m", {"prompt": "b"}, 0, key="k", digest="d2")):
            with pytest.raises(InvalidParams) as info:
                call()
            assert info.value.data["param"] == "idempotency_key"
            assert job.id in info.value.message
        assert store.queue_depth() == 1

    @pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", 7, None])
    def test_bad_keys_are_refused(self, store: JobStore, key: Any) -> None:
        with pytest.raises(InvalidParams) as info:
            store.submit_once("m", {"prompt": "a"}, 0, key=key, digest="d")
        assert info.value.data["param"] == "idempotency_key"
        assert store.queue_depth() == 0

    def test_the_digest_ignores_key_order_nulls_and_the_key(self) -> None:
        a = request_digest({"prompt": "x", "duration": 2.0, "seed": None,
                            "idempotency_key": "k1"})
        b = request_digest({"duration": 2.0, "prompt": "x", "idempotency_key": "k2"})
        assert a == b
        assert a != request_digest({"duration": 2.5, "prompt": "x"})


class TestSchema:
    def test_a_version_1_database_opens_and_works(self, db_path: Path) -> None:
        """A database written by schema version 1 is migrated to the current version intact."""
        make_v1(db_path)
        with JobStore(db_path) as store:
            old = store.get("j-1m0000000")
            assert old.outputs == ("/takes/old.wav",) and old.recipe == {"seed": 1}
            assert old.timings is None and old.to_dict()["timings"] is None
            assert old.idempotency_key is None
            assert store.next_queued() == store.get("j-1m0000001")
            new = store.submit("musicgen-small", {"prompt": "new"})
            assert new.id > "j-1m0000001"
        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

    def test_pending_migrations_apply_in_order(self, db_path: Path) -> None:
        """migrate() runs only the missing migrations and bumps user_version, keeping rows."""
        make_v1(db_path)
        later = (*MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",
                               "UPDATE jobs SET note = 'from v' || 1"))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
            assert migrate(raw, str(db_path), later) == (1, len(later))
            assert raw.execute("PRAGMA user_version").fetchone()[0] == len(later)
            assert raw.execute("SELECT count(*), min(note) FROM jobs").fetchone() == (2, "from v1")
            assert migrate(raw, str(db_path), later) == (len(later), len(later))

    def test_a_failing_migration_leaves_the_last_good_version(self, db_path: Path) -> None:
        """A migration that fails half-way is rolled back whole and named in the error."""
        make_v1(db_path)
        broken = (*MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT", "SELECT nonsense"))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
            with pytest.raises(StoreError, match=f"schema version {len(broken)} failed"):
                migrate(raw, str(db_path), broken)
            assert raw.execute("PRAGMA user_version").fetchone()[0] == len(broken) - 1
            columns = [row[1] for row in raw.execute("PRAGMA table_info(jobs)")]
            assert "note" not in columns

    def test_a_newer_schema_is_refused(self, db_path: Path) -> None:
        """A file from a newer timbred is not touched; the error names it and both versions."""
        JobStore(db_path).close()
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("PRAGMA user_version = 99")
        with pytest.raises(StoreError) as info:
            JobStore(db_path)
        assert str(db_path) in str(info.value)
        assert "99" in str(info.value) and "newer" in str(info.value)

    def test_another_applications_database_is_refused(self, db_path: Path) -> None:
        """A SQLite file with other tables and no Timbre marker is left alone."""
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("CREATE TABLE songs (title TEXT)")
        with pytest.raises(StoreError, match="not a Timbre job database"):
            JobStore(db_path)


class TestDamagedFiles:
    def test_a_garbage_file_names_the_file(self, db_path: Path) -> None:
        """A file that is not SQLite at all raises StoreError naming the path."""
        db_path.write_bytes(b"definitely not sqlite\n" * 300)
        with pytest.raises(StoreError) as info:
            JobStore(db_path)
        assert str(db_path) in str(info.value)
        assert "corrupt" in str(info.value)
        assert info.value.data["path"] == str(db_path)

    def test_a_damaged_page_is_caught_at_open(self, db_path: Path) -> None:
        """A database with an overwritten page is reported at open, not half-way through."""
        with JobStore(db_path) as store:
            for i in range(200):
                store.submit("m", {"prompt": f"{i} " + "x" * 400})
        # Closing the last connection checkpoints the WAL into the main file.
        assert not Path(f"{db_path}-wal").exists()
        page_size = 4096
        assert db_path.stat().st_size > 10 * page_size
        with db_path.open("r+b") as f:
            f.seek(5 * page_size)
            f.write(b"\xa5" * page_size)
        with pytest.raises(StoreError) as info:
            JobStore(db_path)
        assert str(db_path) in str(info.value)
        assert "corrupt" in str(info.value)

    def test_an_unopenable_path_names_the_file(self, tmp_path: Path) -> None:
        """A path in a missing directory raises StoreError naming the path."""
        path = tmp_path / "missing" / "jobs.sqlite3"
        with pytest.raises(StoreError, match="cannot open") as info:
            JobStore(path)
        assert str(path) in str(info.value)


# --- threads ------------------------------------------------------------------------------------


class TestThreads:
    def test_concurrent_submits_all_land_with_unique_ids(self, db_path: Path) -> None:
        """Threads on one store and on a second store (another connection) never clash."""
        per_thread = 25
        stores = [JobStore(db_path), JobStore(db_path)]
        barrier = threading.Barrier(8)
        results: list[list[str]] = [[] for _ in range(8)]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait()
                s = stores[n % 2]
                for i in range(per_thread):
                    results[n].append(s.submit("m", {"prompt": f"{n}-{i}"}).id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        ids = [i for r in results for i in r]
        assert len(ids) == len(set(ids)) == 8 * per_thread
        listed = [j.id for j in stores[0].list(limit=500)[0]]
        assert sorted(listed) == sorted(ids)
        # Within one thread, later submits get later ids.
        assert all(r == sorted(r) for r in results)
        for s in stores:
            s.close()
