"""The parameter panel follows the chosen model's family: its rows, defaults, ranges and slash
commands come from the family's schema (``backends.list``), MusicGen's until the daemon says,
and what the studio sends is what the daemon takes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import tone
from timbre_tui.state import (
    FALLBACK_PARAMS,
    Params,
    ParamSpec,
    Preset,
    StudioState,
    format_value,
    parse_value,
)
from timbrectl.client import connect
from timbred.backends import musicgen, registry
from timbred.protocol.schema import params_specs
from timbred.testing.daemon import running_daemon

#: A family with every kind of parameter the panel draws (a test's own, not a real one).
DIFFUSION: dict[str, Any] = {
    "steps": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50,
              "description": "Denoising steps."},
    "cfg_scale": {"type": "number", "minimum": 0, "maximum": 20, "multipleOf": 0.25,
                  "default": 7.0},
    "sampler": {"enum": ["euler", "dpmpp"], "default": "euler"},
    "negative_prompt": {"type": "string", "default": ""},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0},
}


def backend(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A ``backends.list`` entry, reduced to what the studio reads."""
    return {"name": name, "params": {"type": "object", "additionalProperties": False,
                                     "properties": params}}


def studio_with_families() -> StudioState:
    """A state that has heard of MusicGen (the default model's), the tone fixture and
    ``DIFFUSION``, with one installed model of each."""
    st = StudioState()
    st.set_status({"models": [], "default_model": {"name": "musicgen-small",
                                                   "backend": "musicgen"}})
    st.set_backends([backend("musicgen", dict(musicgen.SPEC.params)),
                     backend("tone", dict(tone.SPEC.params)),
                     backend("diffusion", DIFFUSION)])
    st.set_models([{"name": "musicgen-small", "backend": "musicgen"},
                   {"name": "/m/tone", "backend": "tone"},
                   {"name": "/m/diff", "backend": "diffusion"}], ["musicgen-medium"])
    return st


def own_rows(st: StudioState) -> list[str]:
    return [s.label for s in st.param_specs() if s.option]


class TestFromTheSchema:
    def test_before_the_daemon_speaks_the_panel_is_musicgens(self) -> None:
        """With nothing heard (or a daemon without backends.list) the panel offers MusicGen's
        parameters with their declared defaults, taken from the daemon's own spec."""
        st = StudioState()
        assert own_rows(st) == ["temperature", "top-k", "top-p", "guidance"]
        assert dict(st.params.options) == {k: v["default"] for k, v in FALLBACK_PARAMS.items()}
        assert FALLBACK_PARAMS is musicgen.SPEC.params
        st.set_backends(None)
        assert own_rows(st) == ["temperature", "top-k", "top-p", "guidance"]
        common = [s.label for s in st.param_specs() if not s.option]
        assert common == ["model", "duration", "seed", "variations", "format", "preset"]

    def test_another_familys_rows_kinds_and_defaults(self) -> None:
        """Choosing a model of another family draws its parameters: integer -> int, number ->
        float with its range and step (multipleOf when given), enum -> choice, string ->
        text; values start at the schema's defaults."""
        st = studio_with_families()
        st.set_param("model", "/m/diff")
        assert st.family == "diffusion"
        specs = {s.name: s for s in st.param_specs() if s.option}
        assert [(s.label, s.kind) for s in specs.values()] == [
            ("steps", "int"), ("cfg-scale", "float"), ("sampler", "choice"),
            ("negative-prompt", "text"), ("temperature", "float")]
        assert (specs["steps"].minimum, specs["steps"].maximum, specs["steps"].step) == \
            (1, 200, 5)
        assert specs["cfg_scale"].step == 0.25 and specs["sampler"].choices == ("euler",
                                                                                "dpmpp")
        assert dict(st.params.options) == {"steps": 50, "cfg_scale": 7.0, "sampler": "euler",
                                           "negative_prompt": "", "temperature": 1.0}
        assert st.step_param("cfg-scale", +1) == "cfg-scale: 7.25"
        assert st.step_param("sampler", +1) == "sampler: dpmpp"
        assert format_value(st.params, specs["negative_prompt"]) == ""

    def test_the_tone_fixtures_parameters(self) -> None:
        """The tone family's own schema: /pitch-hz and /noise, at 440 and 0.01."""
        st = studio_with_families()
        st.set_param("model", "/m/tone")
        assert own_rows(st) == ["pitch-hz", "noise"]
        assert st.params.pitch_hz == 440.0 and st.params.noise == 0.01
        assert st.set_param("pitch_hz", parse_value(st.spec_for("pitch-hz"), "330")) == \
            "pitch-hz: 330"

    def test_out_of_range_values_name_the_range(self) -> None:
        """A value outside the schema's bounds is refused naming the parameter and range."""
        st = studio_with_families()
        st.set_param("model", "/m/tone")
        with pytest.raises(ValueError, match=r"^pitch-hz: must be between 20 and 4000, got 5$"):
            parse_value(st.spec_for("pitch-hz"), "5")
        st.set_param("model", "/m/diff")
        with pytest.raises(ValueError, match=r"^steps: expected a whole number, got '2.5'"):
            parse_value(st.spec_for("steps"), "2.5")
        with pytest.raises(ValueError, match=r"^sampler: 'ddim' is not one of euler, dpmpp"):
            parse_value(st.spec_for("sampler"), "ddim")
        unbounded = ParamSpec("x", "x", "float", "", -float("inf"), float("inf"), option=True)
        with pytest.raises(ValueError, match=r"^x: expected a number, got 'y'$"):
            parse_value(unbounded, "y")

    def test_a_parameter_the_family_lacks_names_what_it_takes(self) -> None:
        """Asking a tone model for top-k says what tone takes."""
        st = studio_with_families()
        st.set_param("model", "/m/tone")
        with pytest.raises(ValueError, match=r"top-k: tone \(tone\) does not take it; it "
                                             r"takes /pitch-hz, /noise"):
            st.spec_for("top-k")


