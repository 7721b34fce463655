"""The hosted providers' one HTTP layer: bounded retries, size limits, errors translated here.

Every request a provider module makes goes through :func:`send` (its own API, on the client's
base URL) or :func:`download` (an output file, on any host). Both

* read the body as a stream and stop at a size limit (a :class:`ProviderError` naming it);
* retry what may be retried, with exponential backoff and full jitter, for at most
  :attr:`RetryPolicy.max_elapsed_s`: a 429 or a 5xx answer (honouring ``Retry-After``, in
  seconds or as an HTTP date), a connection that never opened (the request was never sent, so
  it is always safe), and a request that was sent but got no answer (a read timeout, a dropped
  connection) only when it is idempotent;
* follow redirects themselves, so that the key leaves only for the origin it belongs to: the
  ``Authorization`` and ``xi-api-key`` headers the client carries are deleted from any request
  whose origin (scheme, host, port) is not the base URL's;
* translate at the edge: 401 and 403 are :class:`KeyRejected` (unless the provider's error
  code says it is no key problem: a quota, a moderation refusal), any other 4xx a
  :class:`ProviderError` whose reason is the provider's own documented error body, and a
  network failure :class:`ProviderUnreachable` with a short reason ("connection refused",
  "timed out after 30 s").

Timeouts are the client's (the daemon sets them). No message or log record carries a header:
error text names the URL's path at most, and anything that could echo a key (a provider's
error body, an exception's text) is scrubbed of the client's key before it is used.

The error bodies understood (:func:`describe_error`):

* Replicate: RFC 7807 problem details, ``{"title", "detail", "status"}``
  (https://replicate.com/docs/reference/http);
* Stability AI: ``{"id", "name", "errors": [...]}``
  (https://platform.stability.ai/docs/api-reference);
* ElevenLabs: ``{"detail": str | {"status", "message", "data"} | [validation items]}``
  (https://elevenlabs.io/docs/error-messages).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import json as jsonlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import httpx

from timbred.errors import KeyRejected, ProviderError, ProviderUnreachable

__all__ = ["AUTH_HEADERS", "MAX_AUDIO_BYTES", "MAX_JSON_BYTES", "RetryPolicy", "check_audio",
           "describe_error", "download", "expect_audio", "expect_json", "patient",
           "reason_from_body", "retry_after_s", "send"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: The largest JSON document a provider's API may answer (a prediction with its logs).
MAX_JSON_BYTES = 4 * MiB
#: The largest audio file a provider may send (a 10-minute 48 kHz stereo float WAV is 220 MiB).
MAX_AUDIO_BYTES = 256 * MiB
#: The headers that carry a provider's key; sent only to the base URL's origin.
AUTH_HEADERS = ("authorization", "xi-api-key")
#: How many times a connection that would not open is tried again when not waiting for the
#: network (``providers.offline = "fail"``): enough for a blip, not for an outage.
CONNECT_RETRIES = 2
#: Redirects followed per request.
MAX_REDIRECTS = 5
#: How much of an error answer is read to explain it.
ERROR_BODY_BYTES = 64 * 1024
#: Provider error codes on a 401 or 403 that are no verdict on the key: ElevenLabs' quota and
#: abuse refusals, Stability's content moderation.
NOT_KEY_CODES = frozenset({"quota_exceeded", "detected_unusual_activity", "content_moderation",
                           "payment_required", "insufficient_credits"})
_REASON_CHARS = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a request is tried again (the daemon's ``providers.retry_s``
    and ``providers.offline``)."""

    max_elapsed_s: float = 120.0
    """No retry starts after this many seconds from the first attempt, and no wait (backoff
    or ``Retry-After``) is taken that would end past it."""
    base_delay_s: float = 0.5
    """The first backoff's ceiling; it doubles with each attempt (full jitter below it)."""
    max_delay_s: float = 30.0
    """The largest backoff ceiling."""
    wait_offline: bool = False
    """``False``: a connection that will not open fails with :class:`ProviderUnreachable` after
    :data:`CONNECT_RETRIES` retries. ``True``: keep trying it until :attr:`max_elapsed_s`."""

    def __post_init__(self) -> None:
        for name in ("max_elapsed_s", "base_delay_s", "max_delay_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"RetryPolicy.{name} must be a number >= 0, got {value!r}")

    def backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1-based): uniform in ``[0, ceiling]``, the
        ceiling doubling from :attr:`base_delay_s` up to :attr:`max_delay_s`."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** max(0, attempt - 1))
        return random.uniform(0.0, ceiling)


# --- the two entry points ---------------------------------------------------------------------


