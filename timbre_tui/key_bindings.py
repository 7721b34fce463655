"""Keys: the configurable map of global actions, and one ``load_*_bindings`` per pane.

Global actions are looked up by name in ``studio.actions`` (see :mod:`timbre_tui.commands`);
their keys come from :data:`DEFAULT_KEYS` overridden by ``[keys]`` in ``tui.toml``. Keys inside
a pane (arrows, Space, Esc) are fixed and listed in /help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prompt_toolkit.application.current import get_app
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.filters import Condition, Filter
from prompt_toolkit.key_binding import KeyBindings, KeyBindingsBase, merge_key_bindings
from prompt_toolkit.key_binding.bindings.completion import generate_completions
from prompt_toolkit.key_binding.key_processor import KeyPressEvent
from prompt_toolkit.keys import KEY_ALIASES, Keys

from timbre_tui.lyrics import SectionCompleter

if TYPE_CHECKING:
    from timbre_tui.app import Studio

#: Action name → key sequences (each a space-separated prompt_toolkit key sequence).
KeyMap = dict[str, tuple[str, ...]]

DEFAULT_KEYS: KeyMap = {
    "send": ("c-m",),
    "newline": ("escape c-m", "c-j"),
    "quit": ("c-q",),
    "interrupt": ("c-c",),
    "palette": ("c-p",),
    "help": ("f1",),
    "library": ("f2",),
    "panel": ("f3",),
    "params": ("f4",),
    "lyrics": ("f12",),
    "play_pause": ("f5",),
    "stop": ("f6",),
    "seek_back": ("f7",),
    "seek_forward": ("f8",),
    "cancel": ("f9",),
    "retry": ("f10",),
    "undo": ("c-z",),
    "redo": ("c-y",),
    "prev_take": ("escape up",),
    "next_take": ("escape down",),
    "seed_lock": ("escape l",),
    "new_seed": ("escape r",),
    "focus_next": ("c-i",),
    "focus_prev": ("s-tab",),
    "export": (),
    "rate_up": (),
    "rate_down": (),
    "reload": (),
}

#: Actions bound inside the composer rather than globally.
COMPOSER_ACTIONS = ("send", "newline")
#: Actions that still work while the palette or help is open.
ALWAYS_ACTIONS = ("quit", "interrupt", "palette", "help")

_FRIENDLY_PREFIXES = {"ctrl-": "c-", "control-": "c-", "shift-": "s-"}
_NAMES = {"esc": "escape", "return": "c-m", "space": "space", "del": "delete",
          "pgup": "pageup", "pgdn": "pagedown"}
_KEY_EXAMPLES = 'a key such as "c-q", "f5", "escape enter", "ctrl-p" or "alt-up"'


def _parse_one(part: str) -> list[str]:
    p = part if len(part) == 1 else part.lower()
    for prefix in ("alt-", "meta-", "m-"):
        if p.startswith(prefix) and len(p) > len(prefix):
            return ["escape", *_parse_one(p[len(prefix):])]
    for friendly, short in _FRIENDLY_PREFIXES.items():
        if p.startswith(friendly) and len(p) > len(friendly):
            p = short + p[len(friendly):]
    p = _NAMES.get(p, p)
    if p == "space":
        return ["space"]
    p = KEY_ALIASES.get(p, p)
    try:
        return [Keys(p).value]
    except ValueError:
        pass
    if len(p) == 1 and p.isprintable():
        return [p]
    raise ValueError(_KEY_EXAMPLES)


def parse_key_sequence(text: str) -> tuple[str, ...]:
    """``"alt-enter"`` → ``("escape", "c-m")``; ValueError (what a key looks like) otherwise."""
    parts = text.split()
    if not parts:
        raise ValueError(_KEY_EXAMPLES)
    out: list[str] = []
    for part in parts:
        out.extend(_parse_one(part))
    return tuple(out)


_SHOWN = {"c-m": "Enter", "c-i": "Tab", "s-tab": "Shift-Tab", "escape": "Esc", "space": "Space",
          "c-@": "Ctrl-Space", "up": "↑", "down": "↓", "left": "←", "right": "→",
          "pageup": "PgUp", "pagedown": "PgDn", "delete": "Del", "c-h": "Backspace"}


def describe_keys(sequence: str) -> str:
    """``"escape c-m"`` → ``"Alt-Enter"``, ``"c-q"`` → ``"Ctrl-Q"``, ``"f5"`` → ``"F5"``."""
    parts = sequence.split()
    if len(parts) == 2 and parts[0] == "escape":
        return "Alt-" + describe_keys(parts[1])
    out = []
    for p in parts:
        if p in _SHOWN:
            out.append(_SHOWN[p])
        elif p.startswith("c-") and len(p) > 2:
            out.append("Ctrl-" + describe_keys(p[2:]).capitalize())
        elif p.startswith("s-") and len(p) > 2:
            out.append("Shift-" + describe_keys(p[2:]))
        elif len(p) > 1 and p[0] == "f" and p[1:].isdigit():
            out.append(p.upper())
        else:
            out.append(p.capitalize() if len(p) > 1 else p.upper())
    return " ".join(out)


def keys_for(studio: Studio, action: str) -> str:
    """How the first key of ``action`` is shown ("" when unbound)."""
    seqs = studio.keymap.get(action, ())
    return describe_keys(seqs[0]) if seqs else ""


# --- filters --------------------------------------------------------------------------------


def overlay_open(studio: Studio) -> Filter:
    return Condition(lambda: studio.state.palette_open or studio.state.help_open)


def composer_has_command(studio: Studio) -> Filter:
    return Condition(lambda: studio.widgets.composer.text.lstrip().startswith("/"))


# --- bindings -------------------------------------------------------------------------------


def load_global_bindings(studio: Studio) -> KeyBindingsBase:
    """Every configurable action except the composer's, from ``studio.keymap``."""
    kb = KeyBindings()
    closed = ~overlay_open(studio)

    def bind(action: str, sequence: str) -> None:
        @kb.add(*sequence.split(), filter=True if action in ALWAYS_ACTIONS else closed)
        def _(event: KeyPressEvent) -> None:
            """Run the action bound to this key."""
            studio.run_action(action)

    for action, sequences in studio.keymap.items():
        if action in COMPOSER_ACTIONS:
            continue
        for sequence in sequences:
            bind(action, sequence)
    return kb


