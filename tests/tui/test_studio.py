"""The studio against a real in-process daemon (tiny MusicGen, real worker, real socket):
prompt to take with live progress in two windows, playback on the null backend, parameters by
keyboard and command with undo, completion, the palette, and a daemon restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.support import WINDOW, Harness, running_studio
from timbre_tui.layout import MARK
from timbre_tui.waveform import BLOCKS
from timbrectl.client import connect
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


def socket_under(base: Path) -> Path:
    """Where ``running_daemon(base)`` puts its socket (the studio may start first)."""
    return base / "run" / "timbred.sock"


async def connected(h: Harness) -> None:
    await h.until(lambda: h.studio.state.connection == "connected"
                  and h.studio.state.status is not None, "the studio to connect")


async def send_command(h: Harness, text: str) -> None:
    """Type a /command and Enter (waiting for the completer first, as a person would)."""
    h.type(text)
    await h.until(lambda: h.studio.widgets.composer.text == text, f"{text!r} typed")
    h.press("enter")
    await h.until(lambda: h.studio.widgets.composer.text == "", f"{text!r} run")


class TestPromptToTake:
    async def test_prompt_progress_take_playback_and_restart(self, short_tmp: Path,
                                                             tiny: Path) -> None:
        """Two windows start before the daemon (disconnected, saying how to start one), then
        connect. A prompt sent from one shows its progress bar, then its take with a waveform
        in both; F5 plays it silently with a playhead that follows the clock, F5 pauses, F6
        stops; /rate and /export answer; F2 shows it in the library, where a search narrows;
        F9 cancels a running job, /retry queues it again and /cancel cancels that. The daemon
        stops (both show disconnected) and a new one starts on the same socket and database:
        both reconnect and reload; Up recalls the prompt from the daemon's history."""
        sock = socket_under(short_tmp)
        # Without live previews: here the take is played as a take (test_preview.py has them).
        async with running_studio(sock, preview=False) as h, \
                running_studio(sock, columns=80, rows=24, preview=False) as other:
            await h.until(lambda: h.studio.state.connection == "disconnected", "disconnected")
            assert "timbrectl daemon start" in h.screen()

            async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW):
                await connected(h)
                await connected(other)
                assert "● connected" in h.screen()
                await send_command(h, "/duration 2")
                assert h.studio.state.params.duration == 2.0

                h.type("warm lofi rhodes")
                h.press("enter")
                await h.until(lambda: "▕" in h.screen() and "generating" in h.screen(),
                              "the progress bar", timeout=60)
                await h.until(lambda: h.studio.state.takes(), "the take", timeout=60)
                (take,) = h.studio.state.takes()
                assert take.prompt == "warm lofi rhodes" and take.duration_s == 2.0
                assert h.studio.state.selected_take == take.key  # new takes get the selection
                await h.until(lambda: h.studio.waveforms.get(take.path) is not None,
                              "the waveform")
                screen = h.screen()
                assert f"{MARK} warm lofi rhodes" in screen
                take_row = next(ln for ln in screen.splitlines() if "take 1" in ln)
                assert "0:02" in take_row and any(b in take_row for b in BLOCKS)

                # the other window saw the same job and take through its own events
                await other.until(lambda: [t.key for t in other.studio.state.takes()]
                                  == [take.key], "the take in the second window")
                await other.until(lambda: "take 1" in other.screen(), "it drawn at 80x24")

                # playback on the null backend: silent, clock-driven, path shown
                h.press("f5")
                await h.until(lambda: h.studio.player.playing, "playback")
                assert take.path in h.message and "no audio" in h.screen()
                h.clock.advance(1.0)
                assert h.studio.player.position() == pytest.approx(1.0)
                await h.until(lambda: "0:01/0:02" in h.screen(), "the playhead at 0:01")
                h.press("f5")
                await h.until(lambda: h.studio.player.state == "paused", "pause")
                h.clock.advance(5.0)
                assert h.studio.player.position() == pytest.approx(1.0)
                h.press("f6")
                await h.until(lambda: h.studio.player.state == "stopped", "stop")

                # commands of later features work, or say which feature brings them
                await send_command(h, "/rate up")
                await h.until(lambda: "rate" in h.message, "the /rate answer")
                assert h.message == f"rated {Path(take.path).name} up" or \
                    h.message.startswith("rate failed: rating arrives with the history")
                await send_command(h, "/export flac")
                await h.until(lambda: "export" in h.message, "the /export answer")
                assert h.message.startswith("exported ") or \
                    h.message.startswith("export failed: export arrives with the export")
                # the library: past takes, searched by the daemon
                st = h.studio.state
                h.press("f2")
                await h.until(lambda: [t.key for t in st.library.takes] == [take.key],
                              "the take in the library")
                assert "Library (past takes)" in h.screen()
                h.type("cello")
                await h.until(lambda: st.library.query == "cello" and not st.library.loading
                              and not st.library.takes, "an empty search")
                assert "no takes match" in h.screen()
                h.press("f2")
                await h.until(lambda: st.view == "timeline", "back to the timeline")

                # cancel (F9) a running job, retry it (/retry), cancel the retry (/cancel)
                await send_command(h, "/duration 30")
                h.type("a long one")
                h.press("enter")

                def job_of(prompt: str, state: str) -> str | None:
                    return next((j["id"] for j in st.timeline() if j["state"] == state
                                 and j["params"]["prompt"] == prompt), None)

                await h.until(lambda: job_of("a long one", "generating"), "the long job")
                h.press("f9")
                await h.until(lambda: job_of("a long one", "cancelled"), "it cancelled")
                assert "⊘ cancelled" in h.screen()
                await send_command(h, "/retry")
                # (cancel it once it is decoding: a cancel that lands while a job is being
                # handed to the worker was once seen not to stop it, a daemon-side race)
                await h.until(lambda: any(j.get("retry_of") and j["id"] in st.progress
                                          for j in st.active_jobs()), "the retry running")
                await send_command(h, "/cancel")
                await h.until(lambda: not st.active_jobs() and sum(
                    j["state"] == "cancelled" for j in st.timeline()) == 2, "the retry cancelled")
                first_epoch = h.studio.state.status["events"]["epoch"]  # type: ignore[index]

            await h.until(lambda: h.studio.state.connection == "disconnected",
                          "disconnected after the daemon stopped")
            await other.until(lambda: other.studio.state.connection == "disconnected",
                              "the second window disconnected")
            assert "disconnected" in h.screen()

            async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW):
                await h.until(lambda: h.studio.state.connection == "connected"
                              and h.studio.state.status is not None
                              and h.studio.state.status["events"]["epoch"] != first_epoch,
                              "reconnected to the new daemon")
                assert [t.key for t in h.studio.state.takes()] == [take.key]
                await other.until(lambda: other.studio.state.connection == "connected",
                                  "the second window reconnected")
                # Up on an empty composer recalls the daemon's prompt history
                h.press("up")
                await h.until(lambda: h.studio.widgets.composer.text == "a long one",
                              "the latest prompt recalled")
                h.press("up")
                await h.until(lambda: h.studio.widgets.composer.text == "warm lofi rhodes",
                              "the one before")
                h.press("c-c")  # clears the composer
                await h.until(lambda: h.studio.widgets.composer.text == "", "cleared")


