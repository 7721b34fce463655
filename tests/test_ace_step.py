"""The ace-step backend: ACE-Step 1.5 (diffusers' AceStepPipeline) singing lyrics and editing
audio (cover, repaint, extract, add, complete), run on tiny random-weight pipeline fixtures
(noise, not music) through the real loading and denoising code: the backend directly, and the
whole CLI -> daemon -> worker -> export -> tags -> history path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
from timbred.takes.tags import read_tags
from timbred.testing.daemon import running_daemon
from timbred.testing.tiny_ace_step import SAMPLE_RATE, build_tiny_ace_step
from timbred.worker.ace_step import AceStepBackend, pipeline_task
from timbred.worker.backend import CancelToken

SPEC = registry.get("ace-step")
TURBO = {"steps": 8, "guidance": 1.0, "shift": 3.0}
WORDS = "[verse]\nÇa va, 東京の夜\n\n[chorus]\nla la la"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny turbo pipeline fixture (guidance distilled: off), built once here."""
    return build_tiny_ace_step(tmp_path_factory.mktemp("tiny-ace-step") / "turbo")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base-model fixture: guidance (APG) through its null condition."""
    return build_tiny_ace_step(tmp_path_factory.mktemp("tiny-ace-step") / "base", turbo=False)


@pytest.fixture(scope="module")
def backend(turbo_dir: Path) -> AceStepBackend:
    b = AceStepBackend()
    b.load(str(turbo_dir), device="cpu", dtype="float32")
    return b


@pytest.fixture(scope="module")
def song_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a stereo chord at 44.1 kHz (read at 48 kHz): audio to edit."""
    t = np.arange(2 * 44100) / 44100
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    path = tmp_path_factory.mktemp("song") / "chord.wav"
    sf.write(path, np.stack([chord, 0.8 * chord]).T.astype(np.float32), 44100, subtype="FLOAT")
    return path


def _request(**changes: Any) -> Request:
    options = {**SPEC.defaults(), **TURBO, "steps": 3, **changes.pop("options", {})}
    fields: dict[str, Any] = {"prompt": "warm rhodes ballad", "duration": 1.5, "seed": 4,
                              "variations": 1, "lyrics": WORDS, **changes}
    return Request(options=options, **fields)


def _audio(backend: AceStepBackend, request: Request, **kw: Any) -> np.ndarray:
    [out] = backend.generate_batch([request], **kw)
    assert out.sample_rate == SAMPLE_RATE and np.isfinite(out.audio).all()
    return out.audio