def load_composer_bindings(studio: Studio) -> KeyBindingsBase:
    """Send, newline, prompt recall on Up/Down at the first/last line, Tab completion."""
    kb = KeyBindings()

    for sequence in studio.keymap.get("send", ()):
        @kb.add(*sequence.split())
        def _(event: KeyPressEvent) -> None:
            """Accept the highlighted completion, else send the prompt or command."""
            buf = event.current_buffer
            state = buf.complete_state
            current = state.current_completion if state is not None else None
            if current is not None and \
                    not buf.document.text_before_cursor.endswith(current.text):
                buf.apply_completion(current)
                return
            text = buf.text.strip()
            if state is not None and state.completions and text.startswith("/") \
                    and " " not in text and text[1:] not in studio.commands:
                buf.apply_completion(state.completions[0])  # finish a command's name
                return
            studio.run_action("send")

    for sequence in studio.keymap.get("newline", ()):
        @kb.add(*sequence.split())
        def _(event: KeyPressEvent) -> None:
            """Insert a newline."""
            event.current_buffer.insert_text("\n")

    @kb.add("up")
    def _(event: KeyPressEvent) -> None:
        """Previous completion, line, or (on the first line) older prompt."""
        buf = event.current_buffer
        if buf.complete_state is not None:
            buf.complete_previous()
        elif buf.document.cursor_position_row > 0:
            buf.cursor_up()
        else:
            studio.recall(-1)

    @kb.add("down")
    def _(event: KeyPressEvent) -> None:
        """Next completion, line, or (on the last line) newer prompt."""
        buf = event.current_buffer
        if buf.complete_state is not None:
            buf.complete_next()
        elif buf.document.cursor_position_row < buf.document.line_count - 1:
            buf.cursor_down()
        else:
            studio.recall(+1)

    kb.add("c-i", filter=composer_has_command(studio))(generate_completions)

    @kb.add("escape", filter=Condition(
        lambda: studio.widgets.composer.buffer.complete_state is not None))
    def _(event: KeyPressEvent) -> None:
        """Close the completion menu."""
        event.current_buffer.cancel_completion()

    return kb


