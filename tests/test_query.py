"""The history's search words as timbrectl and the studio read them (timbrectl.query)."""

from __future__ import annotations

import pytest

from timbrectl.query import BadQuery, parse_query


@pytest.mark.parametrize(("words", "params", "more"), [
    ("rainy piano", {"text": "rainy piano"}, []),
    ("bpm:118-122 key:Am", {"bpm_min": 118.0, "bpm_max": 122.0, "key": "Am"}, []),
    ("bpm:120", {"bpm_min": 119.5, "bpm_max": 120.5}, []),
    ("drums key:F#-minor", {"text": "drums", "key": "F# minor"}, []),
    ("tag:Pads tag:warm rating:up", {"tag": "pads", "rating": "up"}, ["warm"]),
    (["lofi bpm:80-90", "BPM:85"], {"text": "lofi", "bpm_min": 84.5, "bpm_max": 85.5}, []),
])
def test_words_become_search_params(words: str | list[str], params: dict[str, object],
                                    more: list[str]) -> None:
    query = parse_query(words)
    assert query.params == params and query.more_tags == more


@pytest.mark.parametrize(("words", "says"), [
    ("bpm:fast", "bpm:120 or bpm:118-122"), ("bpm:130-120", "low-high"),
    ("rating:good", "up, down or unrated"), ("key:", "key:Am")])
def test_a_filter_that_does_not_parse_says_how_to_write_it(words: str, says: str) -> None:
    with pytest.raises(BadQuery, match=says):
        parse_query(words)
