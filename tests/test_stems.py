"""Stems: a take separated into drums, bass, other and vocals by a Demucs model, end to end.

The separator is the tiny random HTDemucs test fixture (timbred/testing/tiny_demucs.py, in the
hub's layout, loaded by demucs's own code): its "stems" are noise-shaped filters of the take,
never a separation, so these tests check everything but the separation's quality: the job's
life in the queue (progress, cancel, a crashed worker), the files beside the take (read back
by a second decoder at the take's rate, channels and length), their metadata and tags, the
history's record, and that the same seed gives the same stems.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import mutagen
import numpy as np
import numpy.typing as npt
import pytest

from tests.backends import pulse
from tests.support import check_event
from tests.test_finishing import decoded, run_ctl
from tests.test_generation import events_until_done, job_schema, wait_progress
from timbrectl.client import Client, connect
from timbred import models
from timbred.backends import demucs as demucs_spec
from timbred.backends import registry
from timbred.daemon.app import Daemon
from timbred.errors import Cancelled, InvalidParams, ModelNotFound, TakeNotFound
from timbred.protocol.schema import load as load_schema
from timbred.testing.daemon import running_daemon
from timbred.testing.tiny_demucs import SOURCES, save_bag
from timbred.worker.backend import CancelToken

pytestmark = pytest.mark.anyio


@pytest.fixture
async def daemon(short_tmp: Path, tmp_path: Path, pulse_backend: None,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Daemon]:
    # An empty hub cache: htdemucs is not downloaded here, whatever this machine holds.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = pulse.make_model(tmp_path / "pulse-model")
    async with running_daemon(short_tmp, models__default=str(model)) as d:
        yield d


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with connect(daemon.socket_path) as c:
        await c.subscribe(["*"])
        yield c


async def make_take(client: Client, duration: float = 3.0, fmt: str = "flac") -> dict[str, Any]:
    job_id = (await client.call("generate.submit", {
        "prompt": "pulse", "duration": duration, "seed": 1, "format": fmt,
        "options": {"bpm": 120, "key": "A minor"}}))["job_id"]
    job, _ = await events_until_done(client, job_id)
    assert job["state"] == "done", job["error"]
    take: dict[str, Any] = await client.call("takes.show", {"take": job["outputs"][0]})
    return take


class TestTheModel:
    def test_the_fixture_is_recognised_as_a_demucs_bag(self, tiny_demucs: Path) -> None:
        ref = models.resolve(str(tiny_demucs))
        assert ref.backend == "demucs" and ref.ready and ref.missing == ()
        assert demucs_spec.sources(tiny_demucs) == SOURCES
        assert registry.get("demucs").task == "separate"

    def test_a_bag_missing_a_model_says_which(self, tiny_demucs: Path, tmp_path: Path) -> None:
        bag = tmp_path / "bag"
        bag.mkdir()
        (bag / "htdemucs.yaml").write_text("models: ['955717e8']\n")
        assert models.resolve(str(bag)).missing == ("955717e8.safetensors",)
        (bag / "htdemucs.yaml").write_text("models: not a list\n")
        assert not demucs_spec.recognises(bag)

    def test_pull_takes_the_bag_file(self) -> None:
        chosen = models._select_files({"htdemucs.yaml": 20, "955717e8.safetensors": 10,
                                       "README.md": 5})
        assert set(chosen) == {"htdemucs.yaml", "955717e8.safetensors"}
        assert models.CATALOGUE["htdemucs"].backend == "demucs"


@pytest.fixture(scope="module")
def backend(tiny_demucs: Path) -> Any:
    """The tiny bag loaded by the backend the worker runs, in this process."""
    from timbred.worker.stems import DemucsBackend

    b = DemucsBackend()
    b.load(str(tiny_demucs), device="cpu", dtype="bfloat16")
    return b


class TestInTheWorker:
    """The backend itself, in this process: what the worker runs."""

    def test_a_mono_take_comes_back_as_mono_stems_of_its_length(self, backend: Any) -> None:
        rate = 32_000
        audio = (np.random.default_rng(0).standard_normal((1, rate * 3)) * 0.1
                 ).astype(np.float32)
        seen: list[tuple[int, int]] = []
        out = backend.separate(audio, rate, progress=lambda s, t: seen.append((s, t)))
        assert out.names == SOURCES
        assert out.stems.shape == (4, 1, rate * 3) and out.stems.dtype == np.float32
        assert np.isfinite(out.stems).all() and np.abs(out.stems).max() > 0
        # Several segments: progress rises by one per segment and ends at its total.
        steps = [s for s, _ in seen]
        assert len(seen) >= 3 and steps == sorted(steps) and seen[-1][0] == seen[-1][1]
        assert len({t for _, t in seen}) == 1
        assert out.info["dtype"] == "float32"  # whatever the daemon's dtype

    def test_the_seed_decides_the_shifts(self, backend: Any) -> None:
        audio = (np.random.default_rng(1).standard_normal((2, 44_100 * 2)) * 0.1
                 ).astype(np.float32)
        first = backend.separate(audio, 44_100, shifts=2, seed=7).stems
        assert np.array_equal(first, backend.separate(audio, 44_100, shifts=2, seed=7).stems)
        assert not np.array_equal(first, backend.separate(audio, 44_100, shifts=2, seed=8).stems)

    def test_cancel_stops_it(self, backend: Any) -> None:
        token = CancelToken()
        token.cancel()
        with pytest.raises(Cancelled):
            backend.separate(np.zeros((2, 44_100), np.float32), 44_100, cancel=token)

    def test_it_does_not_generate(self, backend: Any) -> None:
        with pytest.raises(InvalidParams, match="stems"):
            backend.generate_batch([])

    def test_a_bag_of_several_models_weights_its_sources(self, tmp_path: Path) -> None:
        """htdemucs_ft's layout: several models, each weighted to its sources. Here the
        first model makes drums and bass, the second other and vocals: each pair is what
        that model alone separates."""
        from timbred.testing.tiny_demucs import htdemucs_kwargs
        from timbred.worker.stems import DemucsBackend

        save_bag(tmp_path / "ft", "tiny-ft", htdemucs_kwargs(), models=2)
        bag = tmp_path / "ft" / "tiny-ft.yaml"
        first, second = (f"{n:08x}" for n in range(2))
        bag.write_text(bag.read_text() + "weights: [[1., 1., 0., 0.], [0., 0., 1., 1.]]\n")
        audio = (np.random.default_rng(2).standard_normal((2, 44_100)) * 0.1
                 ).astype(np.float32)

        def separated(directory: Path) -> npt.NDArray[np.float32]:
            b = DemucsBackend()
            b.load(str(directory), device="cpu", dtype="float32")
            stems: npt.NDArray[np.float32] = b.separate(audio, 44_100, shifts=0).stems
            return stems

        both = separated(tmp_path / "ft")
        assert both.shape == (4, 2, 44_100)
        for sig, rows in ((first, slice(0, 2)), (second, slice(2, 4))):
            alone = tmp_path / sig
            alone.mkdir()
            (alone / f"{sig}.safetensors").symlink_to(tmp_path / "ft" / f"{sig}.safetensors")
            (alone / "one.yaml").write_text(f"models: ['{sig}']\n")
            np.testing.assert_allclose(both[rows], separated(alone)[rows], rtol=1e-5,
                                       atol=1e-6)


class TestStemsJobs:
    async def test_a_take_into_four_stems_beside_it(
            self, daemon: Daemon, client: Client, short_tmp: Path, tiny_demucs: Path) -> None:
        """takes stems: a job like a generation's (progress events, schema-valid record),
        four FLACs beside the take that a second decoder reads at the take's rate, channels
        and length, each with the take's metadata and its stem name in the sidecar and the
        tags, recorded in the history; not normalised (they add up to the take)."""
        take = await make_take(client)
        ran = await run_ctl(daemon, short_tmp, "takes", "stems", take["id"], "--model",
                            str(tiny_demucs), "--json")
        assert ran.returncode == 0, ran.stderr
        job = json.loads(ran.stdout)
        assert job["state"] == "done", job["error"]
        jsonschema.validate(job, job_schema())
        assert job["params"]["kind"] == "stems" and job["params"]["take"] == take["id"]
        assert job["progress"]["step"] == job["progress"]["total"] > 1
        source = Path(take["path"])
        assert job["outputs"] == [str(source.with_name(f"{source.stem}-{name}.flac"))
                                  for name in SOURCES]
        assert job["recipe"]["stems"] == list(SOURCES)
        assert job["recipe"]["source"] == take["id"] and job["recipe"]["seed"] == 0

        mix, rate = decoded(take["path"])
        total = np.zeros_like(mix)
        for name, path in zip(SOURCES, job["outputs"], strict=True):
            frames, stem_rate = decoded(path)
            assert stem_rate == rate == take["sample_rate"]
            assert frames.shape == mix.shape
            total += frames
            side = json.loads(await anyio.Path(f"{path}.json").read_text())
            jsonschema.validate(side, load_schema("take.schema.json"))
            assert side["stem"] == name and side["prompt"] == take["prompt"]
            # Measured, never changed: a stem keeps its level in the mix.
            assert side["loudness"]["after_lufs"] == side["loudness"]["before_lufs"]
            assert side["mastering"] is None and side["export"]["master"] is None
            assert side["separation"]["source"] == take["id"]
            assert side["separation"]["sources"] == list(SOURCES)
            tags: Any = mutagen.File(path)
            assert tags["TIMBRE_STEM"] == [name]
            assert tags["KEY"] == ["Am"]  # the take's own analysis, kept
        # Random weights separate nothing, but the stems were never normalised: their sum
        # is no louder than a few times the mix (each is a filtered copy of it).
        assert np.abs(total).max() < 8 * np.abs(mix).max() + 1e-3

        shown = await client.call("takes.show", {"take": take["id"]})
        assert [(s["stem"], s["path"]) for s in shown["stems"]] == list(
            zip(SOURCES, job["outputs"], strict=True))
        assert {s["job_id"] for s in shown["stems"]} == {job["id"]}

    async def test_the_same_seed_gives_the_same_stems(
            self, daemon: Daemon, client: Client, tiny_demucs: Path) -> None:
        """A second separation is written under new names (never over the first) and, with
        the same model, settings and seed, is the same audio sample for sample."""
        take = await make_take(client, fmt="wav")
        outputs = []
        for _ in range(2):
            job_id = (await client.call("takes.stems", {
                "take": take["path"], "model": str(tiny_demucs), "shifts": 2}))["job_id"]
            job, seen = await events_until_done(client, job_id)
            assert job["state"] == "done", job["error"]
            assert any(e["type"] == "job.progress" for e in seen)
            outputs.append(job["outputs"])
        assert all(p.endswith("-2.wav") for p in outputs[1])
        for a, b in zip(*outputs, strict=True):
            assert np.array_equal(decoded(a)[0], decoded(b)[0])
        shown = await client.call("takes.show", {"take": take["id"]})
        assert len(shown["stems"]) == 8

    async def test_refusals_name_what_was_wrong(
            self, daemon: Daemon, client: Client, tiny_demucs: Path, short_tmp: Path) -> None:
        take = await make_take(client, duration=1.0)
        # The default separator is not downloaded here: say how to get it.
        with pytest.raises(ModelNotFound, match="timbrectl models pull htdemucs"):
            await client.call("takes.stems", {"take": take["id"]})
        ran = await run_ctl(daemon, short_tmp, "takes", "stems", take["id"])
        assert ran.returncode != 0 and "models pull htdemucs" in ran.stderr
        assert "Traceback" not in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
        # A generation model does not separate, and a separator does not generate.
        with pytest.raises(InvalidParams, match="separator") as info:
            await client.call("takes.stems", {"take": take["id"],
                                              "model": str(daemon.settings["models.default"])})
        assert info.value.data["param"] == "model"
        with pytest.raises(InvalidParams, match="takes stems") as info:
            await client.call("generate.submit", {"prompt": "x", "model": str(tiny_demucs)})
        assert info.value.data["param"] == "model"
        with pytest.raises(TakeNotFound):
            await client.call("takes.stems", {"take": "t-nope", "model": str(tiny_demucs)})
        with pytest.raises(InvalidParams):
            await client.call("takes.stems", {"take": take["id"], "model": str(tiny_demucs),
                                              "shifts": 99})
        assert (await client.call("takes.show", {"take": take["id"]}))["stems"] == []

    async def test_cancel_and_a_crashed_worker_lose_nothing(
            self, daemon: Daemon, client: Client, tiny_demucs: Path) -> None:
        """A cancelled stems job writes nothing; kill -9 of the worker mid-separation fails
        that job alone with the reason, and the next one runs on a fresh worker."""
        take = await make_take(client, duration=20.0, fmt="wav")
        params = {"take": take["id"], "model": str(tiny_demucs), "shifts": 3}
        job_id = (await client.call("takes.stems", params))["job_id"]
        await wait_progress(client, job_id)
        await client.call("jobs.cancel", {"job_id": job_id})
        job, _ = await events_until_done(client, job_id)
        assert job["state"] == "cancelled" and job["outputs"] == []

        job_id = (await client.call("takes.stems", params))["job_id"]
        await wait_progress(client, job_id)
        pid = daemon.generation.worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        job, _ = await events_until_done(client, job_id)
        assert job["state"] == "failed" and job["error"]["kind"] == "worker_crashed"
        assert (await client.call("takes.show", {"take": take["id"]}))["stems"] == []
        source = Path(take["path"])
        assert sorted(p.name for p in source.parent.iterdir()) == [
            source.name, f"{source.name}.json"]

        job_id = (await client.call("takes.stems", {**params, "shifts": 0}))["job_id"]
        job, seen = await events_until_done(client, job_id)
        assert job["state"] == "done", job["error"]
        for event in seen:
            check_event({k: v for k, v in event.items() if k != "method"})

    async def test_a_failed_write_leaves_no_half_set(
            self, daemon: Daemon, client: Client, tiny_demucs: Path) -> None:
        """The third stem cannot be written (its sidecar's name is taken): the job fails
        naming the file, and the two stems written before it are removed again."""
        take = await make_take(client, duration=1.0, fmt="wav")
        source = Path(take["path"])
        blocker = anyio.Path(source.with_name(f"{source.stem}-other.wav.json"))
        await blocker.write_text("not ours")
        job_id = (await client.call("takes.stems", {"take": take["id"],
                                                    "model": str(tiny_demucs)}))["job_id"]
        job, _ = await events_until_done(client, job_id)
        assert job["state"] == "failed" and job["error"]["kind"] == "output_error"
        assert "other" in job["error"]["message"]
        names = sorted([p.name async for p in anyio.Path(source.parent).iterdir()])
        assert names == sorted([source.name, f"{source.name}.json", blocker.name])
        assert await blocker.read_text() == "not ours"
        assert (await client.call("takes.show", {"take": take["id"]}))["stems"] == []

    async def test_deleting_a_take_deletes_its_stems(
            self, daemon: Daemon, client: Client, tiny_demucs: Path) -> None:
        take = await make_take(client, duration=1.0, fmt="wav")
        job_id = (await client.call("takes.stems", {"take": take["id"],
                                                    "model": str(tiny_demucs)}))["job_id"]
        job, _ = await events_until_done(client, job_id)
        assert job["state"] == "done", job["error"]
        removed = await client.call("takes.rm", {"take": take["id"]})
        for path in job["outputs"]:
            assert not await anyio.Path(path).exists()
            assert not await anyio.Path(f"{path}.json").exists()
        assert all(s["deleted_at"] is not None for s in removed["stems"])