class TestSpec:
    def test_the_registry_picks_it_with_its_features_defaults_and_length(
            self, turbo_dir: Path, base_dir: Path) -> None:
        ref = models.resolve(str(turbo_dir))
        assert ref.backend == "ace-step" and ref.ready
        assert SPEC.model_features(turbo_dir) == {"seeded", "lyrics", "inpainting",
                                                  "variation"}
        assert SPEC.model_defaults is not None and SPEC.max_duration is not None
        assert SPEC.model_defaults(turbo_dir) == TURBO
        assert SPEC.model_defaults(base_dir) == {"steps": 50, "guidance": 7.0, "shift": 3.0}
        assert SPEC.max_duration(turbo_dir) == 600.0

    def test_a_checkpoint_without_the_audio_tokenizer_cannot_cover(
            self, turbo_dir: Path, tmp_path: Path) -> None:
        copy = Path(shutil.copytree(turbo_dir, tmp_path / "copy"))
        index = json.loads((copy / "model_index.json").read_text())
        index["audio_tokenizer"] = index["audio_token_detokenizer"] = [None, None]
        (copy / "model_index.json").write_text(json.dumps(index))
        assert SPEC.model_features(copy) == {"seeded", "lyrics", "inpainting"}
        (copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
        assert SPEC.missing(copy) == ("transformer/*.safetensors (its weights)",)

    @pytest.mark.parametrize(("turbo", "change", "words"), [
        (True, {"options": {"task": "extract"}}, "task: extract works on audio; give init"),
        (False, {"init": "/a.wav", "options": {"task": "extract"}},
         "track: extract needs a track"),
        (True, {"options": {"track": "drums"}}, "track: only extract, add and complete"),
        (True, {"init": "/a.wav", "options": {"task": "add", "track": "bass"}},
         "task: this is an ACE-Step turbo model, which was not trained to add tracks"),
        (False, {"init": "/a.wav", "repaint": (0.1, 0.5),
                 "options": {"task": "extract", "track": "bass"}},
         "repaint: extract works on the whole take"),
        (False, {"init": "/a.wav", "strength": 0.5, "options": {"task": "add",
                                                                 "track": "bass"}},
         "strength: add takes no strength"),
        (True, {"options": {"guidance": 3.0}}, "guidance: this is a turbo model"),
    ])
    def test_what_only_the_family_refuses(self, turbo_dir: Path, base_dir: Path, turbo: bool,
                                          change: dict[str, Any], words: str) -> None:
        assert SPEC.check_request is not None
        with pytest.raises(errors.InvalidParams, match=words):
            SPEC.check_request(turbo_dir if turbo else base_dir, _request(**change))

    def test_each_request_maps_to_its_pipeline_task(self) -> None:
        assert pipeline_task(_request()) == "text2music"
        assert pipeline_task(_request(init="/a.wav", strength=0.5)) == "cover"
        assert pipeline_task(_request(init="/a.wav", repaint=(0.1, 0.5))) == "repaint"
        for task, theirs in (("extract", "extract"), ("add", "lego"),
                             ("complete", "complete")):
            assert pipeline_task(_request(init="/a.wav", options={"task": task})) == theirs


class TestBackend:
    def test_sings_48k_stereo_with_progress_every_step_and_the_same_seed_twice(
            self, backend: AceStepBackend) -> None:
        steps: list[tuple[int, int]] = []
        audio = _audio(backend, _request(variations=2),
                       progress=lambda d, t: steps.append((d, t)))
        assert audio.shape == (2, 2, round(1.5 * SAMPLE_RATE))
        assert steps == [(1, 3), (2, 3), (3, 3)]
        assert not np.array_equal(audio[0], audio[1])  # each variation its own noise
        assert np.array_equal(_audio(backend, _request(variations=2)), audio)
        # The first variation is the -n 1 take (up to the DiT's batch round-off).
        np.testing.assert_allclose(_audio(backend, _request())[0], audio[0], atol=1e-4)

    def test_a_long_song_decodes_in_tiles(self, backend: AceStepBackend) -> None:
        """Past 512 latent frames (20.5 s) the autoencoder decodes in overlapping tiles, so a
        long song's memory stays bounded; the take is whole and repeatable."""
        [out] = backend.generate_batch([_request(duration=24.0, options={"steps": 1})])
        assert out.audio.shape == (1, 2, 24 * SAMPLE_RATE) and out.info["vae_tiling"]
        assert np.isfinite(out.audio).all() and np.abs(out.audio[..., -SAMPLE_RATE:]).max() > 0
        [again] = backend.generate_batch([_request(duration=24.0, options={"steps": 1})])
        assert np.array_equal(again.audio, out.audio)

    def test_the_words_and_their_language_decide_the_audio(
            self, backend: AceStepBackend) -> None:
        sung = _audio(backend, _request())
        assert not np.array_equal(_audio(backend, _request(lyrics="[verse]\nother words")),
                                  sung)
        assert not np.array_equal(_audio(backend, _request(options={"language": "ja"})), sung)
        assert not np.array_equal(_audio(backend, _request(lyrics=None)), sung)
        assert not np.array_equal(_audio(backend, _request(options={"bpm": 120,
                                                                    "key": "A minor"})), sung)

    def test_cancel_stops_within_one_step(self, backend: AceStepBackend) -> None:
        token = CancelToken()
        seen: list[int] = []

        def progress(done: int, total: int) -> None:
            seen.append(done)
            if done == 1:
                token.cancel()

        with pytest.raises(errors.Cancelled):
            backend.generate_batch([_request(options={"steps": 6})], progress=progress,
                                   cancels=[token])
        assert seen == [1]

    def test_a_cover_depends_on_its_source_and_strength_and_repeats(
            self, backend: AceStepBackend, song_wav: Path, tmp_path: Path) -> None:
        cover = _audio(backend, _request(init=str(song_wav), strength=0.4, duration=2.0))
        assert cover.shape == (1, 2, 2 * SAMPLE_RATE)
        # The autoencoder samples the source's latents from torch's global generator: seeded
        # from the request, so an edit repeats bit for bit.
        again = _audio(backend, _request(init=str(song_wav), strength=0.4, duration=2.0))
        assert np.array_equal(cover, again)
        assert not np.array_equal(
            _audio(backend, _request(init=str(song_wav), strength=0.9, duration=2.0)), cover)
        quiet = tmp_path / "quiet.wav"
        sf.write(quiet, 0.1 * sf.read(song_wav)[0], 44100)
        assert not np.array_equal(
            _audio(backend, _request(init=str(quiet), strength=0.4, duration=2.0)), cover)

    def test_a_repaint_keeps_the_source_outside_its_span(
            self, backend: AceStepBackend, song_wav: Path) -> None:
        made = _audio(backend, _request(init=str(song_wav), repaint=(0.5, 1.0), duration=2.0))
        source = sf.read(song_wav, dtype="float32")[0].T
        from timbred.worker.audio_io import resample

        source = resample(source, 44100, SAMPLE_RATE)
        start, end = round(0.5 * SAMPLE_RATE), SAMPLE_RATE
        assert np.array_equal(made[0][:, :start], source[:, :start])
        assert np.array_equal(made[0][:, end:], source[:, end:2 * SAMPLE_RATE])
        assert not np.allclose(made[0][:, start + 2000:end - 2000],
                               source[:, start + 2000:end - 2000], atol=1e-3)

    def test_a_base_model_takes_guidance_and_extracts_adds_and_completes(
            self, base_dir: Path, song_wav: Path) -> None:
        base = AceStepBackend()
        base.load(str(base_dir), device="cpu", dtype="float32")
        try:
            plain = _audio(base, _request(options={"guidance": 1.0}))
            guided = _audio(base, _request(options={"guidance": 3.0}))
            assert not np.array_equal(plain, guided)
            assert np.array_equal(_audio(base, _request(options={"guidance": 3.0})), guided)
            made = {}
            for task, track in (("extract", "vocals"), ("extract", "drums"),
                                ("add", "guitar"), ("complete", "")):
                request = _request(init=str(song_wav), duration=2.0,
                                   options={"task": task, "track": track})
                made[task, track] = _audio(base, request)
                assert made[task, track].shape == (1, 2, 2 * SAMPLE_RATE)
                assert np.array_equal(_audio(base, request), made[task, track])
            values = list(made.values())
            assert all(not np.array_equal(a, b) for i, a in enumerate(values)
                       for b in values[i + 1:])
            span = _audio(base, _request(init=str(song_wav), duration=2.0, repaint=(0.5, 1.5),
                                         options={"task": "add", "track": "guitar"}))
            assert not np.array_equal(span, made["add", "guitar"])
        finally:
            base.unload()

    def test_what_it_cannot_do_is_refused(self, backend: AceStepBackend,
                                          song_wav: Path) -> None:
        with pytest.raises(errors.InvalidParams, match="melody: ACE-Step takes no melody"):
            backend.generate_batch([_request(melody=str(song_wav))])
        with pytest.raises(errors.InvalidParams, match="duration"):
            backend.generate_batch([_request(duration=601)])
        with pytest.raises(errors.InvalidParams, match="track"):
            backend.generate_batch([_request(init=str(song_wav),
                                             options={"task": "extract", "track": "kazoo"})])


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _ctl_fed(env, None, *args)


def _ctl_fed(env: dict[str, str], stdin: str | None, *args: str
             ) -> subprocess.CompletedProcess[str]:
    """timbrectl with ``stdin`` on its standard input."""
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=240, check=False)


