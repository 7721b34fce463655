"""The screen, as small factory functions that each return a container.

```
┌ timeline (or library) ─────────────────────────────┬ parameters ───────┐
│ > warm lofi rhodes                                 │ model   …         │
│   tiny · 10s · seed 7 · …                          │ queue             │
│   ▶ take 1  0:10  ▁▂▃▅▇█▇▅▃▂▁▂▃▅▇                  │ j-… ▕████░░▏ 45%  │
├ message line ──────────────────────────────────────┴───────────────────┤
├ parameter summary (when the side panel is hidden) ─────────────────────┤
│ > composer (grows to 6 lines)            │ lyrics (F12: shown or not)  │
└ status bar: connection · device · models · queue · audio · keys ───────┘
```

The side panel shows from 100 columns (F3 forces it either way); the top bar from 30 rows.
Every pane draws from the one :class:`~timbre_tui.state.StudioState` when the screen redraws.
"""

from __future__ import annotations

import datetime as dt
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prompt_toolkit.application.current import get_app
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition, Filter
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.formatted_text.utils import fragment_list_width
from prompt_toolkit.key_binding import KeyBindingsBase
from prompt_toolkit.layout import (
    ConditionalContainer,
    Float,
    FloatContainer,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.layout.containers import AnyContainer
from prompt_toolkit.layout.controls import UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.utils import get_cwidth
from prompt_toolkit.widgets import Frame, TextArea

from timbre_tui.commands import SlashCompleter, filter_entries, palette_entries
from timbre_tui.key_bindings import (
    keys_for,
    load_composer_bindings,
    load_help_bindings,
    load_library_list_bindings,
    load_library_search_bindings,
    load_lyrics_bindings,
    load_palette_bindings,
    load_panel_bindings,
    load_timeline_bindings,
)
from timbre_tui.lyrics import SectionCompleter, section_at, sections, sung_lines
from timbre_tui.state import (
    ACTIVE_STATES,
    Cost,
    StudioState,
    Take,
    format_value,
    hosted_provider,
    job_activity,
    job_prompt,
    provider_title,
    short_model,
)
from timbre_tui.waveform import sparkline

if TYPE_CHECKING:
    from timbre_tui.app import Studio

MARK = "\u203a"  # the single right-pointing angle quote that starts a prompt
TIMES = "\u00d7"  # the multiplication sign of "x2 variations"
WIDE_COLUMNS = 100
TALL_ROWS = 30
SIDE_WIDTH = 36
#: The lyrics editor's most lines: a third of the screen, up to this.
LYRICS_ROWS = 12
Lines = list[StyleAndTextTuples]


# --- a control that knows its size -----------------------------------------------------------


@dataclass
class Rendered:
    lines: Lines
    cursor_row: int = 0


class RenderedControl(UIControl):
    """Draws ``render(width, height)`` (lines of fragments); fragments may carry click handlers.

    Unlike ``FormattedTextControl`` it tells the renderer the width it draws for, so lines can
    be fitted (waveforms, right-aligned parts) rather than wrapped.
    """

    def __init__(self, render: Callable[[int, int], Rendered], *, focusable: bool = False,
                 key_bindings: KeyBindingsBase | None = None,
                 on_scroll: Callable[[int], None] | None = None) -> None:
        self._render = render
        self._focusable = focusable
        self._key_bindings = key_bindings
        self._on_scroll = on_scroll
        self._last: Rendered = Rendered([])

    def is_focusable(self) -> bool:
        return self._focusable

    def preferred_width(self, max_available_width: int) -> int | None:
        return None

    def preferred_height(self, width: int, max_available_height: int, wrap_lines: bool,
                         get_line_prefix: Any) -> int | None:
        return None  # every window using it is either fixed or takes what is left

    def create_content(self, width: int, height: int) -> UIContent:
        rendered = self._last = self._render(width, height)
        lines = rendered.lines

        def get_line(i: int) -> StyleAndTextTuples:
            return lines[i] if i < len(lines) else []

        return UIContent(get_line=get_line, line_count=len(lines),
                         cursor_position=Point(0, rendered.cursor_row), show_cursor=False)

    def mouse_handler(self, mouse_event: MouseEvent) -> Any:
        if self._on_scroll is not None and mouse_event.event_type in (
                MouseEventType.SCROLL_UP, MouseEventType.SCROLL_DOWN):
            self._on_scroll(-1 if mouse_event.event_type == MouseEventType.SCROLL_UP else 1)
            return None
        lines = self._last.lines
        y, x = mouse_event.position.y, mouse_event.position.x
        if not 0 <= y < len(lines):
            return NotImplemented
        count = 0
        for item in lines[y]:
            count += get_cwidth(item[1])
            if count > x:
                if len(item) >= 3:
                    return item[2](mouse_event)
                break
        return NotImplemented

    def get_key_bindings(self) -> KeyBindingsBase | None:
        return self._key_bindings


def _on_click(action: Callable[[], None]) -> Callable[[MouseEvent], Any]:
    def handler(event: MouseEvent) -> Any:
        if event.event_type == MouseEventType.MOUSE_UP:
            action()
            return None
        return NotImplemented
    return handler


# --- text helpers ---------------------------------------------------------------------------


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis."""
    if width <= 0:
        return ""
    if get_cwidth(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = get_cwidth(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def fit_middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` cells (keeps a path's file name in view)."""
    if get_cwidth(text) <= width or width < 9:
        return fit(text, width)
    keep = width - 1
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head):]


