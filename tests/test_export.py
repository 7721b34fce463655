"""Tests for the takes package (export and publishing): real files, read back by other decoders.

Decoding is checked with miniaudio (dr_wav, dr_flac, dr_mp3 and stb_vorbis: none of them
libsndfile, which writes); tags are checked with mutagen in a fresh process; loudness with
pyloudnorm and an independent 4x true-peak estimate; atomicity with real crashes (a child
killed between write and link), a real full disk (a small tmpfs, where mount works) and a
real file-size limit (RLIMIT_FSIZE in a child, which yields EFBIG).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import miniaudio
import mutagen.mp3
import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest
import soundfile as sf

from timbred import takes as export
from timbred.errors import InvalidParams, OutputError, TakeNotFound
from timbred.protocol.schema import load
from timbred.takes import ExportOptions, LoudnessReport, TakeMetadata, encoding
from timbred.takes import publish as takes

# scipy and mutagen's file types are untyped: used as Any.
resample_poly: Any = importlib.import_module("scipy.signal").resample_poly
MP3: Any = mutagen.mp3.MP3

SR = 32_000
F32 = npt.NDArray[np.float32]
ALL_FORMATS = ("wav", "flac", "mp3", "ogg")
#: Frames an MP3 / Vorbis decoder may add or drop (encoder delay and padding).
LOSSY_TOLERANCE = {"mp3": 2 * 1152, "ogg": 2048}
PROMPT = ("a slow lo-fi hip hop beat with warm rhodes chords, vinyl crackle and soft rain on "
          "the window, 80 bpm, late evening mood")
RECIPE: dict[str, Any] = {
    "model": "musicgen-small", "model_id": "facebook/musicgen-small",
    "revision": "0123456789abcdef0123456789abcdef01234567", "backend": "musicgen",
    "device": "cpu", "dtype": "float32", "sample_rate": SR, "window_s": 30.0,
    "stride_s": 18.0, "precision": None,
    "params": {"prompt": PROMPT, "duration": 2.0, "seed": 7, "variations": 1, "melody": None,
               "continuation": None, "options": {"top_k": 250}},
}


# --- helpers -----------------------------------------------------------------------------------


def metadata(**kw: Any) -> TakeMetadata:
    base: dict[str, Any] = {
        "prompt": PROMPT, "seed": 7, "model": "musicgen-small",
        "revision": RECIPE["revision"], "backend": "musicgen", "device": "cpu",
        "params": {"duration": 2.0, "top_k": 250, "temperature": 1.0, "melody": None},
        "created_at": "2025-03-04T05:06:07Z", "job_id": "j-0001", "take_index": 1,
        "recipe": RECIPE,
    }
    base.update(kw)
    return TakeMetadata(**base)


def noise(seconds: float = 2.0, channels: int = 2, level: float = 0.1, seed: int = 0) -> F32:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal((channels, round(seconds * SR)))).astype(np.float32)


def sine(seconds: float = 2.0, freq: float = 440.0, level: float = 0.3) -> F32:
    t = np.arange(round(seconds * SR)) / SR
    return np.tile(level * np.sin(2 * np.pi * freq * t), (2, 1)).astype(np.float32)


def music_mix(seconds: float = 3.0) -> F32:
    """Kick, hats, bass and a chord: music-like crest factor (peaks ~15 dB over loudness)."""
    rng = np.random.default_rng(3)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    kick = np.zeros(n)
    hats = np.zeros(n)
    for start in range(0, n, SR // 2):
        m = min(n - start, 4000)
        kick[start:start + m] += 0.9 * np.sin(2 * np.pi * 60 * t[:m]) * np.exp(-np.arange(m) / 1500)
    for start in range(SR // 4, n, SR // 2):
        m = min(n - start, 800)
        hats[start:start + m] += 0.3 * rng.standard_normal(m) * np.exp(-np.arange(m) / 200)
    chord = sum(0.08 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    bass = 0.2 * np.sin(2 * np.pi * 55 * t)
    left = kick + hats + chord + bass
    right = kick + 0.7 * hats + chord + bass
    return np.stack([left, right]).astype(np.float32)


def loud_signal(seconds: float = 3.0) -> F32:
    """Full-scale square-wave bursts over clipped noise: sample peaks at 0 dBFS, true peaks
    above it (the Gibbs overshoot), and 20 dB of crest over the loudness."""
    rng = np.random.default_rng(5)
    n = round(seconds * SR)
    square = np.sign(np.sin(2 * np.pi * 100 * np.arange(n) / SR))
    bursts = np.zeros(n)
    for start in range(0, n, SR // 2):
        bursts[start:start + 640] = square[start:start + 640]
    bed = 0.2 * np.clip(rng.standard_normal(n), -1, 1)
    return np.clip(np.stack([bursts + bed, bursts - bed]), -1, 1).astype(np.float32)


def true_peak_db(audio: npt.NDArray[Any]) -> float:
    """An independent BS.1770-4 Annex 2 estimate: 4x oversampled, never below the sample peak."""
    x = np.asarray(audio, dtype=np.float64)
    peak = max(float(np.abs(resample_poly(x, 4, 1, axis=-1)).max()), float(np.abs(x).max()))
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def lufs(audio: npt.NDArray[Any], rate: int = SR) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(np.asarray(audio, np.float64).T))


def decode(path: Path) -> tuple[int, int, F32, str]:
    """Decode with miniaudio at the file's own rate and channel count: (rate, channels,
    (channels, frames) audio, the file's sample format as miniaudio reports it)."""
    info = miniaudio.get_file_info(str(path))
    dec = miniaudio.decode_file(str(path), output_format=miniaudio.SampleFormat.FLOAT32,
                                nchannels=info.nchannels, sample_rate=info.sample_rate)
    assert (dec.sample_rate, dec.nchannels) == (info.sample_rate, info.nchannels)
    samples = np.frombuffer(dec.samples, dtype=np.float32).reshape(-1, info.nchannels).T
    return int(info.sample_rate), int(info.nchannels), samples, str(info.sample_format.name)