async def send(client: httpx.AsyncClient, method: str, url: str, *, provider: str,
               policy: RetryPolicy, idempotent: bool, max_bytes: int,
               json: Any = None, data: Mapping[str, Any] | None = None,
               files: Mapping[str, Any] | None = None,
               headers: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None,
               timeout: httpx.Timeout | None = None) -> httpx.Response:
    """One request to the provider's API (``url`` relative to the client's base URL, or
    absolute on its origin), retried as the module docstring says; the answer, read whole
    (at most ``max_bytes``), when its status is below 400. Raises :class:`ProviderError`,
    :class:`KeyRejected` or :class:`ProviderUnreachable`.

    ``timeout`` replaces the client's for this request (a synchronous generation, whose
    answer comes only when the music is made)."""
    home = _origin(client.base_url) if str(client.base_url) else None
    return await _request(client, method, url, home=home, provider=provider, policy=policy,
                          idempotent=idempotent, max_bytes=max_bytes, json=json, data=data,
                          files=files, headers=headers, params=params, timeout=timeout)


async def download(client: httpx.AsyncClient, url: str, *, provider: str, policy: RetryPolicy,
                   max_bytes: int, base_url: str) -> tuple[bytes, str]:
    """GET an output file at ``url`` (absolute, any host; a ``data:`` URL is decoded here):
    ``(body, content type)``. The client's key goes along only when ``url``'s origin is
    ``base_url``'s (and along a redirect only to that origin). Size-limited and retried like
    an idempotent :func:`send`."""
    if url.startswith("data:"):
        return _data_url(url, provider=provider, max_bytes=max_bytes)
    target = httpx.URL(url)
    if target.scheme not in ("http", "https") or not target.host:
        raise ProviderError(provider, f"the output it named is not an http(s) URL "
                                      f"({_safe_url(target)})")
    response = await _request(client, "GET", url, home=_origin(httpx.URL(base_url)),
                              provider=provider, policy=policy, idempotent=True,
                              max_bytes=max_bytes)
    return response.content, response.headers.get("content-type", "")


def patient(timeout: httpx.Timeout, read_s: float) -> httpx.Timeout:
    """``timeout`` with a read timeout of at least ``read_s`` (none stays none): for a
    synchronous generation, whose first byte comes when the music is made."""
    read = None if timeout.read is None else max(timeout.read, read_s)
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write,
                         pool=timeout.pool)


# --- reading answers ----------------------------------------------------------------------------


def expect_json(response: httpx.Response, provider: str) -> dict[str, Any]:
    """The JSON object ``response`` holds; :class:`ProviderError` naming what came instead (a
    content type that is not JSON, malformed JSON, JSON that is not an object)."""
    where = _where(response.request)
    media = _media_type(response.headers.get("content-type", ""))
    if media != "application/json" and not media.endswith("+json"):
        raise ProviderError(provider, f"{where} answered {media or 'no content type'} where "
                                      f"JSON was expected: {_hint(response.content, media)}",
                            status=response.status_code)
    try:
        doc = jsonlib.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        detail = (f"{exc.msg} at byte {exc.pos}" if isinstance(exc, jsonlib.JSONDecodeError)
                  else str(exc))
        raise ProviderError(provider, f"{where} answered malformed JSON ({detail}): "
                                      f"{_hint(response.content, 'text/plain')}",
                            status=response.status_code) from None
    if not isinstance(doc, dict):
        raise ProviderError(provider, f"{where} answered a JSON {type(doc).__name__} where an "
                                      f"object was expected", status=response.status_code)
    return doc


def expect_audio(response: httpx.Response, provider: str) -> tuple[bytes, str]:
    """``(body, content type)`` of an audio answer (``audio/*`` or
    ``application/octet-stream``); :class:`ProviderError` with the type that came and, when
    it is text, its first characters."""
    content_type = response.headers.get("content-type", "")
    check_audio(response.content, content_type, provider=provider,
                where=_where(response.request))
    return response.content, content_type


def check_audio(body: bytes, content_type: str, *, provider: str, where: str) -> None:
    """Refuse a body that is not (said to be) audio, or is empty (see :func:`expect_audio`)."""
    media = _media_type(content_type)
    if not (media.startswith("audio/") or media == "application/octet-stream"):
        raise ProviderError(provider, f"{where} answered {media or 'no content type'} where "
                                      f"audio was expected: {_hint(body, media)}")
    if not body:
        raise ProviderError(provider, f"{where} answered an empty body where audio was "
                                      "expected")


