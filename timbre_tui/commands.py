"""What the studio can do: named actions (keys and the palette run them), slash commands
(typed in the composer, with completion) and the palette's entries.

Every action is a small function of the :class:`~timbre_tui.app.Studio`; anything that talks to
the daemon runs through ``studio.spawn``, whose one error handler turns failures into a line in
the message bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from timbre_tui.data import describe_error
from timbre_tui.edits import ABOUT, USAGE, EditKind, edit_family, edit_request, parse_edit
from timbre_tui.key_bindings import describe_keys, keys_for
from timbre_tui.state import (
    ACTIVE_STATES,
    FALLBACK_PARAMS,
    FORMATS,
    RETRYABLE_STATES,
    ParamSpec,
    Take,
    format_value,
    parse_value,
)
from timbred.hosted.keys import client_credentials

if TYPE_CHECKING:
    from timbre_tui.app import Studio

SEEK_STEP_S = 5.0


@dataclass(frozen=True)
class Action:
    """A named thing the studio does; keys, the palette and commands run it."""

    name: str
    title: str
    run: Callable[[], None]


@dataclass(frozen=True)
class SlashCommand:
    """``/name args``: ``run`` gets the argument text; ``complete`` offers argument values."""

    name: str
    usage: str
    help: str
    run: Callable[[str], None]
    complete: Callable[[], Iterable[tuple[str, str]]] | None = None


@dataclass(frozen=True)
class PaletteEntry:
    title: str
    keys: str
    run: Callable[[], None]


# --- actions --------------------------------------------------------------------------------


def build_actions(studio: Studio) -> dict[str, Action]:
    """Every configurable action, by the name used in ``[keys]``."""
    s = studio
    table: list[tuple[str, str, Callable[[], None]]] = [
        ("send", "Send the prompt or /command", s.send),
        ("newline", "New line in the composer",
         lambda: s.widgets.composer.buffer.insert_text("\n")),
        ("play_pause", "Play / pause the selected take", lambda: play_pause(s)),
        ("stop", "Stop playback", lambda: stop(s)),
        ("seek_back", f"Seek back {SEEK_STEP_S:g} s", lambda: seek(s, -SEEK_STEP_S)),
        ("seek_forward", f"Seek forward {SEEK_STEP_S:g} s", lambda: seek(s, SEEK_STEP_S)),
        ("prev_take", "Select the previous take", lambda: s.select_take(-1)),
        ("next_take", "Select the next take", lambda: s.select_take(+1)),
        ("params", "Edit parameters (the panel)", s.focus_params),
        ("lyrics", "Lyrics editor: show and focus / hide", s.toggle_lyrics),
        ("undo", "Undo a parameter change", lambda: undo(s)),
        ("redo", "Redo a parameter change", lambda: redo(s)),
        ("seed_lock", "Lock / unlock the seed", lambda: s.say(s.state.toggle_seed_lock())),
        ("new_seed", "New random seed (locked)", lambda: s.say(s.state.new_seed())),
        ("cancel", "Cancel the selected/newest job", lambda: cancel(s, None)),
        ("retry", "Retry the selected/newest failed job", lambda: retry(s, None)),
        ("export", "Export the selected take", lambda: export(s, s.state.params.format)),
        ("rate_up", "Rate the selected take up", lambda: rate(s, "up")),
        ("rate_down", "Rate the selected take down", lambda: rate(s, "down")),
        ("library", "Library of past takes (toggle)", s.toggle_library),
        ("panel", "Show / hide the side panel", s.toggle_panel),
        ("focus_next", "Focus the next pane", s.focus_next),
        ("focus_prev", "Focus the previous pane", s.focus_previous),
        ("reload", "Reload everything from timbred", lambda: reload(s)),
        ("palette", "Command palette", s.toggle_palette),
        ("help", "Help: commands and keys", s.toggle_help),
        ("interrupt", "Clear the composer; twice: quit", s.interrupt),
        ("quit", "Quit (timbred keeps running)", s.quit),
    ]
    return {name: Action(name, title, run) for name, title, run in table}


def play_pause(studio: Studio) -> None:
    """Pause the playing take; otherwise play the selected (or newest) take.

    A live preview (playing or paused) is what the musician is hearing, and until its job
    is done there is no take of it to select: the key pauses and resumes it, whatever is
    selected. Stop ends it, and the key plays the selection again.
    """
    player, state = studio.player, studio.state
    if player.stream_key is not None:
        if player.playing:
            player.pause()
            studio.say("paused the live preview")
        else:
            player.resume()
            studio.say("playing the live preview")
        return
    take = state.selected()
    if take is None:
        takes = state.takes()
        if not takes:
            studio.say("no take to play yet")
            return
        take = takes[-1]
        state.selected_take = take.key
    if player.playing and player.path == take.path:
        player.pause()
        studio.say(f"paused {take.name}")
        return
    if player.state == "paused" and player.path == take.path:
        player.resume()
        studio.say(f"playing {take.name}")
        return

    async def start() -> None:
        await player.play(take.key, take.path)
        backend = player.backend
        if backend.audible:
            studio.say(f"playing {take.name}")
        else:
            studio.say(f"playing silently ({backend.note}): {take.path}")

    studio.spawn(start, what="play")


def stop(studio: Studio) -> None:
    studio.player.stop()
    studio.invalidate()


def seek(studio: Studio, delta: float) -> None:
    if studio.player.state == "stopped":
        studio.say("nothing is playing")
        return
    studio.player.seek(delta)
    studio.invalidate()


def undo(studio: Studio) -> None:
    studio.say("undid a parameter change" if studio.state.undo() else "nothing to undo")


def redo(studio: Studio) -> None:
    studio.say("redid a parameter change" if studio.state.redo() else "nothing to redo")


def reload(studio: Studio) -> None:
    async def go() -> None:
        await studio.link.reload()
        studio.say("reloaded from timbred")

    studio.spawn(go, what="reload")


def submit(studio: Studio, prompt: str) -> None:
    """Queue ``prompt`` with the panel's parameters and the lyrics (and a live preview when
    enabled)."""
    state = studio.state
    params = state.request(prompt)
    # The editor already says the model does not sing; the words are kept for one that does.
    note = " (lyrics not sent: the model does not sing)" \
        if state.lyrics.strip() and "lyrics" not in params else ""
    queue(studio, params, what="submit", note=note, give_back=prompt)


def queue(studio: Studio, params: dict[str, Any], *, what: str, note: str = "",
          give_back: str | None = None) -> None:
    """Send ``generate.submit`` with ``params`` and follow the new job; a failure is one
    line, and ``give_back`` goes back into an empty composer (the words are not lost)."""
    if studio.preview.enabled:
        params["preview"] = True
    # A hosted model's key in the studio's environment goes with the job, as timbrectl
    # sends it; the daemon keeps it in memory only. Never kept here or shown.
    hosted = studio.state.hosted_model(params.get("model"))  # None: the daemon's default
    credentials = client_credentials(hosted.name if hosted else None,
                                     environ=studio.state.environ)
    if credentials:
        params["credentials"] = credentials

    async def go() -> None:
        try:
            result = await studio.link.call("generate.submit", params)
        except BaseException:
            if give_back is not None and not studio.widgets.composer.text:
                studio.widgets.composer.text = give_back
            raise
        studio.state.follow_newest()  # the timeline shows the prompt just sent
        studio.state.upsert_job(result["job"])
        studio.preview.claim(result["job_id"])
        studio.say(f"queued {result['job_id']}{note}")

    studio.spawn(go, what=what)


def edit(studio: Studio, kind: EditKind, arg: str) -> None:
    """``/repaint``, ``/cover``, ``/extract``, ``/add`` on the selected take: a new take
    made from its file. Bad arguments, or a model that cannot, are one line; nothing is
    sent."""
    state = studio.state
    take = state.selected()
    if take is None:
        studio.say(f"select a take to {kind} (Alt-↑/↓ or the timeline)", "error")
        return
    try:
        found = parse_edit(kind, arg, state.tracks(edit_family(state, take)),
                           take.duration_s or None)
        params = edit_request(state, take, found)
    except ValueError as exc:
        studio.say(str(exc), "error")
        return
    queue(studio, params, what=kind)


def lyrics_command(studio: Studio, arg: str) -> None:
    """``/lyrics``: show and focus the editor, or hide it when shown (it is typed in the
    composer, so it cannot mean "focus it" as the key can); ``clear`` empties it; ``take``
    fills it with the selected take's words (to sing them again, or edit them)."""
    word = arg.strip()
    if not word:
        if studio.state.lyrics_open:
            studio.hide_lyrics()
        else:
            studio.open_lyrics()
        return
    if word == "clear":
        studio.set_lyrics("")
        studio.say("lyrics cleared")
        return
    if word == "take":
        take = studio.state.selected()
        if take is None or not take.lyrics:
            studio.say("the selected take has no lyrics" if take is not None
                       else "select a take to copy its lyrics", "error")
            return
        studio.set_lyrics(take.lyrics)
        studio.open_lyrics()
        studio.say(f"lyrics from {take.name}")
        return
    studio.say(f"lyrics: {word!r} is not one of clear, take (/lyrics alone shows the "
               "editor)", "error")