_FRESH_READER = r"""
import json, sys
import mutagen
f = mutagen.File(sys.argv[1])
tags = f.tags
out = {"type": type(f).__name__}
if hasattr(tags, "version"):
    out["id3_version"] = list(tags.version)
    out["TIT2"] = str(tags["TIT2"].text[0])
    out["COMM"] = [str(c.text[0]) for c in tags.getall("COMM")]
    out["TDRC"] = str(tags["TDRC"].text[0])
    out["TXXX"] = {fr.desc: str(fr.text[0]) for fr in tags.getall("TXXX")}
    out["USLT"] = [[fr.lang, str(fr.text)] for fr in tags.getall("USLT")]
else:
    out["vorbis"] = {k.upper(): v for k, v in tags.as_dict().items()}
print(json.dumps(out))
"""


def fresh_tags(path: Path) -> dict[str, Any]:
    """The tags of ``path`` as mutagen reads them in a new interpreter."""
    proc = subprocess.run([sys.executable, "-c", _FRESH_READER, str(path)],
                          capture_output=True, text=True, timeout=60, check=True)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str, *, read_only: bool = False) -> Iterator[None]:
    """Mount a small tmpfs on ``directory`` (root and a mount-capable container only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True,
                           capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], capture_output=True)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- options -----------------------------------------------------------------------------------


class TestExportOptions:
    def test_defaults_and_round_trip(self) -> None:
        """The defaults are WAV PCM_24, 320 kbps, q 0.7, -14 LUFS, -1 dBTP; dicts round-trip."""
        opts = ExportOptions()
        assert opts.to_dict() == {"format": "wav", "wav_subtype": "PCM_24",
                                  "mp3_bitrate_kbps": 320, "ogg_quality": 0.7,
                                  "loudness_target_lufs": -14.0, "true_peak_ceiling_dbtp": -1.0,
                                  "master": None}
        other = ExportOptions(format="ogg", ogg_quality=0.3, loudness_target_lufs=None)
        assert ExportOptions.from_dict(other.to_dict()) == other
        assert ExportOptions.from_dict({"format": "MP3"}).format == "mp3"

    @pytest.mark.parametrize(("field", "value"), [
        ("format", "aiff"), ("wav_subtype", "PCM_8"), ("mp3_bitrate_kbps", 300),
        ("mp3_bitrate_kbps", True), ("ogg_quality", 1.5), ("ogg_quality", "high"),
        ("loudness_target_lufs", 3.0), ("loudness_target_lufs", float("nan")),
        ("true_peak_ceiling_dbtp", 0.5), ("true_peak_ceiling_dbtp", None),
    ])
    def test_invalid_values_name_the_field(self, field: str, value: Any) -> None:
        """Each bad value raises InvalidParams whose param is the field and whose message
        says what is allowed."""
        with pytest.raises(InvalidParams) as info:
            ExportOptions(**{field: value})
        assert info.value.data["param"] == field
        assert field in str(info.value)

    def test_unknown_key_is_refused(self) -> None:
        """from_dict refuses keys it does not know, naming them."""
        with pytest.raises(InvalidParams) as info:
            ExportOptions.from_dict({"format": "wav", "bitrate": 128})
        assert info.value.data["param"] == "bitrate"

    @pytest.mark.parametrize(("name", "fmt"), [("a.wav", "wav"), ("B.WAV", "wav"),
                                               ("c.flac", "flac"), ("d.mp3", "mp3"),
                                               ("e.ogg", "ogg"), ("f.oga", "ogg")])
    def test_format_from_path(self, name: str, fmt: str) -> None:
        """The extension picks the format, whatever its case."""
        assert export.format_from_path(name) == fmt

    def test_format_from_unknown_extension(self) -> None:
        """An unknown extension is InvalidParams naming ``path`` and listing the known ones."""
        with pytest.raises(InvalidParams) as info:
            export.format_from_path("take.aiff")
        assert info.value.data["param"] == "path"
        assert ".mp3" in info.value.data["allowed"]


# --- formats -----------------------------------------------------------------------------------

WRITE_CASES = [
    ("wav", {"wav_subtype": "PCM_16"}, "SIGNED16"),
    ("wav", {"wav_subtype": "PCM_24"}, "SIGNED24"),
    ("wav", {"wav_subtype": "FLOAT"}, "FLOAT32"),
    ("flac", {}, "SIGNED24"),
    ("mp3", {}, None),
    ("ogg", {}, None),
]


class TestFormats:
    @pytest.mark.parametrize(("fmt", "extra", "sample_format"), WRITE_CASES,
                             ids=[f"{c[0]}-{c[1].get('wav_subtype', '')}" for c in WRITE_CASES])
    @pytest.mark.parametrize("channels", [1, 2])
    def test_miniaudio_decodes_what_was_written(self, tmp_path: Path, fmt: str,
                                                extra: dict[str, Any], sample_format: str | None,
                                                channels: int) -> None:
        """Each format decodes in miniaudio with the written rate, channels and length (exact
        for WAV and FLAC, within codec padding for MP3 and Vorbis) and the same audio."""
        audio = noise(1.0, channels=channels)
        opts = ExportOptions(format=fmt, **extra)
        expected, _ = export.normalise(audio, SR, target_lufs=-14.0, ceiling_dbtp=-1.0)
        written = export.write_take(tmp_path / f"t{opts.extension}", audio, SR, opts, metadata())
        assert (written.format, written.frames, written.channels) == (fmt, SR, channels)
        assert written.bytes == written.path.stat().st_size
        rate, chans, decoded, sformat = decode(written.path)
        assert (rate, chans) == (SR, channels)
        if fmt in LOSSY_TOLERANCE:
            assert abs(decoded.shape[1] - SR) <= LOSSY_TOLERANCE[fmt]
            # Lossy, but the same signal: within 1 dB of its RMS.
            ratio = np.sqrt(np.mean(decoded ** 2) / np.mean(expected ** 2))
            assert abs(20 * np.log10(ratio)) < 1.0
        else:
            assert sformat == sample_format
            assert decoded.shape == expected.shape
            step = {"SIGNED16": 2.0 ** -15, "SIGNED24": 2.0 ** -23, "FLOAT32": 0.0}[sformat]
            assert np.max(np.abs(decoded - expected)) <= step

    @pytest.mark.parametrize(("kbps", "rate"), [(320, 32_000), (128, 32_000), (32, 32_000),
                                                (192, 48_000), (96, 24_000)])
    def test_mp3_bit_rate_is_what_was_asked(self, tmp_path: Path, kbps: int, rate: int) -> None:
        """The kbps -> compression_level mapping makes libsndfile write exactly that CBR
        rate, as mutagen reads it from the frames."""
        audio = (0.1 * np.random.default_rng(1).standard_normal((2, rate))).astype(np.float32)
        opts = ExportOptions(format="mp3", mp3_bitrate_kbps=kbps)
        path = tmp_path / "t.mp3"
        export.write_take(path, audio, rate, opts, metadata())
        info = MP3(path).info
        assert info.bitrate == kbps * 1000
        assert info.sample_rate == rate

    def test_mp3_rate_that_the_sample_rate_lacks(self, tmp_path: Path) -> None:
        """320 kbps does not exist in MPEG-2 (24 kHz): InvalidParams naming the field, no file."""
        with pytest.raises(InvalidParams) as info:
            export.write_take(tmp_path / "t.mp3", noise(0.5), 24_000,
                              ExportOptions(format="mp3"), metadata())
        assert info.value.data["param"] == "mp3_bitrate_kbps"
        assert listing(tmp_path) == []

    def test_mp3_sample_rate_it_cannot_hold(self, tmp_path: Path) -> None:
        """MP3 has no 96 kHz: OutputError saying which rates it has, nothing written."""
        with pytest.raises(OutputError, match="44100"):
            export.write_take(tmp_path / "t.mp3", noise(0.1), 96_000,
                              ExportOptions(format="mp3"), metadata())
        assert listing(tmp_path) == []

    def test_mp3_unavailable_is_an_output_error(self, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        """Without MP3 in libsndfile, OutputError says so; nothing is written."""
        monkeypatch.setattr(encoding, "mp3_available", lambda: False)
        with pytest.raises(OutputError, match="cannot write MP3"):
            export.write_take(tmp_path / "t.mp3", noise(0.5), SR,
                              ExportOptions(format="mp3"), metadata())
        assert listing(tmp_path) == []

    def test_ogg_quality_goes_the_right_way(self, tmp_path: Path) -> None:
        """Higher ogg_quality makes larger files (libsndfile's level is 1 - quality)."""
        audio = noise(2.0)
        sizes = [export.write_take(tmp_path / f"q{q}.ogg", audio, SR,
                                   ExportOptions(format="ogg", ogg_quality=q), metadata()).bytes
                 for q in (0.1, 0.5, 0.9)]
        assert sizes[0] < sizes[1] < sizes[2]

    def test_extension_must_match_the_format(self, tmp_path: Path) -> None:
        """Writing FLAC into a .wav name is InvalidParams naming ``path``."""
        with pytest.raises(InvalidParams) as info:
            export.write_take(tmp_path / "t.wav", noise(0.1), SR, ExportOptions(format="flac"),
                              metadata())
        assert info.value.data["param"] == "path"

    def test_audio_shape_is_checked(self, tmp_path: Path) -> None:
        """(samples, channels) audio is refused with a message about the expected shape."""
        with pytest.raises(InvalidParams, match=r"\(channels, samples\)"):
            export.write_take(tmp_path / "t.wav", noise(0.1).T, SR, ExportOptions(), metadata())


# --- tags --------------------------------------------------------------------------------------


class TestTags:
    @pytest.mark.parametrize("fmt", ALL_FORMATS)
    def test_a_fresh_process_reads_every_tag(self, tmp_path: Path, fmt: str) -> None:
        """mutagen in a new interpreter finds the title, the prompt, every TIMBRE_* field and
        the JSON recipe: ID3v2.4 frames in MP3 and WAV, Vorbis comments in FLAC and Ogg."""
        md = metadata()
        written = export.write_take(tmp_path / f"t.{fmt}", noise(1.0), SR,
                                    ExportOptions(format=fmt), md)
        got = fresh_tags(written.path)
        if fmt in ("mp3", "wav"):
            assert got["type"] == {"mp3": "MP3", "wav": "WAVE"}[fmt]
            assert got["id3_version"][:2] == [2, 4]
            assert got["TIT2"] == md.title
            assert got["COMM"] == [PROMPT]
            assert got["TDRC"].replace(" ", "T") == "2025-03-04T05:06:07"
            fields = got["TXXX"]
        else:
            fields = got["vorbis"]
            assert fields.pop("TITLE") == [md.title]
            assert fields.pop("DESCRIPTION") == [PROMPT]
            assert fields.pop("COMMENT") == [PROMPT]
            fields = {k: v[0] for k, v in fields.items()}
        assert json.loads(fields["TIMBRE_RECIPE"]) == RECIPE
        assert fields["TIMBRE_PROMPT"] == PROMPT
        assert fields["TIMBRE_SEED"] == "7"
        assert fields["TIMBRE_MODEL"] == "musicgen-small"
        assert fields["TIMBRE_REVISION"] == RECIPE["revision"]
        assert fields["TIMBRE_BACKEND"] == "musicgen"
        assert fields["TIMBRE_DEVICE"] == "cpu"
        assert fields["TIMBRE_VERSION"] == md.timbre_version
        assert fields["TIMBRE_CREATED_AT"] == "2025-03-04T05:06:07Z"
        assert fields["TIMBRE_JOB_ID"] == "j-0001"
        assert fields["TIMBRE_TAKE_INDEX"] == "1"
        assert fields["TIMBRE_PARAM_DURATION"] == "2.0"
        assert fields["TIMBRE_PARAM_TOP_K"] == "250"
        assert fields["TIMBRE_PARAM_TEMPERATURE"] == "1.0"
        assert "TIMBRE_PARAM_MELODY" not in fields  # None values are left out
        loud = written.loudness
        assert loud is not None and loud.before_lufs is not None and loud.after_lufs is not None
        assert float(fields["TIMBRE_LOUDNESS_BEFORE_LUFS"]) == pytest.approx(loud.before_lufs,
                                                                            abs=0.006)
        assert float(fields["TIMBRE_LOUDNESS_AFTER_LUFS"]) == pytest.approx(-14.0, abs=0.5)

    @pytest.mark.parametrize("fmt", ALL_FORMATS)
    def test_lyrics_are_in_the_frame_players_show(self, tmp_path: Path, fmt: str) -> None:
        """A song's words: USLT (with its language) in ID3, LYRICS in Vorbis comments, read
        back by a fresh mutagen and by read_tags; not repeated as a TIMBRE_PARAM_ field."""
        words = "[verse]\nÇa va, 東京\n\n[chorus]\nla la"
        md = metadata(params={"duration": 2.0, "lyrics": words, "language": "ja"})
        path = export.write_take(tmp_path / f"t.{fmt}", noise(0.5), SR,
                                 ExportOptions(format=fmt), md).path
        got = fresh_tags(path)
        if fmt in ("mp3", "wav"):
            assert got["USLT"] == [["jpn", words]]
            assert "TIMBRE_PARAM_LYRICS" not in got["TXXX"]
        else:
            assert got["vorbis"]["LYRICS"] == [words]
            assert "TIMBRE_PARAM_LYRICS" not in got["vorbis"]
        assert export.read_tags(path)["LYRICS"] == words
        unsung = export.write_take(tmp_path / f"u.{fmt}", noise(0.5), SR,
                                   ExportOptions(format=fmt), metadata()).path
        assert "LYRICS" not in export.read_tags(unsung)

    def test_read_tags_is_the_same_for_every_format(self, tmp_path: Path) -> None:
        """read_tags gives one normalised dictionary whatever the container."""
        md = metadata(prompt="ünïcode prompt — with a dash", take_index=2)
        seen = []
        for fmt in ALL_FORMATS:
            path = export.write_take(tmp_path / f"t.{fmt}", noise(0.5), SR,
                                     ExportOptions(format=fmt), md).path
            tags = export.read_tags(path)
            tags.pop("DESCRIPTION", None)
            seen.append(tags)
        assert all(t == seen[0] for t in seen[1:])
        assert seen[0]["TITLE"] == "ünïcode prompt — with a dash"
        assert seen[0]["COMMENT"] == md.prompt
        assert seen[0]["DATE"] == "2025-03-04T05:06:07"
        assert seen[0]["TIMBRE_TAKE_INDEX"] == "2"

    def test_titles_are_shortened_sensibly(self) -> None:
        """Long prompts are cut at a word boundary with an ellipsis; empty ones get a name."""
        title = export.short_title(PROMPT)
        assert len(title) <= export.TITLE_MAX_CHARS
        assert title.endswith("\u2026")
        assert PROMPT.startswith(title[:-1])
        assert PROMPT[len(title) - 1] in " ,"  # cut between words
        assert export.short_title("  calm   piano \n") == "calm piano"
        assert export.short_title("", 3) == "Untitled take 3"

    def test_read_tags_of_missing_file(self, tmp_path: Path) -> None:
        """A missing file is TakeNotFound."""
        with pytest.raises(TakeNotFound):
            export.read_tags(tmp_path / "nope.wav")


# --- loudness ----------------------------------------------------------------------------------


def assert_within_ceiling(audio: F32, ceiling_db: float = -1.0) -> None:
    assert audio.dtype == np.float32
    assert np.isfinite(audio).all()
    if audio.size:
        assert np.abs(audio).max() <= 10 ** (ceiling_db / 20)
        assert true_peak_db(audio) <= ceiling_db + 1e-6


class TestLoudness:
    @pytest.mark.parametrize("signal", [noise, sine, music_mix, loud_signal],
                             ids=["noise", "sine", "mix", "loud"])
    @pytest.mark.parametrize("target", [-14.0, -20.0])
    def test_synthetic_audio_reaches_the_target(self, signal: Any, target: float) -> None:
        """Measured independently, the result is within 0.5 LU of the target and no sample
        or estimated true peak is above the -1 dBTP ceiling."""
        out, report = export.normalise(signal(), SR, target_lufs=target, ceiling_dbtp=-1.0)
        assert abs(lufs(out) - target) < 0.5
        assert report.after_lufs == pytest.approx(lufs(out), abs=1e-6)
        assert_within_ceiling(out)
        assert report.true_peak_after_dbtp is not None
        assert report.true_peak_after_dbtp <= -1.0

    def test_loud_signal_is_limited_smoothly_not_clipped(self) -> None:
        """A signal whose peaks would pass the ceiling is limited (limited=True): the gain
        changes slowly (a fraction of a dB per sample, where clipping jumps by many dB), is
        never above the static gain and is the same on both channels."""
        x = loud_signal()
        out, report = export.normalise(x, SR, target_lufs=-9.0, ceiling_dbtp=-1.0)
        assert report.limited
        assert report.true_peak_before_dbtp is not None and report.true_peak_before_dbtp > 0
        assert_within_ceiling(out)
        assert abs(lufs(out) + 9.0) < 0.5
        static = x.astype(np.float64) * 10 ** (report.gain_db / 20)
        valid = (np.abs(static) > 0.05).all(axis=0)
        ratio = out[:, valid] / static[:, valid]
        assert np.allclose(ratio[0], ratio[1], rtol=1e-5)
        gain_db = 20 * np.log10(ratio[0])
        assert gain_db.max() <= 1e-4
        assert gain_db.min() < -3.0  # it really limited
        idx = np.flatnonzero(valid)
        adjacent = np.diff(idx) == 1
        assert np.abs(np.diff(gain_db)[adjacent]).max() < 0.2

    def test_ceiling_holds_without_a_target(self) -> None:
        """target_lufs=None applies no gain but still holds the ceiling."""
        out, report = export.normalise(loud_signal(1.0), SR, target_lufs=None, ceiling_dbtp=-2.0)
        assert report.gain_db == 0.0 and report.limited
        assert_within_ceiling(out, -2.0)

    @pytest.mark.parametrize(("name", "audio"), [
        ("silence-1s", np.zeros((2, SR), np.float32)),
        ("one-zero-sample", np.zeros((1, 1), np.float32)),
        ("one-loud-sample", np.full((1, 1), 5.0, np.float32)),
        ("100ms-noise", noise(0.1, level=0.05)),
        ("100ms-silence", np.zeros((2, SR // 10), np.float32)),
        ("nan-and-inf", np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)),
        ("empty", np.zeros((2, 0), np.float32)),
    ])
    def test_edge_cases_neither_fail_nor_produce_nan(self, name: str, audio: F32) -> None:
        """Silence, one sample and 100 ms give no error, no NaN and no warning (warnings are
        errors here); loudness is None (unmeasurable) and quiet audio is left unchanged."""
        out, report = export.normalise(audio, SR, target_lufs=-14.0, ceiling_dbtp=-1.0)
        assert out.shape == audio.shape
        assert report.before_lufs is None and report.after_lufs is None
        assert report.gain_db == 0.0
        assert_within_ceiling(out)
        for value in dataclasses.asdict(report).values():
            assert value is None or isinstance(value, bool) or np.isfinite(value)
        if name in ("silence-1s", "one-zero-sample", "100ms-noise", "100ms-silence"):
            assert np.array_equal(out, audio) and not report.limited
        if name == "one-loud-sample":
            assert report.limited and out[0, 0] > 0.5

    @pytest.mark.slow
    def test_tiny_model_output(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        """Real (tiny, random-weight) MusicGen output normalises to within 0.5 LU of the
        target, under the ceiling, and survives a FLAC round trip at that loudness."""
        from timbred.request import Request
        from timbred.testing.tiny_musicgen import build_tiny_musicgen
        from timbred.worker.musicgen import MusicgenBackend

        model = build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny")
        backend = MusicgenBackend()
        backend.load(str(model), device="cpu", dtype="float32")
        try:
            output = backend.generate(Request(prompt=PROMPT, duration=1.5, seed=3))
        finally:
            backend.unload()
        take = output.audio[0]
        out, report = export.normalise(take, output.sample_rate, target_lufs=-14.0,
                                       ceiling_dbtp=-1.0)
        assert abs(lufs(out, output.sample_rate) + 14.0) < 0.5
        assert_within_ceiling(out)
        directory = tmp_path_factory.mktemp("takes")
        written = export.write_take(directory / "take-1.flac", take, output.sample_rate,
                                    ExportOptions(format="flac"), metadata())
        rate, _, decoded, _ = decode(written.path)
        assert abs(lufs(decoded, rate) + 14.0) < 0.5
        assert report.before_lufs is not None


# --- atomic writes ------------------------------------------------------------------------------


_CRASH_CHILD = r"""
import os, sys
import numpy as np
from timbred import takes as export

def crash(*args, **kwargs):
    os._exit(17)  # die the moment the first final name would be linked

os.link = crash
export.write_take(sys.argv[1], np.full((1, 16000), 0.1, np.float32), 32000,
                  export.ExportOptions(format=sys.argv[2]),
                  export.TakeMetadata(prompt="p", seed=1, model="m"))
"""

_FSIZE_CHILD = r"""
import json, os, resource, signal, sys
import numpy as np
from timbred import takes as export
from timbred.errors import OutputError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
try:
    export.write_take(sys.argv[1], np.full((2, 32000), 0.1, np.float32), 32000,
                      export.ExportOptions(wav_subtype="FLOAT"),
                      export.TakeMetadata(prompt="p", seed=1, model="m"))
except OutputError as exc:
    print(json.dumps({"error": type(exc).__name__, "reason": exc.data["reason"],
                      "errno": getattr(exc.__cause__, "errno", None)}))
else:
    print(json.dumps({"error": None}))
"""

_WRITER_CHILD = r"""
import sys
import numpy as np
from timbred import takes as export

directory, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
opts = export.ExportOptions(wav_subtype="PCM_16", loudness_target_lufs=None)
for k in range(1, count + 1):
    md = export.TakeMetadata(prompt=writer, seed=k, model="m", job_id=writer, take_index=k)
    print(export.write_next_take(directory, np.full((1, 320), 0.01 * k, np.float32), 32000,
                                 opts, md).path, flush=True)
"""


class TestAtomicWrites:
    def test_never_overwrites(self, tmp_path: Path) -> None:
        """A second write to the same name fails with OutputError and leaves the first file
        and its sidecar byte for byte as they were; so does an orphan sidecar's name."""
        path = tmp_path / "t.wav"
        export.write_take(path, noise(0.5), SR, ExportOptions(), metadata())
        before = (path.read_bytes(), export.sidecar_path(path).read_bytes())
        with pytest.raises(OutputError, match="already exists"):
            export.write_take(path, noise(0.5, seed=9), SR, ExportOptions(), metadata())
        assert (path.read_bytes(), export.sidecar_path(path).read_bytes()) == before
        orphan = tmp_path / "u.flac.json"
        orphan.write_text("{}")
        with pytest.raises(OutputError, match="already exists"):
            export.write_take(tmp_path / "u.flac", noise(0.5), SR,
                              ExportOptions(format="flac"), metadata())
        assert listing(tmp_path) == ["t.wav", "t.wav.json", "u.flac.json"]

    @pytest.mark.parametrize("fmt", ["wav", "mp3"])
    def test_crash_before_link_leaves_no_final_file(self, tmp_path: Path, fmt: str) -> None:
        """A process killed between writing and linking leaves only partial files, which
        sweep_partials removes; nothing ever appears under the final names."""
        final = tmp_path / "day" / f"take-1.{fmt}"
        proc = run_child(_CRASH_CHILD, str(final), fmt)
        assert proc.returncode == 17, proc.stderr
        left = listing(final.parent)
        assert f"take-1.{fmt}" not in left and f"take-1.{fmt}.json" not in left
        assert len(left) == 2 and all(takes.is_partial_name(n) for n in left)
        removed = takes.sweep_partials(tmp_path)
        assert sorted(p.name for p in removed) == left
        assert listing(final.parent) == []

    def test_full_disk(self, tmp_path: Path) -> None:
        """On a full file system (a 64 KiB tmpfs) the write fails with OutputError "the disk
        is full" and leaves nothing behind, not even a partial file."""
        mount = tmp_path / "small"
        with tmpfs(mount, "64k"):
            with pytest.raises(OutputError) as info:
                export.write_take(mount / "take-1.wav", noise(1.0), SR,
                                  ExportOptions(wav_subtype="FLOAT"), metadata())
            assert info.value.data["reason"] == "the disk is full"
            assert isinstance(info.value.__cause__, OSError)
            assert info.value.__cause__.errno == errno.ENOSPC
            assert listing(mount) == []

    def test_file_size_limit(self, tmp_path: Path) -> None:
        """Under RLIMIT_FSIZE (in a child process) the write fails with EFBIG as an
        OutputError and nothing is left under the final name."""
        final = tmp_path / "take-1.wav"
        proc = run_child(_FSIZE_CHILD, str(final))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["error"] == "OutputError"
        assert result["errno"] == errno.EFBIG
        assert "file size limit" in result["reason"]
        assert listing(tmp_path) == []

    def test_read_only_directory(self, tmp_path: Path) -> None:
        """A read-only directory (a read-only mount as root, else mode 0555) fails with
        OutputError and creates nothing."""
        target = tmp_path / "ro"
        if os.geteuid() == 0:
            context: contextlib.AbstractContextManager[None] = tmpfs(target, "1m",
                                                                     read_only=True)
        else:
            target.mkdir()
            target.chmod(0o555)
            context = contextlib.nullcontext()
        with context:
            with pytest.raises(OutputError) as info:
                export.write_take(target / "take-1.ogg", noise(0.5), SR,
                                  ExportOptions(format="ogg"), metadata())
            assert info.value.data["reason"] in ("the file system is read-only",
                                                 "permission denied")
            assert listing(target) == []
            with pytest.raises(OutputError):  # and a missing subdirectory cannot be made
                export.write_take(target / "sub" / "take-1.ogg", noise(0.5), SR,
                                  ExportOptions(format="ogg"), metadata())

    def test_concurrent_writers_never_collide(self, tmp_path: Path) -> None:
        """Four threads and three processes writing numbered takes into one session directory
        get distinct names, take-1..take-N with no gap, and every file keeps what its writer
        wrote (its tags, its sidecar and the sidecar's checksum agree)."""
        session = takes.session_dir(tmp_path, dt.datetime(2025, 3, 4), "jam")
        per_writer = 4
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER_CHILD, str(session), f"p{i}",
                                   str(per_writer)], stdout=subprocess.PIPE, text=True)
                 for i in range(3)]
        opts = ExportOptions(wav_subtype="PCM_16", loudness_target_lufs=None)
        paths: list[Path] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(name: str) -> None:
            try:
                for k in range(1, per_writer + 1):
                    md = metadata(prompt=name, job_id=name, take_index=k, seed=k)
                    audio = np.full((1, 320), 0.01 * k, np.float32)
                    written = export.write_next_take(session, audio, SR, opts, md)
                    with lock:
                        paths.append(written.path)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            paths += [Path(line) for line in out.split()]
        assert errors == []
        total = 7 * per_writer
        assert len(paths) == len(set(paths)) == total
        assert {p.name for p in paths} == {f"take-{n}.wav" for n in range(1, total + 1)}
        owners = set()
        for p in paths:
            tags = export.read_tags(p)
            side = json.loads(export.sidecar_path(p).read_text())
            assert (side["job_id"], side["take_index"]) == (tags["TIMBRE_JOB_ID"],
                                                            int(tags["TIMBRE_TAKE_INDEX"]))
            assert side["take"]["path"] == p.name
            assert side["take"]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
            owners.add((side["job_id"], side["take_index"]))
        assert len(owners) == total
        assert len(listing(session)) == 2 * total  # takes and sidecars, no partial files


# --- sidecar and re-export -----------------------------------------------------------------


class TestSidecar:
    @pytest.mark.parametrize("fmt", ALL_FORMATS)
    def test_sidecar_validates_and_can_re_render(self, tmp_path: Path, fmt: str) -> None:
        """The sidecar validates against schemas/take.schema.json and holds the recipe, the
        parameters and the metadata back as they were given."""
        md = metadata()
        written = export.write_take(tmp_path / f"t.{fmt}", noise(1.0), SR,
                                    ExportOptions(format=fmt), md)
        side = json.loads(written.sidecar_path.read_text())
        validator = jsonschema.Draft202012Validator(
            load("take.schema.json"), format_checker=jsonschema.FormatChecker())
        validator.validate(side)
        assert side["take"] == {
            "path": f"t.{fmt}", "format": fmt, "subtype": written.subtype, "sample_rate": SR,
            "channels": 2, "frames": SR, "duration_s": 1.0, "bytes": written.bytes,
            "sha256": hashlib.sha256(written.path.read_bytes()).hexdigest()}
        assert side["recipe"] == RECIPE
        assert side["export"] == ExportOptions(format=fmt).to_dict()
        again = TakeMetadata.from_dict(side)
        assert again == dataclasses.replace(md, loudness=written.loudness)
        assert isinstance(again.loudness, LoudnessReport)

    def test_schema_is_not_vacuous(self, tmp_path: Path) -> None:
        """A sidecar without its recipe, or with a path instead of a file name, is invalid."""
        written = export.write_take(tmp_path / "t.wav", noise(0.5), SR, ExportOptions(),
                                    metadata())
        side = json.loads(written.sidecar_path.read_text())
        validator = jsonschema.Draft202012Validator(load("take.schema.json"))
        assert validator.is_valid(side)
        assert not validator.is_valid({k: v for k, v in side.items() if k != "recipe"})
        recipe = side["recipe"]
        assert not validator.is_valid({**side, "recipe": {k: v for k, v in recipe.items()
                                                          if k != "window_s"}})
        assert not validator.is_valid({**side, "recipe": {**recipe, "precision": "int4"}})
        assert not validator.is_valid({**side, "take": {**side["take"], "path": "/a/t.wav"}})

    def test_metadata_is_validated(self) -> None:
        """created_at must be UTC ISO 8601; params must be JSON; seed must be >= 0."""
        with pytest.raises(InvalidParams) as info:
            metadata(created_at="2025-03-04T05:06:07+02:00")
        assert info.value.data["param"] == "created_at"
        with pytest.raises(InvalidParams) as info:
            metadata(params={"x": object()})
        assert info.value.data["param"] == "params"
        with pytest.raises(InvalidParams) as info:
            metadata(seed=-1)
        assert info.value.data["param"] == "seed"
        assert metadata(created_at="2025-03-04T05:06:07+00:00").created_at == \
            "2025-03-04T05:06:07Z"


class TestExportExisting:
    def test_round_trip_keeps_the_sidecar_metadata(self, tmp_path: Path) -> None:
        """A WAV take re-encoded to MP3 in another directory keeps its name, its job, take
        index and recipe (from the sidecar), decodes at the right rate and length, and a
        second export to the same place is refused."""
        src = export.write_take(tmp_path / "take-3.wav", music_mix(2.0), SR, ExportOptions(),
                                metadata(take_index=3))
        out_dir = tmp_path / "exports"
        out_dir.mkdir()
        written = export.export_existing(src.path, out_dir, ExportOptions(format="mp3"))
        assert written.path == out_dir / "take-3.mp3"
        rate, channels, decoded, _ = decode(written.path)
        assert (rate, channels) == (SR, 2)
        assert abs(decoded.shape[1] - src.frames) <= LOSSY_TOLERANCE["mp3"]
        tags = export.read_tags(written.path)
        assert tags["TIMBRE_TAKE_INDEX"] == "3" and tags["TIMBRE_JOB_ID"] == "j-0001"
        assert json.loads(tags["TIMBRE_RECIPE"]) == RECIPE
        side = json.loads(written.sidecar_path.read_text())
        assert side["created_at"] == "2025-03-04T05:06:07Z" and side["recipe"] == RECIPE
        assert written.loudness is not None and written.loudness.before_lufs is not None
        assert abs(written.loudness.before_lufs + 14.0) < 0.1  # already normalised
        with pytest.raises(OutputError, match="already exists"):
            export.export_existing(src.path, out_dir, ExportOptions(format="mp3"))

    def test_foreign_file_without_sidecar(self, tmp_path: Path) -> None:
        """A WAV Timbre did not write is exported with a bare record: its name as prompt."""
        src = tmp_path / "field recording.wav"
        sf.write(src, noise(0.5, channels=1)[0], SR)
        written = export.export_existing(src, tmp_path / "fr.flac", ExportOptions(format="flac"))
        tags = export.read_tags(written.path)
        assert tags["TIMBRE_PROMPT"] == "field recording"
        assert "TIMBRE_SEED" not in tags
        rate, channels, decoded, _ = decode(written.path)
        assert (rate, channels, decoded.shape[1]) == (SR, 1, SR // 2)

    def test_missing_source(self, tmp_path: Path) -> None:
        """A source that does not exist is TakeNotFound."""
        with pytest.raises(TakeNotFound):
            export.export_existing(tmp_path / "none.wav", tmp_path, ExportOptions())


# --- layout --------------------------------------------------------------------------------


class TestLayout:
    def test_session_dir(self, tmp_path: Path) -> None:
        """root/YYYY/MM/DD/<session>, with the session name made safe and bounded."""
        when = dt.datetime(2025, 1, 31, 23, 59)
        assert takes.session_dir(tmp_path, when, "evening jam") == \
            tmp_path / "2025" / "01" / "31" / "evening jam"
        day = tmp_path / "2025" / "01" / "31"
        for hostile in ("../../etc", "a/b\\c", "..", ".hidden", "\x00\n", "é" * 200, ""):
            path = takes.session_dir(tmp_path, when, hostile)
            assert path.parent == day
            assert not path.name.startswith(".")
            assert "/" not in path.name and "\\" not in path.name
            assert 0 < len(path.name.encode()) <= takes.SESSION_NAME_MAX_BYTES
        assert takes.session_dir(tmp_path, when, "").name == "session"

    def test_the_days_own_session_is_the_day_folder(self, tmp_path: Path) -> None:
        """The default session, named by the day's date, says the date once in the path."""
        when = dt.datetime(2026, 12, 2, 9, 30)
        assert takes.session_dir(tmp_path, when, "2026-12-02") == tmp_path / "2026/12/02"
        assert takes.session_dir(tmp_path, when, "2026-12-01") == \
            tmp_path / "2026/12/02/2026-12-01"

    def test_allocate_take_path(self, tmp_path: Path) -> None:
        """The smallest number no take-<n>.* uses, in any format (sidecars count)."""
        assert takes.allocate_take_path(tmp_path / "missing", "wav").name == "take-1.wav"
        for name in ("take-1.wav", "take-2.mp3.json", "take-4.flac",
                     ".take-3.wav.0a1b2c3d.partial"):
            (tmp_path / name).write_bytes(b"")
        assert takes.allocate_take_path(tmp_path, "wav").name == "take-3.wav"

    def test_write_wav_and_check_output_still_work(self, tmp_path: Path) -> None:
        """The daemon's float-WAV writer still writes atomically and refuses to overwrite;
        check_output accepts the extensions it is given."""
        path = takes.write_wav(tmp_path / "a.wav", noise(0.1), SR)
        assert sf.info(str(path)).subtype == "FLOAT"
        with pytest.raises(OutputError):
            takes.write_wav(path, noise(0.1), SR)
        with pytest.raises(InvalidParams):
            takes.check_output(str(tmp_path / "b.mp3"), 1)
        assert takes.check_output(str(tmp_path / "b.mp3"), 2,
                                  extensions=export.EXTENSIONS.values()) == \
            [tmp_path / "b-1.mp3", tmp_path / "b-2.mp3"]