def describe_error(body: bytes, content_type: str = "") -> tuple[str, str | None]:
    """``(reason, code)`` from an error answer's body in any of the three providers'
    documented shapes (module docstring); ``code`` is the provider's machine-readable error
    name when it gives one (``invalid_api_key``, ``content_moderation``). Text that is not
    JSON comes back as its first characters."""
    try:
        doc = jsonlib.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if doc is None:
        text = " ".join(body.decode("utf-8", "replace").split())
        return _clip(text) if text else "", None
    reason, code = _describe(doc)
    return _clip(reason), code


def reason_from_body(body: bytes, content_type: str = "") -> str:
    """The reason alone of :func:`describe_error`."""
    return describe_error(body, content_type)[0]


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta seconds or an HTTP date; a date
    in the past is 0); ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        return max(0.0, when.timestamp() - current)
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None


# --- the request loop ----------------------------------------------------------------------------


async def _request(client: httpx.AsyncClient, method: str, url: str, *,
                   home: tuple[str, str, int] | None, provider: str, policy: RetryPolicy,
                   idempotent: bool, max_bytes: int, json: Any = None,
                   data: Mapping[str, Any] | None = None, files: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None,
                   params: Mapping[str, Any] | None = None,
                   timeout: httpx.Timeout | None = None) -> httpx.Response:
    secrets = _secrets(client)
    started = time.monotonic()
    deadline = started + policy.max_elapsed_s
    attempt = 0
    unopened = 0
    while True:
        attempt += 1
        request = client.build_request(
            method, url, json=json, data=data, files=files, headers=headers, params=params,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        request.read()  # a body that can be sent again (a retry, a 307)
        try:
            response = await _exchange(client, request, home=home, provider=provider,
                                       max_bytes=max_bytes, secrets=secrets)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise ProviderError(provider, f"{_where(request)} cannot be sent "
                                          f"({_scrub(str(exc), secrets)})") from None
        except httpx.TransportError as exc:
            never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                    | httpx.PoolTimeout)
            failed = exc.request if _has_request(exc) else request
            reason = _scrub(_transport_reason(exc, failed), secrets)
            host = failed.url.host
            unopened += never_sent
            give_up = (not never_sent and not idempotent) or (
                never_sent and not policy.wait_offline and unopened > CONNECT_RETRIES)
            delay = policy.backoff(attempt)
            if give_up or time.monotonic() + delay > deadline:
                raise ProviderUnreachable(provider, host, reason) from None
            log.info("%s: %s %s: %s; trying again in %.1f s", provider, method,
                     _safe_url(request.url), reason, delay)
            await anyio.sleep(delay)
            continue
        status = response.status_code
        if status < 400:
            return response
        if status != 429 and status < 500:
            raise _refusal(response, provider=provider, secrets=secrets)
        asked = retry_after_s(response.headers.get("retry-after"))
        left = deadline - time.monotonic()
        where = _where(response.request)
        reason = _scrub(describe_error(response.content)[0], secrets)
        said = f" ({reason})" if reason else ""
        if asked is not None and asked > left:
            raise ProviderError(
                provider, f"{where} answered {status}{said} and asked to wait "
                          f"{_seconds(asked)} (Retry-After), more than the {_seconds(left)} "
                          "left of providers.retry_s; try again later",
                status=status, retryable=True)
        delay = asked if asked is not None else policy.backoff(attempt)
        if delay > left:
            raise ProviderError(
                provider, f"{where} answered {status}{said}, {attempt} times in "
                          f"{_seconds(time.monotonic() - started)} (providers.retry_s is "
                          f"{_seconds(policy.max_elapsed_s)})", status=status, retryable=True)
        log.info("%s: %s %s answered %d; trying again in %.1f s", provider, method,
                 _safe_url(request.url), status, delay)
        await anyio.sleep(delay)


async def _exchange(client: httpx.AsyncClient, request: httpx.Request, *,
                    home: tuple[str, str, int] | None, provider: str, max_bytes: int,
                    secrets: tuple[str, ...]) -> httpx.Response:
    """One request and its redirects; the final answer read whole (within the limit)."""
    for _ in range(MAX_REDIRECTS + 1):
        if home is not None and _origin(request.url) != home:
            for name in AUTH_HEADERS:
                request.headers.pop(name, None)
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            location = response.headers.get("location")
            if response.is_redirect and location is not None:
                request = _redirected(client, request, response.status_code, location)
                continue
            ok = response.status_code < 400
            body = await _read(response, provider=provider,
                               limit=max_bytes if ok else ERROR_BODY_BYTES, strict=ok)
        finally:
            await response.aclose()
        return _rebuilt(response, body)
    raise ProviderError(provider, f"{_where(request)} redirected more than {MAX_REDIRECTS} "
                                  "times")


