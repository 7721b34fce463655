"""Stems: ``/stems [MODEL]`` (and the palette) send the selected take to ``takes.stems``, and
the queued job is followed like a prompt's; on the timeline a stems job reads "stems of:
PROMPT", says "separating" while it runs, and names each of its files by its stem."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input

from tests.tui.factories import STEMS, job, stems_job, swell
from tests.tui.support import FakeClock, RecordingDaemon, SizedOutput, running_studio
from tests.tui.test_layout import resize
from tests.tui.test_studio import send_command, socket_under
from timbre_tui.app import Studio
from timbre_tui.commands import help_text
from timbre_tui.layout import MARK
from timbre_tui.playback import NullBackend
from timbre_tui.state import StudioState, is_stems_job, stem_names
from timbred.errors import InvalidParams

pytestmark = pytest.mark.anyio


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[Studio]:
    """A studio that is not running, with a done take (``take-1.wav``)."""
    with create_pipe_input() as pipe:
        s = Studio(tmp_path / "none.sock", backend=NullBackend("no audio device",
                                                               clock=FakeClock()),
                   input=pipe, output=SizedOutput(120, 40))
        s.state.connection = "connected"
        s.state.load_jobs([job("j-1", "done", "warm lofi rhodes", created_at=1.0,
                               outputs=[str(swell(tmp_path / "take-1.wav"))])])
        yield s


def rows(screen: str, *words: str) -> list[str]:
    return [ln for ln in screen.splitlines() if any(w in ln for w in words)]


class TestRecords:
    def test_stem_names_from_the_recipe_else_the_files(self) -> None:
        """A done stems job's stems are its recipe's names in order; without a recipe, each
        file's last "-" part; a generation has none."""
        done = stems_job("j-2", "done", "/t/take-1.wav")
        assert is_stems_job(done) and stem_names(done) == list(STEMS)
        bare = stems_job("j-3", "done", "/t/take-1.wav", names=("drums", "bass"), recipe=False)
        assert stem_names(bare) == ["drums", "bass"]
        plain = job("j-1", "done", "x", outputs=["/t/take-1.wav"])
        assert not is_stems_job(plain) and stem_names(plain) == []

    def test_stems_jobs_are_not_prompts_or_seeds(self) -> None:
        """A stems job's prompt (its source's) is not recalled as a prompt sent, and its
        seed (the separator's) is not the latest take's."""
        st = StudioState()
        st.load_jobs([job("j-1", "done", "rhodes", outputs=["/a.wav"], seed=7, created_at=1.0),
                      job("j-2", "done", "cello", outputs=["/b.wav"], seed=8, created_at=2.0),
                      stems_job("j-3", "done", "/a.wav", prompt="rhodes", created_at=3.0)])
        assert st.prompt_history() == ["rhodes", "cello"]
        assert st.last_seed() == 8


class TestTimeline:
    async def test_a_done_stems_job_lists_its_stems(self, studio: Studio,
                                                   tmp_path: Path) -> None:
        """Under "stems of: PROMPT", one line per stem, labelled drums, bass, other and
        vocals instead of "take N", with its file name."""
        studio.state.upsert_job(stems_job("j-2", "done", str(tmp_path / "take-1.wav"),
                                          created_at=2.0))
        screen = resize(studio, 160, 48)
        assert f"{MARK} stems of: warm lofi rhodes" in screen
        lines = rows(screen, *(f" {name} " for name in STEMS), "take 1")
        assert len(lines) == 5 and "take 1" in lines[0]
        for name, line in zip(STEMS, lines[1:], strict=True):
            assert f" {name} " in line and f"take-1-{name}.flac" in line
            assert "take 1" not in line and "take 2" not in line
        assert studio.state.takes()[-1].label == "vocals"

    async def test_a_running_stems_job_says_separating(self, studio: Studio,
                                                       tmp_path: Path) -> None:
        """While it runs, the usual progress bar says "separating" (on the timeline and in
        the queue), not "generating"."""
        studio.state.upsert_job(stems_job("j-2", "generating", str(tmp_path / "take-1.wav"),
                                          created_at=2.0))
        studio.state.apply_event({"type": "job.progress", "data": {
            "job_id": "j-2", "step": 3, "total": 10, "elapsed_s": 1.0, "eta_s": 2.0}})
        screen = resize(studio, 160, 48)
        assert "▶ separating ▕" in screen and " 30%" in screen
        assert "generating" not in screen
        assert "▶ separating" in rows(screen, "j-2")[0]  # the queue's row