def pad(line: StyleAndTextTuples, width: int, style: str = "") -> StyleAndTextTuples:
    """``line`` filled with spaces to ``width`` (for full-width highlights)."""
    gap = width - fragment_list_width(line)
    return [*line, (style, " " * gap)] if gap > 0 else line


def clock(seconds: float) -> str:
    s = max(0, int(seconds + 0.5))
    return f"{s // 60}:{s % 60:02d}"


def progress_fragments(step: int, total: int, width: int) -> StyleAndTextTuples:
    """``▕█████░░░░░▏``."""
    width = max(4, width)
    frac = 0.0 if total <= 0 else max(0.0, min(1.0, step / total))
    filled = int(frac * width + 0.5)
    return [("class:progress.empty", "▕"), ("class:progress.bar", "█" * filled),
            ("class:progress.empty", "░" * (width - filled) + "▏")]


def eta_text(eta_s: float | None) -> str:
    """``ETA 12s`` / ``ETA 1:05``; empty when the daemon has no estimate yet."""
    if eta_s is None or math.isnan(eta_s):
        return ""
    s = max(0, round(eta_s))
    return f"ETA {s // 60}:{s % 60:02d}" if s >= 60 else f"ETA {s}s"


def params_line(state: StudioState, job: dict[str, Any]) -> str:
    """A job's parameters in one line: the common ones, then its family's own it holds; a
    hosted job's provider after them, and its cost once its takes came back."""
    p = job.get("params") or {}
    parts = [short_model(str(job.get("model", "?"))), f"{p.get('duration', 0):g}s",
             f"seed {p.get('seed', '?')}",
             *(f"{label} {_shown(value)}" for label, value in state.job_options(p))]
    if (p.get("variations") or 1) > 1:
        parts.append(f"{TIMES}{p['variations']}")
    recipe = job.get("recipe") or {}
    provider = hosted_provider(str(job.get("model") or ""), recipe)
    if provider is not None:
        parts.append(f"at {provider_title(provider)}")
        cost = Cost.from_record(recipe.get("cost")) or Cost.from_record(job.get("cost"))
        if cost is not None:
            parts.append(cost.text())
    return " · ".join(parts)


def hosted_text(take: Take) -> str:
    """``Replicate $0.05 (estimate)`` for a hosted take (its job's cost, ``for 2 takes``
    when the job made more); empty for a local one."""
    if take.provider is None:
        return ""
    text = provider_title(take.provider)
    if take.cost is not None:
        text += f" {take.cost.text()}"
        if take.job_takes > 1:
            text += f" for {take.job_takes} takes"
    return text


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _columns() -> int:
    return get_app().output.get_size().columns


def _rows() -> int:
    return get_app().output.get_size().rows


# --- widgets the studio focuses -------------------------------------------------------------


@dataclass
class Widgets:
    composer: TextArea
    timeline: Window
    panel: Window
    library_search: TextArea
    library_list: Window
    palette_filter: TextArea
    help: TextArea
    lyrics: TextArea