def on_section_tag(studio: Studio) -> Filter:
    """The lyrics editor's cursor is in a section tag being typed (``[ch``)."""
    def typing_tag() -> bool:
        typed = studio.widgets.lyrics.document.current_line_before_cursor.lstrip()
        return typed.startswith("[") and "]" not in typed
    return Condition(typing_tag)


def load_lyrics_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the lyrics editor: Enter is a new line (or finishes a section tag), Tab
    completes a tag, the undo and redo keys undo its text, Esc goes back to the composer."""
    kb = KeyBindings()

    @kb.add("c-m", filter=on_section_tag(studio))
    def _(event: KeyPressEvent) -> None:
        """Finish the section tag being typed with the highlighted (or first) tag."""
        buf = event.current_buffer
        state = buf.complete_state
        chosen = state.current_completion if state is not None else None
        if chosen is None:  # asked here: the menu may not have been filled yet
            chosen = next(iter(SectionCompleter().get_completions(
                buf.document, CompleteEvent(completion_requested=True))), None)
        if chosen is not None:
            buf.apply_completion(chosen)
        else:
            buf.newline(copy_margin=False)

    kb.add("c-i", filter=on_section_tag(studio))(generate_completions)

    # The lyrics' own history, not the panel's: the text being typed is what Ctrl-Z means
    # here. Only the keys the user's map gives undo and redo, so a rebinding follows.
    for sequence in studio.keymap.get("undo", ()):
        @kb.add(*sequence.split(), save_before=lambda e: False)
        def _(event: KeyPressEvent) -> None:
            """Undo the last change to the lyrics."""
            event.current_buffer.undo()

    for sequence in studio.keymap.get("redo", ()):
        @kb.add(*sequence.split(), save_before=lambda e: False)
        def _(event: KeyPressEvent) -> None:
            """Redo a change to the lyrics."""
            event.current_buffer.redo()

    @kb.add("escape")
    def _(event: KeyPressEvent) -> None:
        """Close the completion menu, else back to the composer (the lyrics stay shown)."""
        if event.current_buffer.complete_state is not None:
            event.current_buffer.cancel_completion()
        else:
            studio.focus_composer()

    return kb


def load_timeline_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the focused timeline (and the library's list): select, play, seek."""
    kb = KeyBindings()

    @kb.add("up")
    @kb.add("k")
    def _(event: KeyPressEvent) -> None:
        """Select the previous take."""
        studio.run_action("prev_take")

    @kb.add("down")
    @kb.add("j")
    def _(event: KeyPressEvent) -> None:
        """Select the next take."""
        studio.run_action("next_take")

    @kb.add("pageup")
    def _(event: KeyPressEvent) -> None:
        """Select five takes up."""
        studio.select_take(-5)

    @kb.add("pagedown")
    def _(event: KeyPressEvent) -> None:
        """Select five takes down."""
        studio.select_take(+5)

    @kb.add("space")
    @kb.add("c-m")
    def _(event: KeyPressEvent) -> None:
        """Play or pause the selected take."""
        studio.run_action("play_pause")

    @kb.add("s")
    def _(event: KeyPressEvent) -> None:
        """Stop playback."""
        studio.run_action("stop")

    @kb.add("left")
    def _(event: KeyPressEvent) -> None:
        """Seek back."""
        studio.run_action("seek_back")

    @kb.add("right")
    def _(event: KeyPressEvent) -> None:
        """Seek forward."""
        studio.run_action("seek_forward")

    @kb.add("c")
    def _(event: KeyPressEvent) -> None:
        """Cancel the selected take's job (when it is still running)."""
        studio.run_action("cancel")

    @kb.add("r")
    def _(event: KeyPressEvent) -> None:
        """Retry the selected failed job."""
        studio.run_action("retry")

    @kb.add("escape")
    def _(event: KeyPressEvent) -> None:
        """Back to the composer."""
        studio.focus_composer()

    return kb


