"""A fast path broken by an upstream change, end to end: the daemon still makes the take.

The inference worker is a real child process, so the break is planted there the way a changed
library would arrive: a ``sitecustomize`` module on the worker's ``PYTHONPATH`` makes the real
lean decoding step return slightly wrong numbers. The job must still be done, the daemon log
one warning naming the transformers version, the recipe say which fast paths ran and why, and
a replay by a healthy daemon (the break gone) be bit-identical.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import pytest
import transformers

from tests.conftest import FAST
from tests.test_batching import replay_first_take
from tests.test_generation import events_until_done
from timbrectl.client import connect
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio

BREAK_LEAN_STEP = '''
from timbred.worker.decodestep import LeanDecoder

_original = LeanDecoder.step


def _off_by_a_hair(self, *args, **kwargs):
    out = _original(self, *args, **kwargs)
    out.last_hidden_state = out.last_hidden_state + 1e-3
    return out


LeanDecoder.step = _off_by_a_hair
'''


async def test_a_broken_lean_step_costs_speed_not_the_take(
        short_tmp: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(BREAK_LEAN_STEP, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(planted), os.environ.get("PYTHONPATH")) if p))
    request = {"prompt": "upstream changed", "duration": 1.5, "seed": 3}
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as d, \
            connect(d.socket_path) as c:
        await c.subscribe(["job.*"])
        job, _ = await events_until_done(
            c, (await c.call("generate.submit", request))["job_id"])
    assert job["state"] == "done", job["error"]
    assert await anyio.Path(job["outputs"][0]).is_file()
    fast = job["recipe"]["info"]["fast_paths"]
    assert (fast["preallocate_kv"], fast["lean_steps"]) == (True, False)
    version = f"transformers {transformers.__version__}"
    assert version in fast["fallback"] and "lean_steps" in fast["fallback"]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "lean_steps" in r.getMessage()]
    assert len(warnings) == 1 and version in warnings[0]

    # The break is gone (the user downgraded, or upstream fixed it): the same daemon state,
    # a healthy worker with every fast path on, re-renders the take bit for bit.
    monkeypatch.delenv("PYTHONPATH")
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as d, \
            connect(d.socket_path) as c:
        replay = await replay_first_take(c, job)
    assert replay["recipe"]["info"]["fast_paths"] == {
        "preallocate_kv": True, "lean_steps": True, "fallback": None}
