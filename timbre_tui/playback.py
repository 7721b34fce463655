"""Playback of takes: miniaudio when there is an audio device, a silent clock when there is not.

:class:`Player` keeps what the studio shows (which take, playing or paused, where the playhead
is); a :class:`PlaybackBackend` makes the sound. :class:`MiniaudioBackend` decodes the whole take
once (in a worker thread) and feeds a ``miniaudio.PlaybackDevice`` from a generator over the
decoded frames, so the playhead is the frame the generator has reached. :class:`NullBackend`
plays nothing and advances the playhead by the clock: the studio works the same without a sound
card (containers, CI, a remote shell), and tests inject it with a fake clock.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Literal, Protocol

import anyio.to_thread
import soundfile as sf

PlayState = Literal["stopped", "playing", "paused"]


class PlaybackError(Exception):
    """Raised when a take cannot be opened or played (missing file, undecodable, device gone)."""


class PlaybackBackend(Protocol):
    """What the player needs from an audio output."""

    #: A short name for the status bar ("alsa", "pulseaudio", "none").
    name: str
    #: False when nothing is heard (the status bar says why in ``note``).
    audible: bool
    note: str

    def open(self, path: str) -> float:
        """Prepare ``path`` for playing (blocking; runs in a thread); return its duration."""

    def play(self, position_s: float) -> None:
        """Start (or restart) output at ``position_s``."""

    def pause(self) -> None:
        """Stop output; :meth:`position` keeps its value."""

    def position(self) -> float:
        """Seconds into the opened take."""

    def close(self) -> None:
        """Release the device."""


class NullBackend:
    """No audio device: nothing is heard, and the playhead advances with ``clock``."""

    name = "none"
    audible = False

    def __init__(self, note: str = "no audio device",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.note = note
        self._clock = clock
        self._base = 0.0
        self._started_at: float | None = None

    def open(self, path: str) -> float:
        try:
            return float(sf.info(path).duration)
        except (OSError, RuntimeError) as exc:
            raise PlaybackError(f"cannot open {path}: {exc}") from exc

    def play(self, position_s: float) -> None:
        self._base = position_s
        self._started_at = self._clock()

    def pause(self) -> None:
        self._base = self.position()
        self._started_at = None

    def position(self) -> float:
        if self._started_at is None:
            return self._base
        return self._base + (self._clock() - self._started_at)

    def close(self) -> None:
        self._started_at = None


class MiniaudioBackend:
    """The default output device through miniaudio (made by :func:`open_backend`)."""

    audible = True
    note = ""
    SAMPLE_RATE = 48_000
    CHANNELS = 2

    def __init__(self, device: Any) -> None:
        import miniaudio

        self._miniaudio = miniaudio
        self._device = device
        self.name = str(device.backend).lower()
        self._samples: Any = None
        self._frames = 0
        self._frame = 0
        self._latency_s = 0.2

    def open(self, path: str) -> float:
        self._device.stop()
        try:
            decoded = self._miniaudio.decode_file(
                path, output_format=self._miniaudio.SampleFormat.FLOAT32,
                nchannels=self.CHANNELS, sample_rate=self.SAMPLE_RATE)
        except (self._miniaudio.MiniaudioError, OSError) as exc:
            raise PlaybackError(f"cannot decode {path}: {exc}") from exc
        self._samples = decoded.samples
        self._frames = decoded.num_frames
        self._frame = 0
        return float(self._frames / self.SAMPLE_RATE)

    def _stream(self) -> Generator[Any, int, None]:
        required = yield b""
        ch = self.CHANNELS
        while self._frame < self._frames:
            chunk = self._samples[self._frame * ch:(self._frame + required) * ch]
            self._frame += required
            required = yield chunk

    def play(self, position_s: float) -> None:
        self._device.stop()
        self._frame = max(0, min(self._frames, int(position_s * self.SAMPLE_RATE)))
        stream = self._stream()
        next(stream)
        try:
            self._device.start(stream)
        except self._miniaudio.MiniaudioError as exc:
            raise PlaybackError(f"the audio device refused to start: {exc}") from exc

    def pause(self) -> None:
        pos = self.position()
        self._device.stop()
        self._frame = int(pos * self.SAMPLE_RATE)

    def position(self) -> float:
        return max(0.0, self._frame / self.SAMPLE_RATE - self._latency_s)

    def close(self) -> None:
        self._device.close()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 while probing (ALSA prints its complaints straight to the terminal)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_backend() -> PlaybackBackend:
    """miniaudio's default output device, or a :class:`NullBackend` that says why not."""
    try:
        import miniaudio
    except ImportError as exc:  # pragma: no cover - miniaudio is a dependency
        return NullBackend(f"no audio: miniaudio is not importable ({exc})")
    with _quiet_stderr():
        try:
            device = miniaudio.PlaybackDevice(
                output_format=miniaudio.SampleFormat.FLOAT32,
                nchannels=MiniaudioBackend.CHANNELS, sample_rate=MiniaudioBackend.SAMPLE_RATE,
                app_name="timbre")
        except miniaudio.MiniaudioError as exc:
            return NullBackend(f"no audio device ({exc.args[0] if exc.args else exc})")
    if "null" in str(device.backend).lower():
        device.close()
        return NullBackend("no audio device (only miniaudio's null output)")
    return MiniaudioBackend(device)


class Player:
    """The take being played, its state and playhead, over a backend."""

    def __init__(self, backend: PlaybackBackend) -> None:
        self.backend = backend
        self.take_key: tuple[str, int] | None = None
        self.path: str | None = None
        self.duration = 0.0
        self.state: PlayState = "stopped"
        self._paused_at = 0.0

    @property
    def playing(self) -> bool:
        return self.state == "playing"

    async def play(self, key: tuple[str, int], path: str) -> None:
        """Play ``path`` from the start (or resume it when it is the paused take)."""
        if self.path == path and self.state == "paused":
            self.resume()
            return
        self.backend.pause()
        self.state = "stopped"
        self.duration = await anyio.to_thread.run_sync(self.backend.open, path)
        self.take_key, self.path = key, path
        self.backend.play(0.0)
        self.state = "playing"

    def pause(self) -> None:
        if self.state == "playing":
            self._paused_at = self.position()
            self.backend.pause()
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused":
            self.backend.play(self._paused_at)
            self.state = "playing"

    def stop(self) -> None:
        if self.state != "stopped":
            self.backend.pause()
        self.state = "stopped"
        self._paused_at = 0.0

    def seek(self, delta_s: float) -> float:
        """Move the playhead by ``delta_s`` (clamped to the take); return the new position."""
        pos = max(0.0, min(self.duration, self.position() + delta_s))
        if self.state == "playing":
            self.backend.play(pos)
        elif self.state == "paused":
            self._paused_at = pos
        return pos

    def position(self) -> float:
        if self.state == "stopped":
            return 0.0
        if self.state == "paused":
            return self._paused_at
        return max(0.0, min(self.duration, self.backend.position()))

    def poll(self) -> bool:
        """Notice the end of the take; True when the state changed."""
        if self.state == "playing" and self.backend.position() >= self.duration:
            self.stop()
            return True
        return False

    def close(self) -> None:
        self.stop()
        self.backend.close()
