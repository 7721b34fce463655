"""Prompt files dropped into watch folders: bytes in, generation requests (or one exact error) out.

Nothing here touches the file system: the watch service (:mod:`timbred.watch.service`) checks
the size with ``lstat`` (:func:`check_size`), reads at most ``max_bytes + 1`` bytes and hands
them to :func:`parse`, which returns one :class:`PromptRequest` per prompt or raises
:class:`~timbred.errors.InvalidParams` whose message names the file and says exactly what is wrong:
the line and column of a syntax error, the byte offset of a non-UTF-8 byte, the key, the value and
the allowed range of a bad value. ``data`` carries the same facts as fields (``file``, ``line``,
``column``, ``offset``, ``value``, ``allowed``; ``param`` is the offending key).

Three forms, chosen by the file's suffix (case-insensitive):

``.txt``
    Optional ``key: value`` header lines, a blank line, then the prompt (all the rest of the
    block, surrounding whitespace stripped). Several prompts: separate blocks with a line that
    holds only ``---``; each block has its own headers. Headers start on the block's first line,
    so a block that starts with a blank line is all prompt (the way to write a prompt whose first
    line looks like ``Style: lo-fi``). A first paragraph is read as headers when its first line
    names a known key, or when every line of it is ``key: value`` and a prompt follows after a
    blank line; unknown keys in headers are refused (``durration: 10`` is a typo, not prose).
    Keys are case-insensitive and ``-`` may stand for ``_``; values may be quoted. A line
    holding only ``lyrics:`` after the prompt starts the block's lyrics (to its end; blank
    lines and ``[verse]`` tags kept).
``.json`` / ``.toml``
    One request object, or ``{"prompts": [...]}`` (``[[prompts]]`` tables in TOML), described by
    ``schemas/promptfile.schema.json``.

A request holds the ``generate.submit`` parameters except ``output`` (same names, same ranges),
the export options (``format``, ``wav_subtype``, ``mp3_bitrate_kbps``, ``ogg_quality``,
``loudness_target_lufs``, ``true_peak_ceiling_dbtp``), a ``preset`` name and an ``output``
*name*: a plain file name inside the output folder, never a path.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePath
from typing import Any, Final

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from timbred.errors import InvalidParams
from timbred.protocol import schema as schemas
from timbred.takes.options import EXPORT_KEYS, SUFFIX_FORMATS

__all__ = [
    "EXPORT_KEYS",
    "GENERATION_KEYS",
    "MAX_FILE_BYTES",
    "MAX_PROMPTS",
    "PROMPT_SUFFIXES",
    "SCHEMA_NAME",
    "PromptRequest",
    "check_output_name",
    "check_size",
    "parse",
    "prompt_kind",
]

#: Default cap on a prompt file's size; larger files are refused by size before being read.
MAX_FILE_BYTES: Final = 64 * 1024
#: Most prompts one file may hold (the schema's ``maxItems``; a test keeps the two equal).
MAX_PROMPTS: Final = 64
#: Most bytes an output name may take (file names are limited to 255 bytes; suffixes follow).
MAX_OUTPUT_NAME_BYTES: Final = 200

SCHEMA_NAME: Final = "promptfile.schema.json"
PROMPT_SUFFIXES: Final[Mapping[str, str]] = {".txt": "txt", ".toml": "toml", ".json": "json"}
#: The generate.submit parameters a prompt file may set (``output`` is a name, handled apart).
GENERATION_KEYS: Final = ("prompt", "duration", "seed", "model", "temperature", "top_k",
                          "top_p", "guidance", "steps", "negative", "sampler", "variations",
                          "priority", "keep_alive", "melody", "continuation", "init",
                          "strength", "lyrics", "language", "shift", "bpm", "key",
                          "time_signature")
#: Export options that only mean something for one format.
_FORMAT_OF_OPTION: Final[Mapping[str, str]] = {"wav_subtype": "wav", "mp3_bitrate_kbps": "mp3",
                                               "ogg_quality": "ogg"}

_HEADER_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)[ \t]*:(.*)$")
# C0 controls other than tab, newline and carriage return, and DEL: never in a text prompt.
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
_TOML_POS_RE: Final = re.compile(r"\(at line (\d+), column (\d+)\)")
_RANGE_KEYS: Final = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                      "enum", "const", "minLength", "maxLength", "minItems", "maxItems")


@dataclass(frozen=True)
class PromptRequest:
    """One prompt of a prompt file, split into the parts the daemon handles separately.

    ``params`` are ``generate.submit`` params (without ``output``), already validated against
    the method's schema; ``export`` holds the export options; ``output`` is the output *name*
    without its audio suffix (the suffix, if any, became ``export["format"]``); ``index`` is
    the prompt's 1-based position in the file and ``line`` where it starts (``.txt`` only).
    """

    index: int
    params: dict[str, Any]
    export: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    output: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (for the database and result files)."""
        return {"index": self.index, "params": dict(self.params), "export": dict(self.export),
                "preset": self.preset, "output": self.output, "line": self.line}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptRequest:
        """The inverse of :meth:`to_dict`."""
        return cls(index=int(d["index"]), params=dict(d["params"]), export=dict(d["export"]),
                   preset=d.get("preset"), output=d.get("output"), line=d.get("line"))

    def with_base(self, base: PurePath) -> PromptRequest:
        """Relative ``melody``/``continuation``/``init`` paths made absolute against ``base``
        (lexically)."""
        params = dict(self.params)
        for key in ("melody", "continuation", "init"):
            value = params.get(key)
            if isinstance(value, str) and not PurePath(value).is_absolute():
                params[key] = str(base / value)
        return PromptRequest(self.index, params, dict(self.export), self.preset, self.output,
                             self.line)