class TestThroughTheDaemon:
    async def test_a_song_with_lyrics_then_each_edit_of_it(
            self, short_tmp: Path, turbo_dir: Path, base_dir: Path, song_wav: Path) -> None:
        """The issue's "done when": generate with --lyrics writes a 48 kHz stereo take whose
        tags hold the words; repaint, cover, extract and add each write a new take from it
        that records its source (extract and add with a base model: ACE-Step's turbo models
        were not trained for them); a replay of an edit is bit-identical."""
        (short_tmp / "empty.toml").write_text("")
        song = short_tmp / "song.txt"
        song.write_text(WORDS + "\n", encoding="utf-8")
        async with running_daemon(short_tmp) as d:
            env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
                       TIMBRE_CONFIG=str(short_tmp / "empty.toml"))
            made = await anyio.to_thread.run_sync(
                _ctl, env, "generate", "warm rhodes ballad", "-m", str(turbo_dir), "--lyrics",
                str(song), "--language", "fr", "-d", "2", "--steps", "3", "--seed", "5",
                "-f", "flac", "--json")
            assert made.returncode == 0, made.stderr
            job = json.loads(made.stdout)
            recipe = job["recipe"]
            assert recipe["backend"] == "ace-step" and recipe["sample_rate"] == SAMPLE_RATE
            assert recipe["params"]["lyrics"] == WORDS
            assert recipe["params"]["options"] == {**SPEC.defaults(), **TURBO, "steps": 3,
                                                   "language": "fr"}
            path = job["outputs"][0]
            info = sf.info(path)  # libsndfile reads the FLAC back
            assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 2, 96000)
            assert read_tags(path)["LYRICS"] == WORDS
            sidecar = json.loads(await anyio.Path(f"{path}.json").read_text())
            jsonschema.validate(sidecar, load_schema("take.schema.json"))
            take = json.loads((await anyio.to_thread.run_sync(
                _ctl, env, "history", "--json")).stdout)["takes"][0]

            edits = {
                "repaint": ("--start", "0.5", "--end", "1.5", "bright strings"),
                "cover": ("--strength", "0.3", "bossa nova"),
                "extract": ("--track", "vocals", "-m", str(base_dir)),
                "add": ("--track", "guitar", "nylon guitar", "-m", str(base_dir)),
            }
            made_edits: dict[str, dict[str, Any]] = {}
            for edit, args in edits.items():
                command = ("takes", edit, take["id"], *args, "--steps", "2", "--seed", "7",
                           "--json")
                done = await anyio.to_thread.run_sync(_ctl, env, *command)
                assert done.returncode == 0, (edit, done.stderr)
                new = json.loads(done.stdout)
                params = new["recipe"]["params"]
                assert params["init"] == take["path"], edit
                # The take's own model unless -m names another.
                assert new["recipe"]["model"] == str(
                    base_dir if edit in ("extract", "add") else turbo_dir)
                decoded = miniaudio.wav_read_file_f32(new["outputs"][0])
                assert (decoded.sample_rate, decoded.nchannels, decoded.num_frames) == \
                    (SAMPLE_RATE, 2, 96000), edit
                made_edits[edit] = params
            assert made_edits["repaint"]["repaint"] == [0.5, 1.5]
            assert made_edits["cover"]["strength"] == 0.3
            assert made_edits["extract"]["options"]["task"] == "extract"
            assert made_edits["extract"]["options"]["track"] == "vocals"
            assert made_edits["extract"]["prompt"] == "warm rhodes ballad"  # the source's
            assert made_edits["extract"]["strength"] is None  # not a variation
            assert made_edits["add"]["options"]["track"] == "guitar"

            covers = json.loads((await anyio.to_thread.run_sync(
                _ctl, env, "history", "bossa", "--json")).stdout)["takes"]
            replay = await anyio.to_thread.run_sync(_ctl, env, "replay", covers[0]["id"])
            assert replay.returncode == 0, replay.stderr
            assert replay.stdout.splitlines()[-1] == "bit-identical: yes"

            # Any audio file is a source too, and lyrics come from standard input.
            piped = await anyio.to_thread.run_sync(
                _ctl_fed, env, "[verse]\nhey\n", "takes", "extract", str(song_wav), "--track",
                "drums", "-m", str(base_dir), "--lyrics", "-", "--steps", "2", "--json")
            assert piped.returncode == 0, piped.stderr
            loose = json.loads(piped.stdout)["recipe"]["params"]
            assert (loose["init"], loose["lyrics"], loose["prompt"], loose["duration"]) == \
                (str(song_wav), "[verse]\nhey", "drums", 2.0)

    async def test_impossible_requests_are_refused_at_submit_naming_why(
            self, short_tmp: Path, turbo_dir: Path, tiny: Path, song_wav: Path) -> None:
        async with running_daemon(short_tmp) as d:
            conn = await RawConnection.open(d.socket_path)
            try:
                for params, words in (
                        ({"model": str(tiny), "lyrics": "la"}, "lyrics: " + str(tiny)
                         + " (musicgen) does not sing"),
                        ({"lyrics": "x" * 8001}, "lyrics"),
                        ({"task": "extract", "init": str(song_wav), "track": "bass"},
                         "was not trained to extract tracks; use a base model"),
                        ({"track": "drums"}, "track: only extract, add and complete"),
                        ({"track": "kazoo"}, "track"),
                        ({"guidance": 4}, "guidance: this is a turbo model"),
                        ({"key": "H major"}, "key"),
                        ({"language": "english"}, "language"),
                        ({"duration": 601}, "duration"),
                        ({"init": str(song_wav), "repaint": [0.5, 3.0]}, "repaint"),
                        ({"init": str(song_wav), "duration": 1.5, "repaint": [0.5, 1.0]},
                         "a repaint keeps its audio's length")):
                    request = {"prompt": "warm pad", "model": str(turbo_dir), "duration": 1,
                               **params}
                    if "init" in params and "duration" not in params:
                        del request["duration"]
                    reply = await conn.call(req("generate.submit", request))
                    assert reply.get("error", {}).get("code") == -32602, (params, reply)
                    assert words in reply["error"]["message"], reply
                listed = await conn.call(req("jobs.list"))
                assert listed["result"]["jobs"] == []  # nothing impossible was queued
            finally:
                await conn.aclose()

    async def test_a_bad_lyrics_file_is_one_line_before_anything_is_sent(
            self, short_tmp: Path, turbo_dir: Path) -> None:
        env = dict(os.environ, TIMBRE_SOCKET=str(short_tmp / "none.sock"))
        binary = short_tmp / "song.bin"
        binary.write_bytes(b"\x00\x01\xff")
        latin = short_tmp / "latin.txt"
        latin.write_bytes("caf\xe9".encode("latin-1"))
        for path, words in ((binary, "holds NUL bytes"), (latin, "is not UTF-8 text (byte 3)"),
                            (short_tmp / "missing.txt", "cannot read")):
            done = await anyio.to_thread.run_sync(
                _ctl, env, "generate", "x", "-m", str(turbo_dir), "--lyrics", str(path))
            assert done.returncode == 2 and words in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


