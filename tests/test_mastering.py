"""Tests for timbred.takes.mastering: chain files, their validation, and master().

Loudness and true peak are measured here with an independent meter (pyloudnorm, and a 4x
``resample_poly`` true peak written below), never with the module's own functions.
"""

from __future__ import annotations

import importlib
import json
import math
import tomllib
from pathlib import Path

import jsonschema
import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest

from tests.support import write_toml
from timbred.errors import InvalidParams
from timbred.protocol.schema import load as load_schema
from timbred.takes.mastering import (
    CEILING,
    CLIP,
    EFFECTS,
    LOUDNESS,
    Chain,
    MasterReport,
    list_chains,
    load_chain,
    master,
    shipped_dir,
)

SHIPPED = ("club", "none", "streaming", "tape")
RATE = 44_100
F64 = npt.NDArray[np.float64]


# --- the independent meter and the test signals -----------------------------------------------


def lufs(audio: npt.ArrayLike, rate: int = RATE) -> float:
    """pyloudnorm's BS.1770 integrated loudness of (channels, samples) audio."""
    x = np.asarray(audio, dtype=np.float64)
    return float(pyloudnorm.Meter(rate).integrated_loudness(x.T))


def true_peak_dbtp(audio: npt.ArrayLike) -> float:
    """max(sample peak, 4x resample_poly peak), in dB."""
    x = np.asarray(audio, dtype=np.float64)
    up = importlib.import_module("scipy.signal").resample_poly(x, 4, 1, axis=-1)
    return 20.0 * math.log10(max(float(np.abs(up).max()), float(np.abs(x).max())))


