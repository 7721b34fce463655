"""Editing the selected take from the composer: /repaint, /cover, /extract and /add each send
one generate.submit with the take's file as init (and the task, track, span or strength), and
bad arguments or a model that cannot do it are one line with nothing sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tui.factories import ACE_MODEL, job, song, swell, with_families
from tests.tui.support import Harness, RecordingDaemon, running_studio
from tests.tui.test_studio import send_command, socket_under
from timbre_tui.edits import Edit, EditKind, parse_edit
from timbre_tui.state import TRACKS
from timbred.backends import ace_step

pytestmark = pytest.mark.anyio


class TestArguments:
    @pytest.mark.parametrize(("kind", "arg", "edit"), [
        ("repaint", "0.5 1:01 brighter strings", Edit("repaint", "brighter strings",
                                                       span=(0.5, 61.0))),
        ("cover", "0.3 bossa nova", Edit("cover", "bossa nova", strength=0.3)),
        ("cover", "90s boom bap", Edit("cover", "90s boom bap")),
        ("extract", "drums", Edit("extract", None, track="drums")),
        ("extract", "vocals just the lead", Edit("extract", "just the lead", track="vocals")),
        ("add", "bass walking bass", Edit("add", "walking bass", track="bass")),
        ("add", "guitar 10 20s nylon", Edit("add", "nylon", span=(10.0, 20.0),
                                            track="guitar")),
        ("add", "synth 80s lead", Edit("add", "80s lead", track="synth")),
    ])
    def test_what_each_command_takes(self, kind: EditKind, arg: str, edit: Edit) -> None:
        """Spans are times as /duration types them; a cover's strength is an optional
        leading number; add's span is optional (a prompt word that is no time ends it)."""
        assert parse_edit(kind, arg, TRACKS, 120.0) == edit

    @pytest.mark.parametrize(("kind", "arg", "message"), [
        ("repaint", "5 2 brighter", "repaint: the span must end after it starts (5 s to 2 s)"),
        ("repaint", "1 9 brighter", "repaint: the span must lie within the take's 2 s, got "
                                    "1 s to 9 s"),
        ("repaint", "soon 2 brighter", "repaint: START and END are times in the take (10, "
                                       "10s, 1:30), got 'soon'"),
        ("repaint", "1", "repaint: give the span and what it becomes (/repaint START END "
                         "PROMPT)"),
        ("repaint", "0 1", "repaint: say what it should become (/repaint START END PROMPT)"),
        ("cover", "1.5 jazz", "cover: strength must be more than 0 and at most 1 (1 keeps "
                              "nothing of the take), got 1.5"),
        ("cover", "0 jazz", "cover: strength must be more than 0 and at most 1"),
        ("cover", "0.5", "cover: say what it should become (/cover [STRENGTH] PROMPT)"),
        ("extract", "kazoo", "extract: 'kazoo' is not a track; one of vocals, backing_vocals, "
                             "drums"),
        ("extract", "", "extract: name a track (/extract TRACK [PROMPT]): vocals, "),
        ("add", "drums", "add: say what it should become (/add TRACK [START END] PROMPT)"),
        ("add", "drums 2 1 fills", "add: the span must end after it starts"),
    ])
    def test_bad_arguments_say_what_is_wrong(self, kind: EditKind, arg: str,
                                             message: str) -> None:
        """Each refusal is one line naming the command and what it takes."""
        with pytest.raises(ValueError) as caught:
            parse_edit(kind, arg, TRACKS, 2.0)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def last_said(h: Harness, text: str) -> Callable[[], bool]:
    """Whether the studio's latest message is ``text``."""
    return lambda: bool(h.studio.state.message_log) and h.studio.state.message_log[-1].text \
        == text


async def studio_with_song(h: Harness, tmp: Path) -> str:
    """The harness's state with MusicGen and ACE-Step, a sung take selected and a MusicGen
    take before it; the sung take's path."""
    st = with_families(h.studio.state)
    path = str(swell(tmp / "song.wav"))
    st.load_jobs([job("j-0", "done", "drums", outputs=[str(swell(tmp / "drums.wav"))],
                      created_at=1.0),
                  song("j-1", Path(path), "[verse]\nla", created_at=2.0)])
    st.selected_take = ("j-1", 1)
    return path