def _redirected(client: httpx.AsyncClient, request: httpx.Request, status: int,
                location: str) -> httpx.Request:
    """The next request of a redirect, built afresh from the client (its key goes along
    again, and is then deleted if the new origin is not the base URL's)."""
    url = request.url.join(location)
    method = request.method
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    for name in ("host", "cookie", *AUTH_HEADERS):
        headers.pop(name, None)
    content: bytes | None = None
    if method == request.method and method not in ("GET", "HEAD"):
        content = request.content
    else:
        for name in ("content-length", "content-type", "transfer-encoding"):
            headers.pop(name, None)
    return client.build_request(method, url, headers=headers, content=content,
                                extensions=dict(request.extensions))


async def _read(response: httpx.Response, *, provider: str, limit: int, strict: bool) -> bytes:
    """The body, decoded; past ``limit`` a :class:`ProviderError` (``strict``) or the first
    ``limit`` bytes (an error answer, read only to explain it)."""
    declared = response.headers.get("content-length", "")
    if strict and declared.isdigit() and int(declared) > limit:
        raise _too_large(response, provider, limit, int(declared))
    buffer = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            buffer += chunk
            if len(buffer) > limit:
                if strict:
                    raise _too_large(response, provider, limit, None)
                del buffer[limit:]
                break
    except httpx.DecodingError:
        raise ProviderError(provider, f"{_where(response.request)} answered a body that does "
                                      "not decode as its Content-Encoding says") from None
    return bytes(buffer)


def _too_large(response: httpx.Response, provider: str, limit: int,
               size: int | None) -> ProviderError:
    said = f" ({size} bytes)" if size is not None else ""
    return ProviderError(provider, f"{_where(response.request)} answered a body over the "
                                   f"{_size(limit)} limit{said}", status=response.status_code)


def _rebuilt(response: httpx.Response, body: bytes) -> httpx.Response:
    """A complete response with the body already read (and decoded: its Content-Encoding is
    dropped with it)."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=response.request, extensions=response.extensions)


def _refusal(response: httpx.Response, *, provider: str,
             secrets: tuple[str, ...]) -> KeyRejected | ProviderError:
    """A 4xx answer (but 429) as the error it means."""
    status = response.status_code
    reason, code = describe_error(response.content,
                                  response.headers.get("content-type", ""))
    reason = _scrub(reason, secrets) or response.reason_phrase or f"HTTP {status}"
    keyed = any(name in response.request.headers for name in AUTH_HEADERS)
    if status in (401, 403) and keyed and code not in NOT_KEY_CODES:
        return KeyRejected(provider, status, reason)
    if status in (401, 403) and not keyed:
        reason += " (no key was sent there: the link may have expired)"
    return ProviderError(provider, f"{_where(response.request)} answered {status}: {reason}",
                         status=status, retryable=status in (408, 409, 425))


# --- error bodies ---------------------------------------------------------------------------------


def _describe(doc: Any) -> tuple[str, str | None]:
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, list):
        return "; ".join(_describe(item)[0] for item in doc[:10]), None
    if not isinstance(doc, dict):
        return jsonlib.dumps(doc), None
    if "title" in doc:  # RFC 7807 problem details (Replicate)
        parts = [str(doc[k]) for k in ("title", "detail") if doc.get(k)]
        fields = doc.get("invalid_fields")
        if isinstance(fields, list):
            parts += [f"{f.get('field', '?')}: {f.get('description', '')}".strip()
                      for f in fields[:10] if isinstance(f, dict)]
        return ": ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:]), None
    if "detail" in doc:  # ElevenLabs (FastAPI)
        return _elevenlabs_detail(doc["detail"])
    errors = doc.get("errors")
    if isinstance(errors, list):  # Stability AI
        name = doc.get("name")
        text = "; ".join(str(e) for e in errors[:10])
        code = name if isinstance(name, str) else None
        return (f"{code}: {text}" if code and text else code or text), code
    for key in ("message", "error", "error_message"):
        value = doc.get(key)
        if isinstance(value, str) and value:
            code = doc.get("code") or doc.get("status")
            return value, code if isinstance(code, str) else None
        if isinstance(value, dict):
            return _describe(value)
    return jsonlib.dumps(doc, separators=(",", ":")), None


def _elevenlabs_detail(detail: Any) -> tuple[str, str | None]:
    if isinstance(detail, str):
        return detail, None
    if isinstance(detail, dict):
        code = detail.get("status") if isinstance(detail.get("status"), str) else None
        message = str(detail.get("message") or "")
        text = f"{code}: {message}" if code and message else code or message
        data = detail.get("data")
        if isinstance(data, dict):
            suggestion = data.get("prompt_suggestion") or data.get("composition_plan_suggestion")
            if suggestion:
                text += f" (it suggests: {_clip(str(suggestion), 200)})"
        return text, code
    if isinstance(detail, list):
        items = []
        for item in detail[:10]:
            if not isinstance(item, dict):
                items.append(str(item))
                continue
            loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            message = str(item.get("msg", ""))
            items.append(f"{loc}: {message}" if loc else message)
        return "; ".join(items), None
    return jsonlib.dumps(detail), None


# --- small helpers -------------------------------------------------------------------------------


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    port = url.port if url.port is not None else {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, url.host.lower(), port


def _secrets(client: httpx.AsyncClient) -> tuple[str, ...]:
    """The key as the client's headers carry it (with and without its scheme word)."""
    found: list[str] = []
    for name in AUTH_HEADERS:
        value = client.headers.get(name)
        if value:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "token"):
                found.append(token)
    return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[key]")
    return text


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 (raises RuntimeError when unset)
    except RuntimeError:
        return False
    return True


