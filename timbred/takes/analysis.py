"""What a take's audio says about itself: tempo with beat positions, the first downbeat, and
the key, measured with librosa.

Everything is measured on a mono mixdown resampled to 22,050 Hz (librosa's own rate: its
onset and chroma defaults are tuned for it, and a constant-Q chroma needs its top octave
under the Nyquist frequency, which an 8 kHz take would not have).

- **Tempo and beats**: ``librosa.beat.beat_track`` on the onset-strength envelope (dynamic
  programming over a tempo estimate, Ellis 2007). Its tempo is then taken from the beats it
  found (the median inter-beat interval), which is what a loop is cut by.
- **Downbeat**: in 4/4, the beat phase (0..3) whose beats carry the most low-frequency
  onset energy (below ~250 Hz: kicks and bass notes mark the bar's start far more often
  than its other beats). A heuristic: documented here because it can be wrong on music
  that accents beats 2 and 4 in the low end.
- **Key**: the mean constant-Q chroma (``chroma_cqt``: octave-folded CQT bins follow equal
  temperament, so energy is not smeared between neighbouring pitch classes the way an STFT
  chroma is at low frequencies), correlated with the Krumhansl-Kessler major and minor
  profiles rotated to all twelve tonics; the best Pearson correlation wins, and the
  confidence is that correlation (clamped to 0..1).

Audio shorter than :data:`MIN_ANALYSIS_S`, silent (peak under -60 dBFS), or in which no
beats are found gives ``None`` for what cannot be measured, never a guess.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from timbred.errors import InvalidParams
from timbred.takes.audio import as_audio, check_rate, warnings_ignored

__all__ = ["MIN_ANALYSIS_S", "Analysis", "analyse", "parse_key"]

#: Shorter audio is not analysed: a tempo needs a few beats, a key a few chords.
MIN_ANALYSIS_S: Final = 2.0
#: The rate librosa's defaults are tuned for; everything is measured at it.
ANALYSIS_RATE: Final = 22_050
#: Under this peak a take counts as silent.
SILENCE_DBFS: Final = -60.0
#: Pitch classes, with sharps (as TKEY writes them).
NOTES: Final = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS: Final = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B",
                 "Fb": "E", "E#": "F", "B#": "C"}
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
_MAJOR: Final = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
_MINOR: Final = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
_KEY_TEXT: Final = re.compile(
    r"\s*(?P<tonic>[A-Ga-g])(?P<accidental>[#b♯♭]?)\s*"
    r"(?P<mode>major|minor|maj|min|m|M)?\s*", re.IGNORECASE)


def _librosa() -> Any:
    # Imported on first use: it costs about a second (numba), which a daemon that never
    # analyses, and timbrectl, should not pay. librosa is untyped: used as Any.
    return importlib.import_module("librosa")


@dataclass(frozen=True)
class Analysis:
    """Tempo, beats, downbeat and key of a take; ``None`` where nothing could be measured."""

    bpm: float | None
    beats: tuple[float, ...]
    downbeat: float | None
    key: str | None
    key_short: str | None
    key_confidence: float | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (``schemas/take.schema.json``'s ``analysis``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["beats"] = list(self.beats)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analysis:
        """From :meth:`to_dict`'s output (extra keys ignored); InvalidParams naming the
        field on a missing or mistyped one."""
        if not isinstance(data, Mapping):
            raise InvalidParams("analysis must be an object", param="analysis")

        def number(name: str, optional: bool = True) -> float | None:
            value = data.get(name)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise InvalidParams(f"analysis.{name} must be a number", param=f"analysis.{name}")
            return float(value)

        def text(name: str) -> str | None:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidParams(f"analysis.{name} must be a string",
                                    param=f"analysis.{name}")
            return value

        beats = data.get("beats", [])
        if not isinstance(beats, list | tuple) or not all(
                isinstance(b, int | float) and not isinstance(b, bool) for b in beats):
            raise InvalidParams("analysis.beats must be a list of times",
                                param="analysis.beats")
        duration = number("duration_s", optional=False)
        assert duration is not None
        return cls(bpm=number("bpm"), beats=tuple(float(b) for b in beats),
                   downbeat=number("downbeat"), key=text("key"), key_short=text("key_short"),
                   key_confidence=number("key_confidence"), duration_s=duration)


def parse_key(text: object) -> tuple[str, str]:
    """``(tonic, mode)`` of a key written as people and tags write it: "A minor", "Am",
    "a min", "F# major", "Gb", "Bbm" -> ("A", "minor"), ("F#", "major"), ("F#", "major"),
    ("A#", "minor"); tonics with sharps, as TKEY writes them. A bare tonic is major.
    InvalidParams naming ``key`` otherwise."""
    found = _KEY_TEXT.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise InvalidParams(f"key: {text!r} is not a key; write it like \"A minor\", Am, "
                            "\"F# major\" or F#", param="key")
    tonic = found["tonic"].upper() + found["accidental"].replace("♯", "#").replace("♭", "b")
    tonic = _FLATS.get(tonic, tonic)
    mode = found["mode"] or ""
    minor = mode.lower() in ("minor", "min") or mode == "m"
    return tonic, "minor" if minor else "major"


def _short(tonic: str, mode: str) -> str:
    return tonic + ("m" if mode == "minor" else "")


def _mono(audio: npt.ArrayLike, sample_rate: int) -> npt.NDArray[np.float32]:
    x = as_audio(audio, allow_empty=True).mean(axis=0)
    rate = check_rate(sample_rate)
    if rate != ANALYSIS_RATE and x.size:
        g = math.gcd(rate, ANALYSIS_RATE)
        resample = importlib.import_module("scipy.signal").resample_poly
        x = resample(x, ANALYSIS_RATE // g, rate // g)
    return np.ascontiguousarray(x, dtype=np.float32)


def analyse(audio: npt.ArrayLike, sample_rate: int) -> Analysis:
    """Tempo, beats, downbeat and key of ``(channels, samples)`` audio (see the module
    docstring for how, and for when a field is ``None``)."""
    rate = check_rate(sample_rate)
    duration = as_audio(audio, allow_empty=True).shape[1] / rate
    nothing = Analysis(None, (), None, None, None, None, round(duration, 3))
    if duration < MIN_ANALYSIS_S:
        return nothing
    y = _mono(audio, rate)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak <= 10 ** (SILENCE_DBFS / 20):
        return nothing
    y = y / peak  # level does not change tempo or key; a quiet take is measured alike
    librosa = _librosa()
    with warnings_ignored():
        # librosa warns on short or near-silent input ("n_fft too large"); those cases are
        # what the None fields say.
        bpm, beats, downbeat = _tempo(librosa, y)
        key, confidence = _key(librosa, y)
    tonic, mode = key if key is not None else (None, None)
    return Analysis(
        bpm=bpm, beats=beats, downbeat=downbeat,
        key=None if tonic is None else f"{tonic} {mode}",
        key_short=None if tonic is None or mode is None else _short(tonic, mode),
        key_confidence=confidence, duration_s=round(duration, 3))


def _tempo(librosa: Any, y: npt.NDArray[np.float32]
           ) -> tuple[float | None, tuple[float, ...], float | None]:
    hop = 512
    onset = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=hop)
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=ANALYSIS_RATE,
                                        hop_length=hop)
    times = librosa.frames_to_time(frames, sr=ANALYSIS_RATE, hop_length=hop)
    if len(times) < 4:
        return None, (), None
    # The beat period is the slope of a straight line through the beat times: frame-
    # quantised intervals (23 ms at this hop) would put 120 BPM at 117.5 or 123.
    period = float(np.polyfit(np.arange(len(times)), times, 1)[0])
    if not period > 0:
        return None, (), None
    bpm = round(60.0 / period, 1)
    # The bar's first beat: the phase whose beats carry the most low-frequency onsets.
    low = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=hop, fmax=250.0,
                                       n_mels=32)
    strength = [float(np.mean(low[np.minimum(frames[phase::4], len(low) - 1)]))
                for phase in range(min(4, len(frames)))]
    downbeat = float(times[int(np.argmax(strength))])
    return bpm, tuple(round(float(t), 3) for t in times), round(downbeat, 3)


#: Chroma bins per octave (librosa's chroma_cqt default), also the tuning estimate's.
_CHROMA_BINS = 36


def _tuning(librosa: Any, y: npt.NDArray[np.float32]) -> float:
    """The take's deviation from A440 in fractions of a chroma bin, as ``chroma_cqt`` would
    estimate it itself (librosa's ``estimate_tuning``: pitches tracked, the louder half's
    deviations), except that a take with no pitch to track (noise, near-silence) is taken
    as in tune instead of a UserWarning from every analysis of it."""
    pitch, mag = librosa.piptrack(y=y, sr=ANALYSIS_RATE)
    pitched = pitch > 0
    if not pitched.any():
        return 0.0
    found = pitch[(mag >= np.median(mag[pitched])) & pitched]
    if found.size == 0:
        return 0.0
    return float(librosa.pitch_tuning(found, bins_per_octave=_CHROMA_BINS))


def _key(librosa: Any, y: npt.NDArray[np.float32]) -> tuple[tuple[str, str] | None,
                                                          float | None]:
    chroma = librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_RATE, bins_per_octave=_CHROMA_BINS,
                                        tuning=_tuning(librosa, y))
    profile = np.asarray(chroma.mean(axis=1), dtype=np.float64)
    if not np.isfinite(profile).all() or profile.std() < 1e-6:
        return None, None
    best: tuple[float, str, str] | None = None
    for mode, template in (("major", _MAJOR), ("minor", _MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            if math.isfinite(r) and (best is None or r > best[0]):
                best = (r, NOTES[tonic], mode)
    if best is None:
        return None, None
    return (best[1], best[2]), round(min(1.0, max(0.0, best[0])), 3)
