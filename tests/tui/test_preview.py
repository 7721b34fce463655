"""The studio's live preview: a prompt's take heard while it is made. Against a real daemon
(tiny MusicGen, real worker, real chunk files) and, for the edge cases, with chunk events fed to
a running studio by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tui.factories import cut, job, preview_chunks, preview_event, swell
from tests.tui.support import WINDOW, Harness, running_studio
from tests.tui.test_studio import connected, send_command, socket_under
from timbre_tui.state import ACTIVE_STATES
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio

KEY = ("j-1", 1)


def ended(job_id: str, state: str = "done") -> dict[str, Any]:
    """The final ``job.state`` event of ``job_id``."""
    return {"method": "event", "type": "job.state",
            "data": {"job": job(job_id, state, "x", outputs=[f"/takes/{job_id}-1.wav"])}}


class TestAgainstTheDaemon:
    async def test_the_take_plays_while_it_is_made(self, short_tmp: Path, tiny: Path) -> None:
        """A prompt sent from the studio asks for a preview; its first chunk starts playing
        while the job is still generating, shown as a live preview in the timeline, queue
        and status bar; F5 pauses and resumes it; the playhead never passes the audio
        received. When the job is done the preview holds the whole take (the chunks tiled
        it), plays to its end and stops; the finished take is selected, and F5 plays it."""
        async with running_daemon(short_tmp, models__default=str(tiny), preview__chunk_s=0.5,
                                  **WINDOW) as d, running_studio(d.socket_path) as h:
            st, player = h.studio.state, h.studio.player
            await connected(h)
            await send_command(h, "/duration 6")
            at_start: dict[str, Any] = {}

            def started() -> bool:
                key = player.stream_key
                if key is None or key[0] not in st.jobs:
                    return False
                at_start.update(job=key[0], state=st.jobs[key[0]]["state"],
                                finished=player.stream_finished, playing=player.playing)
                return True

            h.type("slow strings")
            h.press("enter")
            await h.until(started, "the live preview", timeout=60)
            job_id = at_start["job"]
            assert at_start["state"] in ACTIVE_STATES and not at_start["finished"]
            assert at_start["playing"] and player.stream_key == (job_id, 1)
            assert st.jobs[job_id]["params"]["preview"] is True
            assert "playing the live preview" in h.message
            await h.until(lambda: "live preview" in h.screen() and "so far" in h.screen(),
                          "the preview shown in the timeline and the queue")

            h.press("f5")
            await h.until(lambda: player.state == "paused", "the preview paused")
            assert "‖ live preview" in h.screen()
            h.press("f5")
            await h.until(lambda: player.playing, "the preview playing again")
            h.clock.advance(100.0)
            assert player.position() <= player.duration

            await h.until(lambda: st.jobs[job_id]["state"] == "done"
                          and player.stream_finished, "the job done and the stream finished",
                          timeout=60)
            assert player.duration == pytest.approx(6.0, abs=1e-3)
            (take,) = st.takes()
            assert take.key == (job_id, 1) and st.selected_take == take.key
            if player.playing:  # (the clock may have run it to its end already)
                assert player.is_on(take.key, take.path)
                h.clock.advance(10.0)
            await h.until(lambda: player.state == "stopped", "the preview's end")
            h.press("f5")
            await h.until(lambda: player.playing and player.path == take.path,
                          "the finished take playing")
            assert not player.streaming and player.duration == pytest.approx(6.0, abs=0.05)

    async def test_no_preview_when_turned_off(self, short_tmp: Path, tiny: Path) -> None:
        """With ``[preview] enabled = false`` the studio does not ask for one, and plays
        nothing by itself."""
        async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW) as d, \
                running_studio(d.socket_path, preview=False) as h:
            st = h.studio.state
            await connected(h)
            await send_command(h, "/duration 1")
            h.type("quiet")
            h.press("enter")
            await h.until(lambda: st.takes(), "the take", timeout=60)
            (only,) = st.timeline()
            assert only["params"]["preview"] is False
            assert h.studio.player.state == "stopped"


async def handled(h: Harness, count: int, what: str) -> None:
    """Wait until the preview has handled ``count`` claims and events in all."""
    await h.until(lambda: h.studio.preview.handled == count, what)


class TestFeed:
    async def test_chunks_early_lost_and_final(self, short_tmp: Path, tmp_path: Path) -> None:
        """A chunk that comes before the submit's answer is held and played once claimed; one
        that cannot be read is reported in the message line and the preview plays on, the
        next chunk in its place; the job's end finishes the stream, which then stops."""
        async with running_studio(socket_under(short_tmp)) as h:
            player, preview = h.studio.player, h.studio.preview
            chunks = preview_chunks(tmp_path, [0.5, 0.5, 0.5])
            cut(chunks[1][0], None)
            preview.on_event(preview_event("j-1", 0, *chunks[0], 0.5))
            await handled(h, 1, "the early chunk")
            assert player.state == "stopped"
            preview.claim("j-1")
            await h.until(lambda: player.duration == pytest.approx(0.5), "the first chunk")
            assert player.stream_key == KEY and "playing the live preview of j-1" in h.message
            preview.on_event(preview_event("j-1", 1, *chunks[1], 0.5))
            await h.until(lambda: "skipped chunk 1" in h.message, "the lost chunk reported")
            assert "cannot read" in h.message and player.stream_key == KEY
            preview.on_event(preview_event("j-1", 2, *chunks[2], 0.5, final=False))
            await h.until(lambda: player.duration == pytest.approx(1.5), "the third chunk")
            assert not player.stream_finished
            preview.on_event(ended("j-1"))
            await h.until(lambda: player.stream_finished, "the stream finished")
            h.clock.advance(1.5)
            await h.until(lambda: player.state == "stopped", "the end of the preview")

    async def test_a_playing_take_is_not_interrupted(self, short_tmp: Path,
                                                     tmp_path: Path) -> None:
        """While a take plays, a new job's preview does not start (not even later, mid-way);
        F6 stops a preview, and its later chunks do not bring it back."""
        async with running_studio(socket_under(short_tmp)) as h:
            player, preview = h.studio.player, h.studio.preview
            take = str(swell(tmp_path / "take.wav"))
            await player.play(("j-0", 1), take)
            chunks = preview_chunks(tmp_path, [0.5, 0.5])
            preview.claim("j-1")
            preview.on_event(preview_event("j-1", 0, *chunks[0], 0.5))
            await handled(h, 2, "the claim and the chunk")
            assert player.path == take and player.playing and not player.streaming
            player.stop()
            preview.on_event(preview_event("j-1", 1, *chunks[1], 0.5))
            await handled(h, 3, "the second chunk")
            assert player.state == "stopped" and not player.streaming

            preview.claim("j-2")
            preview.on_event(preview_event("j-2", 0, *chunks[0], 0.5))
            await h.until(lambda: player.stream_key == ("j-2", 1), "the next job's preview")
            h.press("f6")
            await h.until(lambda: player.state == "stopped", "the preview stopped")
            preview.on_event(preview_event("j-2", 1, *chunks[1], 0.5, final=True))
            await handled(h, 6, "its next chunk")
            assert player.state == "stopped" and player.duration == pytest.approx(0.5)

    async def test_a_job_that_ended_unseen_finishes_its_stream(self, short_tmp: Path,
                                                               tmp_path: Path) -> None:
        """When the studio learns a previewed job ended without its events (a reload after a
        daemon restart says "interrupted"), the stream is finished and plays out, rather than
        waiting for chunks that will never come."""
        async with running_studio(socket_under(short_tmp)) as h:
            player, preview = h.studio.player, h.studio.preview
            (chunk,) = preview_chunks(tmp_path, [0.5])
            preview.claim("j-1")
            preview.on_event(preview_event("j-1", 0, *chunk, 0.5))
            await h.until(lambda: player.duration == pytest.approx(0.5), "the first chunk")
            h.clock.advance(5.0)
            assert player.playing and not player.stream_finished
            h.studio.state.load_jobs([job("j-1", "interrupted", "x")])
            await h.until(lambda: player.state == "stopped", "the preview played out")
            assert player.stream_finished
