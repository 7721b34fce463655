"""Command-line numbers checked against the protocol's own bounds, before anything is sent.

A value outside what ``schemas/openrpc.json`` allows is a bad command line: argparse reports it
(exit 2) naming the option and its range in plain words, instead of the daemon answering with
JSON-Schema wording ("is less than or equal to the minimum of 0") and exit 1. The bounds are
read from the OpenRPC document, so the CLI never keeps a second copy of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import cache
from typing import Any


@cache
def _param_schema(method: str, param: str) -> dict[str, Any]:
    # Imported on first use: timbred.protocol.schema imports jsonschema (about a third of
    # timbrectl's start-up), which a command line without a ranged option never needs.
    from timbred.protocol.schema import openrpc

    for m in openrpc()["methods"]:
        if m["name"] == method:
            for p in m["params"]:
                if p["name"] == param:
                    schema: dict[str, Any] = p["schema"]
                    # loudness: a number or false; the number's branch holds the range
                    for branch in schema.get("oneOf", []):
                        if branch.get("type") == "number":
                            return dict(branch)
                    return schema
    raise LookupError(f"{method} has no param {param!r} in schemas/openrpc.json")


def _fmt(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e15 else "any"


def describe(schema: dict[str, Any]) -> str:
    """``between 1 and 16``, ``more than 0 and at most 600``, ``at least 0``."""
    low = ("more than", schema["exclusiveMinimum"]) if "exclusiveMinimum" in schema else \
        ("at least", schema["minimum"]) if "minimum" in schema else None
    high = ("less than", schema["exclusiveMaximum"]) if "exclusiveMaximum" in schema else \
        ("at most", schema["maximum"]) if "maximum" in schema and schema["maximum"] < 1e15 \
        else None
    if low and high and low[0] == "at least" and high[0] == "at most":
        return f"between {_fmt(low[1])} and {_fmt(high[1])}"
    parts = [f"{bound[0]} {_fmt(bound[1])}" for bound in (low, high) if bound]
    return " and ".join(parts) or "a number"


def ranged(method: str, param: str) -> Callable[[str], Any]:
    """An argparse ``type`` for ``method``'s ``param``: int or float as the schema says, in range.

    The schema is read on first use, so ``--help`` and parsers that never see the option stay
    cheap.
    """
    def convert(text: str) -> Any:
        schema = _param_schema(method, param)
        integer = schema.get("type") == "integer" or all(
            isinstance(v, int) for v in schema.get("enum", [0.5]))
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if integer else 'a number'}, got {text!r}"
            ) from None
        if "enum" in schema and value not in schema["enum"]:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(map(str, schema['enum']))} (got {text})")
        if value != value or not _within(schema, value):  # NaN is never in range
            raise argparse.ArgumentTypeError(f"must be {describe(schema)} (got {text})")
        return value

    return convert


def _within(schema: dict[str, Any], value: float) -> bool:
    return not (("minimum" in schema and value < schema["minimum"])
                or ("maximum" in schema and value > schema["maximum"])
                or ("exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"])
                or ("exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]))


def positive_seconds(text: str) -> float:
    """``--timeout``: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (got {text})")
    return value


def text_file(method: str, param: str) -> Callable[[str], str]:
    """An argparse ``type`` reading an option's text from a file (``-``: standard input):
    UTF-8 (a byte-order mark dropped), no NUL bytes, at most the schema's ``maxLength``
    characters, each problem one line naming the file."""
    def read(value: str) -> str:
        import sys
        from pathlib import Path

        limit = int(_param_schema(method, param).get("maxLength", 1 << 16))
        where = "standard input" if value == "-" else value
        try:
            if value == "-":
                data = sys.stdin.buffer.read(4 * limit + 4)
            else:
                with Path(value).expanduser().open("rb") as f:
                    data = f.read(4 * limit + 4)  # UTF-8 takes at most 4 bytes a character
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read {where}: {exc.strerror or exc}") from exc
        if b"\0" in data:
            raise argparse.ArgumentTypeError(f"{where} holds NUL bytes; give a text file")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise argparse.ArgumentTypeError(
                f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
        if len(text) > limit:
            raise argparse.ArgumentTypeError(
                f"{where} is too long for {param}: at most {limit} characters")
        return text
    return read


def one_of(method: str, param: str) -> Callable[[str], str]:
    """An argparse ``type`` taking one of the schema's ``enum`` values (read on use, like the
    ranges), refusing anything else with the list."""
    def check(value: str) -> str:
        allowed = [v for v in _param_schema(method, param).get("enum", []) if v]
        if value not in allowed:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return check