class TestSwitchingFamilies:
    def test_shared_values_are_kept_the_rest_reset(self) -> None:
        """Going MusicGen -> diffusion -> MusicGen keeps the temperature the user set (both
        take it and it fits), takes the new family's defaults for the rest, and comes back to
        MusicGen's defaults for what diffusion lacked; one undo step per change."""
        st = studio_with_families()
        st.set_param("temperature", 1.5)
        st.set_param("top_k", 50)
        st.set_param("model", "/m/diff")
        assert st.params.temperature == 1.5 and "top_k" not in st.params.options
        st.set_param("steps", 20)
        st.set_param("model", "musicgen-small")
        assert dict(st.params.options) == {"temperature": 1.5, "top_k": 250, "top_p": 0.0,
                                           "guidance": 3.0}
        st.set_param("temperature", 9.0)  # fits MusicGen's 0..10, not diffusion's 0..2
        st.set_param("model", "/m/diff")
        assert st.params.temperature == 1.0
        assert st.undo() and st.family == "musicgen" and st.params.temperature == 9.0

    def test_the_default_models_family_arrives_later(self) -> None:
        """A daemon whose default model is a tone model: once status and backends.list are
        in, the panel (still on the default model) shows tone's parameters."""
        st = StudioState()
        st.set_backends([backend("musicgen", dict(musicgen.SPEC.params)),
                         backend("tone", dict(tone.SPEC.params))])
        st.set_status({"models": [], "default_model": {"name": "/m/t", "backend": "tone"}})
        assert own_rows(st) == ["pitch-hz", "noise"] and st.params.model is None

    def test_a_preset_fills_the_familys_own(self) -> None:
        """A preset's values for the family's parameters (flat or in an options table) fill
        the panel as the schema types them; ones the family lacks are left to the daemon."""
        st = studio_with_families()
        st.presets = {"drone": Preset("drone", params={"model": "/m/tone", "pitch_hz": 110,
                                                       "options": {"noise": 0.5},
                                                       "top_k": 3})}
        st.set_param("preset", "drone")
        assert st.family == "tone"
        assert dict(st.params.options) == {"pitch_hz": 110.0, "noise": 0.5}
        assert isinstance(st.params.pitch_hz, float)