def prompt_kind(name: str) -> str | None:
    """``"txt"``, ``"toml"`` or ``"json"`` for a prompt file's name; None for anything else."""
    return PROMPT_SUFFIXES.get(PurePath(name).suffix.lower())


def check_size(name: str, size: int, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Refuse a file by its size alone (call it with ``lstat``'s size before reading)."""
    if size > max_bytes:
        raise _error(name, f"too large: {size} bytes; prompt files are limited to {max_bytes} "
                     "bytes", size=size, limit=max_bytes)


def parse(name: str, data: bytes, *, max_bytes: int = MAX_FILE_BYTES) -> list[PromptRequest]:
    """The requests in prompt file ``name`` (its suffix picks the form) holding ``data``.

    Raises InvalidParams naming the problem: over ``max_bytes``, binary content, not UTF-8,
    bad syntax, unknown keys, values out of range, an empty prompt, an unsafe output name.
    """
    kind = prompt_kind(name)
    if kind is None:
        suffixes = ", ".join(PROMPT_SUFFIXES)
        raise _error(name, f"not a prompt file: the name must end in one of {suffixes}")
    check_size(name, len(data), max_bytes)
    text = _decode(name, data)
    if not text.strip():
        raise _error(name, "empty: the file holds no prompt")
    if kind == "txt":
        return _parse_txt(name, text)
    doc = _load_json(name, text) if kind == "json" else _load_toml(name, text)
    error = best_match(schemas.validator(SCHEMA_NAME).iter_errors(doc))
    if error is not None:
        raise _schema_error(name, error, batch=isinstance(doc, dict) and "prompts" in doc)
    several = "prompts" in doc
    raw = doc["prompts"] if several else [doc]
    return [_request(name, entry, i, several=several, line=None)
            for i, entry in enumerate(raw, start=1)]


def check_output_name(value: str) -> tuple[str, str | None]:
    """``(stem, format implied by its suffix or None)`` for a valid output name.

    Raises ValueError saying why the name is refused: it is empty, absolute, holds a path
    separator or ``..`` (it would escape the output folder), starts with a dot, holds control
    characters, or is too long.
    """
    if not value:
        raise ValueError("is empty")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError("is an absolute path; give a plain file name: takes are written "
                         "inside the output folder only")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ValueError("holds a path separator or '..' and would escape the output folder; "
                         "give a plain file name")
    if value.startswith("."):
        raise ValueError("starts with a dot (the take would be a hidden file)")
    if _CONTROL_RE.search(value) or "\n" in value or "\r" in value or "\t" in value:
        raise ValueError("holds control characters")
    if len(value.encode("utf-8")) > MAX_OUTPUT_NAME_BYTES:
        raise ValueError(f"is longer than {MAX_OUTPUT_NAME_BYTES} bytes")
    path = PurePath(value)
    implied = SUFFIX_FORMATS.get(path.suffix.lower())
    stem = path.stem if implied else value
    if not stem or stem.startswith("."):
        raise ValueError("has no name before its suffix")
    return stem, implied


# --- decoding ---------------------------------------------------------------------------------


def _decode(name: str, data: bytes) -> str:
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise _error(name, f"not UTF-8: the file is {encoding} text (byte-order mark at "
                         "byte offset 0); save it as UTF-8", offset=0)
    nul = data.find(b"\0")
    if nul >= 0:
        raise _error(name, f"binary content: NUL byte at byte offset {nul}; prompt files are "
                     "UTF-8 text", offset=nul)
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line, column = _byte_position(data, offset)
        raise _error(name, f"not UTF-8: invalid byte 0x{data[offset]:02x} at byte offset "
                     f"{offset} (line {line}, column {column}); save the file as UTF-8",
                     offset=offset, line=line, column=column) from exc
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise _error(name, f"binary content: control character U+{ord(bad.group()):04X} at "
                     f"line {line}, column {column}; prompt files are UTF-8 text",
                     line=line, column=column)
    return text


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


# --- JSON and TOML ----------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(value: str) -> Any:
    raise ValueError(f"{value} is not a number JSON allows")


def _load_json(name: str, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise _error(name, f"bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                     line=exc.lineno, column=exc.colno) from exc
    except _DuplicateKey as exc:
        raise _error(name, f"bad JSON: key {exc.key!r} appears twice in one object",
                     param=exc.key) from exc
    except ValueError as exc:  # NaN, Infinity
        raise _error(name, f"bad JSON: {exc}") from exc


def _load_toml(name: str, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        pos = _TOML_POS_RE.search(message)
        if pos is None:
            raise _error(name, f"bad TOML: {message}") from exc
        line, column = int(pos.group(1)), int(pos.group(2))
        reason = message[:pos.start()].strip()
        raise _error(name, f"bad TOML at line {line}, column {column}: {reason}",
                     line=line, column=column) from exc


# --- .txt -------------------------------------------------------------------------------------


@dataclass
class _Block:
    number: int
    first_line: int  # 1-based line number of the block's first line
    lines: list[str]
    after_separator: int | None  # line of the '---' before it


def _blocks(text: str) -> list[_Block]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks = [_Block(1, 1, [], None)]
    for number, line in enumerate(lines, start=1):
        if line.strip() == "---":
            blocks.append(_Block(len(blocks) + 1, number + 1, [], number))
        else:
            blocks[-1].lines.append(line)
    return blocks


def _parse_txt(name: str, text: str) -> list[PromptRequest]:
    blocks = _blocks(text)
    if len(blocks) > MAX_PROMPTS:
        raise _error(name, f"too many prompts: {len(blocks)}; allowed: at most {MAX_PROMPTS} "
                     "per file", allowed={"maxItems": MAX_PROMPTS})
    several = len(blocks) > 1
    return [_parse_block(name, block, several) for block in blocks]


def _parse_block(name: str, block: _Block, several: bool) -> PromptRequest:
    where = f"prompt {block.number}: " if several else ""
    lines = block.lines
    if not any(line.strip() for line in lines):
        after = (f" (after the '---' on line {block.after_separator}; remove the extra "
                 "separator)" if block.after_separator is not None else "")
        raise _error(name, f"empty prompt: prompt {block.number} is empty{after}",
                     line=block.first_line)
    paragraph: list[str] = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line)
    matches = [_HEADER_RE.match(line) for line in paragraph]
    known = _header_keys()
    first_known = bool(matches and matches[0] and _key(matches[0].group(1)) in known)
    all_kv = bool(paragraph) and all(matches)
    rest = lines[len(paragraph):]
    has_body = any(line.strip() for line in rest)
    if not paragraph:
        _check_misplaced_headers(name, block, where)
    headers: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    if first_known or (all_kv and has_body):
        for offset, (line, m) in enumerate(zip(paragraph, matches, strict=True)):
            number = block.first_line + offset
            if m is None:
                raise _error(name, f"line {number}: expected 'key: value' or a blank line "
                             f"ending the headers, got {_show(line)}", line=number)
            key, raw = _key(m.group(1)), m.group(2).strip()
            if key not in known:
                raise _error(name, f"line {number}: unknown key {m.group(1)!r}"
                             f"{_suggest(key, known)}; known keys: {', '.join(sorted(known))}"
                             " (if this line is part of the prompt, start the block with a "
                             "blank line)", param=key, line=number)
            if key in headers:
                raise _error(name, f"line {number}: {key} is given twice (first on line "
                             f"{key_lines[key]})", param=key, line=number)
            colon = line.index(":")
            after = line[colon + 1:]
            column = colon + 2 + len(after) - len(after.lstrip())  # 1-based, of the value
            headers[key] = _convert(name, key, _unquote(raw), number, column)
            key_lines[key] = number
        body_lines = rest
        body_start = block.first_line + len(paragraph)
    else:
        body_lines = lines
        body_start = block.first_line
    # A line holding only "lyrics:" ends the prompt: the rest of the block is the words to
    # sing, blank lines and section tags kept.
    marker = next((i for i, line in enumerate(body_lines)
                   if line.strip().lower() == "lyrics:"), None)
    if marker is not None:
        if "lyrics" in headers:
            raise _error(name, f"line {body_start + marker}: {where}lyrics is given twice "
                         f"(first on line {key_lines['lyrics']})", param="lyrics",
                         line=body_start + marker)
        headers["lyrics"] = "\n".join(body_lines[marker + 1:]).strip("\n")
        key_lines["lyrics"] = body_start + marker
        body_lines = body_lines[:marker]
    prompt = "\n".join(body_lines).strip()
    prompt_line = body_start + next(
        (i for i, line in enumerate(body_lines) if line.strip()), 0)
    if not prompt:
        raise _error(name, f"line {block.first_line}: {where}empty prompt: headers but no "
                     "prompt after them (a blank line, then the prompt)", line=block.first_line)
    entry = {**headers, "prompt": prompt}
    key_lines["prompt"] = prompt_line
    error = best_match(_request_validator().iter_errors(entry))
    if error is not None:
        key = str(error.absolute_path[0]) if error.absolute_path else ""
        at_line = key_lines.get(key, block.first_line)
        problem, param, data = _describe(error)
        raise _error(name, f"line {at_line}: {where}{problem}", param=param, line=at_line,
                     **data)
    return _request(name, entry, block.number, several=several, line=prompt_line,
                    key_lines=key_lines)


def _check_misplaced_headers(name: str, block: _Block, where: str) -> None:
    """A block that starts with a blank line is all prompt; say so if it looks like headers."""
    for offset, line in enumerate(block.lines):
        if not line.strip():
            continue
        m = _HEADER_RE.match(line)
        if m and _key(m.group(1)) in _header_keys():
            number = block.first_line + offset
            raise _error(name, f"line {number}: {where}{m.group(1)!r} looks like a header, but "
                         "headers must start on the block's first line (remove the blank "
                         "lines before it)", param=_key(m.group(1)), line=number)
        return


def _key(raw: str) -> str:
    return raw.casefold().replace("-", "_")


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    return raw


def _convert(name: str, key: str, raw: str, line: int, column: int) -> Any:
    """A header's text as the value its key takes (the schema then checks the range)."""
    schema = _request_properties()[key]
    kinds = _admitted_types(schema)
    if re.fullmatch(r"[+-]?\d+", raw) and kinds & {"integer", "number"}:
        return int(raw)
    if "number" in kinds:
        with contextlib.suppress(ValueError):
            value = float(raw)
            if math.isfinite(value):
                return value
    if "boolean" in kinds and raw.casefold() in ("true", "false"):
        return raw.casefold() == "true"
    if kinds <= {"integer", "number"} and "enum" not in schema:
        expected = "an integer" if kinds == {"integer"} else "a number"
        raise _error(name, f"line {line}, column {column}: {key}: expected {expected}, got "
                     f"{_show(raw)}{_allowed_suffix(schema)}", param=key, line=line,
                     column=column, value=raw)
    return raw  # a string, or an enum the schema will name


def _admitted_types(schema: Mapping[str, Any]) -> set[str]:
    """The JSON types a property's schema admits (through enum, const and oneOf too)."""
    kinds: set[str] = set()
    if "type" in schema:
        kind = schema["type"]
        kinds.update(kind if isinstance(kind, list) else [kind])
    for value in [*schema.get("enum", []), *([schema["const"]] if "const" in schema else [])]:
        kinds.add(_json_type(value))
    for branch in [*schema.get("oneOf", []), *schema.get("anyOf", [])]:
        kinds |= _admitted_types(branch)
    return kinds


# --- requests ---------------------------------------------------------------------------------


def _request(name: str, entry: Mapping[str, Any], index: int, *, several: bool,
             line: int | None, key_lines: Mapping[str, int] | None = None) -> PromptRequest:
    """Split one schema-valid request object into a PromptRequest; the semantic checks.

    ``key_lines`` (``.txt`` only) maps each key to its line, for the messages.
    """
    where = f"prompt {index}: " if several else ""

    def fail(key: str, problem: str, **data: Any) -> InvalidParams:
        number = (key_lines or {}).get(key)
        at = f"line {number}: " if number is not None else ""
        return _error(name, f"{at}{where}{problem}", param=key, line=number, **data)

    prompt = entry["prompt"]
    if not prompt.strip():
        raise fail("prompt", "empty prompt: the prompt is only whitespace")
    properties = _request_properties()
    params: dict[str, Any] = {}
    for key in GENERATION_KEYS:
        if key in entry:
            value = entry[key]
            # JSON 2020-12 calls 10.0 an integer; the daemon wants an int.
            if properties[key].get("type") == "integer" and isinstance(value, float):
                value = int(value)
            params[key] = value
    export = {key: entry[key] for key in EXPORT_KEYS if key in entry}
    output: str | None = None
    if "output" in entry:
        try:
            output, implied = check_output_name(entry["output"])
        except ValueError as exc:
            raise fail("output", f"output {entry['output']!r} {exc}",
                       value=entry["output"]) from exc
        if implied is not None:
            given = export.setdefault("format", implied)
            if given != implied:
                raise fail("format", f"output {entry['output']!r} implies format {implied!r} "
                           f"but format is {given!r}")
    fmt = export.get("format")
    for key, wanted in _FORMAT_OF_OPTION.items():
        if key in export and fmt is not None and fmt != wanted:
            raise fail(key, f"{key} applies to format {wanted!r} only, but format is {fmt!r}")
    spec = schemas.params_specs()["generate.submit"]
    flat = {**params, **export, **({"preset": entry["preset"]} if "preset" in entry else {})}
    try:
        # Every key generate.submit knows is checked by it too (the export keys and preset
        # once the daemon takes them there; the generation keys always).
        spec.normalise({k: v for k, v in flat.items() if k in spec.names})
    except InvalidParams as exc:
        raise fail(str(exc.data.get("param")), exc.message) from exc
    preset = entry.get("preset")
    return PromptRequest(index=index, params=params, export=export, preset=preset,
                         output=output, line=line)


# --- schema errors ----------------------------------------------------------------------------


@cache
def _request_validator() -> jsonschema.protocols.Validator:
    doc = schemas.load(SCHEMA_NAME)
    request = {**doc["$defs"]["request"], "$defs": doc["$defs"]}
    return jsonschema.Draft202012Validator(request)


def _request_properties() -> dict[str, Any]:
    props: dict[str, Any] = schemas.load(SCHEMA_NAME)["$defs"]["request"]["properties"]
    return props


@cache
def _header_keys() -> frozenset[str]:
    return frozenset(k for k in _request_properties() if k != "prompt")


def _schema_error(name: str, error: ValidationError, *, batch: bool) -> InvalidParams:
    path = list(error.absolute_path)
    where = ""
    if batch and len(path) >= 2 and path[0] == "prompts" and isinstance(path[1], int):
        where = f"prompt {path[1] + 1}: "
    problem, param, data = _describe(error)
    return _error(name, where + problem, param=param, **data)


def _describe(error: ValidationError) -> tuple[str, str | None, dict[str, Any]]:
    """``(message, key, data)`` for the first schema error, naming the key, value and range."""
    if isinstance(error.parent, ValidationError) and error.parent.validator in ("oneOf",
                                                                                "anyOf"):
        error = error.parent  # name every alternative, not the one best_match picked
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    path = [p for p in error.absolute_path if isinstance(p, str)]
    key = path[-1] if path else None
    value: Any = error.instance
    allowed = {k: schema[k] for k in _RANGE_KEYS if k in schema}
    data: dict[str, Any] = {"allowed": allowed} if allowed else {}
    validator = error.validator
    if validator == "additionalProperties" and isinstance(value, dict):
        known = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(known))[0]
        if known == ["prompts"]:
            return (f"unknown key {extra!r} beside 'prompts' (with a prompts list, every key "
                    "belongs inside its entries)", extra, {})
        return (f"unknown key {extra!r}{_suggest(extra, known)}; known keys: "
                f"{', '.join(known)}", extra, {})
    if validator == "required" and isinstance(value, dict):
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        missing = next(k for k in required if k not in value)
        what = " (the text to generate from)" if missing == "prompt" else ""
        return f"missing key {missing!r}{what}", missing, {}
    label = key or "the file"
    if validator == "type":
        return (f"{label}: expected {_type_words(schema.get('type'))}, got {_show(value)} "
                f"({_type_words(_json_type(value))})", key, {**data, "value": _plain(value)})
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return (f"{label}: {_show(value)} is out of range; allowed: {_range_words(schema)}",
                key, {**data, "value": value})
    if validator == "enum":
        choices = ", ".join(_show(c) for c in schema["enum"])
        return (f"{label}: {_show(value)} is not allowed; allowed: one of {choices}", key,
                {**data, "value": _plain(value)})
    if validator in ("oneOf", "anyOf"):
        choices = " or ".join(_alternative(branch) for branch in schema[validator])
        return (f"{label}: {_show(value)} is not allowed; allowed: {choices}", key,
                {"allowed": {validator: schema[validator]}, "value": _plain(value)})
    if validator == "minLength":
        return f"{label} is empty", key, data
    if validator == "maxLength":
        return (f"{label} is too long: {len(value)} characters; allowed: at most "
                f"{schema['maxLength']}", key, data)
    if validator == "pattern" and key == "output" and isinstance(value, str):
        try:
            check_output_name(value)
        except ValueError as exc:
            return f"output {value!r} {exc}", key, {"value": value}
    if validator == "minItems":
        return f"{label} is empty: give at least one prompt", key, data
    if validator == "maxItems":
        return (f"too many prompts: {len(value)}; allowed: at most {schema['maxItems']} per "
                "file", key, data)
    return f"{label}: {error.message}", key, data


def _alternative(schema: Mapping[str, Any]) -> str:
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_show(c) for c in schema["enum"])
    words = _type_words(schema.get("type", "any"))
    bounds = _range_words(schema)
    return words if bounds == "any" else f"{words} ({bounds})"


def _range_words(schema: Mapping[str, Any]) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f"at least {schema['minimum']:g}")
    if "exclusiveMinimum" in schema:
        parts.append(f"greater than {schema['exclusiveMinimum']:g}")
    if "maximum" in schema:
        parts.append(f"at most {schema['maximum']:g}")
    if "exclusiveMaximum" in schema:
        parts.append(f"less than {schema['exclusiveMaximum']:g}")
    return " and ".join(parts) or "any"


def _allowed_suffix(schema: Mapping[str, Any]) -> str:
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return f" ({_range_words(schema)})"
    return ""


_TYPE_WORDS: Final = {"number": "a number", "integer": "an integer", "string": "a string",
                      "object": "a table/object", "array": "a list", "boolean": "a boolean",
                      "null": "null"}


def _type_words(kind: Any) -> str:
    if isinstance(kind, list):
        return " or ".join(_TYPE_WORDS.get(k, str(k)) for k in kind)
    return _TYPE_WORDS.get(str(kind), str(kind))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return type(value).__name__  # TOML dates and times


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _error(file: str, problem: str, *, param: str | None = None, **data: Any) -> InvalidParams:
    clean = {k: v for k, v in data.items() if v is not None}
    return InvalidParams(f"{file}: {problem}", param=param, file=file, **clean)
