"""The history's search words, read the same by ``timbrectl history`` and the studio's library.

Plain words match the prompt; ``tag:NAME``, ``rating:up|down|unrated``, ``bpm:120`` or
``bpm:118-122`` (the measured tempo; a single number allows half a beat either way) and
``key:Am`` (or ``key:F#``, ``key:"A minor"`` written ``key:A-minor``) filter. What the daemon
cannot filter itself (a second ``tag:``) is returned for the caller to apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BadQuery", "Query", "parse_query"]

_FILTER = re.compile(r"(?P<name>tag|rating|bpm|key):(?P<value>.*)", re.IGNORECASE)
_BPM = re.compile(r"(?P<low>\d+(?:\.\d+)?)(?:-(?P<high>\d+(?:\.\d+)?))?")
#: ``bpm:120`` means the tempo rounds to 120.
_BPM_SLACK = 0.5


class BadQuery(ValueError):
    """A filter word that does not parse; its message names the word and the form wanted."""


@dataclass
class Query:
    """``history.search`` params, and the tags beyond the first (filtered by the caller)."""

    params: dict[str, Any] = field(default_factory=dict)
    more_tags: list[str] = field(default_factory=list)


def parse_query(words: str | list[str]) -> Query:
    """Split search words into ``history.search`` params; :class:`BadQuery` on a filter word
    that does not parse (``bpm:fast``, ``rating:good``)."""
    tokens = words.split() if isinstance(words, str) else [w for t in words for w in t.split()]
    query = Query()
    text: list[str] = []
    for token in tokens:
        found = _FILTER.fullmatch(token)
        if found is None:
            text.append(token)
            continue
        name, value = found["name"].lower(), found["value"]
        if name == "tag":
            if "tag" in query.params:
                query.more_tags.append(value.lower())
            else:
                query.params["tag"] = value.lower()
        elif name == "rating":
            if value not in ("up", "down", "unrated"):
                raise BadQuery(f"{token}: rating is up, down or unrated")
            query.params["rating"] = value
        elif name == "bpm":
            tempo = _BPM.fullmatch(value)
            if tempo is None:
                raise BadQuery(f"{token}: write the tempo as bpm:120 or bpm:118-122")
            low = float(tempo["low"])
            high = float(tempo["high"]) if tempo["high"] else None
            if high is None:
                low, high = low - _BPM_SLACK, low + _BPM_SLACK
            if high < low:
                raise BadQuery(f"{token}: the range is low-high (bpm:118-122)")
            query.params["bpm_min"], query.params["bpm_max"] = low, high
        else:
            if not value:
                raise BadQuery(f"{token}: write the key as key:Am, key:F# or key:A-minor")
            query.params["key"] = value.replace("-", " ")
    if text:
        query.params["text"] = " ".join(text)
    return query
