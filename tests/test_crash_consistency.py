"""Crash consistency: a daemon killed at any job state leaves a job whose record and takes agree.

A real ``timbred`` runs a three-take job with the tiny model and is SIGKILLed at one fail
point (:mod:`timbred.testing.failpoints`): queued, loading, generating, encoding, after the
first take was recorded, after all takes were written but before the job was marked done.
Then the start-up repair runs on the files it left, and the job's state, its ``outputs``, the
history's rows and the files on disk must tell one story. Before the repair, a kill after
the takes were written left ``interrupted`` with ``outputs: []`` beside complete takes, and
``jobs retry`` duplicated them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.test_lifecycle import (
    TIMEOUT,
    spawn,  # noqa: F401  (the fixture)
)
from tests.test_lifecycle import Daemon as Spawned
from timbred.daemon.events import EventBus
from timbred.queue.generation import Generation
from timbred.queue.jobs import JobState, JobStore
from timbred.testing.daemon import test_settings as daemon_settings
from timbred.testing.failpoints import POINTS

#: What the repair makes of a job killed at each point: its state and how many takes it has.
EXPECTED: dict[str, tuple[JobState, int]] = {
    "queued": (JobState.QUEUED, 0),
    "loading": (JobState.INTERRUPTED, 0),
    "generating": (JobState.INTERRUPTED, 0),
    "encoding": (JobState.INTERRUPTED, 0),
    "take-recorded": (JobState.INTERRUPTED, 1),
    "takes-written": (JobState.DONE, 3),
}


def test_every_point_is_covered() -> None:
    """The table names every fail point the code has, so a new one cannot go untested."""
    assert set(EXPECTED) == set(POINTS)


def _all_files(paths: tuple[str, ...]) -> bool:
    return all(os.path.isfile(p) for p in paths)


def _submit(sock_path: Path, params: dict[str, object]) -> None:
    """Send generate.submit; the daemon may die before it answers (the 'queued' point)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(sock_path))
        s.sendall(json.dumps({"jsonrpc": "2.0", "method": "generate.submit",
                              "params": params, "id": 1}).encode() + b"\n")
        with contextlib.suppress(OSError):
            s.recv(65536)


@pytest.mark.parametrize("point", list(EXPECTED))
@pytest.mark.anyio
async def test_kill_at_each_state_then_restart(point: str, short_tmp: Path, tiny: Path,
                                               spawn: type[Spawned]) -> None:  # noqa: F811
    """After a SIGKILL at ``point`` and the start-up repair, state, outputs, history rows and
    files agree, and a job is done exactly when all its takes exist."""
    d = spawn(short_tmp, extra_env={
        "TIMBRE_FAILPOINT": point, "TIMBRE_MODELS_DEFAULT": str(tiny),
        "TIMBRE_MODELS_WINDOW_S": "2.0", "TIMBRE_MODELS_STRIDE_S": "1.0"})
    d.notify.wait_for("READY")
    _submit(d.socket, {"prompt": "crash test", "duration": 0.5, "variations": 3})
    assert d.wait(120) == -signal.SIGKILL, d.stderr

    settings = daemon_settings(short_tmp, data__database=str(short_tmp / "jobs.sqlite3"),
                               output__dir=str(short_tmp / "music"))
    gen = Generation(settings, EventBus(100))
    try:
        await gen.recover()
        (job,), _ = gen.store.list(limit=10)
        takes = [t for t in gen.history.library.takes_for_job(job.id) if t.deleted_at is None]
        state, count = EXPECTED[point]
        assert job.state is state, (job, d.stderr)
        assert len(takes) == count
        assert sorted(job.outputs) == sorted(t.path for t in takes)
        assert _all_files(job.outputs)
        assert (job.state is JobState.DONE) == (count == 3)
        if job.state is JobState.INTERRUPTED:
            assert job.error is not None and job.error["kind"] == "interrupted"
    finally:
        gen.store.close()
        gen.history.library.close()
    with JobStore(short_tmp / "jobs.sqlite3") as again:  # a second repair changes nothing
        assert again.recover().interrupted == ()