class TestCommand:
    async def test_stems_sends_the_take_and_follows_the_job(
            self, short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """/stems sends takes.stems with the selected take's path (and the model when one
        is named); the queued job shows on the timeline under "stems of:" and the message
        names it. A refusal is one line; without a take nothing is sent; the palette runs
        it; /help lists it."""
        source = str(swell(tmp_path / "take-1.wav"))
        refusal: list[InvalidParams] = []

        def separate(params: dict[str, Any]) -> dict[str, Any]:
            if refusal:
                raise refusal.pop()
            job_id = f"j-stems-{len(daemon.asked('takes.stems'))}"
            return {"job_id": job_id, "job": stems_job(
                job_id, "queued", source, created_at=1_900_000_000.0 + len(daemon.calls))}

        daemon = RecordingDaemon(handlers={"takes.stems": separate})
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            st = h.studio.state
            st.load_jobs([job("j-1", "done", "warm lofi rhodes", outputs=[source])])
            st.selected_take = ("j-1", 1)

            await send_command(h, "/stems")
            await h.until(lambda: h.message == "separating take 1 into stems (job j-stems-1)",
                          "the job queued")
            assert daemon.asked("takes.stems") == [{"take": source}]
            assert "j-stems-1" in st.jobs
            await h.until(lambda: f"{MARK} stems of: warm lofi rhodes" in h.screen(),
                          "the job on the timeline")
            assert "◌ queued  j-stems-1" in h.screen()

            st.selected_take = ("j-1", 1)
            await send_command(h, "/stems htdemucs_ft")
            await h.until(lambda: "j-stems-2" in h.message, "the second job")
            assert daemon.asked("takes.stems")[-1] == {"take": source, "model": "htdemucs_ft"}

            refusal.append(InvalidParams("choose a separator such as htdemucs", param="model"))
            await send_command(h, "/stems tiny")
            await h.until(lambda: h.message.startswith("stems failed"), "the refusal")
            assert h.message == "stems failed: refused: choose a separator such as htdemucs"
            assert st.message_log[-1].level == "error"

            h.press("c-p")
            await h.until(lambda: st.palette_open, "the palette")
            h.type("stems")
            await h.until(lambda: "Separate the selected take into stems" in h.screen(),
                          "the palette entry")
            h.press("enter")
            await h.until(lambda: "j-stems-4" in h.message, "run from the palette")
            assert daemon.asked("takes.stems")[-1] == {"take": source}

            st.selected_take = None
            st.jobs = {}
            calls = len(daemon.calls)
            await send_command(h, "/stems")
            await h.until(lambda: h.message.startswith("select a take to separate"),
                          "no take")
            assert len(daemon.calls) == calls
            assert "/stems [MODEL]" in help_text(h.studio)


def test_separators_are_offered_to_stems_and_never_to_a_prompt() -> None:
    """models.list marks htdemucs a separator (task "separate"): /model never offers it, or
    an installed model of its family; /stems offers both."""
    st = StudioState()
    st.set_models(
        [{"name": "musicgen-small", "backend": "musicgen"},
         {"name": "/models/my-demucs", "backend": "demucs"}],
        [{"name": "musicgen-small", "backend": "musicgen", "task": "generate"},
         {"name": "musicgen-medium", "backend": "musicgen", "task": "generate"},
         {"name": "htdemucs", "backend": "demucs", "task": "separate"},
         {"name": "htdemucs_ft", "backend": "demucs", "task": "separate"}])
    assert st.model_names == ["musicgen-small", "musicgen-medium"]
    assert st.separator_names == ["htdemucs", "htdemucs_ft", "/models/my-demucs"]
