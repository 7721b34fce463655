"""The player over the null backend (a clock, no sound) and over miniaudio's null output (real
time, no sound): takes, streams that grow while they play, and the backend probe."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import miniaudio
import numpy as np
import pytest

from tests.tui.factories import cut, preview_chunks, swell, tone
from tests.tui.support import FakeClock
from timbre_tui.playback import (
    LinearResampler,
    MiniaudioBackend,
    NullBackend,
    PlaybackError,
    Player,
    open_backend,
)

pytestmark = pytest.mark.anyio

KEY = ("j-1", 1)


class TestPlayer:
    async def test_play_pause_seek_stop(self, tmp_path: Path) -> None:
        """The playhead follows the clock while playing, holds while paused, seeks within the
        take, and the take ends by itself."""
        clock = FakeClock()
        player = Player(NullBackend(clock=clock))
        path = str(swell(tmp_path / "t.wav", seconds=4.0))
        await player.play(("j-1", 1), path)
        assert player.playing and player.duration == pytest.approx(4.0)
        clock.advance(1.5)
        assert player.position() == pytest.approx(1.5)
        player.pause()
        clock.advance(10)
        assert player.position() == pytest.approx(1.5)
        assert player.seek(-5) == 0.0
        await player.play(("j-1", 1), path)  # resumes the paused take
        assert player.playing and player.position() == pytest.approx(0.0)
        player.seek(+3)
        clock.advance(0.5)
        assert player.position() == pytest.approx(3.5)
        assert not player.poll()
        clock.advance(1.0)
        assert player.poll() and player.state == "stopped" and player.position() == 0.0

    async def test_a_missing_file_is_a_playback_error(self, tmp_path: Path) -> None:
        """A take whose file is gone raises PlaybackError naming it."""
        player = Player(NullBackend())
        with pytest.raises(PlaybackError, match=r"gone\.wav"):
            await player.play(("j-1", 1), str(tmp_path / "gone.wav"))
        assert player.state == "stopped"


class TestStream:
    async def test_the_playhead_waits_for_audio_that_has_not_arrived(self,
                                                                     tmp_path: Path) -> None:
        """A stream plays from its first chunk; the playhead follows the clock but never
        passes the audio received: it waits there, still playing (a device plays silence),
        and goes on from there, not from the clock, when the next chunk comes. Seeks stop
        there too."""
        clock = FakeClock()
        player = Player(NullBackend(clock=clock))
        (c0, s0), (c1, s1) = preview_chunks(tmp_path, [0.5, 0.75])
        await player.open_stream(KEY)
        assert player.playing and player.stream_key == KEY and player.duration == 0.0
        assert player.is_on(KEY, "/takes/j-1-1.wav") and player.path is None
        clock.advance(1.0)
        assert player.position() == 0.0 and not player.poll() and player.playing
        assert await player.append(KEY, c0, s0)
        assert player.duration == pytest.approx(0.5)
        clock.advance(0.2)
        assert player.position() == pytest.approx(0.2)
        clock.advance(5.0)
        assert player.position() == pytest.approx(0.5)
        assert not player.poll() and player.playing
        assert await player.append(KEY, c1, s1)
        assert player.duration == pytest.approx(1.25)
        assert player.position() == pytest.approx(0.5)
        clock.advance(0.25)
        assert player.position() == pytest.approx(0.75)
        assert player.seek(+10) == pytest.approx(1.25)
        clock.advance(3.0)
        assert player.position() == pytest.approx(1.25) and player.playing

    async def test_finishing_the_stream_ends_playback(self, tmp_path: Path) -> None:
        """Unfinished, a stream waits at its end for ever; finished, it plays to its end and
        stops as a take does, and takes no more chunks."""
        clock = FakeClock()
        player = Player(NullBackend(clock=clock))
        (c0, s0), (c1, s1) = preview_chunks(tmp_path, [0.5, 0.5])
        await player.open_stream(KEY)
        assert await player.append(KEY, c0, s0)
        clock.advance(60.0)
        assert not player.poll() and player.playing
        assert await player.append(KEY, c1, s1)
        clock.advance(0.25)
        await player.finish_stream(KEY)
        assert player.stream_finished and player.duration == pytest.approx(1.0)
        assert not player.poll() and player.position() == pytest.approx(0.75)
        clock.advance(0.25)
        assert player.poll() and player.state == "stopped" and player.stream_key is None
        assert not await player.append(KEY, c1, 1.0)
        assert player.duration == pytest.approx(1.0)

    async def test_chunks_join_end_to_end_and_a_lost_one_keeps_its_time(self,
                                                                       tmp_path: Path) -> None:
        """Chunks of odd lengths join with no gap and no overlap (the stream is exactly as
        long as they are); a chunk that cannot be read (removed, cut to its header) raises
        PlaybackError naming it, one cut short plays what it has, and the chunk after each
        still starts where it belongs, after silence."""
        lengths = [0.25, 0.33, 0.5, 0.125, 0.4, 0.3]
        chunks = preview_chunks(tmp_path, lengths)
        cut(chunks[2][0], None)
        cut(chunks[3][0], 44)  # the WAV header alone
        cut(chunks[4][0], 44 + int(0.2 * 32_000) * 2)  # 0.2 s of its 0.4
        player = Player(NullBackend(clock=FakeClock()))
        await player.open_stream(KEY)
        for i, (path, start) in enumerate(chunks[:2]):
            assert await player.append(KEY, path, start)
            assert player.duration == pytest.approx(sum(lengths[:i + 1]), abs=1e-9)
        for path, start in chunks[2:4]:
            with pytest.raises(PlaybackError, match=f"cannot read {re.escape(path)}"):
                await player.append(KEY, path, start)
            assert player.duration == pytest.approx(0.58, abs=1e-9)
        assert await player.append(KEY, *chunks[4])
        assert player.duration == pytest.approx(chunks[4][1] + 0.2, abs=1e-9)
        assert await player.append(KEY, *chunks[5])
        assert player.duration == pytest.approx(sum(lengths), abs=1e-9)

    async def test_pause_stop_and_a_take_end_the_stream_for_late_chunks(
            self, tmp_path: Path) -> None:
        """Paused, a stream keeps filling while the playhead holds; resumed, it plays on.
        Stopped, or replaced by a take, it takes no more chunks."""
        clock = FakeClock()
        player = Player(NullBackend(clock=clock))
        (c0, s0), (c1, s1), (c2, s2) = preview_chunks(tmp_path, [0.5, 0.5, 0.5])
        await player.open_stream(KEY)
        assert await player.append(KEY, c0, s0)
        clock.advance(0.2)
        player.pause()
        assert await player.append(KEY, c1, s1)
        clock.advance(5.0)
        assert player.state == "paused" and player.position() == pytest.approx(0.2)
        assert player.duration == pytest.approx(1.0)
        player.resume()
        clock.advance(0.1)
        assert player.position() == pytest.approx(0.3)
        player.stop()
        assert player.stream_key is None and not player.is_on(KEY, "/takes/j-1-1.wav")
        assert not await player.append(KEY, c2, s2)
        assert player.duration == pytest.approx(1.0)

        await player.open_stream(("j-2", 1))
        take = str(swell(tmp_path / "t.wav", seconds=2.0))
        await player.play(("j-0", 1), take)
        assert not await player.append(("j-2", 1), c0, s0)
        assert player.path == take and not player.streaming
        assert player.duration == pytest.approx(2.0)


class TestResampler:
    def test_pieces_resample_as_the_whole_does(self) -> None:
        """Fed in pieces of any size (one frame, none, thousands), the resampler gives what it
        gives for the whole: the joints leave no trace; and a tone stays that tone at the new
        rate, one second still one second."""
        audio = tone(1.0)[:, None]
        whole = LinearResampler(32_000, 48_000, 1)
        expected = np.concatenate([whole.feed(audio), whole.flush()])
        pieces = LinearResampler(32_000, 48_000, 1)
        cuts = [0, 1, 2, 2, 5333, 5334, 20_000, len(audio)]
        got = np.concatenate([*(pieces.feed(audio[a:b]) for a, b in itertools.pairwise(cuts)),
                              pieces.flush()])
        assert len(got) == len(expected) == 48_000
        np.testing.assert_allclose(got, expected, atol=1e-6)
        # (the very last frame has no next one to interpolate towards: it holds the last)
        np.testing.assert_allclose(got[:-1, 0], tone(1.0, 48_000)[:-1], atol=1e-3)


@pytest.fixture
def null_output() -> Iterator[Any]:
    """miniaudio's null output: a real device that takes frames in real time, silently."""
    try:
        device = miniaudio.PlaybackDevice(
            output_format=miniaudio.SampleFormat.FLOAT32, nchannels=MiniaudioBackend.CHANNELS,
            sample_rate=MiniaudioBackend.SAMPLE_RATE, backends=[miniaudio.Backend.NULL],
            app_name="timbre-test")
    except miniaudio.MiniaudioError as exc:  # pragma: no cover - built into miniaudio
        pytest.skip(f"miniaudio's null output is not available: {exc}")
    try:
        yield device
    finally:
        device.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (the device's thread moves the playhead; there is no event)."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class TestMiniaudio:
    async def test_a_stream_plays_waits_in_silence_and_ends(self, tmp_path: Path,
                                                           null_output: Any) -> None:
        """On a real device (in real time): a stream plays what has arrived, then the
        device runs on in silence while the playhead waits; the next chunk plays on from
        there (at 48 kHz: one second of 32 kHz chunks is one second); finished, it ends."""
        player = Player(MiniaudioBackend(null_output))
        (c0, s0), (c1, s1) = preview_chunks(tmp_path, [0.5, 0.5])
        await player.open_stream(KEY)
        assert await player.append(KEY, c0, s0)
        await until(lambda: player.position() > 0.25, "the playhead near the audio's end")
        await anyio.sleep(0.3)
        waiting = player.position()
        await anyio.sleep(0.5)
        assert player.position() == waiting <= 0.5 and player.playing and not player.poll()
        assert await player.append(KEY, c1, s1)
        await until(lambda: player.position() > waiting, "the playhead moving on")
        await player.finish_stream(KEY)
        assert player.duration == pytest.approx(1.0, abs=1 / 48_000)
        await until(player.poll, "the end of the stream")
        assert player.state == "stopped"

    async def test_a_take_plays_to_its_end(self, tmp_path: Path, null_output: Any) -> None:
        """A take's playhead reaches its end (the device's last buffer counted out) and the
        player stops by itself."""
        player = Player(MiniaudioBackend(null_output))
        await player.play(KEY, str(swell(tmp_path / "t.wav", seconds=0.5)))
        assert player.duration == pytest.approx(0.5)
        await until(player.poll, "the end of the take")
        assert player.state == "stopped"


class TestProbe:
    def test_open_backend_always_answers(self) -> None:
        """With or without a sound card the probe returns a backend; without one it is silent
        and says why (this container has none)."""
        backend = open_backend()
        try:
            assert backend.name
            if not backend.audible:
                assert backend.note.startswith("no audio")
        finally:
            backend.close()
