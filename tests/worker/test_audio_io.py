"""Tests for timbred.worker.audio_io: reading conditioning audio, with real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.worker.conftest import WavWriter, sine
from timbred import errors
from timbred.worker.audio_io import convert_channels, probe_audio, read_audio, resample


class TestReadAudio:
    def test_stereo_48k_to_mono_32k(self, write_wav: WavWriter) -> None:
        """A 48 kHz stereo file comes back mono at 32 kHz with the right length and level."""
        path = write_wav("a.wav", seconds=0.5, rate=48_000, channels=2)
        audio = read_audio(str(path), param="melody", sample_rate=32_000, channels=1)
        assert audio.dtype == np.float32
        assert audio.shape == (1, 16_000)
        assert 0.2 < float(np.abs(audio[0, 1000:-1000]).max()) < 0.3

    def test_mono_to_stereo_duplicates(self, write_wav: WavWriter) -> None:
        """A mono file asked for as stereo has two identical channels."""
        path = write_wav("m.wav", seconds=0.25, rate=32_000, channels=1)
        audio = read_audio(str(path), param="continuation", sample_rate=32_000, channels=2)
        assert audio.shape == (2, 8_000)
        assert np.array_equal(audio[0], audio[1])

    def test_max_duration_limits_the_read(self, write_wav: WavWriter) -> None:
        """max_duration_s reads only the start of a long file."""
        path = write_wav("long.wav", seconds=2.0, rate=32_000, channels=1)
        audio = read_audio(str(path), param="melody", sample_rate=32_000, channels=1,
                           max_duration_s=0.5)
        assert audio.shape == (1, 16_000)

    def test_probe(self, write_wav: WavWriter) -> None:
        """probe_audio reports the header without decoding."""
        info = probe_audio(str(write_wav("p.wav", seconds=0.5, rate=44_100, channels=2)),
                           param="melody")
        assert (info.sample_rate, info.channels, info.frames) == (44_100, 2, 22_050)
        assert info.duration_s == pytest.approx(0.5)


class TestReadAudioErrors:
    def _expect(self, path: Path, reason: str) -> None:
        with pytest.raises(errors.AudioInputError) as info:
            read_audio(str(path), param="melody", sample_rate=32_000, channels=1)
        assert info.value.data["param"] == "melody"
        assert info.value.data["path"] == str(path)
        assert reason in info.value.data["reason"]
        assert str(path) in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is AudioInputError 'no such file' naming the param and the path."""
        self._expect(tmp_path / "nope.wav", "no such file")

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is refused as such."""
        self._expect(tmp_path, "directory")

    def test_empty_file(self, tmp_path: Path) -> None:
        """A zero-byte file is refused as empty."""
        path = tmp_path / "empty.wav"
        path.write_bytes(b"")
        self._expect(path, "empty")

    def test_corrupt_file(self, tmp_path: Path) -> None:
        """Bytes that are not audio are 'not a readable audio file'."""
        path = tmp_path / "corrupt.wav"
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
        self._expect(path, "not a readable audio file")

    def test_no_frames(self, tmp_path: Path) -> None:
        """A valid WAV header with no samples is refused."""
        path = tmp_path / "silent.wav"
        sf.write(path, np.zeros((0, 1), dtype=np.float32), 32_000)
        self._expect(path, "no audio")

    def test_non_finite_samples(self, tmp_path: Path) -> None:
        """A float WAV holding NaN is refused rather than fed to the model."""
        path = tmp_path / "nan.wav"
        data = sine(440, 0.1, 32_000)
        data[10] = np.nan
        sf.write(path, data, 32_000, subtype="FLOAT")
        self._expect(path, "NaN")


class TestConversions:
    def test_resample_length(self) -> None:
        """Resampling 44.1 kHz -> 32 kHz gives ceil(n * 32000 / 44100) samples."""
        audio = np.zeros((2, 44_100), dtype=np.float32)
        assert resample(audio, 44_100, 32_000).shape == (2, 32_000)

    def test_multichannel_to_stereo_keeps_first_two(self) -> None:
        """Audio with more than two channels keeps its first two when stereo is asked for."""
        audio = np.arange(12, dtype=np.float32).reshape(4, 3)
        assert np.array_equal(convert_channels(audio, 2), audio[:2])
