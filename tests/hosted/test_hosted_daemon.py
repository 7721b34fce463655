"""Hosted jobs through the real daemon, against loopback fakes of the providers' APIs.

The fakes (:mod:`timbred.testing.fake_providers`) reproduce Replicate's documented shapes
(https://replicate.com/docs/reference/http: predictions.create / get / cancel, problem JSON,
429 with Retry-After). The issue's "done when": ``REPLICATE_API_TOKEN=... timbrectl generate
... -m replicate:meta/musicgen -d 8`` writes a take with the provider in its tags after a 429
on the first create; a cancel cancels the prediction; a restart mid-prediction resumes it; the
key is in no file the daemon wrote; ``timbrectl costs`` shows the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import soundfile as sf

from timbrectl.client import connect
from timbred.takes.tags import read_tags
from timbred.testing.daemon import running_daemon
from timbred.testing.fake_providers import FakeReplicate, rate_limited

pytestmark = pytest.mark.anyio

KEY = "r8_TestKeyThatMustNeverBeWritten0123456789"
MODEL = "replicate:meta/musicgen"


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _settings(fake: FakeReplicate) -> dict[str, Any]:
    return {"providers__replicate__base_url": fake.base_url, "providers__retry_s": 20.0}


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def _until(check: Any, timeout: float = 30.0) -> Any:
    with anyio.fail_after(timeout):
        while not (found := check()):  # noqa: ASYNC110 (the fake's state has no event)
            await anyio.sleep(0.05)
    return found


async def test_generate_after_a_429_writes_a_tagged_take_and_costs_show_it(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    (short_tmp / "empty.toml").write_text("")
    with FakeReplicate(KEY, polls=2, predict_time=12.5) as fake:
        fake.script("POST", "/v1/", rate_limited(1))
        async with running_daemon(short_tmp, **_settings(fake)) as d:
            env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
                       TIMBRE_CONFIG=str(short_tmp / "empty.toml"), REPLICATE_API_TOKEN=KEY)
            made = await anyio.to_thread.run_sync(
                _ctl, env, "generate", "dusty boom-bap drums", "-m", MODEL, "-d", "8",
                "--seed", "3", "--json")
            assert made.returncode == 0, made.stderr
            job = json.loads(made.stdout)
            creates = fake.seen("POST", "/v1/")
            creates = [r for r in creates if not r.path.endswith("/cancel")]
            assert len(creates) == 2  # the 429, then the prediction
            assert creates[1].json()["input"]["prompt"] == "dusty boom-bap drums"
            assert creates[1].headers["authorization"] == f"Bearer {KEY}"
            (prediction,) = fake.predictions.values()
            recipe = job["recipe"]
            assert recipe["backend"] == "replicate"
            assert recipe["hosted"]["calls"][0]["id"] == prediction["id"]
            assert job["remote"]["calls"][0]["id"] == prediction["id"]
            assert job["cost"]["usd"] > 0 and job["cost"]["estimate"] is True
            path = job["outputs"][0]
            info = sf.info(path)  # a second decoder reads the take back
            assert (info.samplerate, info.frames) == (32000, 8 * 32000)
            tags = read_tags(path)
            assert tags["TIMBRE_PROVIDER"] == "replicate"
            assert tags["TIMBRE_PROVIDER_ID"] == prediction["id"]
            costs = await anyio.to_thread.run_sync(_ctl, env, "costs", "--json")
            assert costs.returncode == 0, costs.stderr
            (row,) = json.loads(costs.stdout)["providers"]
            assert row["provider"] == "replicate" and row["jobs"] == 1
            assert row["usd"] == pytest.approx(job["cost"]["usd"])
            listed = json.loads((await anyio.to_thread.run_sync(
                _ctl, env, "models", "list", "--json")).stdout)
            assert any(m["name"] == MODEL for m in listed["hosted"])
        # The key went only to the provider: no file the daemon wrote holds it, nor its log.
        assert _files_holding(short_tmp, KEY.encode()) == []
        assert KEY not in caplog.text
        assert not [r for r in fake.files.seen() if "authorization" in r.headers]


async def test_a_cancel_cancels_the_prediction(short_tmp: Path) -> None:
    with FakeReplicate(KEY, hold=True) as fake:
        async with running_daemon(short_tmp, **_settings(fake)) as d, \
                connect(d.socket_path) as c:
            job = (await c.call("generate.submit", {
                "prompt": "drone", "model": MODEL, "duration": 4,
                "credentials": {"replicate": KEY}}))["job"]
            assert "credentials" not in json.dumps(job)
            await _until(lambda: any(p["status"] == "processing"
                                     for p in fake.predictions.values()))
            await c.call("jobs.cancel", {"job_id": job["id"]})
            done = await c.call("jobs.wait", {"job_id": job["id"], "timeout": 30})
            assert done["state"] == "cancelled"
            (prediction,) = fake.predictions.values()
            assert prediction["status"] == "canceled"
            assert fake.seen("POST", f"/v1/predictions/{prediction['id']}/cancel")


async def test_a_restart_mid_prediction_resumes_it_without_paying_twice(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", KEY)  # the daemon's own environment
    with FakeReplicate(KEY, hold=True) as fake:
        async with running_daemon(short_tmp, **_settings(fake)) as d, \
                connect(d.socket_path) as c:
            job = (await c.call("generate.submit", {"prompt": "tape hiss", "model": MODEL,
                                                    "duration": 2}))["job"]
            await _until(lambda: any(p["status"] == "processing"
                                     for p in fake.predictions.values()))
            await _until(lambda: d.generation.store.get(job["id"]).remote is not None)
        # The daemon stopped; the prediction still runs at the provider, and now finishes.
        fake.hold = False
        async with running_daemon(short_tmp, **_settings(fake)) as d, \
                connect(d.socket_path) as c:
            done = await c.call("jobs.wait", {"job_id": job["id"], "timeout": 30})
            assert done["state"] == "done", done["error"]
            assert len(done["outputs"]) == 1
            takes = (await c.call("history.search", {}))["takes"]
            assert [t["job_id"] for t in takes] == [job["id"]]
        creates = [r for r in fake.seen("POST") if not r.path.endswith("/cancel")]
        assert len(creates) == 1  # resumed, not created (and paid for) again


async def test_a_job_past_the_monthly_budget_is_refused_before_anything_is_sent(
        short_tmp: Path) -> None:
    with FakeReplicate(KEY) as fake:
        async with running_daemon(short_tmp, providers__replicate__monthly_budget=0.001,
                                  **_settings(fake)) as d, connect(d.socket_path) as c:
            from timbred.errors import BudgetExceeded
            with pytest.raises(BudgetExceeded, match=r"monthly_budget.*\$0\.00"):
                await c.call("generate.submit", {"prompt": "x", "model": MODEL,
                                                 "duration": 8})
        assert fake.seen() == []


async def test_no_key_anywhere_fails_the_job_naming_the_way_forward(short_tmp: Path) -> None:
    with FakeReplicate(KEY) as fake:
        async with running_daemon(short_tmp, **_settings(fake)) as d, \
                connect(d.socket_path) as c:
            job = (await c.call("generate.submit", {"prompt": "x", "model": MODEL,
                                                    "duration": 2}))["job"]
            done = await c.call("jobs.wait", {"job_id": job["id"], "timeout": 30})
            assert done["state"] == "failed"
            assert done["error"]["kind"] == "key_missing"
            assert done["error"]["message"].startswith("set a replicate key")
        assert fake.seen() == []
