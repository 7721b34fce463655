"""The sans-IO core: framing and the JSON-RPC dispatcher, fed bytes directly (no socket)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from timbred.errors import InvalidParams, MessageTooLarge
from timbred.protocol.framing import LineDecoder
from timbred.protocol.jsonrpc import Dispatcher
from timbred.protocol.schema import params_specs

pytestmark = pytest.mark.anyio


class TestLineDecoder:
    def test_splits_lines_across_chunks(self) -> None:
        """Messages split across feeds are reassembled; CRLF and blank lines are tolerated."""
        dec = LineDecoder(100)
        assert dec.feed(b'{"a"') == []
        assert dec.pending == 4
        assert dec.feed(b":1}\r\n\n  \n{}\n{") == [b'{"a":1}', b"{}"]
        assert dec.pending == 1

    def test_overflow_keeps_complete_messages(self) -> None:
        """Complete messages before an oversized one are returned; then overflowed is set."""
        dec = LineDecoder(10)
        assert dec.feed(b"12345\n" + b"x" * 11) == [b"12345"]
        assert dec.overflowed
        assert isinstance(dec.error(), MessageTooLarge)
        assert dec.feed(b"\n") == []  # nothing more once overflowed

    def test_limit_counts_across_chunks(self) -> None:
        """The limit applies to the whole message, not to each chunk."""
        dec = LineDecoder(10)
        for _ in range(10):
            dec.feed(b"x")
        assert not dec.overflowed
        dec.feed(b"x")
        assert dec.overflowed

    def test_terminated_line_over_the_limit(self) -> None:
        """A line over the limit is refused even when its newline arrives in the same chunk."""
        dec = LineDecoder(10)
        assert dec.feed(b"x" * 11 + b"\n") == []
        assert dec.overflowed


async def _echo(ctx: object, params: dict[str, Any]) -> Any:
    return {"pong": True, "time": 0.0}


async def _broken(ctx: object, params: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


async def _refuses(ctx: object, params: dict[str, Any]) -> Any:
    raise InvalidParams("no thanks", param="types")


class TestDispatcher:
    async def test_internal_error_is_32603_and_logged(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """An unexpected exception in a handler becomes -32603 naming it, with a logged trace."""
        d: Dispatcher[None] = Dispatcher({"daemon.ping": _broken})
        reply = json.loads(await d.handle(b'{"jsonrpc":"2.0","method":"daemon.ping","id":1}',
                                          None) or "")
        assert reply["error"]["code"] == -32603
        assert "RuntimeError: boom" in reply["error"]["message"]
        assert any(r.exc_info for r in caplog.records)

    async def test_handler_error_keeps_its_code_and_data(self) -> None:
        """A TimbreError raised by a handler is sent with its own code and data."""
        d: Dispatcher[None] = Dispatcher({"events.subscribe": _refuses})
        reply = json.loads(await d.handle(
            b'{"jsonrpc":"2.0","method":"events.subscribe","id":1}', None) or "")
        assert reply["error"] == {"code": -32602, "message": "no thanks",
                                  "data": {"kind": "invalid_params", "param": "types"}}

    async def test_handlers_need_a_schema(self) -> None:
        """Registering a method that schemas/openrpc.json does not describe is refused."""
        with pytest.raises(ValueError, match="without a schema"):
            Dispatcher({"undocumented.method": _echo})

    async def test_batch_members_run_concurrently(self) -> None:
        """A batch's members are dispatched together (jsonrpcserver gathers them)."""
        import anyio

        started: list[int] = []
        gate = anyio.Event()

        async def slow(ctx: object, params: dict[str, Any]) -> Any:
            started.append(1)
            if len(started) == 2:
                gate.set()
            with anyio.fail_after(2):
                await gate.wait()
            return {"pong": True, "time": 0.0}

        d: Dispatcher[None] = Dispatcher({"daemon.ping": slow})
        batch = [{"jsonrpc": "2.0", "method": "daemon.ping", "id": i} for i in range(2)]
        reply = json.loads(await d.handle(json.dumps(batch).encode(), None) or "")
        assert sorted(r["id"] for r in reply) == [0, 1]

    def test_every_method_has_a_params_spec(self) -> None:
        """Each OpenRPC method yields a params validator; names keep their documented order."""
        specs = params_specs()
        assert specs["events.subscribe"].names == ("types", "after_seq", "epoch")
