"""One line never takes the daemon down: numbers out of range, lone surrogates, long names.

Each case is sent over the real socket to an in-process daemon; before the fixes each of them
either killed ``timbred`` (an exception unwinding from the connection to ``serve``) or got a
-32603 for what is a client's mistake.
"""

from __future__ import annotations

import json

import pytest

from tests.support import Raw, check_error, req
from timbred.daemon.app import Daemon
from timbred.protocol.jsonrpc import dumps

pytestmark = pytest.mark.anyio


async def _still_answers(raw: Raw) -> None:
    conn = await raw()
    assert (await conn.call(req("daemon.ping")))["result"]["pong"] is True


class TestNumbersOutOfRange:
    @pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1e1000", b"1.5e309"])
    async def test_an_infinite_id_is_a_parse_error(self, daemon: Daemon, raw: Raw,
                                                   number: bytes) -> None:
        """An id no double can hold gets -32700 (id null), and the daemon keeps answering."""
        conn = await raw()
        await conn.send(b'{"jsonrpc":"2.0","method":"daemon.ping","id":' + number + b"}\n")
        reply = await conn.recv()
        err = check_error(reply, -32700, "parse_error")
        assert reply["id"] is None
        assert "out of range" in err["message"]
        assert (await conn.call(req("daemon.ping")))["result"]["pong"] is True

    async def test_inside_a_batch(self, daemon: Daemon, raw: Raw) -> None:
        """The same inside a batch: one -32700 for the message, the daemon lives."""
        conn = await raw()
        await conn.send(b'[{"jsonrpc":"2.0","method":"daemon.ping","id":1},'
                        b'{"jsonrpc":"2.0","method":"daemon.ping","id":1e400}]\n')
        check_error(await conn.recv(), -32700, "parse_error")
        await _still_answers(raw)

    async def test_in_params(self, daemon: Daemon, raw: Raw) -> None:
        """An out-of-range number in params is refused the same way, before any handler."""
        conn = await raw()
        await conn.send(b'{"jsonrpc":"2.0","method":"generate.submit",'
                        b'"params":{"prompt":"x","duration":1e400},"id":2}\n')
        check_error(await conn.recv(), -32700, "parse_error")
        await _still_answers(raw)

    def test_an_unencodable_reply_becomes_internal_error(self) -> None:
        """The last guard: a reply holding NaN turns into a -32603 naming its id, not a crash."""
        from timbred.protocol.jsonrpc import _encode_reply

        out = json.loads(_encode_reply({"jsonrpc": "2.0", "result": float("nan"), "id": 3}))
        assert out["id"] == 3 and out["error"]["code"] == -32603


SURROGATE = '"\\ud800"'


