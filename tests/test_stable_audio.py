"""The stable-audio backend: Stable Audio Open (StableAudioPipeline) and Stable Audio 3 (with
its audio-to-audio and inpaint pipelines) through diffusers, run on tiny random-weight
pipeline fixtures (noise, not music) through the real loading and denoising code: the backend
directly, and the whole CLI -> daemon -> worker -> export -> history path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import jsonschema
import miniaudio
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import FAST
from tests.support import RawConnection, req
from timbrectl.client import connect
from timbred import errors, models
from timbred.backends import registry
from timbred.protocol.schema import load as load_schema
from timbred.request import Request
from timbred.testing.daemon import running_daemon
from timbred.testing.tiny_stable_audio import (
    MAX_DURATION_S,
    SA3_MAX_DURATION_S,
    build_tiny_stable_audio,
    build_tiny_stable_audio_3,
)
from timbred.worker.backend import CancelToken, Preview
from timbred.worker.stable_audio import SPLICE_FADE_S, StableAudioBackend, splice, variation_seeds

SPEC = registry.get("stable-audio")
#: A distilled Stable Audio 3's own defaults (the tiny fixture's scheduler is stochastic).
SA3_BASE = {"steps": 8, "sampler": "ping-pong", "guidance": 1.0}

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Stable Audio Open pipeline fixture, built once for this module."""
    return build_tiny_stable_audio(tmp_path_factory.mktemp("tiny-stable-audio") / "pipe")


@pytest.fixture(scope="module")
def sa3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Stable Audio 3 pipeline fixture (its audio-to-audio and inpaint pipelines
    load from the same directory)."""
    return build_tiny_stable_audio_3(tmp_path_factory.mktemp("tiny-stable-audio-3") / "pipe")


@pytest.fixture(scope="module")
def backend(pipeline_dir: Path) -> StableAudioBackend:
    b = StableAudioBackend()
    b.load(str(pipeline_dir), device="cpu", dtype="float32")
    return b


@pytest.fixture(scope="module")
def sa3(sa3_dir: Path) -> StableAudioBackend:
    b = StableAudioBackend()
    b.load(str(sa3_dir), device="cpu", dtype="float32")
    return b


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a stereo chord as 32-bit float WAV: audio to vary and repaint."""
    t = np.arange(2 * 44100) / 44100
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    path = tmp_path_factory.mktemp("source") / "chord.wav"
    sf.write(path, np.stack([chord, 0.8 * chord]).T.astype(np.float32), 44100,
             subtype="FLOAT")
    return path


def _request(**changes: object) -> Request:
    base = dict(changes.pop("base", {"steps": 6}))  # type: ignore[call-overload]
    options = {**SPEC.defaults(), **base, **dict(changes.pop("options", {}))}  # type: ignore[call-overload]
    fields: dict[str, object] = {"prompt": "warm rhodes piano", "duration": 1.5, "seed": 4,
                                 "variations": 1, **changes}
    return Request(options=options, **fields)  # type: ignore[arg-type]