def _transport_reason(exc: httpx.TransportError, request: httpx.Request) -> str:
    limits = request.extensions.get("timeout") or {}
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out after {_seconds(limits.get('connect'))} connecting"
    if isinstance(exc, httpx.ReadTimeout):
        return f"timed out after {_seconds(limits.get('read'))} waiting for an answer"
    if isinstance(exc, httpx.WriteTimeout):
        return f"timed out after {_seconds(limits.get('write'))} sending the request"
    if isinstance(exc, httpx.PoolTimeout):
        return f"timed out after {_seconds(limits.get('pool'))} waiting for a free connection"
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        return _connect_reason(exc, text)
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed without a complete answer"
    if isinstance(exc, httpx.ReadError):
        return "the connection broke while reading the answer"
    if isinstance(exc, httpx.WriteError):
        return "the connection broke while sending the request"
    return _clip(text, 160) or type(exc).__name__


def _connect_reason(exc: BaseException, text: str) -> str:
    """Why a connection did not open, from the OS error under httpx's (anyio wraps the last
    attempt's error in "All connection attempts failed")."""
    causes: list[BaseException] = []
    found: BaseException | None = exc
    while found is not None and len(causes) < 10:
        causes.append(found)
        found = found.__cause__ or found.__context__
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake failed ({_clip(str(cause), 160)})"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve (DNS)"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH,
                                                           errno.EHOSTUNREACH):
            return "no route to the host (network unreachable)"
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname",
                                  "name resolution", "getaddrinfo")):
        return "the host name does not resolve (DNS)"
    return f"cannot connect ({_clip(text, 160) or type(exc).__name__})"


def _data_url(url: str, *, provider: str, max_bytes: int) -> tuple[bytes, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ProviderError(provider, "the output it named is a malformed data: URL")
    media, _, flags = header.partition(";")
    if len(payload) * 3 // 4 > max_bytes:
        raise ProviderError(provider, f"the output data: URL holds more than the "
                                      f"{_size(max_bytes)} limit")
    try:
        body = (base64.b64decode(payload, validate=True) if flags.endswith("base64")
                else unquote_to_bytes(payload))
    except (binascii.Error, ValueError):
        raise ProviderError(provider, "the output data: URL does not decode") from None
    return body, media or "text/plain"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _hint(body: bytes, media: str) -> str:
    """What a body starts with: its first characters when it is text, else its size and
    first bytes."""
    texty = (media.startswith("text/") or media.endswith(("json", "xml", "javascript"))
             or not media)
    if texty:
        try:
            text = " ".join(body[:400].decode("utf-8").split())
        except UnicodeDecodeError:
            text = ""
        if text:
            return repr(_clip(text, 120))
    return f"{len(body)} bytes starting {body[:16]!r}" if body else "an empty body"


def _where(request: httpx.Request) -> str:
    return f"{request.method} {_safe_url(request.url)}"


def _safe_url(url: httpx.URL) -> str:
    """Host and path: never the query (a signed link's signature) nor user info."""
    return f"{url.host}{url.path}" if url.host else url.path


def _clip(text: str, limit: int = _REASON_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _seconds(value: float | None) -> str:
    if value is None:
        return "no limit"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _size(limit: int) -> str:
    return f"{limit / MiB:g} MiB" if limit >= MiB else f"{limit} bytes"