class TestTimelineFollows:
    async def test_jobs_below_the_newest_take_stay_in_sight(self, short_tmp: Path,
                                                            tiny: Path) -> None:
        """With a timeline taller than the window (a long history, as after a daemon restart
        reloads it) and the newest take selected, a prompt sent, cancelled (/cancel) and
        retried (/retry) shows both jobs: the view follows the newest rows instead of staying
        anchored on the selected take."""
        sock = socket_under(short_tmp)
        async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW) as d, \
                connect(d.socket_path) as client:
            first = await client.call("generate.submit", {"prompt": "history", "duration": 0.5,
                                                          "variations": 12})
            await client.call("jobs.wait", {"job_id": first["job_id"], "timeout": 120})
            async with running_studio(sock, columns=80, rows=24, preview=False) as h:
                st = h.studio.state
                await connected(h)
                await send_command(h, "/duration 0.5")
                h.type("newest")
                h.press("enter")
                await h.until(lambda: len(st.takes()) == 13, "the newest take", timeout=60)
                assert st.selected_take == st.takes()[-1].key
                await send_command(h, "/duration 30")
                h.type("sent after")
                h.press("enter")
                await h.until(lambda: bool(st.active_jobs()), "the job queued")
                await send_command(h, "/cancel")
                await h.until(lambda: not st.active_jobs(), "it cancelled", timeout=60)
                await send_command(h, "/retry")
                await h.until(lambda: len(st.timeline()) == 4, "the retry", timeout=60)
                await h.until(lambda: h.screen().count(f"{MARK} sent after") == 2,
                              "both jobs in sight")
                await send_command(h, "/cancel")
                await h.until(lambda: not st.active_jobs(), "the retry cancelled", timeout=60)