class TestLoneSurrogates:
    async def test_id(self, daemon: Daemon, raw: Raw) -> None:
        """An id that is not Unicode gets -32600 with id null (it cannot be echoed)."""
        conn = await raw()
        await conn.send(('{"jsonrpc":"2.0","method":"daemon.ping","id":' + SURROGATE
                         + "}\n").encode())
        reply = await conn.recv()
        check_error(reply, -32600, "invalid_request")
        assert reply["id"] is None
        await _still_answers(raw)

    async def test_method(self, daemon: Daemon, raw: Raw) -> None:
        """A method name that is not Unicode gets -32600."""
        conn = await raw()
        await conn.send(('{"jsonrpc":"2.0","method":' + SURROGATE + ',"id":1}\n').encode())
        check_error(await conn.recv(), -32600, "invalid_request")
        await _still_answers(raw)

    async def test_member_name(self, daemon: Daemon, raw: Raw) -> None:
        """An unknown member whose name is not Unicode is named back with an escape."""
        conn = await raw()
        await conn.send(('{"jsonrpc":"2.0","method":"daemon.ping","id":1,' + SURROGATE
                         + ":1}\n").encode())
        err = check_error(await conn.recv(), -32600, "invalid_request")
        assert err["data"]["member"] == "\\ud800"
        await _still_answers(raw)

    async def test_param_name(self, daemon: Daemon, raw: Raw) -> None:
        """A param name that is not Unicode gets -32602."""
        conn = await raw()
        await conn.send(('{"jsonrpc":"2.0","method":"daemon.ping","params":{' + SURROGATE
                         + ':1},"id":1}\n').encode())
        check_error(await conn.recv(), -32602, "invalid_params")
        await _still_answers(raw)

    @pytest.mark.parametrize(("method", "param"), [
        ("presets.show", "name"),
        ("models.load", "model"),
        ("events.unsubscribe", "subscription"),
        ("history.search", "text"),
        ("generate.submit", "prompt"),
        ("takes.show", "take"),
        ("watch.add", "path"),
    ])
    async def test_string_params(self, daemon: Daemon, raw: Raw, method: str,
                                 param: str) -> None:
        """A string param that is not Unicode gets -32602 naming it, in every method."""
        conn = await raw()
        await conn.send(('{"jsonrpc":"2.0","method":"' + method + '","params":{"' + param
                         + '":' + SURROGATE + '},"id":5}\n').encode())
        reply = await conn.recv()
        err = check_error(reply, -32602, "invalid_params")
        assert err["data"]["param"] == param
        assert reply["id"] == 5
        await _still_answers(raw)

    def test_dumps_always_encodes(self) -> None:
        """A surrogate that reaches a reply anyway (a surrogateescape'd file name) is escaped,
        so the text is valid UTF-8 and decodes back to the same string."""
        name = b"take-\xff.wav".decode("utf-8", "surrogateescape")
        text = dumps({"path": name, "title": "café"})
        assert json.loads(text.encode("utf-8"))["path"] == name


class TestLongModelNames:
    @pytest.mark.parametrize("method", [
        "generate.submit", "models.load", "models.pull", "models.remove", "models.unload"])
    @pytest.mark.parametrize("name", ["a" * 300, "org/" + "b" * 300, "/tmp/" + "c" * 256])
    async def test_refused_naming_the_param(self, daemon: Daemon, raw: Raw, method: str,
                                            name: str) -> None:
        """A model name with a part over 255 bytes is -32602 naming ``model``, never -32603
        "File name too long"."""
        params = {"model": name}
        if method == "generate.submit":
            params["prompt"] = "drums"
        conn = await raw()
        err = check_error(await conn.call(req(method, params)), -32602, "invalid_params")
        assert err["data"]["param"] == "model"
        assert "255" in err["message"]


class TestImpossibleValuesAreRefusedAtSubmit:
    @pytest.mark.parametrize(("params", "param"), [
        ({"prompt": "drums", "duration": 1e-9}, "duration"),
        ({"prompt": "drums", "duration": 0.05}, "duration"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "\t\n \u3000"}, "prompt"),
    ])
    async def test_nothing_is_queued(self, gen: Daemon, params: dict[str, object],
                                     param: str) -> None:
        """A duration too short for one frame and a prompt of only whitespace are -32602
        naming the param, and no job exists afterwards (they were queued, then failed)."""
        from timbrectl.client import connect
        from timbred.errors import InvalidParams

        async with connect(gen.socket_path) as client:
            with pytest.raises(InvalidParams) as info:
                await client.call("generate.submit", params)
            assert info.value.data["param"] == param
            listed = await client.call("jobs.list", {})
        assert listed["jobs"] == []

    async def test_a_preset_cannot_smuggle_them_in(self, gen: Daemon) -> None:
        """The daemon's own check (not only the schema) holds for every source of params."""
        from timbred.errors import InvalidParams

        with pytest.raises(InvalidParams) as info:
            await gen.generation.submit({"prompt": " ", "duration": 1e-9})
        assert info.value.data["param"] in {"prompt", "duration"}
        assert gen.generation.store.queue_depth() == 0
