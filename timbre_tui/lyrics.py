"""Lyrics in the studio: the section tags the editor completes, and a song's sections spread
over its take for the timeline.

Lyrics are plain text with section tags on their own lines (``[verse]``, ``[chorus]``), the
way the daemon takes them (``generate.submit``'s ``lyrics``) and records them in a take's
recipe. Nothing here knows about the screen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

#: The section tags the editor offers, in a song's usual order (ACE-Step reads any tag; these
#: are the ones its documentation names).
SECTION_TAGS: tuple[tuple[str, str], ...] = (
    ("intro", "opening, usually without words"),
    ("verse", "the story; its words change each time"),
    ("pre-chorus", "the build into the chorus"),
    ("chorus", "the refrain that repeats"),
    ("hook", "a short catchy line"),
    ("bridge", "a contrast before the last chorus"),
    ("instrumental", "a passage without singing"),
    ("outro", "the ending"),
)

_TAG_LINE = re.compile(r"^\s*\[([^\[\]\n]+)\]\s*$")


@dataclass(frozen=True)
class Section:
    """One section of a song: its tag (``verse``; empty for words before the first tag), how
    many lines of words it has, and where it falls in the take as fractions of its length."""

    tag: str
    lines: int
    start: float
    end: float

    @property
    def label(self) -> str:
        return f"[{self.tag}]" if self.tag else ""


def sections(lyrics: str | None) -> list[Section]:
    """The tagged sections of ``lyrics`` laid over the take (empty when there is no tag).

    ACE-Step reports no timings for its sections, so this is an estimate: each section gets a
    share of the take in proportion to its lines of words, counting at least one line so an
    ``[intro]`` or ``[instrumental]`` without words still shows.
    """
    if not lyrics:
        return []
    counted: list[tuple[str, int]] = []
    for line in lyrics.splitlines():
        tag = _TAG_LINE.match(line)
        if tag is not None:
            counted.append((tag[1].strip(), 0))
        elif line.strip():
            if not counted:
                counted.append(("", 0))  # words before the first tag still take time
            name, lines = counted[-1]
            counted[-1] = (name, lines + 1)
    if not any(name for name, _ in counted):
        return []
    weights = [max(1, lines) for _, lines in counted]
    total = sum(weights)
    out: list[Section] = []
    at = 0
    for (name, lines), weight in zip(counted, weights, strict=True):
        out.append(Section(name, lines, at / total, (at + weight) / total))
        at += weight
    return out


def sung_lines(lyrics: str) -> int:
    """How many lines of words ``lyrics`` has (section tags and blank lines are not)."""
    return sum(1 for line in lyrics.splitlines()
               if line.strip() and _TAG_LINE.match(line) is None)


def section_at(found: list[Section], fraction: float) -> Section | None:
    """The section that ``fraction`` of the take (a playhead) falls in, by the estimate."""
    for section in found:
        if section.start <= fraction < section.end:
            return section
    return found[-1] if found and fraction >= 1 else None


class SectionCompleter(Completer):
    """Completes a section tag when the line being typed starts with ``[`` (``[ch`` ->
    ``[chorus]``)."""

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        line = document.current_line_before_cursor
        typed = line.lstrip()
        if not typed.startswith("[") or "]" in typed:
            return
        word = typed[1:].lower()
        for tag, about in SECTION_TAGS:
            if tag.startswith(word):
                yield Completion(f"[{tag}]", start_position=-len(typed), display_meta=about)
