"""JSON-RPC 2.0 over the real socket: every standard code, batches, notifications, app errors."""

from __future__ import annotations

import json

import pytest

from tests.support import Raw, check_error, check_result, req
from timbred.daemon.app import Daemon

pytestmark = pytest.mark.anyio


class TestSingleRequests:
    async def test_ping_answers_with_the_same_id(self, daemon: Daemon, raw: Raw) -> None:
        """A request is answered with its own id (string and number ids both)."""
        conn = await raw()
        for id_ in (7, "abc", 1.5):
            reply = await conn.call(req("daemon.ping", id_=id_))
            assert reply["id"] == id_
            assert check_result("daemon.ping", reply)["pong"] is True

    async def test_parse_error_has_id_null(self, daemon: Daemon, raw: Raw) -> None:
        """Invalid JSON gets -32700 with id null, and the connection stays usable."""
        conn = await raw()
        await conn.send(b'{"jsonrpc": "2.0", "method": "daemon.ping", "id": 1\n')
        reply = await conn.recv()
        check_error(reply, -32700, "parse_error")
        assert reply["id"] is None
        assert (await conn.call(req("daemon.ping")))["result"]["pong"] is True

    async def test_nan_is_not_json(self, daemon: Daemon, raw: Raw) -> None:
        """Python's json would accept NaN; the daemon refuses it as a parse error."""
        conn = await raw()
        await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","id":NaN}\n')
        check_error(await conn.recv(), -32700)

    @pytest.mark.parametrize("payload", [
        b'"just a string"',
        b'{"jsonrpc":"1.0","method":"daemon.ping","id":1}',
        b'{"method":"daemon.ping","id":1}',
        b'{"jsonrpc":"2.0","method":5,"id":1}',
        b'{"jsonrpc":"2.0","method":"daemon.ping","params":"x","id":1}',
        b'{"jsonrpc":"2.0","method":"daemon.ping","id":{"a":1}}',
        b'{"jsonrpc":"2.0","method":"daemon.ping","id":true}',
        b'{"jsonrpc":"2.0","method":"daemon.ping","id":1,"extra":1}',
    ])
    async def test_invalid_request(self, daemon: Daemon, raw: Raw, payload: bytes) -> None:
        """Each malformed request object gets -32600."""
        conn = await raw()
        await conn.send(payload + b"\n")
        check_error(await conn.recv(), -32600, "invalid_request")

    async def test_method_not_found(self, daemon: Daemon, raw: Raw) -> None:
        """An unknown method gets -32601 naming it."""
        conn = await raw()
        err = check_error(await conn.call(req("no.such")), -32601, "method_not_found")
        assert err["data"]["method"] == "no.such"

    async def test_invalid_params_names_the_param(self, daemon: Daemon, raw: Raw) -> None:
        """Wrong type, unknown name, out of range and missing params get -32602 naming it."""
        conn = await raw()
        cases = [
            (req("events.subscribe", {"types": "x"}), "types"),
            (req("events.subscribe", {"bogus": 1}), "bogus"),
            (req("events.subscribe", {"after_seq": -1}), "after_seq"),
            (req("events.unsubscribe", {}), "subscription"),
        ]
        for request, param in cases:
            err = check_error(await conn.call(request), -32602, "invalid_params")
            assert err["data"]["param"] == param, err

    async def test_positional_params(self, daemon: Daemon, raw: Raw) -> None:
        """By-position params map onto the documented names; too many is -32602."""
        conn = await raw()
        check_result("events.subscribe", await conn.call(req("events.subscribe", [["job.*"]])))
        check_error(await conn.call(req("daemon.ping", [1])), -32602)

    async def test_application_error_has_stable_code_and_data(self, daemon: Daemon,
                                                              raw: Raw) -> None:
        """An application error uses its kind's code in -32000..-32099 and actionable data."""
        conn = await raw()
        err = check_error(await conn.call(req("events.unsubscribe", {"subscription": "nope"})),
                          -32007, "subscription_not_found")
        assert err["data"]["subscription"] == "nope"


