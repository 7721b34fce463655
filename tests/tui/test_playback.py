"""The player over the null backend (a clock, no sound), and the backend probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.factories import swell
from tests.tui.support import FakeClock
from timbre_tui.playback import NullBackend, PlaybackError, Player, open_backend

pytestmark = pytest.mark.anyio


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