class TestWhatIsSent:
    def test_submit_params_match_generate_submit(self) -> None:
        """The family's values go in options; every panel's request passes the daemon's own
        check of generate.submit's params from schemas/openrpc.json (flat too, for an older
        daemon)."""
        check = params_specs()["generate.submit"].normalise
        st = studio_with_families()
        for model in ("musicgen-small", "/m/tone", "/m/diff"):
            st.set_param("model", model)
            sent = st.params.submit_params("a prompt")
            assert sent["options"] == dict(st.params.options)
            check(sent)
        flat = Params().submit_params("x", flat=True)
        assert check(flat)["top_k"] == 250 and "options" not in flat


@pytest.fixture
def tone_backend() -> Iterator[None]:
    registry.register(tone.SPEC)
    yield
    registry.unregister(tone.SPEC.name)


pytestmark = pytest.mark.anyio


class TestAgainstTheDaemon:
    async def test_the_daemons_answers_draw_the_panel_and_it_takes_the_request(
            self, short_tmp: Path, tmp_path: Path, tiny: Path, tone_backend: None) -> None:
        """With a tone model as the daemon's default, the state built from its real answers
        (daemon.status, backends.list, models.list) shows tone's parameters; /pitch-hz 330
        is queued as pitch_hz 330; switching to the tiny MusicGen keeps working too."""
        model = tone.make_model(tmp_path / "tone")
        st = StudioState()
        async with running_daemon(short_tmp, models__default=str(model)) as d, \
                connect(d.socket_path) as client:
            st.set_status(await client.call("daemon.status"))
            st.set_backends((await client.call("backends.list"))["backends"])
            listing = await client.call("models.list")
            st.set_models(listing["installed"], [m["name"] for m in listing["catalogue"]])
            assert own_rows(st) == ["pitch-hz", "noise"]
            st.set_param("pitch_hz", parse_value(st.spec_for("pitch-hz"), "330"))
            job = (await client.call("generate.submit", st.params.submit_params("a tone")))["job"]
            assert (job["params"]["backend"], job["params"]["pitch_hz"]) == ("tone", 330.0)
            await client.call("jobs.cancel", {"job_id": job["id"]})
            await client.call("jobs.wait", {"job_id": job["id"], "timeout": 60})
            st.model_families[str(tiny)] = "musicgen"  # as models.list says of a local dir
            st.set_param("model", str(tiny))
            st.set_param("top_k", 40)
            job = (await client.call("generate.submit", st.params.submit_params("a tune")))["job"]
            assert (job["params"]["backend"], job["params"]["top_k"]) == ("musicgen", 40)
            await client.call("jobs.cancel", {"job_id": job["id"]})
            await client.call("jobs.wait", {"job_id": job["id"], "timeout": 60})


class TestModelDefaults:
    def test_a_models_own_defaults_lead_until_a_value_is_chosen(self) -> None:
        """A distilled Stable Audio 3 (models.list: steps 8, guidance 1) starts the panel
        there; a value typed in stays across models, one left at a default follows."""
        from timbred.backends import stable_audio

        st = StudioState()
        st.set_status({"models": [], "default_model": {"name": "musicgen-small",
                                                       "backend": "musicgen"}})
        st.set_backends([backend("musicgen", dict(musicgen.SPEC.params)),
                         backend("stable-audio", dict(stable_audio.SPEC.params))])
        st.set_models([{"name": "/m/open", "backend": "stable-audio", "defaults": {}},
                       {"name": "/m/sa3", "backend": "stable-audio",
                        "defaults": {"steps": 8, "sampler": "ping-pong", "guidance": 1.0}}],
                      [])
        st.set_param("model", "/m/open")
        assert own_rows(st) == ["steps", "negative", "sampler", "guidance"]
        assert dict(st.params.options) == {"steps": 100, "negative": "", "sampler": "dpm-sde",
                                           "guidance": 7.0}
        st.set_param("model", "/m/sa3")
        assert dict(st.params.options) == {"steps": 8, "negative": "", "sampler": "ping-pong",
                                           "guidance": 1.0}
        st.set_param("steps", parse_value(st.spec_for("steps"), "20"))
        st.set_param("model", "/m/open")
        assert dict(st.params.options) == {"steps": 20, "negative": "", "sampler": "dpm-sde",
                                           "guidance": 7.0}
        assert st.params.submit_params("warm pad")["options"] == dict(st.params.options)
