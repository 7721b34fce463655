"""The screen at 80x24 and 160x48, drawn from a state built by hand (no daemon): what
collapses, what fits, and the playhead over a take's waveform."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prompt_toolkit.data_structures import Point
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.mouse_events import MouseButton, MouseEvent, MouseEventType

from tests.tui.factories import job, swell
from tests.tui.support import FakeClock, SizedOutput, render
from timbre_tui.app import Studio
from timbre_tui.layout import MARK, take_line
from timbre_tui.playback import NullBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def studio(tmp_path: Path, clock: FakeClock) -> Iterator[Studio]:
    """A studio that is not running, with a done, a generating and a failed job."""
    with create_pipe_input() as pipe:
        s = Studio(tmp_path / "none.sock", backend=NullBackend("no audio device", clock=clock),
                   input=pipe, output=SizedOutput(80, 24))
        take = swell(tmp_path / "take-1.wav")
        st = s.state
        st.connection = "connected"
        st.set_status({"device": {"requested": "auto", "active": {
            "type": "cpu", "name": "x", "dtype": "float32", "threads": 2, "device": "cpu"}},
            "models": [{"model": "/models/tiny", "device": "cpu", "dtype": "float32"}]})
        st.load_jobs([
            job("j-1", "done", "warm lofi rhodes", outputs=[str(take)], created_at=1.0),
            job("j-2", "generating", "a cello answers", created_at=2.0),
            job("j-3", "failed", "too long", created_at=3.0,
                error={"kind": "generation_failed", "message": "generation failed: out of memory"}),
        ])
        st.apply_event({"type": "job.progress", "data": {
            "job_id": "j-2", "step": 30, "total": 100, "elapsed_s": 1.0, "eta_s": 4.2}})
        yield s


def resize(studio: Studio, columns: int, rows: int) -> str:
    output = studio.app.output
    assert isinstance(output, SizedOutput)
    output.size = output.size._replace(columns=columns, rows=rows)
    return render(studio.app, columns, rows)


class TestSizes:
    async def test_80x24_collapses_the_side_panel(self, studio: Studio) -> None:
        """At 80x24 the side panel and top bar hide, a one-line parameter summary shows, and
        the prompts, the progress bar with ETA, the failure's reason and the status fit."""
        await studio.waveforms.load(studio.state.takes()[0].path)
        screen = resize(studio, 80, 24)
        lines = screen.splitlines()
        assert len(lines) == 24 and max(len(ln) for ln in lines) <= 80
        assert "Parameters" not in screen and "♪ Timbre" not in screen
        assert "default model · 10s · seed random" in screen
        assert f"{MARK} warm lofi rhodes" in screen and "take 1" in screen
        assert " 30%  ETA 4s" in screen and "▕" in screen
        assert "✗ failed: generation failed: out of memory" in screen
        assert lines[-1].startswith(" ● connected │ cpu float32")
        assert "no audio" in lines[-1]

    async def test_160x48_shows_panel_queue_and_top_bar(self, studio: Studio) -> None:
        """At 160x48 the parameter panel, the queue with its progress and the top bar show;
        F3's toggle hides the panel again."""
        screen = resize(studio, 160, 48)
        assert "♪ Timbre" in screen and "Parameters (F4)" in screen
        assert "Queue (1 running, 0 queued)" in screen
        assert "default model" not in screen  # the summary line gives way to the panel
        studio.toggle_panel()
        assert "Parameters" not in resize(studio, 160, 48)


class TestWhereJobsRun:
    """The status bar names the workers when there is more than the one local worker."""

    @staticmethod
    def worker(name: str, jobs: list[str], down: str | None = None) -> dict[str, object]:
        return {"name": name, "executor": "ray", "worker": name, "node": "n", "alive": True,
                "busy": bool(jobs), "down": down, "jobs": jobs, "models": ["tiny"]}

    async def test_a_ray_cluster_with_its_nodes_and_busy_workers(self, studio: Studio) -> None:
        st = studio.state
        assert st.status is not None
        st.set_status({**st.status, "executor": {
            "kind": "ray", "address": "10.0.0.5:6379", "fallback": None, "error": None,
            "nodes": [{"node_id": "a", "alive": True}, {"node_id": "b", "alive": True},
                      {"node_id": "c", "alive": False}],
            "workers": [self.worker("ray-a-gpu0", ["j-2"]), self.worker("ray-b-gpu0", []),
                        self.worker("ray-c-gpu0", [], down="node c is gone")]}})
        bar = resize(studio, 160, 48).splitlines()[-1]
        assert "│ cpu float32 │ ray 2 nodes · 1/2 busy │" in bar

    async def test_two_local_workers_and_an_unreachable_cluster(self, studio: Studio) -> None:
        st = studio.state
        base = dict(st.status or {})
        two = [{**self.worker("local-0", []), "executor": "local"},
               {**self.worker("local-1", []), "executor": "local"}]
        local: dict[str, Any] = {"kind": "local", "address": None, "fallback": None, "error": None,
                 "nodes": [], "workers": two}
        st.set_status({**base, "executor": local})
        assert "│ 2 workers · 0/2 busy │" in resize(studio, 160, 48).splitlines()[-1]
        st.set_status({**base, "executor": {**local, "workers": two[:1],
                                            "fallback": "cannot reach the Ray cluster"}})
        assert "│ cluster unreachable: running here │" in resize(studio, 160, 48)
        st.set_status({**base, "executor": {**local, "workers": [], "error": "x"}})
        assert "│ cluster unreachable: jobs fail │" in resize(studio, 160, 48)
        # One local worker, the default: nothing to say.
        st.set_status({**base, "executor": {**local, "workers": two[:1]}})
        bar = resize(studio, 160, 48).splitlines()[-1]
        assert "worker" not in bar and "cluster" not in bar and "ray" not in bar


class TestPlayhead:
    async def test_playhead_moves_with_the_clock(self, studio: Studio, clock: FakeClock) -> None:
        """Playing a take shows position/duration and a playhead that moves across the
        waveform as the clock advances, stopping at the end."""
        take = studio.state.takes()[0]
        await studio.waveforms.load(take.path)
        await studio.player.play(take.key, take.path)

        def playhead() -> tuple[int, int, str]:
            frags = take_line(studio, take, 100)
            wave = [f for f in frags if "waveform" in f[0]]
            width = sum(len(f[1]) for f in wave)
            at = sum(len(f[1]) for f in wave[:[f[0] for f in wave].index(
                "class:waveform.playhead")])
            return at, width, "".join(f[1] for f in frags)

        at, width, text = playhead()
        assert at == 0 and "0:00/0:02" in text
        clock.advance(1.0)
        at, width, text = playhead()
        assert at == width // 2 and "0:01/0:02" in text
        clock.advance(5.0)
        assert studio.player.poll() and studio.player.state == "stopped"


class TestMouse:
    async def test_a_click_selects_a_take_and_a_second_click_plays_it(
            self, studio: Studio) -> None:
        """Take lines are clickable: the first click selects, the next plays."""
        take = studio.state.takes()[0]
        studio.state.selected_take = None
        click = MouseEvent(Point(0, 0), MouseEventType.MOUSE_UP, MouseButton.LEFT,
                           frozenset())
        first = take_line(studio, take, 100)[0]
        assert len(first) == 3
        first[2](click)
        assert studio.state.selected_take == take.key
        async with anyio.create_task_group() as tg:
            studio._tg = tg  # what Studio.run provides
            first = take_line(studio, take, 100)[0]
            assert len(first) == 3
            first[2](click)
        studio._tg = None
        assert studio.player.playing and studio.player.path == take.path