class TestCommands:
    async def test_each_edit_submits_the_selected_take(
            self, short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no model chosen an edit goes to the take's own model with only the task and
        track of its family (the daemon fills the model's defaults); no duration (the
        source's length) or preset is sent. With a model chosen, the panel's values go with
        it, and so do the lyrics. Tab completes track names."""
        daemon = RecordingDaemon()
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            path = await studio_with_song(h, tmp_path)
            base = {"model": ACE_MODEL, "init": path, "variations": 1}
            plain = {"task": "generate", "track": ""}
            commands = {
                "/repaint 0.5 1.5 brighter strings": {
                    **base, "prompt": "brighter strings", "repaint": [0.5, 1.5],
                    "options": plain},
                "/cover 0.3 bossa nova": {**base, "prompt": "bossa nova", "strength": 0.3,
                                          "options": plain},
                "/cover bossa nova": {**base, "prompt": "bossa nova", "options": plain},
                "/extract drums": {**base, "prompt": "a ballad",  # the take's own prompt
                                   "options": {"task": "extract", "track": "drums"}},
                "/add guitar 0.5 1 nylon guitar": {
                    **base, "prompt": "nylon guitar", "repaint": [0.5, 1.0],
                    "options": {"task": "add", "track": "guitar"}},
                "/add bass walking bass": {**base, "prompt": "walking bass",
                                           "options": {"task": "add", "track": "bass"}},
            }
            for count, (command, expected) in enumerate(commands.items(), start=1):
                h.studio.state.selected_take = ("j-1", 1)  # a new job takes the selection
                await send_command(h, command)
                await h.until(last_said(h, f"queued j-sent-{count}"), f"{command} queued")
                assert daemon.sent[-1] == expected, command

            # a model chosen: its panel's values, and the editor's words
            h.studio.state.selected_take = ("j-1", 1)
            await send_command(h, f"/model {ACE_MODEL}")
            await send_command(h, "/steps 20")
            h.studio.set_lyrics("[chorus]\nla la")
            await send_command(h, "/extract vocals")
            await h.until(lambda: len(daemon.sent) == len(commands) + 1, "sent")
            assert daemon.sent[-1] == {
                **base, "prompt": "a ballad", "lyrics": "[chorus]\nla la",
                "options": {**ace_step.SPEC.defaults(), "steps": 20, "task": "extract",
                            "track": "vocals"}}

            buf = h.studio.widgets.composer.buffer
            h.type("/add b")
            await h.until(lambda: buf.complete_state is not None
                          and [c.text for c in buf.complete_state.completions]
                          == ["backing_vocals", "bass", "brass"], "track completions")
            h.press("c-c")

    async def test_bad_arguments_and_models_that_cannot_send_nothing(
            self, short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unknown track, a span that ends before it starts, a strength out of range, no
        take selected, or a model whose family cannot do it: one line in the message bar,
        and nothing reaches the daemon."""
        daemon = RecordingDaemon()
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            await studio_with_song(h, tmp_path)
            refusals = {
                "/extract kazoo": "extract: 'kazoo' is not a track; one of vocals, "
                                  "backing_vocals, drums, bass, guitar, keyboard, percussion, "
                                  "strings, synth, fx, brass, woodwinds",
                "/repaint 1.5 0.5 brighter": "repaint: the span must end after it starts "
                                             "(1.5 s to 0.5 s)",
                "/cover 2 jazz": "cover: strength must be more than 0 and at most 1 (1 keeps "
                                 "nothing of the take), got 2",
                "/add drums": "add: say what it should become (/add TRACK [START END] PROMPT)",
            }
            for command, message in refusals.items():
                await send_command(h, command)
                await h.until(last_said(h, message), f"{command} refused")
                assert h.studio.state.message_log[-1].level == "error"

            h.studio.state.selected_take = ("j-0", 1)  # a MusicGen take: its own model
            await send_command(h, "/repaint 0 1 brighter")
            await h.until(lambda: h.message == "repaint: tiny (musicgen) cannot repaint a "
                                               "span; pick a model that can (ace-step)",
                          "a MusicGen take refused")
            await send_command(h, "/extract drums")
            await h.until(lambda: h.message == "extract: tiny (musicgen) cannot extract a "
                                               "track; pick a model that can (ace-step)",
                          "extract refused")

            h.studio.state.selected_take = None
            await send_command(h, "/cover 0.5 jazz")
            await h.until(lambda: h.message == "select a take to cover (Alt-↑/↓ or the "
                                               "timeline)", "no take")
            assert daemon.sent == []

    async def test_the_palette_offers_each_edit(self, short_tmp: Path) -> None:
        """The palette lists the edits; running one starts its command in the composer."""
        async with running_studio(socket_under(short_tmp), columns=100, rows=30) as h:
            h.press("c-p")
            await h.until(lambda: h.studio.state.palette_open, "the palette")
            h.type("track")
            await h.until(lambda: "Pull one track out" in h.screen(), "the extract entry")
            assert "A new track fitting the selected take" in h.screen()
            h.type(" pull")
            await h.until(lambda: "A new track fitting" not in h.screen(), "filtered")
            h.press("enter")
            await h.until(lambda: h.studio.widgets.composer.text == "/extract ", "prefilled")