def music(seconds: float = 10.0, rate: int = RATE) -> npt.NDArray[np.float32]:
    """Stereo: a chord and a bass line, noise bursts twice a second, clicks four times."""
    rng = np.random.default_rng(22)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    sines = np.stack([
        0.08 * np.sin(2 * np.pi * 220.0 * t) + 0.06 * np.sin(2 * np.pi * 330.0 * t + 1.0)
        + 0.1 * np.sin(2 * np.pi * 55.0 * t),
        0.08 * np.sin(2 * np.pi * 220.5 * t + 0.5) + 0.06 * np.sin(2 * np.pi * 277.2 * t)
        + 0.1 * np.sin(2 * np.pi * 55.0 * t + 0.2),
    ])
    out = sines.copy()
    burst = round(0.06 * rate)
    fade = np.exp(-np.arange(burst) / (0.015 * rate))
    for start in range(0, n - burst, rate // 2):
        out[:, start:start + burst] += 0.3 * rng.standard_normal((2, burst)) * fade
    click = np.exp(-np.arange(round(0.002 * rate)) / (0.0004 * rate))
    for start in range(rate // 8, n - click.size, rate // 4):
        out[:, start:start + click.size] += 0.7 * click
    return out.astype(np.float32)


def sine(freq: float, seconds: float, rate: int, amplitude: float) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)


def thd(x: npt.ArrayLike, rate: int, freq: float) -> float:
    """Total harmonic distortion (harmonics 2..10 over the fundamental, amplitude ratio) of
    the first channel, over one second from 0.5 s (after the filters have settled)."""
    seg = np.asarray(x, dtype=np.float64)[0, rate // 2: rate // 2 + rate]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    hz = np.fft.rfftfreq(seg.size, 1.0 / rate)

    def power(f: float) -> float:
        return float(np.sum(spectrum[np.abs(hz - f) <= 3.0] ** 2))

    harmonics = sum(power(k * freq) for k in range(2, 11) if k * freq < rate / 2)
    return math.sqrt(harmonics / power(freq))


@pytest.fixture(scope="module")
def take() -> npt.NDArray[np.float32]:
    return music()


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mastering"
    d.mkdir()
    return d


# --- shipped chains and the schema ------------------------------------------------------------


class TestShipped:
    def test_the_shipped_chains_are_listed(self) -> None:
        """Without a user directory the listing is the four shipped files, each described."""
        infos = list_chains(None)
        assert tuple(i.name for i in infos) == SHIPPED
        for info in infos:
            assert info.source == "shipped" and info.problem is None
            assert info.path.parent == shipped_dir()
            assert info.description and "\n" not in info.description

    @pytest.mark.parametrize("name", SHIPPED)
    def test_every_shipped_chain_loads_and_validates(self, name: str) -> None:
        """Each file is valid against the schema, loads, and its to_dict() (every setting
        filled in) is valid too and names every setting of its effect type."""
        path = shipped_dir() / f"{name}.toml"
        jsonschema.validate(tomllib.loads(path.read_text()), load_schema("mastering.schema.json"))
        chain = load_chain(name)
        assert (chain.name, chain.source, chain.path) == (name, "shipped", path)
        recorded = chain.to_dict()
        jsonschema.validate(recorded, load_schema("mastering.schema.json"))
        for effect in recorded["effects"]:
            assert set(effect) == {"type", *EFFECTS[effect["type"]].settings}

    def test_the_shipped_targets(self) -> None:
        """streaming and tape aim at -14 LUFS, club at -9, all under -1 dBTP or less; none
        has no effects and no target at all."""
        targets = {name: load_chain(name).target for name in SHIPPED}
        for name, lufs_target in (("streaming", -14.0), ("tape", -14.0), ("club", -9.0)):
            target = targets[name]
            assert target is not None and target.loudness_lufs == lufs_target
            assert -1.0 <= target.true_peak_dbtp <= -0.3
        none = load_chain("none")
        assert (none.effects, none.target, none.input_lufs) == ((), None, None)
        assert [e.type for e in load_chain("streaming").effects] == ["highpass", "compressor"]
        assert "saturation" in [e.type for e in load_chain("tape").effects]

    def test_the_schema_agrees_with_the_registry(self) -> None:
        """schemas/mastering.schema.json states exactly the registry's effect types, and for
        each setting the registry's default and range."""
        doc = load_schema("mastering.schema.json")
        jsonschema.Draft202012Validator.check_schema(doc)
        items = doc["properties"]["effects"]["items"]
        assert items["properties"]["type"]["enum"] == list(EFFECTS)
        for kind, spec in EFFECTS.items():
            props = doc["$defs"][kind]["properties"]
            assert props["type"] == {"const": kind}
            assert set(props) - {"type"} == set(spec.settings), kind
            for key, setting in spec.settings.items():
                assert (props[key]["default"], props[key]["minimum"], props[key]["maximum"]) \
                    == (setting.default, setting.minimum, setting.maximum), (kind, key)
        target = doc["$defs"]["target"]["properties"]
        for key, setting in (("true_peak_dbtp", CEILING), ("clip_db", CLIP)):
            assert (target[key]["default"], target[key]["minimum"], target[key]["maximum"]) \
                == (setting.default, setting.minimum, setting.maximum)
        number = doc["properties"]["input_lufs"]["anyOf"][0]
        assert (number["minimum"], number["maximum"]) == (LOUDNESS.minimum, LOUDNESS.maximum)


# --- user chains ------------------------------------------------------------------------------


class TestUserChains:
    def test_a_user_chain_overrides_a_shipped_one(self, user_dir: Path) -> None:
        """A user file named like a shipped chain wins, in load_chain and in the listing;
        settings it leaves out take the registry's defaults."""
        path = write_toml(user_dir, "streaming", 'description = "mine"\n[[effects]]\n'
                     'type = "compressor"\nratio = 3\n[target]\nloudness_lufs = -16\n')
        chain = load_chain("streaming", user_dir)
        assert (chain.source, chain.path, chain.description) == ("user", path, "mine")
        assert dict(chain.effects[0].settings) == {
            "threshold_db": -18.0, "ratio": 3.0, "attack_ms": 10.0, "release_ms": 150.0}
        assert chain.target is not None and chain.target.loudness_lufs == -16.0
        assert chain.target.true_peak_dbtp == -1.0
        info = {i.name: i for i in list_chains(user_dir)}["streaming"]
        assert info.source == "user" and info.overrides_shipped
        assert load_chain("streaming").source == "shipped"  # without the user directory

    def test_a_new_user_chain_is_listed_and_a_missing_directory_is_fine(
            self, user_dir: Path, tmp_path: Path) -> None:
        """A user chain with a new name joins the list; a missing directory has no chains."""
        write_toml(user_dir, "warm", '[[effects]]\ntype = "saturation"\n')
        names = [i.name for i in list_chains(user_dir)]
        assert names == sorted([*SHIPPED, "warm"])
        assert load_chain("warm", user_dir).effects[0].settings["drive_db"] == 6.0
        assert [i.name for i in list_chains(tmp_path / "nowhere")] == list(SHIPPED)

    @pytest.mark.parametrize(("text", "key", "words"), [
        ('[[effects]]\ntype = "reverb"\n', "effects[0].type", "one of"),
        ('[[effects]]\ntype = "compressor"\nratio = 50\n', "effects[0].ratio", "from 1 to 20"),
        ('[[effects]]\ntype = "gain"\ngain_db = "loud"\n', "effects[0].gain_db", "a number"),
        ("this is = = not toml\n", "(syntax)", "not valid TOML"),
        ('[[effects]]\ntype = "compressor"\nthresold_db = -20\n', "effects[0].thresold_db",
         "did you mean 'threshold_db'"),
        ('[[effects]]\ntype = "highpass"\ncutoff_frequency_hz = nan\n',
         "effects[0].cutoff_frequency_hz", "from 10 to 1000, got nan"),
        ("[[effects]]\nratio = 2.0\n", "effects[0].type", "is required"),
        ("[target]\nloudness_lufs = 3\n", "target.loudness_lufs", "from -60 to 0"),
        ('name = "other"\n', "name", "the file's name"),
        ("input_lufs = true\n", "input_lufs", "a number"),
    ], ids=["unknown-type", "out-of-range", "wrong-type", "not-toml", "unknown-key", "nan",
            "no-type", "target", "name", "bool"])
    def test_a_bad_user_chain_names_the_file_and_the_key(
            self, user_dir: Path, text: str, key: str, words: str) -> None:
        """Each mistake is an InvalidParams on `master` whose message names the file and the
        key and says what was expected; the listing shows the file with that problem."""
        path = write_toml(user_dir, "mine", text)
        with pytest.raises(InvalidParams) as caught:
            load_chain("mine", user_dir)
        error = caught.value
        assert error.message.startswith(f"{path}: {key}: "), error.message
        assert words in error.message, error.message
        assert error.data["param"] == "master"
        assert (error.data["path"], error.data["key"]) == (str(path), key)
        info = {i.name: i for i in list_chains(user_dir)}["mine"]
        assert info.problem == error.message and info.description == ""

    def test_an_unknown_chain_lists_the_known_ones(self, user_dir: Path) -> None:
        """An unknown name is InvalidParams on `master` with a close match, the known chains
        and where to add one; a name that could not be a file name is refused as such."""
        write_toml(user_dir, "warm", "")
        with pytest.raises(InvalidParams) as caught:
            load_chain("clubb", user_dir)
        message = caught.value.message
        assert "'clubb'" in message and "did you mean 'club'?" in message
        assert "club, none, streaming, tape, warm" in message
        assert str(user_dir / "clubb.toml") in message
        assert caught.value.data["param"] == "master"
        assert caught.value.data["known"] == sorted([*SHIPPED, "warm"])
        with pytest.raises(InvalidParams, match="lower-case letters"):
            load_chain("../streaming", user_dir)

    def test_a_malformed_recording_names_the_key(self) -> None:
        """from_dict checks a recorded chain as strictly as a file."""
        recorded = load_chain("club").to_dict()
        recorded["effects"][2]["ratio"] = 99.0
        with pytest.raises(InvalidParams) as caught:
            Chain.from_dict(recorded)
        assert caught.value.message.startswith("recorded mastering chain: effects[2].ratio: ")
        with pytest.raises(InvalidParams, match="name"):
            Chain.from_dict({"effects": []})


# --- master() ---------------------------------------------------------------------------------


class TestMaster:
    def test_streaming_lands_on_minus_14_under_minus_1_dbtp(
            self, take: npt.NDArray[np.float32]) -> None:
        """10 s of stereo sines, noise bursts and clicks through `streaming`: within 0.5 LU
        of -14 LUFS, true peak at most -0.9 dBTP, same shape, float32; the report agrees."""
        before = lufs(take)
        out, report = master(take, RATE, load_chain("streaming"))
        assert out.shape == take.shape and out.dtype == np.float32
        assert abs(lufs(out) - -14.0) <= 0.5, lufs(out)
        assert true_peak_dbtp(out) <= -0.9, true_peak_dbtp(out)
        assert isinstance(report, MasterReport) and report.chain == "streaming"
        assert report.before_lufs is not None and abs(report.before_lufs - before) < 0.01
        assert report.after_lufs is not None and abs(report.after_lufs - lufs(out)) < 0.01
        assert report.limiter == "lookahead"
        assert json.loads(json.dumps(report.to_dict())) == report.to_dict()

    def test_club_lands_on_minus_9(self, take: npt.NDArray[np.float32]) -> None:
        """The same take through `club`: within 0.5 LU of -9 LUFS, under its ceiling."""
        chain = load_chain("club")
        assert chain.target is not None
        out, report = master(take, RATE, chain)
        assert abs(lufs(out) - -9.0) <= 0.5, lufs(out)
        assert true_peak_dbtp(out) <= chain.target.true_peak_dbtp + 0.1
        assert report.limited

    def test_none_returns_the_audio_unchanged(self, take: npt.NDArray[np.float32]) -> None:
        """`none` hands back the very samples it was given, and reports no level stage."""
        out, report = master(take, RATE, load_chain("none"))
        assert out.dtype == np.float32 and np.array_equal(out, take)
        assert (report.limiter, report.limited, report.gain_db) == (None, False, 0.0)

    def test_tape_adds_harmonics(self) -> None:
        """A pure 1 kHz sine through `tape` comes out with harmonics (its saturation),
        through `streaming` without them."""
        tone = sine(1000.0, 2.0, 48_000, 0.3)
        assert thd(tone, 48_000, 1000.0) < 1e-4
        taped, _ = master(tone, 48_000, load_chain("tape"))
        streamed, _ = master(tone, 48_000, load_chain("streaming"))
        assert thd(taped, 48_000, 1000.0) > 0.003, thd(taped, 48_000, 1000.0)
        assert thd(streamed, 48_000, 1000.0) < 0.001, thd(streamed, 48_000, 1000.0)

    @pytest.mark.parametrize("name", ["tape", "club"])
    def test_a_recorded_chain_masters_identically(self, name: str) -> None:
        """to_dict() through JSON and back with from_dict() gives the same chain settings and
        sample-for-sample the same audio."""
        chain = load_chain(name)
        recorded = json.loads(json.dumps(chain.to_dict()))
        again = Chain.from_dict(recorded)
        assert again.to_dict() == chain.to_dict() and again.source == "recorded"
        audio = music(3.0)
        first, report = master(audio, RATE, chain)
        second, report_again = master(audio, RATE, again)
        assert np.array_equal(first, second)
        assert report.to_dict() == report_again.to_dict()

    def test_silence_and_short_audio_pass(self) -> None:
        """Silence stays silent and audio too short to measure is only kept under the
        ceiling: nothing fails on what cannot be measured."""
        silent, report = master(np.zeros((2, RATE), dtype=np.float32), RATE,
                                load_chain("streaming"))
        assert not silent.any() and report.after_lufs is None
        short, report = master(sine(440.0, 0.1, RATE, 0.9), RATE, load_chain("club"))
        assert short.shape == (2, round(0.1 * RATE)) and report.after_lufs is None
        assert true_peak_dbtp(short) <= -0.9

    def test_a_chain_must_be_a_chain(self) -> None:
        """master() names what was wrong when it is given a name instead of a Chain."""
        with pytest.raises(InvalidParams, match="chain must be a mastering Chain"):
            master(np.zeros((2, 10), dtype=np.float32), RATE, "streaming")  # type: ignore[arg-type]