class TestNotifications:
    async def test_notification_is_never_answered(self, daemon: Daemon, raw: Raw) -> None:
        """Notifications, valid or for an unknown method, get no reply."""
        conn = await raw()
        await conn.send_json(req("daemon.ping", id_=None))
        await conn.send_json(req("no.such", id_=None))
        await conn.send_json(req("events.unsubscribe", {"subscription": "x"}, id_=None))
        # The next reply on the wire is the one for this request: nothing came before it.
        reply = await conn.call(req("daemon.ping", id_="after"))
        assert reply["id"] == "after"


class TestBatches:
    async def test_empty_batch_is_one_invalid_request(self, daemon: Daemon, raw: Raw) -> None:
        """`[]` gets a single -32600 (not an array)."""
        conn = await raw()
        reply = await conn.call([])
        assert isinstance(reply, dict)
        check_error(reply, -32600)

    async def test_batch_of_junk(self, daemon: Daemon, raw: Raw) -> None:
        """`[1,2,3]` gets three -32600 errors, as the specification's example says."""
        conn = await raw()
        reply = await conn.call([1, 2, 3])
        assert isinstance(reply, list) and len(reply) == 3
        for item in reply:
            check_error(item, -32600)
            assert item["id"] is None

    async def test_mixed_batch(self, daemon: Daemon, raw: Raw) -> None:
        """Valid, invalid, unknown and notification members each get what the spec says."""
        conn = await raw()
        reply = await conn.call([
            req("daemon.ping", id_=1),
            req("daemon.ping", id_=None),
            {"foo": "boo"},
            req("no.such", id_="5"),
            req("daemon.status", id_=9),
        ])
        by_id = {item["id"]: item for item in reply}
        assert len(reply) == 4
        check_result("daemon.ping", by_id[1])
        check_result("daemon.status", by_id[9])
        check_error(by_id["5"], -32601)
        check_error(by_id[None], -32600)

    async def test_batch_of_notifications_gets_nothing(self, daemon: Daemon, raw: Raw) -> None:
        """A batch of only notifications gets no reply at all."""
        conn = await raw()
        await conn.send_json([req("daemon.ping", id_=None), req("daemon.status", id_=None)])
        reply = await conn.call(req("daemon.ping", id_="next"))
        assert reply["id"] == "next"

    async def test_batch_over_the_cap(self, daemon: Daemon, raw: Raw) -> None:
        """More requests than the cap get one batch_too_large error with the limit."""
        conn = await raw()
        limit = daemon.dispatcher.max_batch
        reply = await conn.call([req("daemon.ping", id_=i) for i in range(limit + 1)])
        err = check_error(reply, -32003, "batch_too_large")
        assert err["data"]["limit"] == limit
        full = await conn.call([req("daemon.ping", id_=i) for i in range(limit)])
        assert sorted(r["id"] for r in full) == list(range(limit))


class TestEncoding:
    async def test_non_utf8_is_a_parse_error(self, daemon: Daemon, raw: Raw) -> None:
        """Bytes that are not UTF-8 get -32700 saying so; the connection survives."""
        conn = await raw()
        await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","id":"\xff\xfe"}\n')
        err = check_error(await conn.recv(), -32700)
        assert "UTF-8" in err["message"]
        assert (await conn.call(req("daemon.ping")))["id"] == 1

    async def test_binary_garbage_with_newlines(self, daemon: Daemon, raw: Raw) -> None:
        """Random binary lines each get a parse error; the daemon then still answers."""
        conn = await raw()
        await conn.send(bytes(range(1, 10)) + b"\n" + b"\x00\x01\x80\x81\n")
        check_error(await conn.recv(), -32700)
        check_error(await conn.recv(), -32700)
        assert (await conn.call(req("daemon.ping")))["result"]["pong"]

    async def test_unicode_round_trips(self, daemon: Daemon, raw: Raw) -> None:
        """Non-ASCII text in ids survives intact (the daemon writes UTF-8, not escapes)."""
        conn = await raw()
        await conn.send_json(req("daemon.ping", id_="café ♫"))
        line = await conn.recv_line()
        assert "café ♫".encode() in line
        assert json.loads(line)["id"] == "café ♫"