class TestSpec:
    def test_the_registry_picks_it_for_a_stable_audio_pipeline_directory(
            self, pipeline_dir: Path) -> None:
        ref = models.resolve(str(pipeline_dir))
        assert ref.backend == "stable-audio" and ref.ready
        assert SPEC.max_duration is not None
        assert SPEC.max_duration(pipeline_dir) == pytest.approx(MAX_DURATION_S)

    def test_a_component_without_its_weights_is_named(self, pipeline_dir: Path,
                                                      tmp_path: Path) -> None:
        copy = Path(shutil.copytree(pipeline_dir, tmp_path / "copy"))
        (copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
        assert SPEC.missing(copy) == ("transformer/*.safetensors (its weights)",)
        shutil.rmtree(copy / "scheduler")
        assert "scheduler/ (its config)" in SPEC.missing(copy)
        assert not models.resolve(str(copy)).ready

    def test_memory_is_estimated_from_every_component(self, pipeline_dir: Path) -> None:
        ref = models.resolve(str(pipeline_dir))
        weights = sum(p.stat().st_size for p in pipeline_dir.glob("*/*.safetensors"))
        assert models.estimate_memory(ref) == weights
        assert models.estimate_memory(ref, dtype="bfloat16") < weights * 0.6

    def test_stable_audio_3_has_its_own_defaults_features_and_length(self, sa3_dir: Path,
                                                                      pipeline_dir: Path) -> None:
        assert models.resolve(str(sa3_dir)).backend == "stable-audio"
        assert SPEC.model_defaults is not None and SPEC.max_duration is not None
        assert SPEC.model_defaults(sa3_dir) == SA3_BASE
        assert SPEC.model_defaults(pipeline_dir) == {"steps": 100, "sampler": "dpm-sde",
                                                     "guidance": 7.0}
        assert SPEC.max_duration(sa3_dir) == SA3_MAX_DURATION_S
        assert SPEC.model_features(sa3_dir) == {"seeded", "variation", "inpainting",
                                                "streaming"}
        assert SPEC.model_features(pipeline_dir) == {"seeded"}

    def test_variation_seeds_start_with_the_seed_and_never_repeat_a_neighbour(self) -> None:
        seeds = variation_seeds(4, 4)
        assert seeds[0] == 4 and len(set(seeds)) == 4
        assert 5 not in seeds and variation_seeds(4, 2) == seeds[:2]


class TestBackend:
    def test_makes_44k1_stereo_takes_with_progress_every_step(
            self, backend: StableAudioBackend) -> None:
        steps: list[tuple[int, int]] = []
        out = backend.generate(_request(variations=2), progress=lambda s, t: steps.append((s, t)))
        assert out.sample_rate == 44100
        assert out.audio.shape == (2, 2, round(1.5 * 44100)) and out.audio.dtype == np.float32
        assert np.isfinite(out.audio).all() and np.abs(out.audio).max() > 0
        assert steps == [(i, 6) for i in range(1, 7)]
        assert out.info["pipeline"] == "StableAudioPipeline"
        assert out.info["scheduler"] == "CosineDPMSolverMultistepScheduler"
        assert not np.array_equal(out.audio[0], out.audio[1])

    def test_the_same_request_gives_the_same_samples(self, backend: StableAudioBackend) -> None:
        first = backend.generate(_request(options={"negative": "drums"}))
        again = backend.generate(_request(options={"negative": "drums"}))
        assert np.array_equal(first.audio, again.audio)
        other_seed = backend.generate(_request(seed=5, options={"negative": "drums"}))
        no_negative = backend.generate(_request())
        assert not np.array_equal(first.audio, other_seed.audio)
        assert not np.array_equal(first.audio, no_negative.audio)

    def test_cancel_stops_within_one_step(self, backend: StableAudioBackend) -> None:
        token = CancelToken()
        seen: list[int] = []

        def progress(step: int, total: int) -> None:
            seen.append(step)
            if step == 2:
                token.cancel()

        with pytest.raises(errors.Cancelled):
            backend.generate(_request(options={"steps": 20}), progress=progress, cancel=token)
        assert seen == [1, 2]

    def test_int8_quantizes_the_transformer_and_stays_deterministic(
            self, backend: StableAudioBackend, pipeline_dir: Path) -> None:
        int8 = StableAudioBackend(precision="int8")
        int8.load(str(pipeline_dir), device="cpu", dtype="float32")
        try:
            first = int8.generate(_request())
            assert first.info["precision"] == "int8"
            assert np.array_equal(first.audio, int8.generate(_request()).audio)
            reference = backend.generate(_request()).audio
            assert not np.array_equal(first.audio, reference)
            assert np.isfinite(first.audio).all()
        finally:
            int8.unload()
        auto = StableAudioBackend(precision="auto")  # int8 stays opt-in on CPU
        auto.load(str(pipeline_dir), device="cpu", dtype="float32")
        assert auto.generate(_request()).info["precision"] == "fp32"
        auto.unload()

    def test_longer_than_the_model_makes_is_refused(self, backend: StableAudioBackend) -> None:
        with pytest.raises(errors.InvalidParams, match="longer than this model makes"):
            backend.generate(_request(duration=MAX_DURATION_S + 1))


class TestStableAudio3:
    def test_text_to_audio_in_its_eight_distilled_steps(self, sa3: StableAudioBackend) -> None:
        steps: list[int] = []
        out = sa3.generate(_request(base=SA3_BASE, variations=2),
                           progress=lambda s, t: steps.append(s))
        assert out.audio.shape == (2, 2, round(1.5 * 44100)) and np.isfinite(out.audio).all()
        assert steps == list(range(1, 9)) and out.info["pipeline"] == "StableAudio3Pipeline"
        again = sa3.generate(_request(base=SA3_BASE, variations=2))
        assert np.array_equal(out.audio, again.audio)

    def test_euler_and_ping_pong_are_its_two_samplers(self, sa3: StableAudioBackend) -> None:
        ping = sa3.generate(_request(base=SA3_BASE)).audio
        euler = sa3.generate(_request(base={**SA3_BASE, "sampler": "euler"})).audio
        assert not np.array_equal(ping, euler)
        assert np.array_equal(euler, sa3.generate(
            _request(base={**SA3_BASE, "sampler": "euler"})).audio)
        assert np.array_equal(ping, sa3.generate(_request(base=SA3_BASE)).audio)
        with pytest.raises(errors.InvalidParams, match="samples with ping-pong or euler"):
            sa3.generate(_request(base={**SA3_BASE, "sampler": "dpm-sde"}))

    def test_a_preview_is_one_draft_of_the_whole_take(self, sa3: StableAudioBackend) -> None:
        chunks: list[tuple[int, np.ndarray]] = []
        order: list[str] = []

        def send(start: int, audio: np.ndarray) -> None:
            chunks.append((start, audio))
            order.append("draft")

        out = sa3.generate(_request(base=SA3_BASE, variations=2),
                           progress=lambda s, t: order.append(f"step {s}"),
                           preview=Preview(0.5, send))
        assert [start for start, _ in chunks] == [0]
        draft = chunks[0][1]
        assert draft.shape == out.audio.shape and np.isfinite(draft).all()
        assert not np.array_equal(draft, out.audio)  # a draft, not the take
        assert order.index("draft") == order.index("step 6") + 1  # after 6 of 8 steps

    def test_a_variation_depends_on_its_init_audio_and_strength(
            self, sa3: StableAudioBackend, source_wav: Path, tmp_path: Path) -> None:
        quiet = tmp_path / "quiet.wav"
        sf.write(quiet, np.zeros((88200, 2), dtype=np.float32), 44100)

        def vary(init: Path, strength: float) -> np.ndarray:
            return sa3.generate(_request(base=SA3_BASE, duration=2.0,
                                         init=str(init), strength=strength)).audio

        first = vary(source_wav, 0.5)
        assert first.shape == (1, 2, 88200)
        assert np.array_equal(first, vary(source_wav, 0.5))
        assert not np.array_equal(first, vary(source_wav, 0.9))
        assert not np.array_equal(first, vary(quiet, 0.5))

    def test_a_repaint_keeps_the_source_outside_its_span(
            self, sa3: StableAudioBackend, source_wav: Path) -> None:
        source = sf.read(source_wav, dtype="float32", always_2d=True)[0].T
        out = sa3.generate(_request(base=SA3_BASE, duration=2.0,
                                    init=str(source_wav), repaint=(0.5, 1.25))).audio[0]
        start, end = round(0.5 * 44100), round(1.25 * 44100)
        assert np.array_equal(out[:, :start], source[:, :start])
        assert np.array_equal(out[:, end:], source[:, end:])
        fade = round(SPLICE_FADE_S * 44100)
        inside = slice(start + fade, end - fade)
        assert np.abs(out[:, inside] - source[:, inside]).max() > 0.05

    def test_a_model_without_audio_in_refuses_it(self, backend: StableAudioBackend,
                                                 source_wav: Path) -> None:
        with pytest.raises(errors.InvalidParams, match="StableAudioPipeline cannot vary"):
            backend.generate(_request(init=str(source_wav), strength=0.5))


def test_splice_crossfades_inside_the_span_without_a_jump() -> None:
    rate = 1000
    source = np.ones((1, 3000), dtype=np.float32)
    made = -np.ones((1, 1, 3000), dtype=np.float32)
    out = splice(source, made, (1.0, 2.0), rate)[0, 0]
    assert (out[:1000] == 1).all() and (out[2000:] == 1).all()
    assert (out[1000 + 20:2000 - 20] == -1).all()  # 20 ms fades at 1 kHz
    assert np.abs(np.diff(out)).max() < 0.2  # equal-power ramps, no step


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


class TestThroughTheDaemon:
    async def test_generate_replay_and_the_same_command_twice(
            self, short_tmp: Path, pipeline_dir: Path) -> None:
        (short_tmp / "empty.toml").write_text("")
        async with running_daemon(short_tmp) as d:
            env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
                       TIMBRE_CONFIG=str(short_tmp / "empty.toml"))
            command = ("generate", "warm rhodes piano", "-m", str(pipeline_dir), "--steps", "8",
                       "--negative", "drums", "-d", "2", "--seed", "4", "--json")
            made = await anyio.to_thread.run_sync(_ctl, env, *command)
            assert made.returncode == 0, made.stderr
            job = json.loads(made.stdout)
            assert job["state"] == "done" and job["params"]["backend"] == "stable-audio"
            recipe = job["recipe"]
            assert recipe["backend"] == "stable-audio" and recipe["sample_rate"] == 44100
            assert recipe["params"]["options"] == {"steps": 8, "negative": "drums",
                                                   "sampler": "dpm-sde", "guidance": 7.0}
            assert "window_s" not in recipe  # MusicGen's windowing is not Stable Audio's
            path = job["outputs"][0]
            decoded = miniaudio.wav_read_file_f32(path)  # a second decoder reads it back
            assert (decoded.sample_rate, decoded.nchannels) == (44100, 2)
            assert decoded.num_frames == 2 * 44100
            sidecar = json.loads(await anyio.Path(f"{path}.json").read_text())
            jsonschema.validate(sidecar, load_schema("take.schema.json"))
            assert sidecar["backend"] == "stable-audio"
            assert sidecar["params"]["steps"] == 8 and sidecar["params"]["negative"] == "drums"

            again = await anyio.to_thread.run_sync(_ctl, env, *command)
            assert again.returncode == 0, again.stderr
            second = json.loads(again.stdout)["outputs"][0]
            twin = json.loads(await anyio.Path(f"{second}.json").read_text())
            assert twin["recipe"]["audio_sha256"] == sidecar["recipe"]["audio_sha256"]
            assert miniaudio.wav_read_file_f32(second).samples == decoded.samples

            takes = await anyio.to_thread.run_sync(_ctl, env, "history", "rhodes", "--json")
            take_id = json.loads(takes.stdout)["takes"][-1]["id"]
            replay = await anyio.to_thread.run_sync(_ctl, env, "replay", take_id)
            assert replay.returncode == 0, replay.stderr
            assert replay.stdout.splitlines()[-1] == "bit-identical: yes"

    async def test_impossible_requests_are_refused_at_submit_naming_why(
            self, short_tmp: Path, pipeline_dir: Path, sa3_dir: Path, source_wav: Path
    ) -> None:
        async with running_daemon(short_tmp) as d:
            conn = await RawConnection.open(d.socket_path)
            try:
                for params, words in (
                        ({"duration": 10}, f"longer than {pipeline_dir} makes (2.97 s"),
                        ({"top_k": 5}, "it takes steps, negative, sampler, guidance"),
                        ({"sampler": "euler"}, "samples with dpm-sde, not euler"),
                        ({"steps": 0}, "steps"),
                        ({"init": str(source_wav)}, "cannot vary audio (init)"),
                        ({"model": str(sa3_dir), "strength": 0.5}, "strength: needs init"),
                        ({"model": str(sa3_dir), "init": str(source_wav), "guidance": 3},
                         "without guidance"),
                        ({"model": str(sa3_dir), "negative": "drums"},
                         "negative: set guidance above 1 too"),
                        ({"model": str(sa3_dir), "init": str(source_wav),
                          "repaint": [1.5, 1.0]}, "start before end"),
                        ({"model": str(sa3_dir), "init": str(source_wav), "duration": 1.5,
                          "repaint": [0.5, 1.0]}, "a repaint keeps its audio's length"),
                        ({"model": str(sa3_dir), "init": "/nonexistent.wav"},
                         "init: cannot read audio file /nonexistent.wav")):
                    request = {"prompt": "warm pad", "model": str(pipeline_dir),
                               "duration": 1, **params}
                    if "init" in params and "duration" not in params:
                        del request["duration"]
                    reply = await conn.call(req("generate.submit", request))
                    # A missing file is an audio input error; the rest are invalid params.
                    code = -32053 if params.get("init") == "/nonexistent.wav" else -32602
                    assert reply.get("error", {}).get("code") == code, (params, reply)
                    assert words in reply["error"]["message"], reply
                listed = await conn.call(req("jobs.list"))
                assert listed["result"]["jobs"] == []  # nothing impossible was queued
            finally:
                await conn.aclose()

    async def test_vary_then_repaint_a_take_from_the_command_line(
            self, short_tmp: Path, sa3_dir: Path, source_wav: Path) -> None:
        (short_tmp / "empty.toml").write_text("")
        async with running_daemon(short_tmp) as d:
            env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
                       TIMBRE_CONFIG=str(short_tmp / "empty.toml"))
            varied = await anyio.to_thread.run_sync(
                _ctl, env, "generate", "warm rhodes piano", "-m", str(sa3_dir), "--init",
                str(source_wav), "--strength", "0.4", "--seed", "4", "--json")
            assert varied.returncode == 0, varied.stderr
            job = json.loads(varied.stdout)
            params = job["recipe"]["params"]
            assert (params["init"], params["strength"], params["duration"]) == \
                (str(source_wav), 0.4, 2.0)  # the init's length
            assert params["options"] == {"steps": 8, "negative": "", "sampler": "ping-pong",
                                         "guidance": 1.0}
            take = json.loads((await anyio.to_thread.run_sync(
                _ctl, env, "history", "--json")).stdout)["takes"][0]

            repainted = await anyio.to_thread.run_sync(
                _ctl, env, "takes", "repaint", take["id"], "--start", "0.5", "--end", "1.0",
                "bright strings", "--seed", "9", "--json")
            assert repainted.returncode == 0, repainted.stderr
            new = json.loads(repainted.stdout)
            assert new["recipe"]["params"]["init"] == take["path"]
            assert new["recipe"]["params"]["repaint"] == [0.5, 1.0]
            assert new["recipe"]["model"] == str(sa3_dir)  # the take's own model
            decoded = miniaudio.wav_read_file_f32(new["outputs"][0])
            assert (decoded.sample_rate, decoded.nchannels, decoded.num_frames) == \
                (44100, 2, 88200)
            sidecar = json.loads(await anyio.Path(f"{new['outputs'][0]}.json").read_text())
            jsonschema.validate(sidecar, load_schema("take.schema.json"))

            # Only the span is new: outside it the new take follows its source (both
            # loudness-normalised, so equal up to one gain).
            source = np.asarray(miniaudio.wav_read_file_f32(take["path"]).samples).reshape(-1, 2)
            made = np.asarray(decoded.samples).reshape(-1, 2)
            outside = np.r_[0:22050, 44100:88200]
            ratio = np.linalg.lstsq(source[outside].reshape(-1, 1),
                                    made[outside].reshape(-1), rcond=None)[0][0]
            residual = made[outside] - ratio * source[outside]
            assert np.abs(residual).max() < 2e-3 * max(1.0, np.abs(made).max())

            replay = await anyio.to_thread.run_sync(
                _ctl, env, "replay", json.loads((await anyio.to_thread.run_sync(
                    _ctl, env, "history", "bright strings", "--json")).stdout)["takes"][0]["id"])
            assert replay.returncode == 0, replay.stderr
            assert replay.stdout.splitlines()[-1] == "bit-identical: yes"


