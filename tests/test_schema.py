"""schemas/ is the single contract: the dispatch table, the error tree and the documents agree."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from timbred.errors import wire_errors
from timbred.protocol.schema import openrpc, schema_dir
from timbred.rpc import handlers


def test_registered_methods_match_the_document() -> None:
    """Every handler is documented and every documented method has a handler."""
    documented = {m["name"] for m in openrpc()["methods"]}
    assert set(handlers()) == documented


def test_error_table_matches_the_exception_tree() -> None:
    """components.errors lists exactly the codes and kinds the daemon can send."""
    doc = {e["code"]: e["data"]["kind"] for e in openrpc()["components"]["errors"].values()}
    tree = {code: cls.kind for code, cls in wire_errors().items()}
    assert doc == tree


def test_application_codes_are_in_the_reserved_range() -> None:
    """Application errors use -32000..-32099; the rest are the five standard codes."""
    standard = {-32700, -32600, -32601, -32602, -32603}
    for code in wire_errors():
        assert code in standard or -32099 <= code <= -32000, code


def test_method_errors_reference_known_errors() -> None:
    """Each method's errors resolve to entries of components.errors."""
    errors = openrpc()["components"]["errors"]
    for method in openrpc()["methods"]:
        for ref in method["errors"]:
            assert ref["$ref"].split("/")[-1] in errors, (method["name"], ref)


@pytest.mark.parametrize("path", sorted(schema_dir().glob("*.json")), ids=lambda p: p.name)
def test_every_schema_is_a_valid_json_schema(path: Path) -> None:
    """Each embedded schema is itself valid Draft 2020-12."""
    import json

    doc = json.loads(path.read_text())
    if path.name == "openrpc.json":
        schemas = [*doc["components"]["schemas"].values(),
                   *(m["result"]["schema"] for m in doc["methods"]),
                   *(p["schema"] for m in doc["methods"] for p in m["params"]),
                   *(e["data"] for e in doc["x-events"].values()),
                   *(n["params"] for n in doc["x-notifications"].values())]
    else:
        schemas = [doc]
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)
