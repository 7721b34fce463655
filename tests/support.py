"""Test helpers: a raw line-oriented socket client, schema validation of real traffic, and
an independent loudness measurement of written files."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import jsonschema
import pyloudnorm
import soundfile as sf

from timbred.protocol.schema import openrpc, rooted


def write_toml(directory: Path, name: str, text: str) -> Path:
    """``directory/name.toml`` holding ``text`` (a user's preset or mastering chain)."""
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


class RawConnection:
    """Bytes in, JSON out, over a real Unix socket; no client library in the way."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        return cls(await anyio.connect_unix(path))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_json(self, obj: Any) -> None:
        await self.stream.send(json.dumps(obj).encode() + b"\n")

    async def recv_line(self, timeout: float = 5.0) -> bytes:
        with anyio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.stream.receive(65536)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def recv(self, timeout: float = 5.0) -> Any:
        return json.loads(await self.recv_line(timeout))

    async def call(self, obj: Any, timeout: float = 5.0) -> Any:
        await self.send_json(obj)
        return await self.recv(timeout)

    async def reply(self, obj: Any, timeout: float = 5.0) -> Any:
        """Send ``obj`` and return the response to it, passing over event notifications
        that a subscribed connection may receive first (any event published meanwhile, such
        as the watch folder attaching just after start-up, is delivered in order)."""
        await self.send_json(obj)
        with anyio.fail_after(timeout):
            while True:
                message = await self.recv(timeout)
                if not (isinstance(message, dict) and message.get("method") == "event"):
                    return message

    async def recv_until_closed(self, timeout: float = 5.0) -> list[Any]:
        """Every remaining message until the daemon closes the connection."""
        out: list[Any] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    self._buffer += await self.stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        for line in self._buffer.split(b"\n"):
            if line.strip():
                out.append(json.loads(line))
        self._buffer = b""
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


Raw = Callable[[], Awaitable[RawConnection]]


def req(method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    if id_ is not None:
        out["id"] = id_
    return out


def _method(name: str) -> dict[str, Any]:
    for m in openrpc()["methods"]:
        if m["name"] == name:
            return dict(m)
    raise KeyError(name)


def check_result(method: str, reply: dict[str, Any]) -> Any:
    """Assert ``reply`` is a success and its result matches the method's result schema."""
    assert "error" not in reply, reply
    assert reply["jsonrpc"] == "2.0"
    jsonschema.validate(reply["result"], rooted(_method(method)["result"]["schema"]))
    return reply["result"]


def check_error(reply: dict[str, Any], code: int, kind: str | None = None) -> dict[str, Any]:
    """Assert ``reply`` is an error with ``code`` (and data.kind), shaped as the spec says."""
    assert set(reply) == {"jsonrpc", "error", "id"}, reply
    err = reply["error"]
    assert err["code"] == code, reply
    assert isinstance(err["message"], str) and err["message"]
    if kind is not None:
        assert err["data"]["kind"] == kind, reply
    return dict(err)


def check_event(params: dict[str, Any]) -> None:
    """Validate an ``event`` notification's params: the envelope and the type's data."""
    doc = openrpc()
    jsonschema.validate(params, rooted(doc["x-notifications"]["event"]["params"]))
    jsonschema.validate(params["data"], rooted(doc["x-events"][params["type"]]["data"]))


def file_lufs(path: str | Path) -> float:
    """The integrated loudness of an audio file as written: decoded by soundfile, measured
    by pyloudnorm (not by the meter in timbred.takes.loudness that normalised it)."""
    audio, rate = sf.read(path, dtype="float64", always_2d=True)
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio))