class TestFormat:
    async def test_format_in_the_panel_makes_the_take(self, short_tmp: Path,
                                                      tiny: Path) -> None:
        """`/preset none`, `/format ogg`, a prompt: the take is an Ogg file."""
        sock = socket_under(short_tmp)
        async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW), \
                running_studio(sock, preview=False) as h:
            st = h.studio.state
            await connected(h)
            for command in ("/preset none", "/format ogg", "/duration 0.5"):
                await send_command(h, command)
            h.type("an ogg take")
            h.press("enter")
            await h.until(lambda: bool(st.takes()), "the take", timeout=60)
            assert st.takes()[0].path.endswith(".ogg")


class TestEditing:
    async def test_parameters_commands_completion_palette(
        self, short_tmp: Path, tiny: Path, user_presets: Path
    ) -> None:
        """Parameters change from the panel (F4, arrows) and by /command, undo and redo with
        Ctrl-Z / Ctrl-Y; bad values and unknown commands say why; Tab/Enter complete commands
        and the daemon's presets; the palette filters and runs actions; /help opens help and
        Esc closes it."""
        (user_presets / "broken.toml").write_text("[params]\nduration = 9000\n")
        async with running_daemon(short_tmp, models__default=str(tiny), **WINDOW) as d, \
                running_studio(d.socket_path, columns=80, rows=24) as h:
            st = h.studio.state
            await connected(h)
            assert "Parameters" not in h.screen()  # 80 columns: the summary line instead
            assert "10s · seed random" in h.screen()

            # keyboard: F4 shows and focuses the panel, Down to duration, Right steps it
            h.press("f4")
            await h.until(lambda: "Parameters" in h.screen(), "the panel")
            h.press("down", "right")
            await h.until(lambda: st.params.duration == 11.0, "duration stepped to 11 s")
            assert "11s" in h.screen()
            h.press("f3")  # hide the panel again
            await h.until(lambda: "Parameters" not in h.screen(), "the panel hidden")

            # commands, then undo / redo
            await send_command(h, "/seed 42")
            assert st.params.seed == 42 and st.params.seed_locked
            assert "seed 42" in h.screen()
            h.press("c-z")
            await h.until(lambda: not st.params.seed_locked, "seed change undone")
            h.press("c-z")
            await h.until(lambda: st.params.duration == 10.0, "duration change undone")
            h.press("c-y")
            await h.until(lambda: st.params.duration == 11.0, "redone")

            await send_command(h, "/duration soon")
            assert h.message == ("duration: expected seconds (10, 10s, 1:30 or 2m) between "
                                 "0.5 and 600, got 'soon'")
            assert st.params.duration == 11.0
            h.type("/nonsense")
            await h.until(lambda: h.studio.widgets.composer.text == "/nonsense", "typed")
            h.press("enter")
            await h.until(lambda: "unknown command /nonsense" in h.message, "refused")
            assert h.studio.widgets.composer.text == "/nonsense"  # kept for fixing
            h.press("c-c")

            # completion: a command name, then a preset name
            h.type("/pre")
            buf = h.studio.widgets.composer.buffer
            await h.until(lambda: buf.complete_state is not None
                          and buf.complete_state.completions, "command completions")
            assert "/preset" in h.screen()  # the menu shows usage
            h.press("enter")  # finishes the command's name
            await h.until(lambda: buf.text == "/preset ", "the completed command")
            h.type("lo")
            await h.until(lambda: buf.complete_state is not None
                          and [c.text for c in buf.complete_state.completions] == ["lofi"],
                          "the daemon's preset completions")
            assert "Mellow lo-fi hip hop" in h.screen()  # its description, from the daemon
            h.press("tab")
            await h.until(lambda: buf.text == "/preset lofi", "the completed preset")
            h.press("enter")
            await h.until(lambda: st.params.preset == "lofi", "the preset applied")
            assert st.params.duration == 30.0  # lofi.toml's [params]

            # the palette: filter, run
            h.press("c-p")
            await h.until(lambda: st.palette_open, "the palette")
            assert "Command palette" in h.screen() and "Ctrl-Z" in h.screen()
            h.type("undo")
            await h.until(lambda: h.studio.widgets.palette_filter.text == "undo", "filter")
            h.press("enter")
            await h.until(lambda: not st.palette_open and st.params.preset is None,
                          "undo run from the palette")
            assert st.params.duration == 11.0

            # a broken preset file says why; one written after connecting is found
            await send_command(h, "/preset broken")
            await h.until(lambda: "broken cannot be used" in h.message, "the refusal")
            assert "params.duration" in h.message and st.params.preset is None
            await send_command(h, "/preset jazz")
            await h.until(lambda: "'jazz' is not one of the daemon's presets" in h.message,
                          "an unknown preset refused after asking the daemon again")
            assert "lofi" in h.message and "broken" not in h.message
            (user_presets / "mine.toml").write_text(
                'prompt_prefix = "minimal techno"\n[params]\ntemperature = 0.5\n'
                '[export]\nformat = "flac"\n')
            await send_command(h, "/preset mine")
            await h.until(lambda: st.params.preset == "mine", "the new preset applied")
            assert st.params.temperature == 0.5

            # a prompt sent with it: the daemon wraps it and writes the preset's format; a
            # value changed in the panel stays the user's (and the preset stays chosen)
            await send_command(h, "/duration 1")
            assert st.params.preset == "mine"
            h.type("rolling bassline")
            h.press("enter")
            await h.until(lambda: any(j["state"] == "done" for j in st.jobs.values()),
                          "the take", timeout=60)
            job = next(j for j in st.jobs.values() if j["state"] == "done")
            assert job["params"]["prompt"] == "minimal techno, rolling bassline"
            assert job["params"]["preset"] == "mine" and job["params"]["duration"] == 1.0
            assert job["params"]["temperature"] == 0.5
            assert [Path(o).suffix for o in job["outputs"]] == [".flac"]

            await send_command(h, "/help")
            await h.until(lambda: st.help_open and "Keys (tui.toml" in h.screen(), "help")
            h.press("escape")
            await h.until(lambda: not st.help_open, "help closed", timeout=5)


