"""Property-based fuzzing of the whole wire: whatever one line holds, the daemon answers it
with valid JSON-RPC 2.0 (never -32603 for a client's mistake) and keeps answering.

Messages are random bytes, random JSON with numbers out of range and lone surrogates, deep
nesting, and request envelopes for every method in ``schemas/openrpc.json`` with params of
the wrong type. Each example goes over its own connection to one in-process daemon: the line,
then a half-close, then every reply up to the daemon's close.

The default run is bounded (``FUZZ_EXAMPLES``, 120 examples per property, a few seconds);
before a release run more, e.g. ``FUZZ_EXAMPLES=5000 ./scripts/test.sh tests/test_fuzz_wire.py``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timbred.protocol.schema import openrpc
from timbred.testing.daemon import running_daemon

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

#: Left out: it would stop the daemon under test (its params are only ever empty).
UNSAFE = frozenset({"daemon.shutdown"})
METHODS: dict[str, list[dict[str, Any]]] = {
    m["name"]: m["params"] for m in openrpc()["methods"] if m["name"] not in UNSAFE}


@pytest.fixture(scope="module")
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One daemon for the whole module, in a thread of its own (hypothesis drives sync
    tests); its socket path is short (sun_path)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tbf-") as d, start_blocking_portal() as portal:
        base = Path(d)
        with portal.wrap_async_context_manager(running_daemon(
                base, watch__enabled=False)) as daemon:
            yield daemon.socket_path


def exchange(path: Path, line: bytes, timeout: float = 30.0) -> list[bytes]:
    """Send ``line`` (newline added), half-close, and return every line until EOF."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(line + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return [x for x in data.split(b"\n") if x.strip()]


def _reject(name: str) -> Any:
    raise AssertionError(f"the daemon sent {name}")


def check_replies(lines: list[bytes]) -> list[dict[str, Any]]:
    """Every line is UTF-8 JSON (no NaN) holding a JSON-RPC 2.0 response or a batch of them,
    and no error is -32603: the input was the client's mistake, not the daemon's."""
    out: list[dict[str, Any]] = []
    for raw in lines:
        msg = json.loads(raw.decode("utf-8"), parse_constant=_reject)
        for reply in msg if isinstance(msg, list) else [msg]:
            assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0", reply
            if "method" in reply:  # a notification (events.dropped) is not a reply
                continue
            assert "id" in reply and (("result" in reply) != ("error" in reply)), reply
            assert set(reply) <= {"jsonrpc", "id", "result", "error"}, reply
            id_ = reply["id"]
            assert id_ is None or (isinstance(id_, str | int | float) and \
                not isinstance(id_, bool)), reply
            if "error" in reply:
                err = reply["error"]
                assert isinstance(err["code"], int) and isinstance(err["message"], str), reply
                assert isinstance(err["data"], dict) and isinstance(
                    err["data"].get("kind"), str), reply
                assert err["code"] != -32603, reply
            out.append(reply)
    return out


def still_answers(path: Path) -> None:
    (reply,) = check_replies(exchange(
        path, b'{"jsonrpc":"2.0","method":"daemon.ping","id":"alive"}'))
    assert reply["result"]["pong"] is True


# --- strategies -----------------------------------------------------------------------------

#: Number spellings json.loads turns into inf or that overflow, next to ordinary ones.
ODD_NUMBERS = ["1e400", "-1e400", "1e1000", "1.5e309", "-0", "1E+308", "4.9e-324",
               "123456789012345678901234567890", "-9223372036854775809", "0.1e-400"]
SURROGATES = ["\ud800", "\udfff", "a\udc80b", "\udbff\udbff"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40), st.sampled_from(SURROGATES),
    st.sampled_from([f"\x00NUM{i}\x00" for i in range(len(ODD_NUMBERS))]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(st.text(max_size=10),
                                                      st.sampled_from(SURROGATES)),
                                            inner, max_size=5)),
    max_leaves=20)


def to_line(value: Any) -> bytes:
    """JSON text for ``value``: surrogates as escapes (json writes them so), and each
    ``\\x00NUMi\\x00`` marker replaced by an odd number spelled as raw JSON."""
    text = json.dumps(value, ensure_ascii=True)
    for i, number in enumerate(ODD_NUMBERS):
        text = text.replace(json.dumps(f"\x00NUM{i}\x00"), number)
    return text.encode()


