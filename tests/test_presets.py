"""Tests for timbred.presets: shipped and user presets, validation messages, and apply."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest

from tests.support import write_toml
from timbred.errors import InvalidParams, PresetInvalid, PresetNotFound
from timbred.presets import (
    EXPORT_KEYS,
    PARAM_KEYS,
    Preset,
    apply,
    compose_prompt,
    default_user_dir,
    list_presets,
    load,
    shipped_dir,
)
from timbred.protocol.schema import load as load_schema

SHIPPED = ("ambient", "cinematic", "lofi", "orchestral", "share", "techno")


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "presets"
    d.mkdir()
    return d


class TestShipped:
    def test_the_shipped_presets_are_listed(self, user_dir: Path) -> None:
        """With no user presets, the listing is exactly the shipped files, each described."""
        infos = list_presets(user_dir)
        assert tuple(i.name for i in infos) == SHIPPED
        for info in infos:
            assert info.source == "shipped" and info.problem is None
            assert info.path.parent == shipped_dir()
            assert info.description and "\n" not in info.description
            assert len(info.description) <= 80

    @pytest.mark.parametrize("name", SHIPPED)
    def test_every_shipped_preset_loads_and_validates(self, name: str, user_dir: Path) -> None:
        """Each shipped file is valid against the schema and wraps prompts sensibly."""
        path = shipped_dir() / f"{name}.toml"
        jsonschema.validate(tomllib.loads(path.read_text()), load_schema("preset.schema.json"))
        preset = load(name, user_dir)
        assert (preset.name, preset.source, preset.path) == (name, "shipped", path)
        assert set(preset.params) <= PARAM_KEYS and set(preset.export) <= EXPORT_KEYS
        assert preset.export.get("true_peak_ceiling_dbtp") == -1.0
        if name != "share":
            assert preset.prompt_prefix and preset.prompt_suffix
            assert 10 <= preset.params["duration"] <= 60

    def test_the_share_preset_is_mp3_320(self, user_dir: Path) -> None:
        """The share preset exports MP3 at 320 kbps and leaves the prompt alone."""
        preset = load("share", user_dir)
        assert preset.export["format"] == "mp3"
        assert preset.export["mp3_bitrate_kbps"] == 320
        params, _ = apply(preset, {"prompt": "my own words"})
        assert params["prompt"] == "my own words"

    def test_the_schema_document(self) -> None:
        """The schema is Draft 2020-12 with its $id, and names exactly the module's keys."""
        doc = load_schema("preset.schema.json")
        jsonschema.Draft202012Validator.check_schema(doc)
        assert doc["$id"] == "https://timbre.invalid/schemas/preset.schema.json"
        assert set(doc["properties"]["params"]["properties"]) == PARAM_KEYS
        assert set(doc["properties"]["export"]["properties"]) == EXPORT_KEYS


class TestUserPresets:
    def test_a_user_preset_overrides_the_shipped_one(self, user_dir: Path) -> None:
        """A user file named like a shipped preset wins, in load and in the listing."""
        path = write_toml(user_dir, "lofi", 'description = "My lofi"\n[params]\nduration = 12\n')
        write_toml(user_dir, "mine", 'description = "Mine"\nprompt_prefix = "kazoo"\n')
        preset = load("lofi", user_dir)
        assert (preset.source, preset.path, preset.description) == ("user", path, "My lofi")
        assert dict(preset.params) == {"duration": 12} and preset.prompt_prefix == ""
        infos = {i.name: i for i in list_presets(user_dir)}
        assert infos["lofi"].source == "user" and infos["lofi"].overrides_shipped
        assert infos["mine"].source == "user" and not infos["mine"].overrides_shipped
        assert infos["techno"].source == "shipped"

    def test_the_default_user_dir_is_in_the_config_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without user_dir, presets come from platformdirs' config dir for "timbre"."""
        monkeypatch.setattr("platformdirs.user_config_dir",
                            lambda app: str(tmp_path / "config" / app))
        assert default_user_dir() == tmp_path / "config" / "timbre" / "presets"
        default_user_dir().mkdir(parents=True)
        write_toml(default_user_dir(), "techno", 'description = "Mine"\n')
        assert load("techno").source == "user"

    def test_a_missing_user_dir_has_no_presets(self, tmp_path: Path) -> None:
        """A user presets directory that does not exist is simply empty."""
        assert [i.name for i in list_presets(tmp_path / "nope")] == list(SHIPPED)

    def test_a_broken_user_preset_is_listed_with_its_problem(self, user_dir: Path) -> None:
        """list_presets does not fail on a malformed file; it reports it."""
        write_toml(user_dir, "broken", "[params]\nduration = 9000\n")
        info = {i.name: i for i in list_presets(user_dir)}["broken"]
        assert info.problem is not None and "params.duration" in info.problem
        assert info.description == ""

    def test_integers_written_as_floats_become_integers(self, user_dir: Path) -> None:
        """top_k = 40.0 passes the schema as an integer and is loaded as int 40."""
        write_toml(user_dir, "f", "[params]\ntop_k = 40.0\n[export]\nmp3_bitrate_kbps = 128.0\n")
        preset = load("f", user_dir)
        assert type(preset.params["top_k"]) is int and type(preset.export["mp3_bitrate_kbps"])\
            is int

    def test_presets_are_read_only(self, user_dir: Path) -> None:
        """A loaded preset's params cannot be changed in place."""
        preset = load("lofi", user_dir)
        with pytest.raises(TypeError):
            preset.params["duration"] = 1  # type: ignore[index]