class TestWatchFolder:
    async def test_a_prompt_file_with_a_lyrics_block_sings_it(
            self, short_tmp: Path, turbo_dir: Path) -> None:
        async with running_daemon(short_tmp, models__default=str(turbo_dir), **FAST) as d, \
                connect(d.socket_path) as client:
            await client.subscribe(["*"])
            inbox = d.generation.output_root / "inbox"
            await anyio.Path(inbox).mkdir(parents=True, exist_ok=True)
            await anyio.Path(inbox / "song.txt").write_text(
                "duration: 1\nsteps: 2\nseed: 3\nlanguage: ja\n\nwarm ballad\nlyrics:\n"
                "[verse]\n東京\n\n[chorus]\nla la\n", encoding="utf-8")
            with anyio.fail_after(180):
                while True:
                    event = await client.next_event()
                    if event["type"] == "watch.file" and event["data"]["status"] in (
                            "done", "failed", "rejected"):
                        break
            assert event["data"]["status"] == "done", event
            job = await client.call("jobs.get", {"job_id": event["data"]["jobs"][0]})
            assert job["params"]["lyrics"] == "[verse]\n東京\n\n[chorus]\nla la"
            assert job["params"]["language"] == "ja"
            assert read_tags(job["outputs"][0])["LYRICS"] == job["params"]["lyrics"]