_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "string": st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
    "integer": st.one_of(st.text(max_size=5), st.floats(0.5, 0.9), st.booleans(),
                         st.sampled_from([f"\x00NUM{i}\x00" for i in range(3)])),
    "number": st.one_of(st.text(max_size=5), st.booleans(), st.none(),
                        st.sampled_from([f"\x00NUM{i}\x00" for i in range(4)])),
    "boolean": st.one_of(st.integers(), st.text(max_size=5)),
    "array": st.one_of(st.text(max_size=5), st.dictionaries(st.text(max_size=3),
                                                            st.integers(), max_size=2)),
    "object": st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2)),
}


@st.composite
def bad_params(draw: st.DrawFn, method: str) -> Any:
    """Params for ``method`` that the schema refuses: one param of a wrong type, a lone
    surrogate, an unknown name, too many positional ones, or not a container at all."""
    params = METHODS[method]
    typed = [p for p in params if isinstance(p["schema"].get("type"), str)
             and p["schema"]["type"] in _WRONG]
    choices = ["unknown", "positional"] + (["wrong_type", "surrogate"] if typed else [])
    kind = draw(st.sampled_from(choices))
    if kind == "unknown":
        return {draw(st.text(min_size=1, max_size=8).filter(
            lambda k: k not in {p["name"] for p in params})): draw(values)}
    if kind == "positional":
        return draw(st.lists(values, min_size=len(params) + 1, max_size=len(params) + 3))
    param = draw(st.sampled_from(typed))
    if kind == "surrogate" and param["schema"]["type"] == "string":
        return {param["name"]: draw(st.sampled_from(SURROGATES))}
    return {param["name"]: draw(_WRONG[param["schema"]["type"]])}


ids = st.one_of(st.integers(), st.text(max_size=10), st.none(), st.sampled_from(SURROGATES),
                st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                st.sampled_from([f"\x00NUM{i}\x00" for i in range(len(ODD_NUMBERS))]),
                st.lists(st.integers(), max_size=2))


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    method = draw(st.sampled_from(sorted(METHODS)))
    out: dict[str, Any] = {
        "jsonrpc": draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2.0])),
        "method": draw(st.one_of(st.just(method), st.just(method),
                                 st.sampled_from(SURROGATES), st.text(max_size=10),
                                 st.integers())),
        "params": draw(bad_params(method)),
    }
    if draw(st.booleans()):
        out["id"] = draw(ids)
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.one_of(st.text(max_size=5), st.sampled_from(SURROGATES)))] = 1
    return out


# --- properties -----------------------------------------------------------------------------


class TestWireFuzz:
    @FUZZ
    @given(line=st.binary(max_size=300))
    def test_random_bytes(self, sock_path: Path, line: bytes) -> None:
        """Any bytes (not UTF-8, not JSON, control characters) get valid error replies."""
        line = line.replace(b"\n", b" ")
        for reply in check_replies(exchange(sock_path, line)):
            assert "error" in reply and reply["id"] is None

    @FUZZ
    @given(value=values)
    def test_random_json(self, sock_path: Path, value: Any) -> None:
        """Any JSON value, with numbers out of range and lone surrogates anywhere."""
        check_replies(exchange(sock_path, to_line(value)))

    @FUZZ
    @given(request=envelopes())
    def test_bad_requests_for_every_method(self, sock_path: Path, request: Any) -> None:
        """Requests for every method with params of the wrong type (or otherwise broken):
        each request with an id gets exactly one error reply; none gets -32603."""
        replies = check_replies(exchange(sock_path, to_line(request)))
        assert len(replies) <= 1
        for reply in replies:
            assert "error" in reply, reply

    @FUZZ
    @given(batch=st.lists(st.one_of(envelopes(), values), min_size=0, max_size=8))
    def test_batches(self, sock_path: Path, batch: list[Any]) -> None:
        """Batches mixing broken requests and random values."""
        check_replies(exchange(sock_path, to_line(batch)))

    @FUZZ
    @given(depth=st.integers(1, 200_000), opener=st.sampled_from(["[", '{"a":']),
           inside=st.booleans())
    def test_deep_nesting(self, sock_path: Path, depth: int, opener: str,
                          inside: bool) -> None:
        """Nesting deeper than any parser's stack, alone or as a param's value."""
        closer = "]" if opener == "[" else "}"
        depth = min(depth, 1_000_000 // (len(opener) + 1))  # under the 1 MiB message cap
        nested = opener * depth + "1" + closer * depth
        text = nested if not inside else (
            '{"jsonrpc":"2.0","method":"history.search","params":{"text":' + nested
            + '},"id":1}')
        check_replies(exchange(sock_path, text.encode()))

    def test_the_daemon_still_answers(self, sock_path: Path) -> None:
        """After everything above (this module's daemon), a ping is answered."""
        still_answers(sock_path)
