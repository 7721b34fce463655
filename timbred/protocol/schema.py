"""Access to ``schemas/``, the single contract of everything that crosses a boundary.

The daemon validates every request's params against ``openrpc.json`` at the edge, so a handler
only ever sees well-typed, in-range values; tests validate real replies, events and files
against the same documents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from timbred.errors import InvalidParams
from timbred.protocol.framing import has_surrogate


def schema_dir() -> Path:
    """Where the schemas live: inside the installed package, or ``schemas/`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "_schemas"
    if installed.is_dir():
        return installed
    return here.parent / "schemas"


@cache
def load(name: str) -> dict[str, Any]:
    """Load one schema document by file name (cached; the files never change at run time)."""
    with (schema_dir() / name).open(encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one schema document by file name (cached, like :func:`load`), of the
    draft the document names (2020-12 when it names none)."""
    doc = load(name)
    cls = jsonschema.validators.validator_for(doc, default=jsonschema.Draft202012Validator)
    checker: jsonschema.protocols.Validator = cls(doc)
    return checker


def openrpc() -> dict[str, Any]:
    """The OpenRPC document."""
    return load("openrpc.json")


def rooted(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with the OpenRPC components beside it, so ``#/components/...`` refs resolve."""
    return {**schema, "components": openrpc()["components"]}


@dataclass(frozen=True)
class ParamsSpec:
    """How one method's params look: their names in order and one object validator."""

    method: str
    names: tuple[str, ...]
    validator: jsonschema.protocols.Validator

    def normalise(self, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
        """Map by-position params onto names, then validate; return the params by name.

        Raises :class:`InvalidParams` naming the first offending parameter.
        """
        if isinstance(params, list):
            if len(params) > len(self.names):
                raise InvalidParams(
                    f"{self.method} takes at most {len(self.names)} positional params, "
                    f"got {len(params)}",
                    param=None,
                    expected=list(self.names),
                )
            params = dict(zip(self.names, params, strict=False))
        _check_unicode(self.method, params)
        error = best_match(self.validator.iter_errors(params))
        if error is not None:
            raise _invalid_params(self.method, error)
        return params


def check(label: str, schema: Mapping[str, Any], instance: Any) -> None:
    """Validate ``instance`` against ``schema`` (a backend's parameters, say); raises
    :class:`InvalidParams` naming the first offending parameter, as the edge does."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = best_match(cls(schema).iter_errors(instance))
    if error is not None:
        raise _invalid_params(label, error)


def _check_unicode(method: str, params: dict[str, Any]) -> None:
    """Refuse a lone surrogate anywhere in ``params`` (names too), naming where it is.

    ``"\\ud800"`` is valid JSON but not Unicode: such a string cannot become a file name, a
    SQLite text or a UTF-8 reply, so it is refused here, at the edge, as a client mistake.
    Iterative, not recursive: params nest as deep as the JSON parser allowed, which is about
    as deep as Python's stack.
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(params, ())]
    while stack:
        value, path = stack.pop()
        where = ".".join(path) or None
        if isinstance(value, str):
            if has_surrogate(value):
                raise InvalidParams(
                    f"{method}: {where or 'params'}: not valid Unicode (holds a lone "
                    "surrogate)", param=where)
        elif isinstance(value, dict):
            for key, item in value.items():
                if has_surrogate(key):
                    raise InvalidParams(
                        f"{method}: {where or 'params'}: a name is not valid Unicode (holds a "
                        "lone surrogate)", param=where)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))


def _invalid_params(method: str, error: ValidationError) -> InvalidParams:
    path = [str(p) for p in error.absolute_path]
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    instance = error.instance
    if error.validator == "required" and not path:
        # jsonschema says "'x' is a required property"; name the param directly.
        missing = error.message.split("'")[1] if "'" in error.message else None
        return InvalidParams(f"{method}: missing required param {missing!r}", param=missing)
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        extra = sorted(set(instance) - set(known))
        name = ".".join([*path, extra[0]]) if extra else None
        return InvalidParams(
            f"{method}: unknown param {name!r}; allowed: {', '.join(sorted(known)) or 'none'}",
            param=name,
        )
    param = ".".join(path) if path else None
    allowed = {k: v for k, v in schema.items() if k in _RANGE_KEYS}
    extra_data = {"allowed": allowed} if allowed else {}
    return InvalidParams(f"{method}: {param or 'params'}: {error.message}", param=param,
                         **extra_data)


_RANGE_KEYS = frozenset(
    {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const",
     "minLength", "maxLength", "minItems", "maxItems", "pattern"}
)


@cache
def params_specs() -> dict[str, ParamsSpec]:
    """A :class:`ParamsSpec` for every method in the OpenRPC document."""
    specs: dict[str, ParamsSpec] = {}
    for method in openrpc()["methods"]:
        names = tuple(p["name"] for p in method["params"])
        schema = rooted(
            {
                "type": "object",
                "properties": {p["name"]: p["schema"] for p in method["params"]},
                "required": [p["name"] for p in method["params"] if p.get("required")],
                "additionalProperties": False,
            }
        )
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        specs[method["name"]] = ParamsSpec(method["name"], names, cls(schema))
    return specs
