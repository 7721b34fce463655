"""Playback of takes: miniaudio when there is an audio device, a silent clock when there is not.

:class:`Player` keeps what the studio shows (which take, playing or paused, where the playhead
is); a :class:`PlaybackBackend` makes the sound. :class:`MiniaudioBackend` decodes the whole take
once (in a worker thread) and feeds a ``miniaudio.PlaybackDevice`` from a generator over the
decoded frames, so the playhead is the frame the generator has reached. :class:`NullBackend`
plays nothing and advances the playhead by the clock: the studio works the same without a sound
card (containers, CI, a remote shell), and tests inject it with a fake clock.

Audio that is still being made (a job's live preview) plays as a *stream*: opened empty, grown
chunk by chunk with :meth:`Player.append`, and finished when no more will come. Until then the
playhead never passes the audio received: a device that runs ahead of it plays silence and
waits, and the clock of :class:`NullBackend` waits the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Literal, Protocol

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
import soundfile as sf

PlayState = Literal["stopped", "playing", "paused"]
#: Frames as float32 ``(frames, channels)``.
Audio = npt.NDArray[np.float32]


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

    def open_stream(self) -> None:
        """Prepare an empty stream that :meth:`append` grows while it plays."""

    def append(self, path: str, start_s: float) -> float:
        """Decode the chunk file ``path`` onto the end of the stream (blocking; runs in a
        thread); return the seconds the stream now holds.

        ``start_s`` is where the chunk starts in the stream: a gap before it (a chunk that
        could not be read) becomes silence, so what follows stays in time. Raises
        :class:`PlaybackError` when the chunk cannot be read.
        """

    def finish(self) -> float:
        """No more chunks: playback ends where the stream's audio does; return its length."""

    def play(self, position_s: float) -> None:
        """Start (or restart) output at ``position_s``."""

    def pause(self) -> None:
        """Stop output; :meth:`position` keeps its value."""

    def position(self) -> float:
        """Seconds into the opened take."""

    def close(self) -> None:
        """Release the device."""


def read_chunk(path: str) -> tuple[Audio, int]:
    """The frames of the audio file ``path`` as float32 ``(frames, channels)``, and its rate.

    Raises :class:`PlaybackError` when it cannot be read or holds no audio (a chunk removed,
    or cut short, by the daemon).
    """
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
        raise PlaybackError(f"cannot read {path}: {exc}") from exc
    if len(audio) == 0:
        raise PlaybackError(f"cannot read {path}: it holds no audio (cut short?)")
    return audio, int(rate)


class StreamJoiner:
    """Places each chunk of a stream at its start, counting in the chunks' own frames."""

    def __init__(self) -> None:
        self.rate = 0
        self.frames = 0

    def place(self, audio: Audio, rate: int, start_s: float) -> Audio:
        """``audio`` with the silence that must precede it (none when it follows on)."""
        if self.rate and rate != self.rate:
            raise PlaybackError(f"a chunk at {rate} Hz in a stream at {self.rate} Hz")
        self.rate = rate
        gap = round(start_s * rate) - self.frames
        if gap > 0:
            audio = np.concatenate([np.zeros((gap, audio.shape[1]), np.float32), audio])
        self.frames += len(audio)
        return audio

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