def _job_for(studio: Studio, job_id: str | None, states: tuple[str, ...]) -> str | None:
    """``job_id``, else the selected take's job when in ``states``, else the newest such."""
    if job_id:
        return job_id
    take = studio.state.selected()
    if take is not None:
        job = studio.state.jobs.get(take.job_id)
        if job is not None and job["state"] in states:
            return take.job_id
    for job in reversed(studio.state.timeline()):
        if job["state"] in states:
            return str(job["id"])
    return None


def cancel(studio: Studio, job_id: str | None) -> None:
    target = _job_for(studio, job_id, ACTIVE_STATES)
    if target is None:
        studio.say("no running or queued job to cancel")
        return

    async def go() -> None:
        job = await studio.link.call("jobs.cancel", {"job_id": target})
        studio.state.upsert_job(job)
        studio.say(f"cancelling {target}" if job["state"] in ACTIVE_STATES
                   else f"{target} is {job['state']}")

    studio.spawn(go, what="cancel")


def retry(studio: Studio, job_id: str | None) -> None:
    target = _job_for(studio, job_id, RETRYABLE_STATES)
    if target is None:
        studio.say("no failed, cancelled or interrupted job to retry")
        return

    async def go() -> None:
        job = await studio.link.call("jobs.retry", {"job_id": target})
        studio.state.follow_newest()
        studio.state.upsert_job(job)
        studio.say(f"retrying {target} as {job['id']}")

    studio.spawn(go, what="retry")


