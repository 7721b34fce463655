"""The one generation request (timbred.request.Request): one vocabulary from the wire to the
recipe, old recipes read as the request they described, and its checks naming each field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from timbred import errors
from timbred.backends import musicgen
from timbred.backends.spec import BackendSpec
from timbred.request import COMMON, Request

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def full() -> Request:
    return Request(prompt="lo fi", duration=12.5, seed=7, variations=3, melody="/m.wav",
                   continuation="/c.wav",
                   options={"temperature": 0.9, "top_k": 100, "top_p": 0.5, "guidance": 4.0})


class TestRequest:
    def test_round_trips_through_json(self) -> None:
        """to_dict() is plain JSON, always the same keys, and from_dict() rebuilds it."""
        data = json.loads(json.dumps(full().to_dict()))
        assert Request.from_dict(data) == full()
        assert set(Request(prompt="x", duration=2, seed=1).to_dict()) == set(data)

    def test_lyrics_are_stored_in_one_spelling(self) -> None:
        """Line ends and trailing blanks decide nothing, so they are normalised (a replay of
        the same words is the same request); blank lines and tags inside are kept; words
        that are only whitespace are none."""
        sung = Request(prompt="x", duration=2, seed=1,
                       lyrics="\r\n[verse]  \r\nÇa va, 東京\r\n\r\n[chorus]\rla la \n\n")
        assert sung.lyrics == "[verse]\nÇa va, 東京\n\n[chorus]\nla la"
        assert Request(prompt="x", duration=2, seed=1, lyrics=" \n\t\n").lyrics is None
        assert Request.from_dict(sung.to_dict()) == sung
        assert Request.from_job(sung.job_params(), {}).lyrics == sung.lyrics

    def test_defaults_and_float_normalisation(self) -> None:
        """One variation and no audio inputs unless asked; integral floats stored as floats."""
        data = Request(prompt="x", duration=2, seed=1).to_dict()
        assert data == {"prompt": "x", "duration": 2.0, "seed": 1, "variations": 1,
                        "melody": None, "continuation": None, "init": None,
                        "strength": None, "repaint": None, "lyrics": None,
                        "options": {}}
        assert isinstance(data["duration"], float)

    @pytest.mark.parametrize(("change", "param"), [
        ({"duration": 0}, "duration"),
        ({"duration": float("nan")}, "duration"),
        ({"duration": "10"}, "duration"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"variations": 0}, "variations"),
        ({"prompt": None}, "prompt"),
        ({"melody": ""}, "melody"),
        ({"continuation": 3}, "continuation"),
        ({"options": {1: 2}}, "options"),
        ({"lyrics": 3}, "lyrics"),
        ({"lyrics": "la\x00la"}, "lyrics"),
        ({"lyrics": "x" * 8001}, "lyrics"),
        ({"bogus": 1}, "bogus"),
        # The old names are not this type's: they are read only through from_recipe.
        ({"duration_s": 1.0}, "duration_s"),
    ])
    def test_invalid_values_name_the_field(self, change: dict[str, Any], param: str) -> None:
        data: dict[str, Any] = {"prompt": "x", "duration": 1.0, "seed": 0, **change}
        with pytest.raises(errors.InvalidParams) as info:
            Request.from_dict(data)
        assert info.value.data["param"] == param

    def test_missing_required_field(self) -> None:
        with pytest.raises(errors.InvalidParams) as info:
            Request.from_dict({"prompt": "x", "seed": 1})
        assert info.value.data["param"] == "duration"

    def test_job_params_round_trip(self) -> None:
        """A job stores the family's own parameters flat beside the common ones (as the wire
        and `jobs show` name them); from_job reads exactly those back."""
        flat = full().job_params()
        assert flat["guidance"] == 4.0 and "options" not in flat
        stored = {**flat, "output": None, "export": {"format": "wav"}, "backend": "musicgen"}
        assert Request.from_job(stored, musicgen.SPEC.params) == full()


#: A recipe's params as GenerationParams wrote them (MusicGen's names), equal to full().
V1: dict[str, Any] = {
    "prompt": "lo fi", "duration_s": 12.5, "seed": 7, "temperature": 0.9, "top_k": 100,
    "top_p": 0.5, "guidance_scale": 4.0, "variations": 3, "melody_path": "/m.wav",
    "continuation_path": "/c.wav"}


class TestOldRecipes:

    def test_a_recipe_from_before_is_the_request_it_described(self) -> None:
        """MusicGen recipes written with GenerationParams' names (duration_s, guidance_scale,
        melody_path, sampling as fields) replay as the same request."""
        assert Request.from_recipe(V1) == full()

    def test_its_options_are_kept(self) -> None:
        """A v1 recipe of another family carried its own parameters in options."""
        old = {"prompt": "t", "duration_s": 1.0, "seed": 1, "options": {"pitch_hz": 330}}
        assert Request.from_recipe(old).options == {"pitch_hz": 330}

    def test_todays_recipes_read_as_themselves(self) -> None:
        assert Request.from_recipe(full().to_dict()) == full()

    @pytest.mark.parametrize("params", [V1, full().to_dict()])
    def test_the_take_schema_takes_both_shapes(self, params: dict[str, Any]) -> None:
        """schemas/take.schema.json describes both, and only them."""
        schema = json.loads((SCHEMAS / "take.schema.json").read_text())
        request = {"$ref": "#/$defs/recipe_request", "$defs": schema["$defs"]}
        jsonschema.validate(params, request)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**params, "guidance": 3.0}, request)


def test_a_family_cannot_name_a_parameter_like_a_common_field() -> None:
    """Its parameters travel flat beside the common ones: a clash is refused when declared."""
    for name in sorted(COMMON):
        with pytest.raises(ValueError, match=name):
            BackendSpec(**{**musicgen.SPEC.__dict__,
                           "params": {name: {"type": "number", "default": 1}}})