def load_panel_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the focused parameter panel."""
    kb = KeyBindings()
    state = studio.state

    @kb.add("up")
    @kb.add("k")
    def _(event: KeyPressEvent) -> None:
        """Previous parameter."""
        state.selected_param = max(0, state.selected_param - 1)

    @kb.add("down")
    @kb.add("j")
    def _(event: KeyPressEvent) -> None:
        """Next parameter."""
        studio.select_param(state.selected_param + 1)

    @kb.add("left")
    @kb.add("-")
    def _(event: KeyPressEvent) -> None:
        """Decrease the parameter (or the previous choice)."""
        studio.step_param(-1)

    @kb.add("right")
    @kb.add("+")
    @kb.add("=")
    def _(event: KeyPressEvent) -> None:
        """Increase the parameter (or the next choice)."""
        studio.step_param(+1)

    @kb.add("c-m")
    @kb.add("e")
    def _(event: KeyPressEvent) -> None:
        """Type a value: put the parameter's command in the composer."""
        studio.edit_param()

    @kb.add("l")
    def _(event: KeyPressEvent) -> None:
        """Lock or unlock the seed."""
        studio.run_action("seed_lock")

    @kb.add("r")
    def _(event: KeyPressEvent) -> None:
        """A new random seed (locked)."""
        studio.run_action("new_seed")

    @kb.add("escape")
    def _(event: KeyPressEvent) -> None:
        """Back to the composer."""
        studio.focus_composer()

    return kb


def load_library_search_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the library's search field."""
    kb = KeyBindings()

    @kb.add("c-m")
    @kb.add("down")
    def _(event: KeyPressEvent) -> None:
        """Search now and move to the results."""
        studio.search_library()
        get_app().layout.focus(studio.widgets.library_list)

    @kb.add("escape")
    def _(event: KeyPressEvent) -> None:
        """Back to the composer."""
        studio.focus_composer()

    @kb.add("/")
    def _(event: KeyPressEvent) -> None:
        """A command, as everywhere ("/ commands"): the composer, with the slash typed."""
        studio.prefill("/")

    return kb


def load_library_list_bindings(studio: Studio) -> KeyBindingsBase:
    """The timeline's keys, plus "/" to search."""
    kb = KeyBindings()

    @kb.add("/")
    def _(event: KeyPressEvent) -> None:
        """Focus the search field."""
        get_app().layout.focus(studio.widgets.library_search)

    return merge_key_bindings([load_timeline_bindings(studio), kb])


def load_palette_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the open command palette."""
    kb = KeyBindings()
    state = studio.state

    @kb.add("up")
    @kb.add("c-k")
    def _(event: KeyPressEvent) -> None:
        """Previous entry."""
        state.palette_selected = max(0, state.palette_selected - 1)

    @kb.add("down")
    @kb.add("c-n")
    def _(event: KeyPressEvent) -> None:
        """Next entry."""
        state.palette_selected += 1

    @kb.add("c-m")
    def _(event: KeyPressEvent) -> None:
        """Run the highlighted entry."""
        studio.run_palette_entry()

    @kb.add("escape", eager=True)
    def _(event: KeyPressEvent) -> None:
        """Close the palette."""
        studio.close_overlays()

    return kb


def load_help_bindings(studio: Studio) -> KeyBindingsBase:
    """Keys of the help screen."""
    kb = KeyBindings()

    @kb.add("escape", eager=True)
    @kb.add("q")
    def _(event: KeyPressEvent) -> None:
        """Close help."""
        studio.close_overlays()

    return kb