def _selected(studio: Studio, to: str) -> Take | None:
    """The selected take, or None after saying how to select one (``to`` what for)."""
    take = studio.state.selected()
    if take is None:
        studio.say(f"select a take to {to} (Alt-↑/↓ or the timeline)")
    return take


def export(studio: Studio, fmt: str) -> None:
    take = _selected(studio, "export")
    if take is None:
        return
    if fmt not in FORMATS:
        studio.say(f"export: {fmt!r} is not one of {', '.join(FORMATS)}", "error")
        return

    async def go() -> None:
        result = await studio.link.call_feature(
            "takes.export", {"take": take.path, "format": fmt},
            "export arrives with the export feature")
        path = result.get("path") if isinstance(result, dict) else None
        studio.say(f"exported {path or take.name} as {fmt}")

    studio.spawn(go, what="export")


#: The mastering chains Timbre ships (a user's own, in <config dir>/mastering, work too).
SHIPPED_CHAINS: Final = (("streaming", "-14 LUFS, -1 dBTP: gentle glue"),
                         ("club", "-9 LUFS: louder, more compression"),
                         ("tape", "soft saturation, gentle compression"),
                         ("none", "no processing at all"))


def master(studio: Studio, chain: str) -> None:
    """``/master CHAIN``: the selected take through a mastering chain, as a new file."""
    take = _selected(studio, "master")
    if take is None:
        return
    if not chain:
        studio.say("usage: /master streaming|club|tape|none|YOUR-CHAIN", "error")
        return

    async def go() -> None:
        result = await studio.link.call("takes.export", {"take": take.path, "master": chain})
        studio.say(f"mastered ({chain}): {result.get('path', take.name)}")

    studio.spawn(go, what="master")


