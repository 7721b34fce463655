"""JSON-RPC 2.0 for the daemon: envelopes in, replies out, no sockets.

jsonrpcserver does the dispatching (calling methods with a context, gathering a batch
concurrently, dropping replies to notifications). Its own request validation treats a batch as
one unit (one bad element spoils the whole batch) and it has no batch cap, so this module
validates each envelope itself first, exactly as the specification says:

- not UTF-8, not JSON, or a number no double can hold (``1e400``): one -32700 reply with id
  null;
- an empty array: one -32600 reply; more elements than the cap: one :class:`BatchTooLarge`;
- each element that is not a valid request object: its own -32600 reply in the batch;
- an id or method holding a lone UTF-16 surrogate (``"\\ud800"``, which JSON can spell but
  Unicode cannot): -32600; unknown methods: -32601; params that do not match
  ``schemas/openrpc.json`` or hold a lone surrogate: -32602 naming the parameter; a
  handler's :class:`TimbreError`: its stable code and ``data``; anything else: -32603 (logged
  with its traceback);
- notifications are never answered, and a batch of only notifications gets no reply at all.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from jsonrpcserver import Error, Success
from jsonrpcserver.async_main import dispatch_to_serializable

from timbred.errors import (
    BatchTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    TimbreError,
)
from timbred.protocol.framing import has_surrogate
from timbred.protocol.schema import ParamsSpec, params_specs

log = logging.getLogger(__name__)

Ctx = TypeVar("Ctx")
Handler = Callable[[Ctx, dict[str, Any]], Awaitable[Any]]

DEFAULT_MAX_BATCH = 64
_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


def error_object(exc: TimbreError, id_: Any = None) -> dict[str, Any]:
    """The reply for ``exc``: the one place the exception tree becomes JSON-RPC."""
    return {
        "jsonrpc": "2.0",
        "error": {"code": exc.code, "message": exc.message, "data": exc.data},
        "id": id_,
    }


def notification(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A server-to-client notification (no id)."""
    return {"jsonrpc": "2.0", "method": method, "params": dict(params)}


def printable(text: str) -> str:
    """``text`` made safe to echo back: lone surrogates written as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dumps(obj: Any) -> str:
    """Serialise compactly; the result always encodes as UTF-8.

    Non-ASCII stays readable (``ensure_ascii=False``) unless the object holds a lone surrogate
    (input is checked for them at the edge, but a file name read with ``surrogateescape`` can
    still carry one): then the text is ASCII with ``\\udXXX`` escapes, which is valid JSON and
    valid UTF-8, and a peer decodes exactly the string we hold. NaN and infinities raise
    ValueError (they are not JSON); :meth:`Dispatcher.handle` turns that into a -32603 reply.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if has_surrogate(text):
        text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # json.loads turns 1e400 into inf, which no reply can carry (allow_nan=False) and no
    # handler expects: refuse it while parsing, so nothing downstream ever sees one.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range (larger than any double)")
    return value


