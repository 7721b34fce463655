"""The backend registry: families declared once, recognised from their model directories,
listed over the socket, and a new one (the test-only tone generator) run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import jsonschema
import miniaudio
import numpy as np
import pytest

from tests.backends import tone
from tests.support import RawConnection, check_result, req
from timbrectl import render
from timbred import models
from timbred.backends import registry
from timbred.errors import InvalidParams, ModelNotFound
from timbred.protocol.schema import load as load_schema
from timbred.protocol.schema import schema_dir
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
def tone_backend() -> Iterator[None]:
    """Adds the test-only tone family: the only line a new family needs besides its module."""
    registry.register(tone.SPEC)
    yield
    registry.unregister(tone.SPEC.name)


class TestRegistry:
    def test_the_shipped_families_are_built_in_and_the_tone_fixture_is_not(self) -> None:
        assert [s.name for s in registry.specs()] == ["musicgen", "stable-audio", "ace-step",
                                                      "demucs", "replicate", "stability",
                                                      "elevenlabs"]
        assert [s.name for s in registry.specs() if s.task == "separate"] == ["demucs"]
        assert [s.name for s in registry.specs() if s.hosted] == [
            "replicate", "stability", "elevenlabs"]
        with pytest.raises(InvalidParams,
                           match="unknown backend 'tone'; known: musicgen, stable-audio"):
            registry.get("tone")

    def test_the_registry_imports_no_inference_stack(self) -> None:
        code = ("import sys; from timbred.backends import registry; registry.specs(); "
                "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'soundfile') "
                "if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == "[]"

    @pytest.mark.parametrize("name", [s.name for s in registry.specs()])
    def test_each_builtin_schema_file_matches_its_spec(self, name: str) -> None:
        path = schema_dir() / "backends" / f"{name}.params.json"
        doc = json.loads(path.read_text())
        spec = registry.get(name)
        assert {k: doc[k] for k in ("type", "additionalProperties", "properties")} == \
            spec.params_schema()
        jsonschema.Draft202012Validator.check_schema(doc)
        jsonschema.validate(spec.defaults(), doc)

    def test_a_directory_is_recognised_by_its_family(self, tiny: Path, tmp_path: Path,
                                                     tone_backend: None) -> None:
        assert models.resolve(str(tiny)).backend == "musicgen"
        ref = models.resolve(str(tone.make_model(tmp_path / "tone")))
        assert ref.backend == "tone" and ref.ready
        other = tmp_path / "other"
        other.mkdir()
        (other / "config.json").write_text('{"model_type": "bert"}')
        with pytest.raises(ModelNotFound, match=r"not MusicGen.*tone: a directory holding"):
            models.resolve(str(other))


class TestBackendsList:
    async def test_lists_each_family_as_the_schema_says(self, short_tmp: Path,
                                                        tone_backend: None) -> None:
        async with running_daemon(short_tmp) as d:
            conn = await RawConnection.open(d.socket_path)
            result = check_result("backends.list", await conn.call(req("backends.list")))
            await conn.aclose()
        by_name = {b["name"]: b for b in result["backends"]}
        assert set(by_name) == {"musicgen", "stable-audio", "ace-step", "demucs", "replicate",
                                "stability", "elevenlabs", "tone"}
        assert by_name["demucs"]["task"] == "separate"
        assert by_name["musicgen"]["task"] == "generate"
        assert by_name["replicate"]["hosted"] and by_name["replicate"]["needs"] == ["api_key"]
        assert not by_name["musicgen"]["hosted"]
        musicgen = by_name["musicgen"]
        assert musicgen["capabilities"]["sample_rates"] == [32000]
        assert {"melody", "continuation", "batching", "seeded"} <= \
            set(musicgen["capabilities"]["features"])
        assert musicgen["params"]["properties"]["top_k"]["default"] == 250
        assert musicgen["load_options"] == ["window_s", "stride_s", "precision"]
        assert by_name["tone"]["params"]["properties"]["pitch_hz"]["default"] == 440.0


    def test_people_read_each_parameter_with_its_range_and_default(self) -> None:
        text = render.backend_rows([spec.to_dict() for spec in registry.specs()])
        assert text.splitlines()[0].startswith("musicgen: ")
        assert "    top_k        0 to 2048, default 250: Sample from the k most likely" in text
        assert "needs local weights" in text


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _peak_hz(path: str) -> float:
    """The loudest frequency of a take, read back by a second decoder (miniaudio)."""
    decoded = miniaudio.wav_read_file_f32(path)
    samples = np.asarray(decoded.samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * decoded.sample_rate / len(samples))


class TestToneEndToEnd:
    """A family added by touching only the registry and its module runs the whole path."""

    async def test_cli_daemon_queue_worker_export_history_replay(
            self, short_tmp: Path, tmp_path: Path, tone_backend: None) -> None:
        model = tone.make_model(tmp_path / "tone-model")
        (short_tmp / "empty.toml").write_text("")
        async with running_daemon(short_tmp, models__default=str(model)) as d:
            env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
                       TIMBRE_CONFIG=str(short_tmp / "empty.toml"))

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                return _ctl(env, *args)

            listed = await anyio.to_thread.run_sync(run, "backends", "--json")
            assert listed.returncode == 0, listed.stderr
            names = [b["name"] for b in json.loads(listed.stdout)["backends"]]
            assert names == ["musicgen", "stable-audio", "ace-step", "demucs", "replicate",
                             "stability", "elevenlabs", "tone"]

            made = await anyio.to_thread.run_sync(
                run, "generate", "a test tone", "-d", "1", "--seed", "3",
                "--param", "pitch_hz=330", "--json")
            assert made.returncode == 0, made.stderr
            job = json.loads(made.stdout)
            assert job["state"] == "done" and job["params"]["backend"] == "tone"
            recipe = job["recipe"]
            assert recipe["backend"] == "tone"
            assert recipe["params"]["options"] == {"pitch_hz": 330, "noise": 0.01}
            assert "window_s" not in recipe  # MusicGen's windowing is not the tone's
            path = job["outputs"][0]
            assert abs(_peak_hz(path) - 330) < 2
            assert miniaudio.wav_read_file_f32(path).num_frames == 8000
            sidecar = json.loads(await anyio.Path(f"{path}.json").read_text())
            jsonschema.validate(sidecar, load_schema("take.schema.json"))
            assert sidecar["backend"] == "tone"

            takes = await anyio.to_thread.run_sync(run, "history", "a test tone", "--json")
            take_id = json.loads(takes.stdout)["takes"][0]["id"]
            again = await anyio.to_thread.run_sync(run, "replay", take_id)
            assert again.returncode == 0, again.stderr
            assert again.stdout.splitlines()[-1] == "bit-identical: yes"

    async def test_parameters_it_does_not_take_are_refused_naming_what_it_takes(
            self, short_tmp: Path, tmp_path: Path, tone_backend: None) -> None:
        model = tone.make_model(tmp_path / "tone-model")
        async with running_daemon(short_tmp, models__default=str(model)) as d:
            conn = await RawConnection.open(d.socket_path)
            for params, param in (({"options": {"steps": 50}}, "steps"),
                                  ({"guidance": 5.0}, "guidance"),
                                  ({"options": {"pitch_hz": 5}}, "pitch_hz")):
                reply = await conn.call(req("generate.submit", {"prompt": "x", **params}))
                assert reply["error"]["code"] == -32602, reply
                assert param in reply["error"]["message"]
            reply = await conn.call(req("generate.submit", {"prompt": "x", "guidance": 5.0}))
            assert "it takes pitch_hz, noise" in reply["error"]["message"]
            await conn.aclose()