def loop(studio: Studio, bars: str) -> None:
    """``/loop BARS``: a loop of whole bars cut from the selected take, beside it."""
    take = _selected(studio, "loop")
    if take is None:
        return
    if not bars.isdecimal() or not 1 <= int(bars) <= 64:
        studio.say("usage: /loop BARS (1 to 64 bars at the take's tempo)", "error")
        return

    async def go() -> None:
        result = await studio.link.call("takes.loop", {"take": take.path, "bars": int(bars)})
        studio.say(f"loop of {bars} bar(s): {result.get('path', take.name)}")

    studio.spawn(go, what="loop")


def stems(studio: Studio, model: str) -> None:
    """``/stems [MODEL]``: the selected take separated into stems (drums, bass, other,
    vocals), a job in the queue whose files land beside the take."""
    take = _selected(studio, "separate into stems")
    if take is None:
        return
    if take.stem is not None:
        studio.say(f"{take.name} is a stem already; select the take it came from", "error")
        return
    params: dict[str, Any] = {"take": take.path}
    if model:
        params["model"] = model

    async def go() -> None:
        result = await studio.link.call("takes.stems", params)
        studio.state.follow_newest()  # the timeline shows the new job, as after a prompt
        studio.state.upsert_job(result["job"])
        studio.say(f"separating take {take.index} into stems (job {result['job_id']})")

    studio.spawn(go, what="stems")


def separators(studio: Studio) -> list[tuple[str, str]]:
    """/stems' completions: the catalogue's separators, then installed ones of their
    families (``models.list`` says which separate)."""
    return [(name, "separates stems") for name in studio.state.separator_names]


def rate(studio: Studio, rating: str) -> None:
    take = _selected(studio, "rate")
    if take is None:
        return
    if rating not in ("up", "down"):
        studio.say("usage: /rate up|down", "error")
        return

    async def go() -> None:
        await studio.link.call_feature("takes.rate", {"take": take.path, "value": rating},
                                       "rating arrives with the history feature")
        studio.say(f"rated {take.name} {rating}")

    studio.spawn(go, what="rate")


# --- slash commands -------------------------------------------------------------------------