def parse(line: bytes) -> Any:
    """Decode one framed message; raise :class:`ParseError` saying what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"message is not valid UTF-8 (byte {exc.start}: {exc.reason})", position=exc.start
        ) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ParseError(f"message is not valid JSON: {exc}") from exc


def _valid_id(obj: Mapping[str, Any]) -> Any:
    id_ = obj.get("id")
    if isinstance(id_, bool) or not isinstance(id_, str | int | float | None):
        return None
    if isinstance(id_, str) and has_surrogate(id_):
        return None  # it could not be echoed back as UTF-8
    return id_


def check_request(obj: Any, methods: Mapping[str, Any]) -> TimbreError | None:
    """Why ``obj`` is not a request we can dispatch, or None when it is."""
    if not isinstance(obj, dict):
        return InvalidRequest(f"a request must be an object, got {type(obj).__name__}")
    if obj.get("jsonrpc") != "2.0":
        return InvalidRequest('"jsonrpc" must be exactly "2.0"')
    extra = sorted(set(obj) - _MEMBERS)
    if extra:
        name = printable(extra[0])
        return InvalidRequest(f"unexpected member {name!r} in request", member=name)
    method = obj.get("method")
    if not isinstance(method, str):
        return InvalidRequest('"method" must be a string')
    if has_surrogate(method):
        return InvalidRequest('"method" is not valid Unicode (it holds a lone surrogate)')
    if "params" in obj and not isinstance(obj["params"], list | dict):
        return InvalidRequest('"params" must be an array or an object')
    if "id" in obj and _valid_id(obj) is None and obj["id"] is not None:
        if isinstance(obj["id"], str):
            return InvalidRequest('"id" is not valid Unicode (it holds a lone surrogate)')
        return InvalidRequest('"id" must be a string, a number or null')
    if method not in methods:
        return MethodNotFound(f"no method {method!r}", method=method)
    return None


def _encode_reply(reply: dict[str, Any]) -> str:
    """``dumps(reply)``, or a -32603 in its place when a result cannot be JSON (a NaN).

    The last guard of the wire: input is checked so this never happens, and if a handler
    still returns something unencodable, that one reply says so instead of the connection
    (and with it the daemon) dying on it.
    """
    try:
        return dumps(reply)
    except (ValueError, TypeError) as exc:
        log.exception("a reply could not be encoded as JSON")
        id_ = reply.get("id")
        if not isinstance(id_, str | int | None) or isinstance(id_, bool):
            id_ = None
        return dumps(error_object(InternalError(f"the reply could not be encoded: {exc}"), id_))


class Dispatcher(Generic[Ctx]):
    """Turns one framed message into its reply (or None), calling ``handlers`` with a context.

    ``handlers`` maps method names to ``async handler(context, params)``; params arrive by
    name, already validated against the method's schema.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler[Ctx]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        specs: Mapping[str, ParamsSpec] | None = None,
    ) -> None:
        specs = params_specs() if specs is None else specs
        missing = sorted(set(handlers) - set(specs))
        if missing:
            raise ValueError(f"handlers without a schema in openrpc.json: {missing}")
        self.max_batch = max_batch
        self._handlers = dict(handlers)
        self._methods = {
            name: self._wrap(handler, specs[name]) for name, handler in handlers.items()
        }

    @property
    def method_names(self) -> frozenset[str]:
        """The registered method names."""
        return frozenset(self._handlers)

    @staticmethod
    def _wrap(handler: Handler[Ctx], spec: ParamsSpec) -> Callable[..., Awaitable[Any]]:
        async def method(context: Ctx, /, *args: Any, **kwargs: Any) -> Any:
            try:
                params = spec.normalise(list(args) if args else kwargs)
                return Success(await handler(context, params))
            except TimbreError as exc:
                return Error(exc.code, exc.message, exc.data)
            except Exception as exc:
                log.exception("%s failed", spec.method)
                err = InternalError(
                    f"{spec.method} failed unexpectedly: {type(exc).__name__}: {exc}",
                    method=spec.method,
                )
                return Error(err.code, err.message, err.data)

        return method

    async def handle(self, line: bytes, context: Ctx) -> str | None:
        """The serialised reply to ``line``, or None when nothing must be sent."""
        try:
            payload = parse(line)
        except ParseError as exc:
            return dumps(error_object(exc))
        reply = await self.dispatch(payload, context)
        if reply is None:
            return None
        if isinstance(reply, list):
            return "[" + ",".join(_encode_reply(r) for r in reply) + "]"
        return _encode_reply(reply)

    async def dispatch(self, payload: Any, context: Ctx) -> Any:
        """Dispatch an already parsed message; return the reply object or None."""
        is_batch = isinstance(payload, list)
        elements: list[Any] = payload if is_batch else [payload]
        if is_batch and not elements:
            return error_object(InvalidRequest("a batch must not be empty"))
        if len(elements) > self.max_batch:
            return error_object(BatchTooLarge(len(elements), self.max_batch))

        replies: list[dict[str, Any]] = []
        valid: list[dict[str, Any]] = []
        for obj in elements:
            problem = check_request(obj, self._methods)
            if problem is None:
                valid.append(obj)
            elif isinstance(problem, MethodNotFound) and "id" not in obj:
                continue  # a notification of an unknown method: never answered
            else:
                replies.append(error_object(problem, _valid_id(obj) if isinstance(obj, dict)
                                            else None))
        if valid:
            batch = valid if is_batch else valid[0]
            served = await dispatch_to_serializable(
                "",
                self._methods,
                context=context,
                deserializer=lambda _text: batch,
                validator=lambda checked: checked,
            )
            if isinstance(served, list):
                replies.extend(served)
            elif served is not None:
                replies.append(served)
        if not replies:
            return None
        return replies if is_batch else replies[0]