class TestWatchFolder:
    async def test_a_prompt_file_varies_audio_beside_it(
            self, short_tmp: Path, sa3_dir: Path, source_wav: Path) -> None:
        """A dropped prompt file's init is relative to its folder; the take varies it."""
        async with running_daemon(short_tmp, models__default=str(sa3_dir), **FAST) as d, \
                connect(d.socket_path) as client:
            await client.subscribe(["*"])
            inbox = d.generation.output_root / "inbox"
            await anyio.Path(inbox / "clips").mkdir(parents=True, exist_ok=True)
            shutil.copy(source_wav, inbox / "clips" / "chord.wav")
            await anyio.Path(inbox / "vary.txt").write_text(
                "init: clips/chord.wav\nstrength: 0.5\nseed: 3\n\nbrighter chord\n")
            with anyio.fail_after(180):
                while True:
                    event = await client.next_event()
                    if event["type"] == "watch.file" and event["data"]["status"] in (
                            "done", "failed", "rejected"):
                        break
            assert event["data"]["status"] == "done", event
            job = await client.call("jobs.get", {"job_id": event["data"]["jobs"][0]})
            assert job["params"]["init"] == str(inbox / "clips" / "chord.wav")
            assert (job["params"]["strength"], job["params"]["duration"]) == (0.5, 2.0)
            decoded = miniaudio.wav_read_file_f32(job["outputs"][0])
            assert (decoded.sample_rate, decoded.num_frames) == (44100, 88200)
