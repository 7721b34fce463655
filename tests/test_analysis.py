"""Tempo, beats, downbeat and key measured on real synthesised signals (librosa, no mocks):
a chord struck on every beat at a known tempo in a known key (the pulse test fixture's
generator), silence, and audio too short to say anything."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tests.backends.pulse import SAMPLE_RATE, PulseBackend
from timbred.errors import InvalidParams
from timbred.request import Request
from timbred.takes.analysis import Analysis, analyse, parse_key


def pulse(bpm: int, key: str, seconds: float = 8.0) -> npt.NDArray[np.float32]:
    backend = PulseBackend()
    backend.load("fixture", device="cpu", dtype="float32")
    out = backend._one(Request(prompt="x", duration=seconds, seed=1, variations=1,
                               options={"bpm": bpm, "key": key}), backend.capabilities)
    audio: npt.NDArray[np.float32] = out.audio[0]
    return audio


class TestTempoAndKey:
    @pytest.mark.parametrize(("bpm", "key", "short"), [
        (120, "A minor", "Am"), (100, "C major", "C"), (92, "F# minor", "F#m"),
        (140, "D major", "D")])
    def test_the_tempo_beats_downbeat_and_key_of_a_pulse(self, bpm: int, key: str,
                                                         short: str) -> None:
        """Tempo within 2 %, beats a beat apart, the downbeat on a bar line (the fixture
        marks beat 1 in the low end), and the key and its TKEY form."""
        found = analyse(pulse(bpm, key), SAMPLE_RATE)
        assert found.bpm is not None and abs(found.bpm - bpm) <= 0.02 * bpm, found.bpm
        gaps = np.diff(found.beats)
        assert abs(float(np.median(gaps)) - 60 / bpm) < 0.03
        bar = 4 * 60 / bpm
        assert found.downbeat is not None
        assert min(found.downbeat % bar, bar - found.downbeat % bar) < 0.06, found.downbeat
        assert (found.key, found.key_short) == (key, short)
        assert found.key_confidence is not None and found.key_confidence > 0.5

    def test_a_stereo_take_at_another_rate_is_measured_alike(self) -> None:
        """Channels are mixed down and the rate does not matter (8 kHz included)."""
        import importlib

        mono = pulse(110, "E minor")
        down = importlib.import_module("scipy.signal").resample_poly(mono, 8000, SAMPLE_RATE,
                                                                      axis=1)
        found = analyse(np.vstack([down, down * 0.5]), 8000)
        assert found.key == "E minor" and abs((found.bpm or 0) - 110) < 2.2

    def test_silence_and_short_audio_say_nothing(self) -> None:
        for audio, rate in ((np.zeros((2, 5 * 22050)), 22050), (pulse(120, "A minor", 1.0),
                                                                SAMPLE_RATE)):
            found = analyse(audio, rate)
            assert (found.bpm, found.beats, found.downbeat, found.key, found.key_short,
                    found.key_confidence) == (None, (), None, None, None, None)
        assert analyse(np.zeros((1, 0)), 22050).duration_s == 0.0

    def test_round_trip_and_refusals(self) -> None:
        found = analyse(pulse(120, "A minor"), SAMPLE_RATE)
        assert Analysis.from_dict(found.to_dict()) == found
        with pytest.raises(InvalidParams, match=r"analysis\.bpm"):
            Analysis.from_dict({**found.to_dict(), "bpm": "fast"})
        with pytest.raises(InvalidParams, match=r"analysis\.beats"):
            Analysis.from_dict({**found.to_dict(), "beats": "1,2"})


class TestParseKey:
    @pytest.mark.parametrize(("text", "want"), [
        ("A minor", ("A", "minor")), ("Am", ("A", "minor")), ("a min", ("A", "minor")),
        ("F# major", ("F#", "major")), ("Gb", ("F#", "major")), ("Bbm", ("A#", "minor")),
        ("C", ("C", "major")), (" Eb Minor ", ("D#", "minor"))])
    def test_the_ways_people_write_keys(self, text: str, want: tuple[str, str]) -> None:
        assert parse_key(text) == want

    @pytest.mark.parametrize("text", ["H major", "", "A dorian", "minor", 7])
    def test_anything_else_is_refused_naming_key(self, text: object) -> None:
        with pytest.raises(InvalidParams, match="is not a key") as info:
            parse_key(text)
        assert info.value.data["param"] == "key"


class TestThreads:
    """The daemon analyses and measures takes in threads (two workers' takes at once)."""

    def test_tuning_of_a_take_with_no_pitch_is_zero_without_a_warning(self) -> None:
        import warnings

        from timbred.takes.analysis import ANALYSIS_RATE, _librosa, _tuning

        librosa = _librosa()
        t = np.arange(ANALYSIS_RATE * 2) / ANALYSIS_RATE
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # librosa's own estimate warns on the first
            assert _tuning(librosa, np.zeros(ANALYSIS_RATE * 2, np.float32)) == 0.0
            tuned = _tuning(librosa, np.sin(2 * np.pi * 440.0 * t).astype(np.float32))
        assert abs(tuned) < 0.05

    def test_overlapping_quiet_blocks_leave_the_filters_as_they_were(self) -> None:
        """Two threads' blocks overlapping in time: the second waits for the first, so
        neither restores the other's filters and none are left ignored for good."""
        import threading
        import time
        import warnings

        from timbred.takes.audio import warnings_ignored

        before = list(warnings.filters)
        inside = threading.Event()

        def first() -> None:
            with warnings_ignored():
                inside.set()
                time.sleep(0.3)

        def second() -> None:
            inside.wait()
            with warnings_ignored():  # unlocked, it would end after the first's, restoring
                time.sleep(0.5)       # the filters the first set: "ignore", for good

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert warnings.filters == before
