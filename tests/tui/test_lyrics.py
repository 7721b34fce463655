"""The lyrics editor beside the composer: shown and hidden by F12 and /lyrics, section tags
completed, its words sent with the next prompt only when the model sings (the editor says
so otherwise), and a song's sections laid along its take on the timeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input

from tests.tui.factories import ACE_MODEL, MUSICGEN_MODEL, job, song, swell, with_families
from tests.tui.support import (
    FakeClock,
    Harness,
    RecordingDaemon,
    SizedOutput,
    render,
    running_studio,
)
from tests.tui.test_studio import connected, send_command, socket_under
from timbre_tui.app import Studio
from timbre_tui.commands import lyrics_command
from timbre_tui.data import take_from_history
from timbre_tui.layout import MARK, section_line, take_line
from timbre_tui.lyrics import sections
from timbre_tui.playback import NullBackend
from timbre_tui.state import StudioState, takes_of
from timbred.protocol.schema import params_specs
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio

#: Four lines of verse, two of chorus, two of bridge: the take splits 1/2, 1/4, 1/4.
WORDS = "[verse]\none\ntwo\nthree\nfour\n\n[chorus]\nla\nla\n\n[bridge]\noh\nno"
WARNING = "the default model (musicgen) does not sing lyrics; pick an ace-step model"


class TestSections:
    def test_each_section_gets_a_share_by_its_lines(self) -> None:
        """Sections take the take in proportion to their lines of words (an estimate: the
        model says nothing of when it sings them)."""
        found = sections(WORDS)
        assert [(s.tag, s.lines) for s in found] == [("verse", 4), ("chorus", 2),
                                                     ("bridge", 2)]
        assert [(s.start, s.end) for s in found] == [(0, 0.5), (0.5, 0.75), (0.75, 1)]

    def test_untagged_words_and_sections_without_words(self) -> None:
        """Words before the first tag take their share without a name; a tag without words
        counts as one line; lyrics without any tag have no sections to show."""
        found = sections("hey\nhey\n[intro]\n[verse]\na\nb\nc\n")
        assert [(s.label, s.start, s.end) for s in found] == [
            ("", 0, 2 / 6), ("[intro]", 2 / 6, 3 / 6), ("[verse]", 3 / 6, 1)]
        assert sections("just words\nno tags") == [] and sections(None) == []


class TestWhatIsSent:
    def test_lyrics_go_only_to_a_model_that_sings(self) -> None:
        """The words go with the prompt to an ACE-Step model (and pass the daemon's check of
        generate.submit); to a MusicGen model they are not sent and the editor's note says
        why; blank lyrics are never sent."""
        check = params_specs()["generate.submit"].normalise
        st = with_families(StudioState())
        st.lyrics = WORDS
        assert "lyrics" not in st.request("a ballad")
        assert st.lyrics_note() == WARNING
        st.set_param("model", ACE_MODEL)
        sent = st.request("a ballad")
        assert sent["lyrics"] == WORDS and sent["model"] == ACE_MODEL
        assert st.lyrics_note() is None
        assert check(sent)["lyrics"] == WORDS
        st.lyrics = " \n\n "
        assert "lyrics" not in st.request("a ballad")

    def test_a_daemon_that_has_no_singer_says_so(self) -> None:
        """Before backends.list answers (or from an older daemon) nothing sings."""
        st = StudioState()
        st.lyrics = "la la"
        assert "lyrics" not in st.request("x")
        assert st.lyrics_note() == ("the default model (musicgen) does not sing lyrics, and "
                                    "this timbred has no model that does")

    def test_a_takes_words_come_from_its_recipe(self, tmp_path: Path) -> None:
        """A take's lyrics and family are read from its recipe (jobs.list and
        history.search alike); a take without words has none."""
        record = song("j-1", tmp_path / "song.wav", WORDS)
        (take,) = takes_of(record)
        assert (take.lyrics, take.backend) == (WORDS, "ace-step")
        history = take_from_history({
            "job_id": "j-1", "take_index": 1, "path": take.path, "duration_s": 2.0,
            "prompt": "a ballad", "created_at": 1.0, "loudness_after_lufs": -14.0,
            "rating": None, "tags": [], "recipe": record["recipe"]})
        assert (history.lyrics, history.backend) == (WORDS, "ace-step")
        (plain,) = takes_of(job("j-2", "done", "drums", outputs=["/t/d.wav"]))
        assert plain.lyrics is None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def studio(tmp_path: Path, clock: FakeClock) -> Iterator[Studio]:
    """A studio that is not running, with a song (lyrics in its recipe) and a take without
    words."""
    with create_pipe_input() as pipe:
        s = Studio(tmp_path / "none.sock", backend=NullBackend("no audio device", clock=clock),
                   input=pipe, output=SizedOutput(90, 30))
        s.state.connection = "connected"
        with_families(s.state)
        s.state.load_jobs([
            song("j-1", swell(tmp_path / "song.wav"), WORDS, created_at=1.0),
            job("j-2", "done", "drums", outputs=[str(swell(tmp_path / "drums.wav"))],
                created_at=2.0)])
        yield s


class TestOnTheTimeline:
    async def test_the_selected_songs_sections_lie_along_its_waveform(
            self, studio: Studio, clock: FakeClock) -> None:
        """Under the selected take's line its section tags start where their share of the
        waveform does ([chorus] halfway, [bridge] at three quarters); a take without words,
        or not selected, has no such line; the section under the playhead is lit."""
        song_take, drums = studio.state.takes()
        await studio.waveforms.load(song_take.path)
        studio.state.selected_take = song_take.key
        frags = take_line(studio, song_take, 90)  # 90 columns: no side panel
        styles = [f[0] for f in frags]
        x0 = sum(len(f[1]) for f in frags[:next(i for i, s in enumerate(styles)
                                                 if "class:waveform" in s)])
        wave_w = sum(len(f[1]) for f in frags if "class:waveform" in f[0])
        lines = render(studio.app, 90, 30).splitlines()
        row = next(i for i, ln in enumerate(lines) if ln.startswith(f"{MARK} a ballad")) + 2
        assert "take 1" in lines[row]
        tags = lines[row + 1]
        assert tags.index("[verse]") == x0
        assert tags.index("[chorus]") == x0 + round(0.5 * wave_w)
        assert tags.index("[bridge]") == x0 + round(0.75 * wave_w)
        assert lines[row + 3].startswith(f"{MARK} drums")
        assert "[" not in lines[row + 5]  # its take, not selected: no section line

        studio.state.selected_take = drums.key
        assert "[verse]" not in render(studio.app, 90, 30)
        assert section_line(studio, drums, 90) is None

        studio.state.selected_take = song_take.key
        lyrics_command(studio, "take")  # its words back in the editor, to sing again
        assert studio.state.lyrics == WORDS and studio.state.lyrics_open

        await studio.player.play(song_take.key, song_take.path)
        clock.advance(1.2)  # 60 % of 2 s: in the chorus, by the estimate
        lit = [t for s, t, *_ in section_line(studio, song_take, 90) or []
               if s == "class:take.playing"]
        assert lit == ["[chorus]"]


async def open_lyrics(h: Harness) -> None:
    h.press("f12")
    await h.until(lambda: h.studio.state.lyrics_open
                  and h.studio.app.layout.has_focus(h.studio.widgets.lyrics), "the editor")


class TestTheEditor:
    async def test_f12_and_slash_lyrics_show_and_hide_it(self, short_tmp: Path) -> None:
        """F12 shows and focuses the editor beside the composer, and from inside hides it;
        /lyrics shows it too; Esc goes back to the composer with the editor still shown, and
        /lyrics then hides it."""
        async with running_studio(socket_under(short_tmp), columns=100, rows=30) as h:
            st, w = h.studio.state, h.studio.widgets
            assert "Lyrics (F12)" not in h.screen()
            await open_lyrics(h)
            screen = h.screen()
            assert "Lyrics (F12)" in screen
            assert "does not sing lyrics" in screen  # no daemon yet: nothing sings
            h.press("f12")
            await h.until(lambda: not st.lyrics_open, "the editor hidden")
            assert h.studio.app.layout.has_focus(w.composer)
            assert "Lyrics (F12)" not in h.screen()
            await send_command(h, "/lyrics")
            await h.until(lambda: st.lyrics_open and h.studio.app.layout.has_focus(w.lyrics),
                          "the editor from /lyrics")
            h.press("escape")
            await h.until(lambda: h.studio.app.layout.has_focus(w.composer), "the composer")
            assert st.lyrics_open and "Lyrics (F12)" in h.screen()
            await send_command(h, "/lyrics")
            await h.until(lambda: not st.lyrics_open, "hidden by /lyrics")
            assert "Lyrics (F12)" not in h.screen()

    async def test_section_tags_complete(self, short_tmp: Path) -> None:
        """A line starting with [ offers the section tags: [ch completes to [chorus] with
        Tab, and Enter finishes [ve as [verse]; other lines are plain text with Enter a new
        line; the state follows the words."""
        async with running_studio(socket_under(short_tmp), columns=100, rows=30) as h:
            buf = h.studio.widgets.lyrics.buffer
            await open_lyrics(h)
            h.type("[")
            await h.until(lambda: buf.complete_state is not None
                          and len(buf.complete_state.completions) == 8, "every tag offered")
            h.type("ch")
            await h.until(lambda: buf.complete_state is not None
                          and [c.text for c in buf.complete_state.completions] == ["[chorus]"],
                          "the chorus offered")
            assert "the refrain" in h.screen()  # the menu says what each is
            h.press("tab")
            await h.until(lambda: buf.text == "[chorus]", "[ch completed")
            h.press("enter")
            h.type("la la")
            h.press("enter")
            h.type("[ve")
            await h.until(lambda: buf.text.endswith("[ve"), "typed")
            h.press("enter")
            await h.until(lambda: buf.text == "[chorus]\nla la\n[verse]", "Enter finishes it")
            assert h.studio.state.lyrics == "[chorus]\nla la\n[verse]"
            h.press("c-z")  # the words' own undo, not the panel's
            await h.until(lambda: buf.text == "[chorus]\nla la\n[ve", "the tag undone")
            assert h.message != "nothing to undo"
            h.press("c-y")
            await h.until(lambda: buf.text == "[chorus]\nla la\n[verse]", "redone")

    async def test_the_next_prompt_carries_the_words(self, short_tmp: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """With an ACE-Step model the prompt goes with the editor's words, which stay for
        the next one; /lyrics clear empties them, and no lyrics are sent. With a MusicGen
        model the editor says it does not sing, and a prompt goes without the words (the
        message says so) rather than be refused."""
        daemon = RecordingDaemon()
        async with running_studio(socket_under(short_tmp), columns=100, rows=30,
                                  preview=False) as h:
            st, w = h.studio.state, h.studio.widgets
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            with_families(st)
            await send_command(h, f"/model {ACE_MODEL}")
            await open_lyrics(h)
            h.type("[verse]")
            h.press("enter")
            h.type("hello")
            await h.until(lambda: st.lyrics == "[verse]\nhello", "the words typed")
            h.press("escape")
            await h.until(lambda: h.studio.app.layout.has_focus(w.composer), "the composer")
            await send_command(h, "a ballad")
            await h.until(lambda: len(daemon.sent) == 1, "the prompt sent")
            assert daemon.sent[0]["lyrics"] == "[verse]\nhello"
            assert daemon.sent[0]["prompt"] == "a ballad"
            await h.until(lambda: h.message == "queued j-sent-1", "queued")
            assert w.lyrics.text == "[verse]\nhello"  # kept for the next take

            await send_command(h, "/lyrics clear")
            assert st.lyrics == "" and w.lyrics.text == ""
            await send_command(h, "again")
            await h.until(lambda: len(daemon.sent) == 2, "sent again")
            assert "lyrics" not in daemon.sent[1]

            await send_command(h, f"/model {MUSICGEN_MODEL}")
            h.studio.set_lyrics("[chorus]\nla")
            assert st.lyrics_note() == ("musicgen (musicgen) does not sing lyrics; pick an "
                                        "ace-step model")
            await h.until(lambda: "musicgen (musicgen) does not sing lyrics" in h.screen(),
                          "the editor's warning")
            await send_command(h, "drums")
            await h.until(lambda: len(daemon.sent) == 3, "sent without the words")
            assert "lyrics" not in daemon.sent[2]
            await h.until(lambda: h.message == "queued j-sent-3 (lyrics not sent: the model "
                                               "does not sing)", "the note")
            await open_lyrics(h)  # shown but not focused: F12 focuses it, then hides it
            h.press("f12")
            await h.until(lambda: not st.lyrics_open, "hidden")
            assert "♪ lyrics, 1 line (not sung by this model)" in h.screen()


class TestAgainstTheDaemon:
    async def test_a_song_is_sung_and_its_sections_shown(self, short_tmp: Path,
                                                         tiny_ace_step: Path) -> None:
        """With the tiny ACE-Step model as the daemon's default, words typed in the editor
        are sung (its recipe records them) and the take's sections show under it; a cover
        of it is a new take from its file; extract, which a turbo model was not trained for,
        is refused by the daemon in one line."""
        async with running_daemon(short_tmp, models__default=str(tiny_ace_step)) as d, \
                running_studio(d.socket_path, columns=120, rows=36, preview=False) as h:
            st = h.studio.state
            await connected(h)
            await h.until(lambda: st.family == "ace-step" and st.sings(), "ACE-Step's panel")
            await send_command(h, "/duration 2")
            await send_command(h, "/steps 2")
            await open_lyrics(h)
            for line in ("[verse]", "hello there", "[chorus]", "la la la"):
                h.type(line)
                h.press("enter")
            await h.until(lambda: st.lyrics.startswith("[verse]\nhello there\n[chorus]"),
                          "the words typed")
            h.press("escape")
            await h.until(lambda: h.studio.app.layout.has_focus(h.studio.widgets.composer),
                          "the composer")
            await send_command(h, "a ballad")
            await h.until(lambda: st.takes(), "the song", timeout=120)
            (take,) = st.takes()
            assert take.lyrics == "[verse]\nhello there\n[chorus]\nla la la"
            await h.until(lambda: "[verse]" in h.screen() and "[chorus]" in h.screen()
                          and "take 1" in h.screen(), "its sections on the timeline")

            await send_command(h, "/cover 0.5 bossa nova")
            await h.until(lambda: len(st.takes()) == 2, "the cover", timeout=120)
            cover = st.jobs[st.takes()[1].job_id]
            assert (cover["params"]["init"], cover["params"]["strength"]) == (take.path, 0.5)
            assert cover["params"]["prompt"] == "bossa nova"

            st.selected_take = take.key
            await send_command(h, "/extract drums")
            await h.until(lambda: h.message.startswith("extract failed: refused: task:"),
                          "the daemon's refusal")
            assert "turbo" in h.message and "\n" not in h.message
