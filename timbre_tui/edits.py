"""Editing tasks on a take, as the slash commands type them: ``/repaint``, ``/cover``,
``/extract`` and ``/add``.

Each becomes a new ``generate.submit`` with the take's file as ``init`` (see
:meth:`~timbre_tui.state.StudioState.edit_request`); here the arguments are only parsed, and
every refusal is a ValueError whose message is the one line the studio shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from timbre_tui.state import FALLBACK_FAMILY, StudioState, Take, parse_duration, short_model

EditKind = Literal["repaint", "cover", "extract", "add"]

#: Usage lines, by command (the slash commands and their errors show them).
USAGE: dict[EditKind, str] = {
    "repaint": "/repaint START END PROMPT",
    "cover": "/cover [STRENGTH] PROMPT",
    "extract": "/extract TRACK [PROMPT]",
    "add": "/add TRACK [START END] PROMPT",
}
#: What each does, for /help and the command menu.
ABOUT: dict[EditKind, str] = {
    "repaint": "remake a span of the selected take (a new take)",
    "cover": "the selected take in a new style; STRENGTH 0-1, how far from it",
    "extract": "pull one track out of the selected take (a new take)",
    "add": "a new track fitting the selected take, over a span if given",
}
#: What a model needs for each, named as in the task's refusal.
DOING: dict[EditKind, str] = {
    "repaint": "repaint a span", "cover": "cover a take",
    "extract": "extract a track", "add": "add a track",
}


@dataclass(frozen=True)
class Edit:
    """One editing task as typed: ``prompt`` None takes the default (extract: the take's
    prompt); ``span`` is the repaint span in seconds; ``strength`` None the daemon's."""

    kind: EditKind
    prompt: str | None = None
    span: tuple[float, float] | None = None
    strength: float | None = None
    track: str | None = None


def parse_edit(kind: EditKind, arg: str, tracks: Sequence[str],
               length_s: float | None = None) -> Edit:
    """``arg`` (what follows ``/kind``) as an :class:`Edit`; ValueError with the line to show.

    ``tracks`` are the track names extract and add take; ``length_s`` the take's length, when
    known, which a span must lie within.
    """
    words = arg.split()
    if kind == "repaint":
        if len(words) < 2:
            raise ValueError(f"repaint: give the span and what it becomes ({USAGE[kind]})")
        return Edit(kind, _prompt(kind, words[2:]),
                    span=_span(kind, words[0], words[1], length_s))
    if kind == "cover":
        strength = None
        if words and _is_number(words[0]):
            strength = float(words[0])
            if not 0 < strength <= 1:
                raise ValueError(f"cover: strength must be more than 0 and at most 1 (1 keeps "
                                 f"nothing of the take), got {words[0]}")
            words = words[1:]
        return Edit(kind, _prompt(kind, words), strength=strength)
    if not words:
        raise ValueError(f"{kind}: name a track ({USAGE[kind]}): {', '.join(tracks)}")
    track = words[0]
    if track not in tracks:
        raise ValueError(f"{kind}: {track!r} is not a track; one of {', '.join(tracks)}")
    rest = words[1:]
    if kind == "extract":
        return Edit(kind, " ".join(rest) or None, track=track)
    span: tuple[float, float] | None = None
    if len(rest) >= 2 and _is_time(rest[0]) and _is_time(rest[1]):
        span = _span(kind, rest[0], rest[1], length_s)
        rest = rest[2:]
    return Edit(kind, _prompt(kind, rest), span=span, track=track)


def _prompt(kind: EditKind, words: list[str]) -> str:
    if not words:
        raise ValueError(f"{kind}: say what it should become ({USAGE[kind]})")
    return " ".join(words)


def _span(kind: EditKind, start_text: str, end_text: str,
          length_s: float | None) -> tuple[float, float]:
    times = []
    for text in (start_text, end_text):
        try:
            times.append(parse_duration(text))
        except ValueError:
            raise ValueError(f"{kind}: START and END are times in the take (10, 10s, 1:30), "
                             f"got {text!r}") from None
    start, end = times
    if end <= start:
        raise ValueError(f"{kind}: the span must end after it starts ({start:g} s to "
                         f"{end:g} s)")
    # The take's length as the studio knows it; the daemon has the file and checks again.
    if length_s and end > length_s + 1e-3:
        raise ValueError(f"{kind}: the span must lie within the take's {length_s:g} s, "
                         f"got {start:g} s to {end:g} s")
    return start, end


def _is_number(text: str) -> bool:
    # Digits only: a prompt may start with a word float() reads ("inf", "nan").
    return re.fullmatch(r"\d+(\.\d*)?|\.\d+", text) is not None


def _is_time(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def edit_request(state: StudioState, take: Take, edit: Edit) -> dict[str, Any]:
    """The ``generate.submit`` params that make ``edit`` of ``take`` a new take.

    The model is the panel's when one is chosen, else the take's own (as ``timbrectl takes
    cover`` does); the panel's family values go with it only when it is that family. No
    duration is sent: the daemon takes the source's length, which a repaint must keep. Nor
    the preset, whose duration and prompt wrapping are for new prompts, not edits. ValueError
    when the daemon's families say the model cannot do it.
    """
    p = state.params
    family = edit_family(state, take)
    model = p.model or take.model or None
    schema = state.family_params(family)
    if state.backends is not None:  # else the daemon is older than its families: it says
        able = _able(state, edit.kind)
        if family not in able:
            name = short_model(model) if model else "the default model"
            raise ValueError(f"{edit.kind}: {name} ({family}) cannot {DOING[edit.kind]}; "
                             f"pick a model that can ({', '.join(able) or 'none here'})")
    out = p.submit_params(edit.prompt or take.prompt or edit.track or "", flat=False)
    for name in ("duration", "preset", "options"):
        out.pop(name, None)
    if model:
        out["model"] = model
    options: dict[str, Any] = dict(p.options) if family == state.family else {}
    if "task" in schema:  # a cover and a repaint are text to music from init
        options["task"] = edit.kind if edit.kind in ("extract", "add") else "generate"
    if "track" in schema:
        options["track"] = edit.track or ""
    if state.backends is None:
        out.update(options)
    elif options:
        out["options"] = options
    out["init"] = take.path
    if edit.span is not None:
        out["repaint"] = list(edit.span)
    if edit.strength is not None:
        out["strength"] = edit.strength
    if state.lyrics.strip() and "lyrics" in state.family_features(family):
        out["lyrics"] = state.lyrics
    return out


def edit_family(state: StudioState, take: Take | None) -> str:
    """The family an edit of ``take`` goes to: the panel's when a model is chosen, else the
    take's own (jobs from before the registry were MusicGen's)."""
    if state.params.model or take is None:
        return state.family
    return take.backend or FALLBACK_FAMILY


def _able(state: StudioState, kind: EditKind) -> list[str]:
    """The daemon's families that can do ``kind``: a repaint needs inpainting, a cover
    variation; extract and add are tasks a family's schema offers."""
    if kind == "repaint":
        return state.families_that("inpainting")
    if kind == "cover":
        return state.families_that("variation")
    return [name for name in state.backends or {}
            if kind in ((state.family_params(name).get("task") or {}).get("enum") or ())]