class TestInvalid:
    @pytest.mark.parametrize(
        ("text", "key", "expected"),
        [
            ("description = \n", "(syntax)", "valid TOML"),
            ("[params]\nduration = 900\n", "params.duration", "from 0.1 to 600, got 900"),
            ("[params]\nduration = 0\n", "params.duration", "a number from 0.1 to 600"),
            ("[params]\ntop_k = 1.5\n", "params.top_k", "an integer from 0 to 2048, got 1.5"),
            ('[params]\nmodel = ""\n', "params.model", "a string"),
            ("[params]\nguidance = true\n", "params.guidance", "a number from 0 to 30, got true"),
            ("[params]\nkeep_alive = -2\n", "params.keep_alive", "a number from -1 to"),
            ("[params]\ndurration = 10\n", "params.durration", "did you mean 'duration'?"),
            ("colour = 'red'\n", "colour", "one of the known keys (description, export,"),
            ("params = 3\n", "params", "a table, got 3"),
            ('[export]\nformat = "aiff"\n', "export.format", 'one of "wav", "flac", "mp3"'),
            ("[export]\nmp3_bitrate_kbps = 300\n", "export.mp3_bitrate_kbps", "320, got 300"),
            ("[export]\nogg_quality = 2\n", "export.ogg_quality", "from 0 to 1"),
            ('[export]\nloudness_target_lufs = "loud"\n', "export.loudness_target_lufs",
             'a number from -60 to 0, or false, got "loud"'),
            ("[export]\nloudness_target_lufs = true\n", "export.loudness_target_lufs",
             "or false, got true"),
            ("[export]\ntrue_peak_ceiling_dbtp = 1\n", "export.true_peak_ceiling_dbtp",
             "from -20 to 0"),
            ("description = 1979-05-27\n", "description", "a string"),
        ],
    )
    def test_a_bad_file_names_the_file_key_and_expectation(
        self, user_dir: Path, text: str, key: str, expected: str
    ) -> None:
        """Bad TOML, bad values and unknown keys raise PresetInvalid with file, key, expected."""
        path = write_toml(user_dir, "bad", text)
        with pytest.raises(PresetInvalid) as info:
            load("bad", user_dir)
        err = info.value
        assert err.data["path"] == str(path) and err.data["key"] == key
        assert expected in err.data["expected"]
        assert str(err).startswith(f"{path}: {key}: expected ")

    def test_false_switches_loudness_off(self, user_dir: Path) -> None:
        """loudness_target_lufs = false is valid and kept as False."""
        write_toml(user_dir, "quiet", "[export]\nloudness_target_lufs = false\n")
        assert load("quiet", user_dir).export["loudness_target_lufs"] is False

    def test_not_utf8_and_too_big(self, user_dir: Path) -> None:
        """A file that is not UTF-8, or over 64 KiB, is refused naming the file."""
        (user_dir / "latin.toml").write_bytes(b'description = "caf\xe9"\n')
        with pytest.raises(PresetInvalid, match="UTF-8"):
            load("latin", user_dir)
        write_toml(user_dir, "huge", "# " + "x" * 70_000 + "\n")
        with pytest.raises(PresetInvalid, match="64 KiB"):
            load("huge", user_dir)