def create_widgets(studio: Studio) -> Widgets:
    """The focusable widgets (created once; the layout arranges them)."""
    composer = TextArea(
        multiline=True, wrap_lines=True, prompt=[("class:composer.prompt", f"{MARK} ")],
        completer=SlashCompleter(studio), complete_while_typing=True,
        height=Dimension(min=1, max=6), dont_extend_height=True, style="class:composer",
        focus_on_click=True)
    library_search = TextArea(
        multiline=False, prompt=[("class:title", " search: ")], style="class:library.search",
        height=1, focus_on_click=True)
    library_search.buffer.on_text_changed += lambda _: studio.search_library()
    palette_filter = TextArea(multiline=False, prompt=[("class:palette.key", f" {MARK} ")],
                              style="class:palette.filter", height=1)
    palette_filter.buffer.on_text_changed += lambda _: _reset_palette(studio)
    timeline = Window(RenderedControl(lambda w, h: render_timeline(studio, w, h),
                                      focusable=True,
                                      key_bindings=load_timeline_bindings(studio),
                                      on_scroll=studio.select_take),
                      wrap_lines=False, always_hide_cursor=True)
    panel = Window(RenderedControl(lambda w, h: render_panel(studio, w),
                                   focusable=True, key_bindings=load_panel_bindings(studio)),
                   height=lambda: Dimension.exact(len(studio.state.param_specs()) + len(
                       hosted_notes(studio.state, SIDE_WIDTH))),
                   always_hide_cursor=True)
    library_list = Window(RenderedControl(lambda w, h: render_library(studio, w),
                                          focusable=True,
                                          key_bindings=load_library_list_bindings(studio),
                                          on_scroll=studio.select_take),
                          always_hide_cursor=True)
    help_area = TextArea(text="", read_only=True, scrollbar=True, focusable=True,
                         style="class:palette")
    lyrics = TextArea(
        text=studio.state.lyrics, multiline=True, wrap_lines=True,
        completer=SectionCompleter(), complete_while_typing=True,
        height=lambda: Dimension(min=2, max=max(2, min(LYRICS_ROWS, _rows() // 3))),
        dont_extend_height=True,
        style="class:composer", focus_on_click=True,
        get_line_prefix=lambda line, wrapped: [("", " ")])
    lyrics.buffer.on_text_changed += lambda _: studio.lyrics_changed()
    return Widgets(composer, timeline, panel, library_search, library_list, palette_filter,
                   help_area, lyrics)


def _reset_palette(studio: Studio) -> None:
    studio.state.palette_selected = 0


# --- filters --------------------------------------------------------------------------------


def panel_visible(studio: Studio) -> Filter:
    """The side panel: forced by F3, else shown from ``WIDE_COLUMNS`` columns."""
    def visible() -> bool:
        forced = studio.state.panel_forced
        return forced if forced is not None else _columns() >= WIDE_COLUMNS
    return Condition(visible)


# --- the timeline ---------------------------------------------------------------------------


def render_timeline(studio: Studio, width: int, height: int) -> Rendered:
    """Each prompt with its parameters, then its takes, progress or failure; newest last."""
    state = studio.state
    lines: Lines = []
    cursor = -1
    jobs = state.timeline()
    if not jobs:
        hint = _empty_hint(studio, width)
        top = max(0, height - len(hint))
        return Rendered([[] for _ in range(top)] + hint, max(0, top + len(hint) - 1))
    for job in jobs:
        if lines:
            lines.append([])
        lines.extend(_prompt_lines(job, width))
        lines.append([("class:timeline.meta", "  " + fit(params_line(state, job), width - 2))])
        state_lines, sel = _job_body(studio, job, width)
        if sel is not None:
            cursor = len(lines) + sel
        lines.extend(state_lines)
    if cursor < 0 or state.following_newest():
        # Following: the view ends at the newest row (a job queued, cancelled or retried
        # below the newest take); anchoring on that take would keep them out of sight.
        cursor = len(lines) - 1
    top = max(0, height - len(lines))
    if top:
        lines = [[] for _ in range(top)] + lines
        cursor += top
    return Rendered(lines, cursor)


def _empty_hint(studio: Studio, width: int) -> Lines:
    state = studio.state
    if state.connection != "connected":
        text = [f"Waiting for timbred at {state.socket_path}.",
                "Start it with `timbrectl daemon start`; the studio connects by itself."]
    else:
        palette = keys_for(studio, "palette") or "the palette"
        text = ["No takes yet.",
                "Describe some music below and press Enter: \"dusty boom-bap drums, vinyl\".",
                f"Type / for commands, {palette} for everything else, "
                f"{keys_for(studio, 'help') or '/help'} for help."]
    return [[("class:timeline.hint", "  " + line)]
            for para in text for line in textwrap.wrap(para, max(20, width - 4))]


def _prompt_lines(job: dict[str, Any], width: int) -> Lines:
    prompt = job_prompt(job)
    when = dt.datetime.fromtimestamp(job.get("created_at") or 0).strftime("%H:%M")
    body_width = max(10, width - 2 - len(when) - 2)
    wrapped: list[str] = []
    for para in prompt.splitlines() or [""]:
        wrapped.extend(textwrap.wrap(para, body_width) or [""])
    out: Lines = []
    for i, text in enumerate(wrapped[:6]):
        line: StyleAndTextTuples = [("class:timeline.marker", f"{MARK} " if i == 0 else "  "),
                                    ("class:timeline.prompt", text)]
        if i == 0:
            gap = width - fragment_list_width(line) - len(when)
            line.append(("", " " * max(1, gap)))
            line.append(("class:timeline.meta", when))
        out.append(line)
    return out


def _job_body(studio: Studio, job: dict[str, Any], width: int) -> tuple[Lines, int | None]:
    """The lines under a prompt, and which of them is the selected take (if any); a running
    job being previewed gets its preview line under its state."""
    lines, sel = _job_state_lines(studio, job, width)
    live = preview_text(studio, job["id"])
    if live and job["state"] in ACTIVE_STATES:
        lines.append([("class:take.playing", f"  {live}")])
    return lines, sel


def preview_text(studio: Studio, job_id: str) -> str:
    """``▶ live preview 0:03 of 0:05 so far`` while ``job_id``'s preview plays (or is
    paused); empty otherwise."""
    player = studio.player
    key = player.stream_key
    if key is None or key[0] != job_id:
        return ""
    marker = "▶" if player.playing else "‖"
    so_far = "" if player.stream_finished else " so far"
    return (f"{marker} live preview {clock(player.position())} of "
            f"{clock(player.duration)}{so_far}")


def _job_state_lines(studio: Studio, job: dict[str, Any],
                     width: int) -> tuple[Lines, int | None]:
    state = job["state"]
    st = studio.state
    if state == "done":
        out: Lines = []
        sel = None
        for take in st.job_takes(job):
            out.append(take_line(studio, take, width))
            if st.selected_take == take.key:
                sel = len(out) - 1
                sung = section_line(studio, take, width)
                if sung is not None:
                    out.append(sung)
        if not out:
            out.append([("class:timeline.meta", "  done (no files)")])
        return out, sel
    provider = hosted_provider(str(job.get("model") or ""))
    at = f" at {provider_title(provider)}" if provider is not None else ""
    if state in ("queued", "loading", "encoding"):
        label = {"queued": "queued",
                 "loading": f"sending it to {provider_title(provider)}…" if provider
                 else "loading the model…",
                 "encoding": "writing the take…"}[state]
        if job.get("cancel_requested"):
            label += " (cancelling)"
        return [[("class:timeline.state", f"  ◌ {label}"),
                 ("class:timeline.meta", f"  {job['id']}")]], None
    if state == "generating":
        prog = st.progress.get(job["id"]) or {}
        step, total = int(prog.get("step", 0)), int(prog.get("total", 0) or 1)
        bar_w = max(6, min(40, width - 40))
        label = "cancelling" if job.get("cancel_requested") else job_activity(job)
        line: StyleAndTextTuples = [("class:timeline.state", f"  ▶ {label} ")]
        line += progress_fragments(step, total, bar_w)
        line.append(("class:progress.text",
                     f" {100 * step // max(1, total):3d}%  {eta_text(prog.get('eta_s'))}"))
        if at:  # the provider's own word for where it is (job.remote)
            remote = st.remote_status.get(job["id"])
            line.append(("class:timeline.meta",
                         fit(f"{at}{': ' + remote if remote else ''}",
                             max(0, width - fragment_list_width(line)))))
        return [line], None
    err = job.get("error") or {}
    if state == "cancelled":
        return [[("class:timeline.cancelled", "  ⊘ cancelled"),
                 ("class:timeline.meta", f"  {job['id']}")]], None
    icon = "✗ failed" if state == "failed" else "! interrupted"
    reason = err.get("message") or "no reason recorded"
    text = f"  {icon}: {reason}"
    lines: Lines = [[("class:timeline.failed", ln)]
                    for ln in textwrap.wrap(text, max(20, width), subsequent_indent="    ")[:3]]
    return lines, None


def _take_head(studio: Studio, take: Take, label: str | None) -> StyleAndTextTuples:
    """``  ▶ take 1  0:01/0:10  `` (a stem's name for ``take 1``): the part of a take's
    line before its waveform."""
    st, player = studio.state, studio.player
    playing_this = player.is_on(take.key, take.path)  # its live preview counts
    env = studio.waveforms.get(take.path)
    duration = env.duration_s if env is not None else take.duration_s
    marker = ("▶" if player.state == "playing" else "‖") if playing_this else \
        ("•" if st.selected_take == take.key else " ")
    # a stem's name padded as wide as "take 1", so the stems' times line up with takes'
    name = label if label is not None else f"{take.label:<6}"
    time_text = (f"{clock(player.position())}/{clock(duration)}" if playing_this
                 else clock(duration))
    return [("class:take.playing" if playing_this else "class:take", f"  {marker} {name}"),
            ("class:take.meta", f" {time_text:>9}  ")]


def _take_tail(take: Take, *, hosted: bool = False) -> str:
    """``  120 BPM Am  -14.0 LUFS  👍``: what follows a take's waveform (and with
    ``hosted``, where a hosted take was made and what it cost: the library's rows, where no
    job line says)."""
    parts = []
    if take.bpm is not None:
        parts.append(f"{take.bpm:.0f} BPM" + (f" {take.musical_key}" if take.musical_key
                                              else ""))
    if take.loudness is not None:
        parts.append(f"{take.loudness:.1f} LUFS")
    if take.rating:
        parts.append("👍" if take.rating == "up" else "👎")
    if hosted and take.provider is not None:
        parts.append(hosted_text(take))
    return "  " + "  ".join(parts) if parts else ""


def _wave_width(head: StyleAndTextTuples, tail: str, width: int) -> int:
    return max(8, min(64, width - fragment_list_width(head) - get_cwidth(tail) - 2))


def take_line(studio: Studio, take: Take, width: int, *, label: str | None = None) -> \
        StyleAndTextTuples:
    """``▶ take 1  0:10  ▁▂▃▅▇█  -14 LUFS  name.wav``, with the playhead when playing; a
    library row (``label``: its date and prompt) adds a hosted take's provider and cost."""
    st, player = studio.state, studio.player
    selected = st.selected_take == take.key
    playing_this = player.is_on(take.key, take.path)
    env = studio.waveforms.get(take.path)
    duration = env.duration_s if env is not None else take.duration_s
    head = _take_head(studio, take, label)
    tail = _take_tail(take, hosted=label is not None)
    wave_w = _wave_width(head, tail, width)
    wave: StyleAndTextTuples
    error = studio.waveforms.error(take.path)
    if env is None:
        wave = [("class:take.meta", fit("(file missing)" if error else "·" * wave_w, wave_w))]
    else:
        line = sparkline(env, wave_w)
        if playing_this and duration > 0:
            at = min(wave_w - 1, int(player.position() / duration * wave_w))
            wave = [("class:waveform.played", line[:at]),
                    ("class:waveform.playhead", line[at]),
                    ("class:waveform", line[at + 1:])]
        else:
            wave = [("class:waveform", line)]
    out: StyleAndTextTuples = [*head, *wave, ("class:take.meta", tail)]
    rest = width - fragment_list_width(out) - 2
    if rest > 12:
        out.append(("class:take.meta", "  " + fit(take.name, rest)))
    if selected:
        out = pad([(f"{s} class:take.selected", t) for s, t, *_ in out], width,
                  "class:take.selected")

    def click() -> None:
        studio.click_take(take)
    handler = _on_click(click)
    return [(s, t, handler) for s, t, *_ in out]


def section_line(studio: Studio, take: Take, width: int) -> StyleAndTextTuples | None:
    """The take's song sections under its waveform, each tag where its section starts
    (``[verse]    [chorus]  [bridge]``); None when its lyrics have no section tags.

    The positions are an estimate (:func:`timbre_tui.lyrics.sections`): ACE-Step says
    nothing of when each section is sung, so each gets a share of the take by its lines.
    The section under the playhead is lit while the take plays.
    """
    found = sections(take.lyrics)
    if not found:
        return None
    player = studio.player
    head = _take_head(studio, take, None)
    x0 = fragment_list_width(head)
    wave_w = _wave_width(head, _take_tail(take), width)
    now = None
    if player.is_on(take.key, take.path) and player.duration > 0:
        now = section_at(found, player.position() / player.duration)
    out: StyleAndTextTuples = [("", " " * x0)]
    used = x0
    for i, section in enumerate(found):
        if not section.label:
            continue  # words before the first tag: their share of the take, no name
        start = x0 + round(section.start * wave_w)
        end = x0 + round(section.end * wave_w) if i + 1 < len(found) else width
        if start > used:
            out.append(("", " " * (start - used)))
            used = start
        room = min(end, width) - used - 1  # a space before the next tag
        if room < 1:
            continue  # a short section after a long label: no room to name it
        style = "class:take.playing" if section is now else "class:lyrics.section"
        text = fit(section.label, room)
        out.append((style, text))
        used += get_cwidth(text)
    return out


# --- the side panel: parameters and queue ---------------------------------------------------


def render_panel(studio: Studio, width: int) -> Rendered:
    st = studio.state
    focused = get_app().layout.has_focus(studio.widgets.panel)
    lines: Lines = []
    last_seed = st.last_seed()
    for i, spec in enumerate(st.param_specs()):
        value = format_value(st.params, spec, last_seed)
        # a long label (a provider's model-version) is cut rather than run into its value
        line: StyleAndTextTuples = [("class:panel.label", f" {fit(spec.label, 11):<11} "),
                                    ("class:panel.value", fit(value, width - 14))]
        if i == st.selected_param and focused:
            line = pad([(f"{s} class:panel.focused", t) for s, t, *_ in line], width,
                       "class:panel.focused")

        def select(i: int = i) -> None:
            studio.select_param(i)
            get_app().layout.focus(studio.widgets.panel)
        handler = _on_click(select)
        lines.append([(s, t, handler) for s, t, *_ in line])
    lines.extend([(style, text)] for style, text in hosted_notes(st, width))
    return Rendered(lines, st.selected_param)


def hosted_notes(st: StudioState, width: int) -> list[tuple[str, str]]:
    """(style, line)s under the panel's rows when the chosen model is hosted: that it runs
    at the provider (so no local memory or residency applies), its price, and the key it
    needs; none for a local model."""
    hosted = st.chosen_hosted()
    if hosted is None:
        return []
    wrap = max(10, width - 2)
    out = [("class:panel.note", f" {ln}") for ln in textwrap.wrap(
        f"hosted: runs at {hosted.title}, nothing loads here", wrap)]
    out += [("class:panel.note", f" {ln}") for ln in textwrap.wrap(hosted.price, wrap)]
    key = hosted.key_note(st.environ)
    if key is not None:
        style = "class:panel.warning" if hosted.key_missing(st.environ) else "class:panel.note"
        # "needs a key —" over the command, rather than the command cut in two
        pieces = [key] if len(key) <= wrap else key.replace(" — ", " —\n").splitlines()
        out += [(style, f" {ln}") for piece in pieces for ln in textwrap.wrap(piece, wrap)]
    return out


def render_queue(studio: Studio, width: int) -> Rendered:
    st = studio.state
    active = st.active_jobs()
    if not active:
        return Rendered([[("class:timeline.hint", " nothing queued")]])
    lines: Lines = []
    for job in active:
        running = job["state"] == "generating"
        icon = "▶" if running else "◌"
        prompt = job_prompt(job)
        shown = "cancelling" if job.get("cancel_requested") else \
            job_activity(job) if running else job["state"]
        lines.append([("class:timeline.state", f" {icon} {shown:<11}"),
                      ("class:timeline.meta", fit(job["id"], width - 15))])
        lines.append([("class:timeline.prompt", "   " + fit(prompt, width - 3))])
        live = preview_text(studio, job["id"])
        if live:
            lines.append([("class:take.playing", "   " + fit(live, width - 3))])
        prog = st.progress.get(job["id"])
        if prog:
            step, total = int(prog.get("step", 0)), int(prog.get("total", 0) or 1)
            pct = f" {100 * step // max(1, total):3d}%"
            eta = eta_text(prog.get("eta_s"))
            bar_w = max(4, width - 5 - len(pct))
            lines.append([("", "   "), *progress_fragments(step, total, bar_w),
                          ("class:progress.text", pct)])
            if eta:
                lines.append([("class:timeline.meta", f"   {eta}")])
    return Rendered(lines)


def section_title(text: Callable[[], str]) -> Window:
    """``─ Parameters ─────``."""
    def render(width: int, height: int) -> Rendered:
        label = f"─ {text()} "
        return Rendered([[("class:title", label),
                          ("class:separator", "─" * max(0, width - get_cwidth(label)))]])
    return Window(RenderedControl(render), height=1)


def side_panel(studio: Studio) -> AnyContainer:
    """Parameters over the job queue."""
    def params_title() -> str:
        focus = keys_for(studio, "params")
        return "Parameters" + (f" ({focus})" if focus else "")

    def queue_title() -> str:
        running, queued = studio.state.queue_depth()
        return f"Queue ({running} running, {queued} queued)"
    return HSplit([
        section_title(params_title),
        studio.widgets.panel,
        section_title(queue_title),
        Window(RenderedControl(lambda w, h: render_queue(studio, w)), wrap_lines=False),
    ], width=SIDE_WIDTH)


# --- the library ----------------------------------------------------------------------------


def render_library(studio: Studio, width: int) -> Rendered:
    lib = studio.state.library
    if not lib.takes:
        text = "searching…" if lib.loading else (
            "no takes match" if lib.query else "no takes yet")
        return Rendered([[("class:timeline.hint", f"  {text}")]])
    lines: Lines = []
    cursor = 0
    for i, take in enumerate(lib.takes):
        if studio.state.selected_take == take.key:
            cursor = i
        when = dt.datetime.fromtimestamp(take.created_at).strftime("%m-%d %H:%M")
        label = fit(f"{when}  {take.prompt}", max(10, min(40, width // 3)))
        lines.append(take_line(studio, take, width, label=f"{label:<{min(40, width // 3)}}"))
    return Rendered(lines, cursor)


def library_view(studio: Studio) -> AnyContainer:
    def note() -> Rendered:
        lib = studio.state.library
        text = lib.note or (f"{len(lib.takes)} takes · Enter/Space play · / search · "
                            "rating:up tag:NAME bpm:118-122 key:Am filter")
        return Rendered([[("class:timeline.meta", "  " + text)]])
    return HSplit([
        section_title(lambda: "Library (past takes)"),
        studio.widgets.library_search,
        Window(RenderedControl(lambda w, h: note()), height=1),
        studio.widgets.library_list,
    ], key_bindings=load_library_search_bindings(studio))


# --- bottom lines ---------------------------------------------------------------------------


def message_line(studio: Studio) -> Window:
    """The latest message (errors in red), else a hint of what the keys do."""
    def render(width: int, height: int) -> Rendered:
        msg = studio.state.current_message()
        if msg is not None:
            return Rendered([[(f"class:message.{msg.level}",
                               fit_middle(" " + msg.text, width))]])
        send = keys_for(studio, "newline")
        hint = (f" Enter send · {send} newline · / commands · "
                f"{keys_for(studio, 'palette')} palette · {keys_for(studio, 'help')} help")
        return Rendered([[("class:message.hint", fit(hint, width))]])
    return Window(RenderedControl(render), height=1)


def param_summary(studio: Studio) -> Window:
    """One line of the parameters, for when the side panel is hidden."""
    def render(width: int, height: int) -> Rendered:
        st = studio.state
        p = st.params
        seed = str(p.seed) + "🔒" if p.seed_locked else "random"
        hosted = st.chosen_hosted()
        model = short_model(p.model) if p.model else "default model"
        if hosted is not None:
            model += " (hosted, needs a key)" if hosted.key_missing(st.environ) \
                else " (hosted)"
        parts = [model, f"{p.duration:g}s",
                 f"seed {seed}",
                 *(f"{spec.label} {format_value(p, spec)}" for spec in st.param_specs()
                   if spec.option),
                 f"{TIMES}{p.variations}", p.format]
        if p.preset:
            parts.append(f"preset {p.preset}")
        edit = keys_for(studio, "params")
        tail = f"  {edit} edit" if edit else ""
        return Rendered([[("class:summary", fit(" " + " · ".join(parts), width - len(tail))),
                          ("class:message.hint", tail)]])
    return Window(RenderedControl(render), height=1)


def composer(studio: Studio) -> AnyContainer:
    """The prompt composer under a rule, and the lyrics editor beside it when shown."""
    def rule(width: int, height: int) -> Rendered:
        st = studio.state
        running, queued = st.queue_depth()
        label = ""
        if running or queued:
            label = f" {running} running · {queued} queued "
        if st.lyrics.strip() and not st.lyrics_open:  # words that go with the next prompt
            lines = sung_lines(st.lyrics)
            label = (f" ♪ lyrics, {lines} line{'' if lines == 1 else 's'}"
                     f"{'' if st.sings() else ' (not sung by this model)'} ·") + label
        return Rendered([[("class:composer.frame", "─" * max(0, width - len(label) - 2)),
                          ("class:summary", label), ("class:composer.frame", "──")]])
    shown = Condition(lambda: studio.state.lyrics_open)
    return HSplit([
        Window(RenderedControl(rule), height=1),
        VSplit([
            HSplit([studio.widgets.composer], key_bindings=load_composer_bindings(studio)),
            ConditionalContainer(
                VSplit([Window(width=1, char="│", style="class:separator"),
                        lyrics_pane(studio)]),
                filter=shown),
        ]),
    ])


def lyrics_width() -> int:
    """The lyrics editor takes up to half the screen, the composer the rest."""
    return max(24, min(60, _columns() // 2))


def lyrics_note(studio: Studio, width: int) -> list[str]:
    """The editor's note: that the model cannot sing (so the words are not sent), else what
    the words hold, else how to start."""
    st = studio.state
    warning = st.lyrics_note()
    if warning is not None:
        return textwrap.wrap(warning, max(10, width - 1)) or [""]
    found = sections(st.lyrics)
    lines = sung_lines(st.lyrics)
    if lines or found:
        tags = ", ".join(s.tag for s in found if s.tag)
        counted = f"{lines} line{'' if lines == 1 else 's'}"
        return [fit(f"{counted}{' · ' + tags if tags else ''}; sent with the next prompt",
                    width - 1)]
    return [fit("words to sing; a line starting with [ is a section tag", width - 1)]


def lyrics_pane(studio: Studio) -> AnyContainer:
    """The lyrics editor: a title, one note (a warning when the model does not sing), the
    words."""
    def title() -> str:
        key = keys_for(studio, "lyrics")
        return "Lyrics" + (f" ({key})" if key else "")

    def note(width: int, height: int) -> Rendered:
        style = "class:lyrics.warning" if studio.state.lyrics_note() else "class:timeline.hint"
        return Rendered([[(style, " " + line)] for line in lyrics_note(studio, width)])

    return HSplit([
        section_title(title),
        Window(RenderedControl(note), wrap_lines=False,
               height=lambda: Dimension.exact(len(lyrics_note(studio, lyrics_width())))),
        studio.widgets.lyrics,
    ], key_bindings=load_lyrics_bindings(studio), width=lambda: Dimension.exact(lyrics_width()))


def status_segments(studio: Studio) -> list[tuple[int, StyleAndTextTuples]]:
    """(priority, fragments): lower priorities are dropped first when the bar is narrow."""
    st = studio.state
    conn = st.connection
    dot = {"connected": "●", "connecting": "◌", "disconnected": "○"}[conn]
    text = {"connected": "connected", "connecting": "connecting…",
            "disconnected": "disconnected, retrying"}[conn]
    segs: list[tuple[int, StyleAndTextTuples]] = [
        (9, [(f"class:status-bar.{conn}", f" {dot} {text} ")])]
    if conn == "disconnected":
        segs.append((8, [("class:status-bar.disconnected",
                          " start one: timbrectl daemon start ")]))
    else:
        hosted = st.chosen_hosted()
        if hosted is not None:  # no device, memory or residency: nothing of it runs here
            segs.append((5, [("class:status-bar.hosted", f"│ runs at {hosted.title} ")]))
            if hosted.key_missing(st.environ):
                segs.append((4, [("class:status-bar.warning",
                                  f"│ {hosted.key_note(st.environ)} ")]))
        else:
            device = st.device_text()
            if device:
                segs.append((5, [("class:status-bar", f"│ {device} ")]))
            where = st.executor_text()
            if where:
                style = ("class:status-bar.warning" if "unreachable" in where
                         else "class:status-bar")
                segs.append((5, [(style, f"│ {where} ")]))
            models = ", ".join(short_model(m["model"]) for m in st.loaded_models) or "none"
            segs.append((4, [("class:status-bar", f"│ loaded: {fit(models, 24)} ")]))
        running, queued = st.queue_depth()
        segs.append((7, [("class:status-bar", f"│ {running} running · {queued} queued ")]))
    player = studio.player
    if player.stream_key is not None:
        marker = "▶" if player.playing else "‖"
        segs.append((6, [("class:status-bar",
                          f"│ {marker} live preview {clock(player.position())} ")]))
    backend = player.backend
    if backend.audible:
        segs.append((3, [("class:status-bar", f"│ audio {backend.name} ")]))
    else:
        segs.append((6, [("class:status-bar.audio-off", "│ no audio: paths shown ")]))
    segs.append((2, [("class:status-bar.key",
                      f"│ {keys_for(studio, 'help')} help  {keys_for(studio, 'palette')} "
                      f"palette  {keys_for(studio, 'quit')} quit ")]))
    return segs


def status_bar(studio: Studio) -> Window:
    """Connection, device, loaded models, queue depth, audio, and the keys that matter."""
    def render(width: int, height: int) -> Rendered:
        segs = status_segments(studio)
        while segs and sum(fragment_list_width(f) for _, f in segs) > width:
            segs.remove(min(segs, key=lambda s: s[0]))
        frags: StyleAndTextTuples = [f for _, fs in segs for f in fs]
        return Rendered([pad(frags, width, "class:status-bar")])
    return Window(RenderedControl(render), height=1, style="class:status-bar")


def top_bar(studio: Studio) -> Window:
    """``♪ Timbre   Timeline | Library (F2)   socket``: only on tall screens."""
    def render(width: int, height: int) -> Rendered:
        view = studio.state.view
        lib_key = keys_for(studio, "library")
        tabs: StyleAndTextTuples = [
            ("class:title", " ♪ Timbre  "),
            ("class:status-bar.key" if view == "timeline" else "class:status-bar.dim",
             " Timeline "),
            ("class:status-bar.key" if view == "library" else "class:status-bar.dim",
             f" Library {lib_key} "),
        ]
        sock = fit(studio.state.socket_path, width - fragment_list_width(tabs) - 3)
        return Rendered([pad([*tabs, ("class:status-bar.dim", f"  {sock}")], width,
                             "class:status-bar")])
    return Window(RenderedControl(render), height=1, style="class:status-bar")


# --- overlays -------------------------------------------------------------------------------


def palette(studio: Studio) -> AnyContainer:
    """Ctrl-P: every action with its key; type to filter, Enter runs."""
    def render(width: int, height: int) -> Rendered:
        entries = filter_entries(palette_entries(studio),
                                 studio.widgets.palette_filter.text)
        st = studio.state
        st.palette_selected = max(0, min(st.palette_selected, len(entries) - 1))
        lines: Lines = []
        for i, e in enumerate(entries):
            style = "class:palette.selected" if i == st.palette_selected else "class:palette"
            keys = e.keys or ""
            title = fit(e.title, width - len(keys) - 3)
            line = pad([(style, f" {title}")], width - len(keys) - 1, style)
            line += [(f"{style} class:palette.key", keys), (style, " ")]

            def run(i: int = i) -> None:
                st.palette_selected = i
                studio.run_palette_entry()
            handler = _on_click(run)
            lines.append([(s, t, handler) for s, t, *_ in line])
        if not lines:
            lines.append([("class:palette", " no matching action")])
        return Rendered(lines, st.palette_selected)

    body = HSplit([
        studio.widgets.palette_filter,
        Window(RenderedControl(render), style="class:palette"),
    ], key_bindings=load_palette_bindings(studio))
    return Frame(body, title="Command palette", style="class:palette")


def help_overlay(studio: Studio) -> AnyContainer:
    return Frame(HSplit([studio.widgets.help], key_bindings=load_help_bindings(studio)),
                 title="Help", style="class:palette")


# --- the whole screen -----------------------------------------------------------------------


def main_area(studio: Studio) -> AnyContainer:
    in_library = Condition(lambda: studio.state.view == "library")
    return HSplit([
        ConditionalContainer(studio.widgets.timeline, filter=~in_library),
        ConditionalContainer(library_view(studio), filter=in_library),
    ])


def build_layout(studio: Studio) -> Layout:
    """The full screen, with the composer focused."""
    side = panel_visible(studio)
    tall = Condition(lambda: _rows() >= TALL_ROWS)
    st = studio.state
    body = HSplit([
        ConditionalContainer(top_bar(studio), filter=tall),
        VSplit([
            main_area(studio),
            ConditionalContainer(
                VSplit([Window(width=1, char="│", style="class:separator"),
                        side_panel(studio)]),
                filter=side),
        ]),
        message_line(studio),
        ConditionalContainer(param_summary(studio), filter=~side),
        composer(studio),
        status_bar(studio),
    ])

    def overlay_width() -> int:
        return max(30, min(84, _columns() - 4))

    def overlay_height() -> int:
        return max(8, min(30, _rows() - 4))

    root = FloatContainer(body, floats=[
        Float(xcursor=True, ycursor=True,
              content=CompletionsMenu(max_height=8, scroll_offset=1)),
        Float(ConditionalContainer(palette(studio), filter=Condition(lambda: st.palette_open)),
              top=1, width=overlay_width, height=overlay_height),
        Float(ConditionalContainer(help_overlay(studio), filter=Condition(lambda: st.help_open)),
              top=1, width=overlay_width, height=overlay_height),
    ])
    return Layout(root, focused_element=studio.widgets.composer)