def _param_command(studio: Studio, spec: ParamSpec) -> SlashCommand:
    def run(arg: str) -> None:
        state = studio.state
        if not arg.strip():
            studio.say(f"{spec.label}: {format_value(state.params, spec, state.last_seed())} "
                       f"— {spec.help}")
            return
        if spec.name == "seed" and arg.strip() == "lock":
            if not state.params.seed_locked:
                studio.say(state.toggle_seed_lock())
            return
        try:
            value = parse_value(spec, arg)
        except ValueError as exc:
            studio.say(str(exc), "error")
            return
        def apply() -> None:
            try:
                studio.say(state.set_param(spec.name, value))
            except ValueError as exc:  # a preset the daemon does not have, or a broken one
                studio.say(str(exc), "error")

        if spec.name == "preset" and value is not None and value not in state.presets:
            # A preset file written since the studio connected: ask the daemon again first.
            async def reload_then_apply() -> None:
                await studio.link.refresh_presets()
                apply()

            studio.spawn(reload_then_apply, what="preset")
            return
        apply()

    def complete() -> Iterable[tuple[str, str]]:
        state = studio.state
        if spec.name == "model":
            loaded = {m["model"] for m in state.loaded_models}
            names = list(dict.fromkeys([*loaded, *state.model_names]))

            def about(name: str) -> str:
                hosted = state.hosted.get(name)
                if hosted is not None:  # where it runs, its key, its price
                    return hosted.about(state.environ)
                return "loaded" if name in loaded else ""

            return [(n, about(n)) for n in names]
        if spec.name == "preset":
            return [("none", "no preset"),
                    *((p.name, p.summary()) for p in state.presets.values())]
        if spec.name == "seed":
            last = state.last_seed()
            return [("random", "a new seed every take"), ("lock", "keep the latest seed"),
                    *([(str(last), "the latest take's seed")] if last is not None else [])]
        if spec.kind == "choice":
            return [(c, "") for c in spec.choices]
        if spec.name == "duration":
            return [(v, "seconds") for v in ("5", "10", "30", "60", "120")]
        return []

    usage = {"seed": "/seed N|random|lock", "duration": "/duration S (10, 10s, 1:30)",
             "model": "/model NAME"}.get(spec.name, f"/{spec.label} VALUE")
    return SlashCommand(spec.label, usage, f"set {spec.label}: {spec.help}", run, complete)


def param_commands(studio: Studio) -> dict[str, SlashCommand]:
    """A command per row of the panel, by name (they follow the chosen model's family)."""
    return {spec.label: _param_command(studio, spec) for spec in studio.state.param_specs()}


def _another_familys(studio: Studio, name: str) -> bool:
    """Whether ``/name`` sets a parameter of a family other than the chosen model's."""
    state = studio.state
    schemas = [FALLBACK_PARAMS, *(state.family_params(f) for f in state.backends or {})]
    return any(name == n.replace("_", "-") or name == n for schema in schemas for n in schema)


def build_commands(studio: Studio) -> dict[str, SlashCommand]:
    """Every slash command but the panel's (:func:`param_commands`), by name."""
    s = studio

    def jobs_in(states: tuple[str, ...]) -> Callable[[], Iterable[tuple[str, str]]]:
        def complete() -> Iterable[tuple[str, str]]:
            return [(str(j["id"]), f"{j['state']}: {j['params'].get('prompt', '')[:40]}")
                    for j in reversed(s.state.timeline()) if j["state"] in states]
        return complete

    cmds: list[SlashCommand] = [
        SlashCommand("play", "/play", "play or pause the selected take", lambda a: play_pause(s)),
        SlashCommand("stop", "/stop", "stop playback", lambda a: stop(s)),
        SlashCommand("export", "/export FORMAT", "export the selected take",
                     lambda a: export(s, a.strip() or s.state.params.format),
                     lambda: [(f, "") for f in FORMATS]),
        SlashCommand("master", "/master CHAIN", "master the selected take (a new file)",
                     lambda a: master(s, a.strip()), lambda: list(SHIPPED_CHAINS)),
        SlashCommand("loop", "/loop BARS", "cut a seamless loop of BARS bars from the take",
                     lambda a: loop(s, a.strip()),
                     lambda: [("1", "bar"), ("2", "bars"), ("4", "bars"), ("8", "bars")]),
        SlashCommand("stems", "/stems [MODEL]",
                     "separate the take into drums, bass, other, vocals",
                     lambda a: stems(s, a.strip()), lambda: separators(s)),
        SlashCommand("cancel", "/cancel [JOB]", "cancel a job (default: selected or newest)",
                     lambda a: cancel(s, a.strip() or None), jobs_in(ACTIVE_STATES)),
        SlashCommand("retry", "/retry [JOB]", "retry a failed job (default: selected or newest)",
                     lambda a: retry(s, a.strip() or None), jobs_in(RETRYABLE_STATES)),
        SlashCommand("rate", "/rate up|down", "rate the selected take",
                     lambda a: rate(s, a.strip()),
                     lambda: [("up", "keep it"), ("down", "not this one")]),
        SlashCommand("lyrics", "/lyrics [clear|take]",
                     "show / hide the lyrics; clear them; take the selected take's",
                     lambda a: lyrics_command(s, a),
                     lambda: [("clear", "empty the editor"),
                              ("take", "the selected take's words")]),
        *(_edit_command(s, kind) for kind in USAGE),
        SlashCommand("undo", "/undo", "undo a parameter change", lambda a: undo(s)),
        SlashCommand("redo", "/redo", "redo a parameter change", lambda a: redo(s)),
        SlashCommand("library", "/library [QUERY]", "search past takes",
                     lambda a: s.open_library(a.strip())),
        SlashCommand("reload", "/reload", "reload everything from the daemon",
                     lambda a: reload(s)),
        SlashCommand("help", "/help", "commands and keys", lambda a: s.toggle_help()),
        SlashCommand("quit", "/quit", "quit the studio (the daemon keeps running)",
                     lambda a: s.quit()),
    ]
    return {c.name: c for c in cmds}