class TestNotFound:
    def test_a_close_name_is_suggested(self, user_dir: Path) -> None:
        """An unknown name suggests the close one(s), case-insensitively."""
        for typo in ("lofy", "LoFi", "tecno"):
            with pytest.raises(PresetNotFound) as info:
                load(typo, user_dir)
            assert "did you mean" in info.value.data["hint"]
        with pytest.raises(PresetNotFound, match="'lofi'"):
            load("lofy", user_dir)

    def test_a_far_name_lists_what_exists(self, user_dir: Path) -> None:
        """With nothing close, the hint lists the presets and where user ones go."""
        with pytest.raises(PresetNotFound) as info:
            load("polka", user_dir)
        hint = info.value.data["hint"]
        assert "ambient, cinematic, lofi" in hint and str(user_dir / "polka.toml") in hint

    def test_names_are_not_paths(self, user_dir: Path) -> None:
        """A name with a path in it is only ever looked up among the listed files."""
        with pytest.raises(PresetNotFound):
            load("../presets/lofi", user_dir)
        with pytest.raises(InvalidParams):
            load("", user_dir)


class TestApply:
    @pytest.fixture
    def preset(self) -> Preset:
        return Preset(
            name="test", description="", prompt_prefix="lo-fi hip hop",
            prompt_suffix="vinyl crackle, 80 bpm",
            params={"duration": 30, "temperature": 1.0, "model": "musicgen-small"},
            export={"format": "wav", "loudness_target_lufs": -14.0},
            source="shipped", path=Path("/x/test.toml"),
        )

    def test_explicit_request_values_win(self, preset: Preset) -> None:
        """Request values override the preset's, None counts as absent, the name is kept."""
        params, export = apply(preset, {
            "prompt": "rainy night", "duration": 12, "temperature": None, "seed": 7,
            "format": "mp3", "mp3_bitrate_kbps": 192, "preset": "other",
        })
        assert params == {"prompt": "lo-fi hip hop, rainy night, vinyl crackle, 80 bpm",
                          "duration": 12, "temperature": 1.0, "model": "musicgen-small",
                          "seed": 7, "preset": "test"}
        assert export == {"format": "mp3", "mp3_bitrate_kbps": 192,
                          "loudness_target_lufs": -14.0}
        assert dict(preset.params)["duration"] == 30

    def test_values_in_options_win_too(self, preset: Preset) -> None:
        """A backend parameter given in ``options`` (as the studio sends them) overrides the
        preset's flat value instead of reaching the daemon twice."""
        params, _ = apply(preset, {"prompt": "x", "options": {"temperature": 0.7}})
        assert "temperature" not in params and params["options"] == {"temperature": 0.7}

    def test_a_request_without_a_prompt_uses_the_preset_text(self, preset: Preset) -> None:
        """No prompt: the prefix and suffix alone; with neither, InvalidParams(prompt)."""
        assert apply(preset, {})[0]["prompt"] == "lo-fi hip hop, vinyl crackle, 80 bpm"
        bare = Preset(name="bare", description="", prompt_prefix="", prompt_suffix="",
                      params={}, export={}, source="user", path=Path("/x/bare.toml"))
        for request in ({}, {"prompt": "  "}, {"prompt": 3}):
            with pytest.raises(InvalidParams) as info:
                apply(bare, request)
            assert info.value.data["param"] == "prompt"

    @pytest.mark.parametrize(
        ("prefix", "prompt", "suffix", "expected"),
        [
            ("lo-fi", "rain", "crackle", "lo-fi, rain, crackle"),
            ("  lo-fi ", "  rain  ", " crackle ", "lo-fi, rain, crackle"),
            ("", "rain", "", "rain"),
            ("lo-fi", "", "crackle", "lo-fi, crackle"),
            ("Film score:", "a chase", "", "Film score: a chase"),
            ("lo-fi,", "rain", "", "lo-fi, rain"),
            ("", "rain on a roof.", "Soft piano", "rain on a roof. Soft piano"),
            ("", "rain", ", 80 bpm", "rain, 80 bpm"),
            ("", "rain", ". Slow.", "rain. Slow."),
            ("", "", "", ""),
        ],
    )
    def test_prompt_composition(self, prefix: str, prompt: str, suffix: str,
                                expected: str) -> None:
        """Parts are stripped and joined by ", " unless punctuation is already there."""
        assert compose_prompt(prefix, prompt, suffix) == expected
