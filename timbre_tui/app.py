"""``timbre``: the full-screen studio attached to timbred.

:class:`Studio` wires the pieces (state, daemon link, player, live preview, waveforms, actions,
layout, keys) and runs them on one event loop; :func:`main` is the ``timbre`` command.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
from prompt_toolkit.application import Application
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from timbre_tui.commands import (
    SlashCommand,
    build_actions,
    build_commands,
    filter_entries,
    help_text,
    palette_entries,
    param_commands,
    run_line,
)
from timbre_tui.config import load_config
from timbre_tui.data import DaemonLink, describe_error
from timbre_tui.key_bindings import DEFAULT_KEYS, KeyMap, load_global_bindings
from timbre_tui.layout import WIDE_COLUMNS, Widgets, build_layout, create_widgets
from timbre_tui.playback import NullBackend, PlaybackBackend, Player, open_backend
from timbre_tui.preview import LivePreview
from timbre_tui.state import Level, ParamSpec, StudioState, Take
from timbre_tui.style import THEMES, build_style
from timbre_tui.waveform import WaveformCache
from timbrectl.client import resolve_socket_path
from timbred.errors import TimbreError
from timbred.stdio import quiet_on_broken_pipe

QUIT_CONFIRM_S = 2.0
TICK_S = 0.1


class Studio:
    """One studio window: everything it shows comes from the daemon at ``socket_path``."""

    def __init__(self, socket_path: Path, *, keymap: KeyMap | None = None,
                 theme: str = "default", backend: PlaybackBackend | None = None,
                 preview: bool = True, retry_interval: float = 0.5,
                 input: Input | None = None, output: Output | None = None) -> None:
        self.state = StudioState(socket_path=str(socket_path))
        self.keymap: KeyMap = dict(keymap or DEFAULT_KEYS)
        self.player = Player(backend or NullBackend())
        self.preview = LivePreview(self, enabled=preview)
        self._tg: anyio.abc.TaskGroup | None = None
        self._search_generation = 0
        self.waveforms = WaveformCache(lambda fn: self.spawn(fn, what="waveform"),
                                       self.invalidate)
        self.link = DaemonLink(self.state, socket_path, self.invalidate,
                               on_event=self.preview.on_event, retry_interval=retry_interval)
        self.actions = build_actions(self)
        self._commands = build_commands(self)
        self.widgets: Widgets = create_widgets(self)
        self.app: Application[int] = Application(
            layout=build_layout(self), key_bindings=load_global_bindings(self),
            style=build_style(theme), full_screen=True, mouse_support=True,
            input=input, output=output)

    # --- running --------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> int:
        """Run until the user quits; the daemon link and clock tick alongside.

        With ``handle_signals`` SIGINT, SIGTERM and SIGHUP quit cleanly (the terminal is
        restored); tests running several studios in one process turn that off.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.link.run)
            tg.start_soon(self.preview.run)
            tg.start_soon(self._tick)
            if handle_signals:
                tg.start_soon(self._quit_on_signals)
            try:
                result = await self.app.run_async(handle_sigint=False)
            finally:
                self._tg = None
                tg.cancel_scope.cancel()
                self.player.close()
        return result if isinstance(result, int) else 0

    async def _quit_on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
            async for _ in sigs:
                self.quit()

    async def _tick(self) -> None:
        """Move the playhead, expire messages, and catch a previewed job's unseen end."""
        had_message = False
        while True:
            await anyio.sleep(TICK_S)
            self.preview.check()
            changed = self.player.poll() or self.player.playing
            has_message = self.state.current_message() is not None
            if changed or had_message != has_message:
                self.invalidate()
            had_message = has_message

    def spawn(self, fn: Callable[[], Awaitable[None]], *, what: str) -> None:
        """Run ``fn`` in the background; any failure becomes a message, never a traceback."""
        if self._tg is None:
            self.say(f"{what}: the studio is not running", "error")
            return
        self._tg.start_soon(self._guarded, fn, what)

    async def _guarded(self, fn: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            await fn()
        except Exception as exc:
            self.say(f"{what} failed: {describe_error(exc)}", "error")
        finally:
            self.invalidate()

    def invalidate(self) -> None:
        self.app.invalidate()

    def say(self, text: str, level: Level = "info") -> None:
        self.state.say(text, level)
        self.invalidate()

    def run_action(self, name: str) -> None:
        """Run the action called ``name`` (keys and the palette come through here)."""
        try:
            self.actions[name].run()
        except Exception as exc:
            self.say(f"{name} failed: {describe_error(exc)}", "error")
        self.invalidate()

    # --- the composer ---------------------------------------------------------------------

    def send(self) -> None:
        """Send the composer's prompt, or run its /command."""
        composer = self.widgets.composer
        text = composer.text
        if run_line(self, text) and composer.text == text:
            composer.buffer.reset()
        self.state.recall_index = None

    def recall(self, direction: int) -> None:
        """Older (-1) or newer (+1) prompt from the daemon's history into the composer."""
        st = self.state
        history = st.prompt_history()
        buf = self.widgets.composer.buffer
        if st.recall_index is None:
            if direction > 0 or not history:
                return
            st.recall_draft = buf.text
            index = len(history) - 1
        else:
            index = st.recall_index + direction
        if index < 0:
            return
        if index >= len(history):
            st.recall_index = None
            buf.text = st.recall_draft
        else:
            st.recall_index = index
            buf.text = history[index]
        buf.cursor_position = len(buf.text)

    def prefill(self, text: str) -> None:
        """Put ``text`` in the composer (e.g. "/seed ") and focus it."""
        buf = self.widgets.composer.buffer
        buf.text = text
        buf.cursor_position = len(text)
        self.close_overlays()
        self.focus_composer()

    def interrupt(self) -> None:
        """Ctrl-C: close an overlay, clear the composer, or (pressed twice) quit."""
        st = self.state
        if st.palette_open or st.help_open:
            self.close_overlays()
            return
        if self.widgets.composer.text:
            self.widgets.composer.buffer.reset()
            st.recall_index = None
            return
        now = st.clock()
        if now - st.quit_armed_at < QUIT_CONFIRM_S:
            self.quit()
            return
        st.quit_armed_at = now
        self.say("press Ctrl-C again to quit (the daemon keeps running)")

    def quit(self) -> None:
        if self.app.future is not None and not self.app.future.done():
            self.app.exit(result=0)

    # --- focus and views ------------------------------------------------------------------

    def focus_composer(self) -> None:
        self.app.layout.focus(self.widgets.composer)

    def focus_next(self) -> None:
        self.app.layout.focus_next()

    def focus_previous(self) -> None:
        self.app.layout.focus_previous()

    def focus_params(self) -> None:
        if self.app.layout.has_focus(self.widgets.panel):
            self.focus_composer()
            return
        narrow = self.app.output.get_size().columns < WIDE_COLUMNS
        if self.state.panel_forced is False or (self.state.panel_forced is None and narrow):
            self.state.panel_forced = True
        self.app.layout.focus(self.widgets.panel)

    def toggle_panel(self) -> None:
        st = self.state
        shown = st.panel_forced if st.panel_forced is not None else \
            self.app.output.get_size().columns >= WIDE_COLUMNS
        st.panel_forced = not shown
        if shown and self.app.layout.has_focus(self.widgets.panel):
            self.focus_composer()

    # --- lyrics -----------------------------------------------------------------------------

    def toggle_lyrics(self) -> None:
        """Show and focus the lyrics editor; from inside it, hide it (the words are kept)."""
        if self.state.lyrics_open and self.app.layout.has_focus(self.widgets.lyrics):
            self.hide_lyrics()
        else:
            self.open_lyrics()

    def hide_lyrics(self) -> None:
        """Hide the editor; its words are kept, and still sent with the next prompt."""
        self.state.lyrics_open = False
        if self.app.layout.has_focus(self.widgets.lyrics):
            self.focus_composer()

    def open_lyrics(self) -> None:
        self.state.lyrics_open = True
        self.close_overlays()
        self.app.layout.focus(self.widgets.lyrics)
        note = self.state.lyrics_note()
        if note is not None:
            self.say(note)

    def set_lyrics(self, text: str) -> None:
        """Replace the editor's words (the state follows through :meth:`lyrics_changed`)."""
        buf = self.widgets.lyrics.buffer
        buf.text = text
        buf.cursor_position = len(text)

    def lyrics_changed(self) -> None:
        self.state.lyrics = self.widgets.lyrics.text
        self.invalidate()

    def toggle_library(self) -> None:
        if self.state.view == "library":
            self.state.view = "timeline"
            self.focus_composer()
        else:
            self.open_library(self.widgets.library_search.text)

    def open_library(self, query: str) -> None:
        self.state.view = "library"
        search = self.widgets.library_search
        if search.text != query:
            search.text = query  # runs the search through on_text_changed
        else:
            self.search_library()
        self.close_overlays()
        self.app.layout.focus(search)

    def search_library(self) -> None:
        """Query the daemon for the library view (the latest query wins)."""
        self._search_generation += 1
        generation = self._search_generation
        query = self.widgets.library_search.text
        lib = self.state.library
        lib.query, lib.loading = query, True

        async def go() -> None:
            try:
                takes, note = await self.link.library(query)
            finally:
                if generation == self._search_generation:
                    lib.loading = False
            if generation == self._search_generation:
                lib.takes, lib.note = takes, note
                lib.selected = 0

        self.spawn(go, what="library search")

    def toggle_palette(self) -> None:
        st = self.state
        if st.palette_open:
            self.close_overlays()
            return
        st.help_open = False
        st.palette_open = True
        st.palette_selected = 0
        self.widgets.palette_filter.buffer.reset()
        self.app.layout.focus(self.widgets.palette_filter)

    def toggle_help(self) -> None:
        st = self.state
        if st.help_open:
            self.close_overlays()
            return
        st.palette_open = False
        st.help_open = True
        self.widgets.help.text = help_text(self)
        self.app.layout.focus(self.widgets.help)

    def close_overlays(self) -> None:
        st = self.state
        if st.palette_open or st.help_open:
            st.palette_open = st.help_open = False
            self.focus_composer()

    def run_palette_entry(self) -> None:
        entries = filter_entries(palette_entries(self), self.widgets.palette_filter.text)
        if not entries:
            return
        entry = entries[max(0, min(self.state.palette_selected, len(entries) - 1))]
        self.close_overlays()
        try:
            entry.run()
        except Exception as exc:
            self.say(f"{entry.title} failed: {describe_error(exc)}", "error")

    # --- takes and parameters -------------------------------------------------------------

    def select_take(self, delta: int) -> None:
        take = self.state.move_take(delta)
        if take is None:
            self.say("no takes yet")

    def click_take(self, take: Take) -> None:
        """A click selects a take; a click on the selected take plays or pauses it."""
        if self.state.selected_take == take.key:
            self.run_action("play_pause")
            return
        self.state.selected_take = take.key
        target = self.widgets.library_list if self.state.view == "library" \
            else self.widgets.timeline
        self.app.layout.focus(target)
        self.invalidate()

    @property
    def commands(self) -> dict[str, SlashCommand]:
        """Every slash command by name: the panel's (the chosen model's family decides
        which) first, then the rest."""
        return {**param_commands(self), **self._commands}

    def _selected_spec(self) -> ParamSpec:
        specs = self.state.param_specs()  # a family change may have shortened the panel
        self.state.selected_param = max(0, min(len(specs) - 1, self.state.selected_param))
        return specs[self.state.selected_param]

    def select_param(self, index: int) -> None:
        self.state.selected_param = max(0, min(len(self.state.param_specs()) - 1, index))

    def step_param(self, direction: int) -> None:
        spec = self._selected_spec()
        self.say(self.state.step_param(spec.name, direction))

    def edit_param(self) -> None:
        spec = self._selected_spec()
        p = self.state.params
        value: object = p.options.get(spec.name) if spec.option else getattr(p, spec.name)
        if spec.name == "seed":
            value = p.seed if p.seed_locked else "random"
        elif value is None:
            value = ""
        elif isinstance(value, bool):
            value = "true" if value else "false"  # as the schema's enum is typed
        elif isinstance(value, float):
            value = f"{value:g}"
        self.prefill(f"/{spec.label} {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timbre",
        description="Timbre studio: a full-screen text-to-music workstation attached to "
                    "timbred. Press F1 inside for keys and commands.",
        epilog="Without a running daemon the studio starts disconnected and keeps retrying; "
               "start one with `timbrectl daemon start`.")
    parser.add_argument("--socket", metavar="PATH",
                        help="timbred's socket (default: $TIMBRE_SOCKET, the daemon config, "
                             "or the per-user default)")
    parser.add_argument("--theme", metavar="NAME",
                        help=f"colour theme: {', '.join(THEMES)} (default: [theme] name in "
                             "tui.toml, else default)")
    parser.add_argument("--config", metavar="FILE",
                        help="the studio's settings file (default: tui.toml in the user "
                             "config directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``timbre`` command: 0 when the user quits, 2 for a bad command line or config."""
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(Path(args.config) if args.config else None)
        theme = args.theme or config.theme
        build_style(theme)
        socket_path = resolve_socket_path(args.socket)
    except (TimbreError, ValueError) as exc:
        print(f"timbre: {exc}", file=sys.stderr)
        return 2
    studio = Studio(socket_path, keymap=config.keys, theme=theme, backend=open_backend(),
                    preview=config.preview)
    try:
        return anyio.run(studio.run)
    except KeyboardInterrupt:
        return 130
