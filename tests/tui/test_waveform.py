"""Waveform sparklines: the envelope read from a real WAV, drawn at any width, cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.factories import swell
from timbre_tui.waveform import BLOCKS, Envelope, WaveformCache, read_envelope, sparkline

pytestmark = pytest.mark.anyio


class TestSparkline:
    def test_a_swell_rises_from_the_lowest_block_to_the_highest(self, tmp_path: Path) -> None:
        """A tone fading in draws as blocks that never fall and end at the full block."""
        env = read_envelope(str(swell(tmp_path / "s.wav", seconds=2.0)))
        assert env.duration_s == pytest.approx(2.0)
        line = sparkline(env, 16)
        assert len(line) == 16 and set(line) <= set(BLOCKS)
        levels = [BLOCKS.index(c) for c in line]
        assert levels == sorted(levels) and levels[0] <= 1 and levels[-1] == len(BLOCKS) - 1

    def test_widths_and_empty_audio(self) -> None:
        """Any width works, wider than the envelope included; silence draws flat."""
        env = Envelope(1.0, (0.0, 1.0))
        assert sparkline(env, 4) == "▁▁██"
        assert sparkline(Envelope(0.0, ()), 3) == "▁▁▁" and sparkline(env, 0) == ""


class TestCache:
    async def test_loads_once_in_a_thread_and_remembers_failures(self, tmp_path: Path) -> None:
        """``load`` reads each path once and reports readiness; a missing file is an error,
        not an exception."""
        ready: list[int] = []
        cache = WaveformCache(lambda fn: None, lambda: ready.append(1))
        path = str(swell(tmp_path / "s.wav"))
        env = await cache.load(path)
        assert env is not None and cache.get(path) is env and ready == [1]
        await cache.load(path)
        assert ready == [1]
        assert await cache.load(str(tmp_path / "gone.wav")) is None
        assert "gone.wav" in (cache.error(str(tmp_path / "gone.wav")) or "")