class TestWithoutDaemon:
    async def test_starts_disconnected_and_requests_fail_in_words(self,
                                                                  short_tmp: Path) -> None:
        """With no daemon the studio runs disconnected, says how to start one, and a prompt
        sent anyway fails with a message (not a traceback) and goes back into the composer."""
        async with running_studio(socket_under(short_tmp), columns=80, rows=24) as h:
            await h.until(lambda: h.studio.state.connection == "disconnected", "disconnected")
            screen = h.screen()
            assert "disconnected" in screen and "timbrectl daemon start" in screen
            h.type("a prompt into the void")
            h.press("enter")
            await h.until(lambda: "submit failed" in h.message, "the failure")
            assert "not connected to timbred" in h.message
            assert "timbrectl daemon start" in h.message
            assert h.studio.widgets.composer.text == "a prompt into the void"
            h.press("c-q")
            await h.until(lambda: not h.studio.app.is_running, "quit")

    async def test_slash_in_the_library_starts_a_command(self, short_tmp: Path) -> None:
        """In the library (F2), "/" starts a command in the composer, as everywhere; the
        search box does not get the slash."""
        async with running_studio(socket_under(short_tmp), columns=80, rows=24) as h:
            w = h.studio.widgets
            h.press("f2")
            await h.until(lambda: h.studio.state.view == "library"
                          and h.studio.app.layout.has_focus(w.library_search), "the library")
            h.type("rain")
            await h.until(lambda: w.library_search.text == "rain", "a search typed")
            h.type("/")
            await h.until(lambda: w.composer.text == "/", "the command started")
            assert w.library_search.text == "rain"
            assert h.studio.app.layout.has_focus(w.composer)