class LinearResampler:
    """Linear interpolation from ``rate_in`` to ``rate_out`` of audio that arrives in pieces.

    The output is the same however the input is cut: output frame ``k`` sits at source
    position ``k * rate_in / rate_out`` (in whole numbers, so no rounding drifts), and the
    last source frame is held back until the one after it comes. (Resampling each chunk
    alone, as ``miniaudio.decode_file`` does for a whole take, restarts its filter at every
    chunk and clicks at each joint.)
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self._in, self._out = rate_in, rate_out
        self._held: Audio = np.zeros((0, channels), np.float32)
        self._first = 0  # the source index of _held[0]
        self._done = 0  # output frames given so far

    def feed(self, audio: Audio) -> Audio:
        """The output frames ``audio`` completes (each needs the source frame after it)."""
        src = np.concatenate([self._held, audio]) if len(self._held) else audio
        end = self._first + len(src)
        # Frame k needs source frames floor(k*in/out) and the one after: k*in < (end-1)*out.
        stop = max(self._done, -((1 - end) * self._out // self._in))
        num = np.arange(self._done, stop, dtype=np.int64) * self._in
        i = num // self._out - self._first
        frac = (num % self._out / self._out)[:, None]
        out: Audio = (src[i] + (src[i + 1] - src[i]) * frac).astype(np.float32)
        self._done = stop
        keep = min(stop * self._in // self._out, end) - self._first
        self._held = src[keep:]
        self._first += keep
        return out

    def flush(self) -> Audio:
        """The frames still held back, the input having ended (its last frame repeated)."""
        return self.feed(self._held[-1:]) if len(self._held) else self._held[:0]


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
        self._end = math.inf  # a stream's playhead waits here for more audio
        self._joiner = StreamJoiner()

    def open(self, path: str) -> float:
        try:
            duration = float(sf.info(path).duration)
        except (OSError, RuntimeError) as exc:
            raise PlaybackError(f"cannot open {path}: {exc}") from exc
        self._end = math.inf
        return duration

    def open_stream(self) -> None:
        self._base, self._started_at, self._end = 0.0, None, 0.0
        self._joiner = StreamJoiner()

    def append(self, path: str, start_s: float) -> float:
        audio, rate = read_chunk(path)  # read whole, so a damaged chunk fails as it would aloud
        self._joiner.place(audio, rate, start_s)
        if self._started_at is not None:
            # Restart the clock from the playhead: if it was waiting at the end of the audio,
            # it moves on from there (as a device that ran dry does), not from the clock.
            self._base, self._started_at = self.position(), self._clock()
        self._end = self._joiner.seconds
        return self._end

    def finish(self) -> float:
        return self._joiner.seconds

    def play(self, position_s: float) -> None:
        self._base = position_s
        self._started_at = self._clock()

    def pause(self) -> None:
        self._base = self.position()
        self._started_at = None

    def position(self) -> float:
        if self._started_at is None:
            return self._base
        return min(self._end, self._base + (self._clock() - self._started_at))

    def close(self) -> None:
        self._started_at = None


class MiniaudioBackend:
    """The default output device through miniaudio (made by :func:`open_backend`).

    The device's callback (miniaudio's thread) takes frames from ``_buffer`` up to
    ``_filled``; :meth:`append` (a worker thread) writes beyond ``_filled`` and only then
    moves it, so the callback never sees a frame before it is written.
    """

    audible = True
    note = ""
    SAMPLE_RATE = 48_000
    CHANNELS = 2

    def __init__(self, device: Any) -> None:
        import miniaudio

        self._miniaudio = miniaudio
        self._device = device
        self.name = str(device.backend).lower()
        self._buffer: Audio = np.zeros((0, self.CHANNELS), np.float32)
        self._filled = 0  # frames of _buffer that hold audio
        self._frame = 0  # the next frame for the device
        self._finished = True  # False while a stream may still grow
        self._joiner = StreamJoiner()
        self._resampler: LinearResampler | None = None
        # What the device holds beyond what is heard: the playhead is this far behind _frame.
        self._latency = int(0.2 * self.SAMPLE_RATE)

    def open(self, path: str) -> float:
        self._device.stop()
        try:
            decoded = self._miniaudio.decode_file(
                path, output_format=self._miniaudio.SampleFormat.FLOAT32,
                nchannels=self.CHANNELS, sample_rate=self.SAMPLE_RATE)
        except (self._miniaudio.MiniaudioError, OSError) as exc:
            raise PlaybackError(f"cannot decode {path}: {exc}") from exc
        self._buffer = np.frombuffer(decoded.samples, np.float32).reshape(-1, self.CHANNELS)
        self._filled = len(self._buffer)
        self._frame = 0
        self._finished = True
        return float(self._filled / self.SAMPLE_RATE)

    def open_stream(self) -> None:
        self._device.stop()
        self._buffer = np.zeros((0, self.CHANNELS), np.float32)
        self._filled = self._frame = 0
        self._finished = False
        self._joiner = StreamJoiner()
        self._resampler = None

    def append(self, path: str, start_s: float) -> float:
        audio, rate = read_chunk(path)
        if audio.shape[1] == 1:
            audio = np.repeat(audio, self.CHANNELS, axis=1)
        else:  # previews are mono or stereo; more channels would need a real downmix
            audio = audio[:, :self.CHANNELS]
        audio = self._joiner.place(audio, rate, start_s)
        if self._resampler is None:
            self._resampler = LinearResampler(rate, self.SAMPLE_RATE, self.CHANNELS)
        self._write(self._resampler.feed(audio))
        return self._filled / self.SAMPLE_RATE

    def finish(self) -> float:
        if self._resampler is not None and not self._finished:
            self._write(self._resampler.flush())
        self._finished = True
        return self._filled / self.SAMPLE_RATE

    def _write(self, frames: Audio) -> None:
        end = self._filled + len(frames)
        buffer = self._buffer
        if end > len(buffer):  # grown by doubling: a long take is copied O(log n) times
            buffer = np.zeros((max(end, 2 * len(buffer)), self.CHANNELS), np.float32)
            buffer[:self._filled] = self._buffer[:self._filled]
        buffer[self._filled:end] = frames
        self._buffer = buffer
        self._filled = end

    def _stream(self) -> Generator[Audio | bytes, int, None]:
        required = yield b""
        while True:
            frame, filled = self._frame, self._filled  # _filled before _buffer, see the class
            if frame < filled:
                piece = self._buffer[frame:min(filled, frame + required)]
                self._frame = frame + len(piece)
            elif not self._finished:
                # Ahead of a stream still arriving: silence, and the playhead waits for it.
                piece = self._buffer[:0]
            elif frame < filled + self._latency:
                # The end: count out what the device still holds, so that position()
                # reaches the end (and the last of the audio is heard before a stop).
                piece = self._buffer[:0]
                self._frame = frame + required
            else:
                return
            if len(piece) < required:
                piece = np.concatenate(
                    [piece, np.zeros((required - len(piece), self.CHANNELS), np.float32)])
            required = yield piece

    def play(self, position_s: float) -> None:
        self._device.stop()
        self._frame = max(0, min(self._filled, int(position_s * self.SAMPLE_RATE)))
        stream = self._stream()
        next(stream)
        try:
            self._device.start(stream)
        except self._miniaudio.MiniaudioError as exc:
            raise PlaybackError(f"the audio device refused to start: {exc}") from exc

    def pause(self) -> None:
        pos = self.position()
        self._device.stop()
        self._frame = round(pos * self.SAMPLE_RATE)

    def position(self) -> float:
        # In whole frames: at the end this is exactly the duration open() and finish() gave.
        return max(0, min(self._frame - self._latency, self._filled)) / self.SAMPLE_RATE

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
    """The take being played, its state and playhead, over a backend.

    It plays a take (a file, :meth:`play`) or a stream (a take still being made,
    :meth:`open_stream`, :meth:`append`, :meth:`finish_stream`); pause, resume, seek and stop
    work the same on both. ``duration`` is a stream's length so far.
    """

    def __init__(self, backend: PlaybackBackend) -> None:
        self.backend = backend
        self.take_key: tuple[str, int] | None = None
        self.path: str | None = None
        self.duration = 0.0
        self.state: PlayState = "stopped"
        #: True when what is loaded is a stream; ``stream_finished`` once it can grow no more.
        self.streaming = False
        self.stream_finished = False
        self._paused_at = 0.0
        # Opening a take and appending to a stream both run in threads and replace or grow the
        # backend's audio: one at a time, so a late chunk never lands in the wrong audio.
        self._loading = anyio.Lock()

    @property
    def playing(self) -> bool:
        return self.state == "playing"

    @property
    def stream_key(self) -> tuple[str, int] | None:
        """The key of the stream being played or paused, else None."""
        return self.take_key if self.streaming and self.state != "stopped" else None

    def is_on(self, key: tuple[str, int], path: str) -> bool:
        """True while the take ``key`` at ``path`` (or its stream) is playing or paused."""
        if self.state == "stopped":
            return False
        return self.path == path or (self.streaming and self.take_key == key)

    async def play(self, key: tuple[str, int], path: str) -> None:
        """Play ``path`` from the start (or resume it when it is the paused take)."""
        if self.path == path and self.state == "paused":
            self.resume()
            return
        self.backend.pause()
        self.state = "stopped"
        async with self._loading:
            self.duration = await anyio.to_thread.run_sync(self.backend.open, path)
            self.take_key, self.path = key, path
            self.streaming = False
        self.backend.play(0.0)
        self.state = "playing"

    async def open_stream(self, key: tuple[str, int]) -> None:
        """Start playing an empty stream for ``key``: it sounds as :meth:`append` fills it."""
        self.backend.pause()
        self.state = "stopped"
        async with self._loading:
            self.backend.open_stream()
            self.take_key, self.path = key, None
            self.duration = 0.0
            self.streaming, self.stream_finished = True, False
        self.backend.play(0.0)
        self.state = "playing"

    async def append(self, key: tuple[str, int], path: str, start_s: float) -> bool:
        """Add the chunk file ``path``, which starts ``start_s`` into the stream of ``key``.

        False (and nothing read) when that stream is no longer playing or paused: stopped,
        finished, or replaced by another take. Raises :class:`PlaybackError` when the chunk
        cannot be read; the stream carries on without it.
        """
        async with self._loading:
            if self.stream_key != key or self.stream_finished:
                return False
            self.duration = await anyio.to_thread.run_sync(self.backend.append, path, start_s)
        return True

    async def finish_stream(self, key: tuple[str, int]) -> None:
        """No more chunks will come for ``key``: playback ends at the end of its audio."""
        async with self._loading:
            if self.streaming and self.take_key == key and not self.stream_finished:
                self.duration = self.backend.finish()
                self.stream_finished = True

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
        """Move the playhead by ``delta_s`` (clamped to the take, or to the audio a stream has
        so far); return the new position."""
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
        """Notice the end of the take (of a stream, once finished); True when the state
        changed."""
        if self.state == "playing" and (not self.streaming or self.stream_finished) \
                and self.backend.position() >= self.duration:
            self.stop()
            return True
        return False

    def close(self) -> None:
        self.stop()
        self.backend.close()