def _edit_command(studio: Studio, kind: EditKind) -> SlashCommand:
    def complete() -> Iterable[tuple[str, str]]:
        state = studio.state
        return [(t, "track") for t in state.tracks(edit_family(state, state.selected()))]

    return SlashCommand(kind, USAGE[kind], ABOUT[kind], lambda a: edit(studio, kind, a),
                        complete if kind in ("extract", "add") else None)


def run_line(studio: Studio, text: str) -> bool:
    """Run the composer's text: a /command, else a prompt. False keeps the text (a typo)."""
    line = text.strip()
    if not line:
        return False
    if not line.startswith("/"):
        submit(studio, line)
        return True
    name, _, arg = line[1:].partition(" ")
    found = studio.commands.get(name)
    if found is None and _another_familys(studio, name):
        studio.say(studio.state.not_taken(f"/{name}"), "error")
        return False
    if found is None:
        close = [c for c in studio.commands if c.startswith(name[:2])] if name else []
        hint = f" (did you mean /{close[0]}?)" if close else ""
        studio.say(f"unknown command /{name}{hint}; /help lists them", "error")
        return False
    try:
        found.run(arg)
    except Exception as exc:  # a command bug must not take the studio down
        studio.say(f"/{name} failed: {describe_error(exc)}", "error")
    return True


class SlashCompleter(Completer):
    """Completes ``/command`` names, then each command's argument values."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        name, space, arg = text[1:].partition(" ")
        commands = self.studio.commands
        if not space:
            for cmd in commands.values():
                if cmd.name.startswith(name):
                    yield Completion(cmd.name + " ", start_position=-len(name),
                                     display=cmd.usage, display_meta=cmd.help)
            return
        chosen = commands.get(name)
        if chosen is None or chosen.complete is None:
            return
        for value, meta in chosen.complete():
            if value.startswith(arg) and value != arg:
                yield Completion(value, start_position=-len(arg), display_meta=meta)


# --- the palette ----------------------------------------------------------------------------


def palette_entries(studio: Studio) -> list[PaletteEntry]:
    """Every action with its key, then "set …" entries that start the command for you."""
    out = [PaletteEntry(a.title, keys_for(studio, a.name), a.run)
           for a in studio.actions.values() if a.name not in ("palette", "newline")]
    for spec in studio.state.param_specs():
        out.append(PaletteEntry(f"Set {spec.label}… ({spec.help})", f"/{spec.label}",
                                _prefill(studio, f"/{spec.label} ")))
    out.append(PaletteEntry("Export the selected take as…", "/export",
                            _prefill(studio, "/export ")))
    for kind, about in ABOUT.items():
        out.append(PaletteEntry(f"{about[:1].upper()}{about[1:]}…", f"/{kind}",
                                _prefill(studio, f"/{kind} ")))
    out.append(PaletteEntry("Separate the selected take into stems", "/stems",
                            lambda: stems(studio, "")))
    out.append(PaletteEntry("Search the library…", "/library", lambda: studio.open_library("")))
    return out


def _prefill(studio: Studio, text: str) -> Callable[[], None]:
    def run() -> None:
        studio.prefill(text)
    return run


def filter_entries(entries: list[PaletteEntry], query: str) -> list[PaletteEntry]:
    """Entries whose title or key contains every word of ``query`` (case-insensitive)."""
    words = query.lower().split()
    return [e for e in entries
            if all(w in f"{e.title} {e.keys}".lower() for w in words)]


def help_text(studio: Studio) -> str:
    """The /help screen (lines kept under 72 columns)."""
    lines: list[str] = [
        "Describe some music in the composer and press Enter.",
        "",
        "Everything shown comes from timbred; every studio attached to it",
        "shows the same jobs and takes. Parameters, undo and the selection",
        "belong to this window.",
        "",
        "Keys (tui.toml: [keys] action = \"key\")",
    ]
    for action in studio.actions.values():
        keys = ", ".join(_describe_all(studio, action.name)) or "-"
        lines.append(f"  {keys:<17} {action.title:<37} {action.name}")
    lines += [
        "",
        "Timeline and library: Up/Down or j/k select, Space/Enter play,",
        "  s stop, Left/Right seek, c cancel, r retry, Esc composer;",
        "  / searches the library.",
        "Parameter panel: Up/Down choose, Left/Right or -/+ change,",
        "  Enter types a value, l locks the seed, r new seed, Esc back.",
        "Live preview: a prompt you send plays while it is made (unless",
        "  something else plays); play/pause pauses it, stop ends it.",
        "  tui.toml: [preview] enabled = false turns it off.",
        "Composer: Up on the first line recalls older prompts, Down on",
        "  the last newer ones; Tab completes /commands.",
        f"Lyrics ({keys_for(studio, 'lyrics') or '/lyrics'}): words to sing, sent with the "
        "prompt",
        "  when the model sings (ace-step). A line starting with [ is a",
        "  section tag: Tab or Enter completes it ([ch -> [chorus]);",
        f"  Enter makes a new line, {keys_for(studio, 'undo') or 'undo'} undoes, Esc back "
        "to the composer.",
        "  The selected take's sections show under it on the timeline,",
        "  placed by their share of its lines (an estimate).",
        "Hosted models (provider:model, such as replicate:meta/musicgen)",
        "  run at their provider, for a fee: /model completes them with",
        "  their price. A key: `timbrectl auth set PROVIDER`, or its",
        "  variable ($REPLICATE_API_TOKEN) where you start the studio.",
        "Edits of the selected take, each a new take: /repaint, /cover,",
        "  /extract and /add (Tab completes tracks).",
        "Stems: /stems [MODEL] separates the selected take into drums,",
        "  bass, other and vocals: a job in the queue (htdemucs unless a",
        "  MODEL is named), its stems listed under it like takes.",
        "Quitting: Ctrl-Q at once; Ctrl-C clears the composer, and on an",
        "  empty composer quits when pressed twice. timbred keeps running.",
        "",
        "Commands",
    ]
    for cmd in studio.commands.values():
        usage = f"{cmd.usage:<27}"  # a longer usage (/add's) leaves less room for its help
        lines.append(f"  {usage} {fit_text(cmd.help, 69 - len(usage))}")
    lines += ["", "Library search: words match the prompt; rating:up|down, tag:NAME,",
              "bpm:120 or bpm:118-122 (measured tempo) and key:Am filter.", "",
              "Esc closes this help."]
    return "\n".join(lines)


def fit_text(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _describe_all(studio: Studio, action: str) -> list[str]:
    return [describe_keys(seq) for seq in studio.keymap.get(action, ())]
