"""Loopback fakes of the hosted providers' HTTP APIs: a test fixture, never offered to users.

Each fake is a real HTTP server (:class:`http.server.ThreadingHTTPServer` in a daemon thread,
bound to 127.0.0.1 on a free port) that answers as the provider documents: status codes,
headers, JSON and error bodies, the key check (a missing or wrong key gets the documented 401
body), and real audio (a short sine written by soundfile: WAV, or MP3 where the provider sends
MP3) at the provider's sample rate. Every request is recorded (:attr:`FakeServer.requests`)
for assertions, and answers can be scripted ahead of the normal ones (:meth:`FakeServer.script`):
429s with ``Retry-After``, 5xx, malformed JSON, a wrong content type, an oversized or chunked
body, audio that does not decode, a dropped connection, a slow answer.

* :class:`FakeReplicate`: ``POST /v1/predictions``, ``GET /v1/predictions/{id}``,
  ``POST /v1/predictions/{id}/cancel``, ``GET /v1/models/{owner}/{name}``; RFC 7807 errors;
  a prediction goes ``starting`` -> ``processing`` -> ``succeeded`` after a number of polls
  (or stays ``processing`` until cancelled), and its output file is served by a second server
  (:attr:`FakeReplicate.files`, another origin, as replicate.delivery is) so tests can check
  the key is not sent there. https://replicate.com/docs/reference/http,
  https://replicate.com/docs/topics/predictions/lifecycle
* :class:`FakeStability`: ``POST /v2beta/audio/stable-audio-2/text-to-audio``
  (multipart/form-data), ``{"id", "name", "errors"}`` errors, ``seed`` and ``finish-reason``
  headers. https://platform.stability.ai/docs/api-reference#tag/Text-to-Audio
* :class:`FakeElevenLabs`: ``POST /v1/music?output_format=...`` (JSON), ``xi-api-key``,
  ``{"detail": ...}`` errors. https://elevenlabs.io/docs/api-reference/music/compose

Use::

    with FakeReplicate(key="r8_...") as fake:
        fake.base_url            # http://127.0.0.1:PORT
        fake.script("POST", "/v1/predictions", rate_limited(retry_after=1))
        ...
        fake.requests[0].json()
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

import numpy as np
import soundfile as sf

__all__ = ["Canned", "FakeElevenLabs", "FakeFiles", "FakeReplicate", "FakeServer",
           "FakeStability", "Recorded", "bad_prompt", "chunked", "content_moderation",
           "dropped", "malformed_json", "oversized", "quota_exceeded", "rate_limited",
           "server_error", "sine", "slow", "undecodable_audio", "wrong_type"]


# --- what is recorded and what is answered ------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    """Without the query."""
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The fields of a multipart/form-data body."""
        return _multipart(self.headers.get("content-type", ""), self.body)


@dataclass(frozen=True)
class Canned:
    """An answer."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering (a slow provider; a client's read timeout)."""
    drop: bool = False
    """Close the connection without answering."""
    chunked: bool = False
    """Send the body with Transfer-Encoding: chunked (no Content-Length)."""

    @classmethod
    def json(cls, status: int, doc: Any, headers: Mapping[str, str] | None = None,
             content_type: str = "application/json") -> Canned:
        return cls(status, json.dumps(doc).encode(),
                   {"Content-Type": content_type, **(headers or {})})


def rate_limited(retry_after: float | str | None = 1, *, status: int = 429,
                 doc: Any = None) -> Canned:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Canned.json(status, doc if doc is not None else {"detail": "rate limited"}, headers)


def server_error(status: int = 500, doc: Any = None) -> Canned:
    return Canned.json(status, doc if doc is not None else {"detail": "internal error"})


def malformed_json() -> Canned:
    return Canned(200, b'{"id": "abc", "status": ', {"Content-Type": "application/json"})


def wrong_type() -> Canned:
    return Canned(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                  {"Content-Type": "text/html; charset=utf-8"})


def oversized(size: int, content_type: str = "application/json") -> Canned:
    return Canned(200, b" " * size, {"Content-Type": content_type})


def chunked(body: bytes, content_type: str) -> Canned:
    return Canned(200, body, {"Content-Type": content_type}, chunked=True)


def undecodable_audio(content_type: str = "audio/wav") -> Canned:
    return Canned(200, b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 4,
                  {"Content-Type": content_type})


def dropped() -> Canned:
    return Canned(0, drop=True)


def slow(answer: Canned, delay_s: float) -> Canned:
    return Canned(answer.status, answer.body, answer.headers, delay_s=delay_s)


def sine(fmt: str = "WAV", *, sample_rate: int = 44100, channels: int = 2,
         seconds: float = 0.25, freq: float = 440.0) -> bytes:
    """A short sine as an encoded file (``WAV`` 16-bit, or ``MP3``)."""
    t = np.arange(int(sample_rate * seconds), dtype=np.float32) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    audio = np.repeat(tone[:, None], channels, axis=1)
    buffer = io.BytesIO()
    if fmt.upper() == "MP3":
        sf.write(buffer, audio, sample_rate, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --- the server -----------------------------------------------------------------------------------


class FakeServer:
    """A loopback HTTP server that records requests, answers scripted ones first, then as
    :meth:`handle` says. A context manager: started on enter, stopped on exit."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.requests: list[Recorded] = []
        self._scripts: list[tuple[str, str, list[Canned]]] = []
        self._lock = threading.Lock()
        self._handling = threading.Lock()  # one answer at a time touches a fake's state
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # scripting and records

    def script(self, method: str, path: str, *answers: Canned) -> None:
        """Answer the next requests whose method is ``method`` and whose path starts with
        ``path`` with ``answers``, in order, before answering normally again."""
        with self._lock:
            self._scripts.append((method.upper(), path, list(answers)))

    def seen(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """The recorded requests, optionally only one method's and those whose path starts
        with ``path``."""
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method.upper())
                    and (path is None or r.path.startswith(path))]

    def scripted(self, request: Recorded) -> Canned | None:
        with self._lock:
            for method, prefix, answers in self._scripts:
                if answers and request.method == method and request.path.startswith(prefix):
                    return answers.pop(0)
        return None

    def answer(self, request: Recorded) -> Canned:
        with self._lock:
            self.requests.append(request)
        found = self.scripted(request)
        if found is not None:
            return found
        with self._handling:
            refused = self.refuse_key(request)
            if refused is not None:
                return refused
            return self.handle(request)

    # what subclasses say

    def refuse_key(self, request: Recorded) -> Canned | None:
        """The documented 401 when the request's key is missing or wrong; ``None`` when it is
        right (or the fake checks no key)."""
        return None

    def handle(self, request: Recorded) -> Canned:
        return Canned.json(404, {"detail": "Not Found"})


class _Handler(BaseHTTPRequestHandler):
    owner: ClassVar[FakeServer]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet (tests read the records instead)."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Recorded(method=self.command, path=split.path,
                           query=parse_qs(split.query, keep_blank_values=True),
                           headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        answer = self.owner.answer(request)
        if answer.delay_s:
            time.sleep(answer.delay_s)
        if answer.drop:
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(answer.body), 65536):
                piece = answer.body[start:start + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


# --- Replicate ------------------------------------------------------------------------------------


class FakeFiles(FakeServer):
    """A file host with no key of its own (replicate.delivery): serves what was put there."""

    def __init__(self) -> None:
        super().__init__(key=None)
        self.files: dict[str, Canned] = {}

    def put(self, path: str, answer: Canned) -> str:
        self.files[path] = answer
        return self.base_url + path

    def handle(self, request: Recorded) -> Canned:
        found = self.files.get(request.path)
        if found is None:
            return Canned(404, b"Not Found", {"Content-Type": "text/plain"})
        return found


class FakeReplicate(FakeServer):
    """Replicate's predictions API (module docstring). ``polls``: the GETs a prediction
    takes to succeed; ``hold``: it stays ``processing`` until cancelled; ``outcome``:
    ``succeeded``, ``failed`` or ``aborted``; ``finish_on_create``: a ``Prefer: wait``
    create answers it finished (sync mode); ``latest_version``: what ``models.get`` shows
    (``None``: an official model showing no version)."""

    VERSION: ClassVar[str] = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"

    def __init__(self, key: str, *, polls: int = 2, hold: bool = False,
                 outcome: str = "succeeded", error: str = "CUDA out of memory",
                 predict_time: float = 12.5, finish_on_create: bool = False,
                 latest_version: str | None = VERSION, sample_rate: int = 32000,
                 channels: int = 2, output: Callable[[str], Any] | None = None) -> None:
        super().__init__(key)
        self.polls = polls
        self.hold = hold
        self.outcome = outcome
        self.error = error
        self.predict_time = predict_time
        self.finish_on_create = finish_on_create
        self.latest_version = latest_version
        self.sample_rate = sample_rate
        self.channels = channels
        self.output = output
        self.predictions: dict[str, dict[str, Any]] = {}
        self._polled: dict[str, int] = {}
        self.files = FakeFiles()

    def start(self) -> None:
        self.files.start()
        super().start()

    def stop(self) -> None:
        super().stop()
        self.files.stop()

    def refuse_key(self, request: Recorded) -> Canned | None:
        if request.headers.get("authorization") == f"Bearer {self.key}":
            return None
        return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    def handle(self, request: Recorded) -> Canned:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST" and parts == ["v1", "predictions"]:
            return self._create(request)
        if parts[:2] == ["v1", "predictions"] and len(parts) in (3, 4):
            prediction = self.predictions.get(parts[2])
            if prediction is None:
                return _problem(404, "Not found", "The requested resource could not be found")
            if request.method == "GET" and len(parts) == 3:
                return Canned.json(200, self._advance(prediction))
            if request.method == "POST" and parts[3:] == ["cancel"]:
                if prediction["status"] not in ("succeeded", "failed", "canceled", "aborted"):
                    prediction.update(status="canceled", completed_at=_now())
                return Canned.json(200, prediction)
        if request.method == "GET" and parts[:2] == ["v1", "models"] and len(parts) == 4:
            return Canned.json(200, self._model(parts[2], parts[3]))
        return _problem(404, "Not found", "The requested resource could not be found")

    def create(self, ref: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Make a prediction as ``POST /v1/predictions`` would (for a resume test)."""
        ident = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                        for _ in range(26))
        model, _, version = ref.partition(":")
        if "/" not in model:  # a bare version id
            model, version = "owner/model", ref
        api = self.base_url
        prediction: dict[str, Any] = {
            "id": ident, "model": model, "version": version or "hidden",
            "input": dict(inputs), "logs": "", "output": None, "data_removed": False,
            "error": None, "status": "starting", "source": "api", "created_at": _now(),
            "started_at": None, "completed_at": None, "metrics": {},
            "urls": {"get": f"{api}/v1/predictions/{ident}",
                     "cancel": f"{api}/v1/predictions/{ident}/cancel",
                     "web": f"https://replicate.com/p/{ident}"},
        }
        self.predictions[ident] = prediction
        self._polled[ident] = 0
        return prediction

    def _create(self, request: Recorded) -> Canned:
        try:
            body = request.json()
        except ValueError:
            return _problem(400, "Invalid JSON", "The request body is not valid JSON")
        ref, inputs = body.get("version"), body.get("input")
        if not isinstance(ref, str) or not ref:
            return _problem(422, "Input validation failed", "version is required",
                            [{"type": "required", "field": "version",
                              "description": "version is required"}])
        if not isinstance(inputs, dict):
            return _problem(422, "Input validation failed", "input must be an object",
                            [{"type": "invalid_type", "field": "input",
                              "description": "Invalid type. Expected: object"}])
        prediction = self.create(ref, inputs)
        if self.finish_on_create and request.headers.get("prefer", "").startswith("wait"):
            self._finish(prediction)
        return Canned.json(201, prediction)

    def _advance(self, prediction: dict[str, Any]) -> dict[str, Any]:
        if prediction["status"] in ("succeeded", "failed", "canceled", "aborted"):
            return prediction
        ident = prediction["id"]
        self._polled[ident] += 1
        if prediction["status"] == "starting":
            prediction.update(status="processing", started_at=_now())
        if not self.hold and self._polled[ident] >= self.polls:
            self._finish(prediction)
        return prediction

    def _finish(self, prediction: dict[str, Any]) -> None:
        ident = prediction["id"]
        prediction.update(completed_at=_now(), started_at=prediction["started_at"] or _now())
        if self.outcome == "failed":
            prediction.update(status="failed", error=self.error, logs="Traceback ...")
            return
        if self.outcome == "aborted":
            prediction.update(status="aborted")
            return
        fmt = str(prediction["input"].get("output_format", "wav")).upper()
        audio = sine("MP3" if fmt == "MP3" else "WAV", sample_rate=self.sample_rate,
                     channels=self.channels)
        content_type = "audio/mpeg" if fmt == "MP3" else "audio/wav"
        url = self.files.put(f"/{ident}/out.{fmt.lower()}",
                             Canned(200, audio, {"Content-Type": content_type}))
        prediction.update(status="succeeded",
                          output=self.output(url) if self.output is not None else url,
                          metrics={"predict_time": self.predict_time,
                                   "total_time": self.predict_time + 1.5})

    def _model(self, owner: str, name: str) -> dict[str, Any]:
        latest = None if self.latest_version is None else {
            "id": self.latest_version, "created_at": _now(), "cog_version": "0.9.4",
            "openapi_schema": {}}
        return {"url": f"https://replicate.com/{owner}/{name}", "owner": owner, "name": name,
                "description": "Generate music from a prompt or melody", "visibility": "public",
                "run_count": 1, "latest_version": latest}


def _problem(status: int, title: str, detail: str,
             invalid: list[dict[str, str]] | None = None) -> Canned:
    doc: dict[str, Any] = {"title": title, "detail": detail, "status": status}
    if invalid:
        doc["invalid_fields"] = invalid
    return Canned.json(status, doc, content_type="application/problem+json")


# --- Stability AI ---------------------------------------------------------------------------------


class FakeStability(FakeServer):
    """Stable Audio's text-to-audio endpoint (module docstring). ``finish_reason``: the
    answer's ``finish-reason`` header (``CONTENT_FILTERED`` to test the filter)."""

    PATH: ClassVar[str] = "/v2beta/audio/stable-audio-2/text-to-audio"
    STEPS: ClassVar[Mapping[str, tuple[int, int]]] = {"stable-audio-2.5": (4, 8),
                                                      "stable-audio-2": (30, 100)}

    def __init__(self, key: str, *, finish_reason: str = "SUCCESS",
                 sample_rate: int = 44100) -> None:
        super().__init__(key)
        self.finish_reason = finish_reason
        self.sample_rate = sample_rate

    def refuse_key(self, request: Recorded) -> Canned | None:
        if request.headers.get("authorization") == f"Bearer {self.key}":
            return None
        return _stability(401, "unauthorized", "authorization: invalid or missing API key")

    def handle(self, request: Recorded) -> Canned:
        if request.path != self.PATH:
            return _stability(404, "not_found", f"{request.path}: no such endpoint")
        if request.method != "POST":
            return _stability(405, "method_not_allowed", f"{request.method} is not allowed")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _stability(400, "bad_request",
                              "content-type: must be multipart/form-data")
        form = request.form()
        errors = self._invalid(form)
        if errors:
            return _stability(400, "bad_request", *errors)
        seed = int(form.get("seed") or 0) or secrets.randbelow(4294967294) + 1
        fmt = form.get("output_format", "mp3")
        audio = sine("MP3" if fmt == "mp3" else "WAV", sample_rate=self.sample_rate)
        accept = request.headers.get("accept", "audio/*")
        headers = {"finish-reason": self.finish_reason, "seed": str(seed),
                   "x-request-id": secrets.token_hex(16)}
        if accept.startswith("application/json"):
            return Canned.json(200, {"audio": base64.b64encode(audio).decode(),
                                     "finish_reason": self.finish_reason, "seed": seed},
                               headers)
        if not accept.startswith("audio/"):
            return _stability(400, "bad_request", "accept: must be audio/* or application/json")
        content_type = "audio/mpeg" if fmt == "mp3" else "audio/wav"
        return Canned(200, audio, {"Content-Type": content_type, **headers})

    def _invalid(self, form: Mapping[str, str]) -> list[str]:
        errors = []
        if not form.get("prompt"):
            errors.append("prompt: cannot be empty")
        model = form.get("model", "stable-audio-2")
        if model not in self.STEPS:
            errors.append(f"model: must be one of {', '.join(self.STEPS)}")
            return errors
        if form.get("output_format", "mp3") not in ("mp3", "wav"):
            errors.append("output_format: must be one of mp3, wav")
        least, most = self.STEPS[model]
        ranges: list[tuple[str, float, float]] = [
            ("duration", 1.0, 190.0), ("cfg_scale", 1.0, 25.0), ("seed", 0.0, 4294967294.0),
            ("steps", float(least), float(most))]
        for name, low, high in ranges:
            if name in form:
                try:
                    value = float(form[name])
                except ValueError:
                    errors.append(f"{name}: must be a number")
                    continue
                if not low <= value <= high:
                    errors.append(f"{name}: must be between {low:g} and {high:g}")
        return errors


def _stability(status: int, name: str, *errors: str) -> Canned:
    return Canned.json(status, {"id": secrets.token_hex(16), "name": name,
                                "errors": list(errors)})


# --- ElevenLabs -----------------------------------------------------------------------------------


class FakeElevenLabs(FakeServer):
    """Eleven Music's compose endpoint (module docstring)."""

    PATH: ClassVar[str] = "/v1/music"
    MODELS: ClassVar[tuple[str, ...]] = ("music_v1", "music_v2")

    def refuse_key(self, request: Recorded) -> Canned | None:
        given = request.headers.get("xi-api-key")
        if given is None:
            return _detail(401, "needs_authorization", "Neither authorization header nor "
                                                       "xi-api-key received, please provide one.")
        if given != self.key:
            return _detail(401, "invalid_api_key", "Invalid API key")
        return None

    def handle(self, request: Recorded) -> Canned:
        if request.path != self.PATH or request.method != "POST":
            return Canned.json(404, {"detail": "Not Found"})
        try:
            body = request.json()
        except ValueError:
            return _invalid(["body"], "JSON decode error", "json_invalid")
        if not isinstance(body, dict):
            return _invalid(["body"], "Input should be a valid dictionary", "dict_type")
        has_prompt, has_plan = "prompt" in body, "composition_plan" in body
        if has_prompt == has_plan:
            return _detail(400, "invalid_parameters",
                           "Provide exactly one of prompt and composition_plan.")
        if has_prompt and body.get("seed") is not None:
            return _detail(400, "invalid_parameters", "seed cannot be used with prompt.")
        model = body.get("model_id", "music_v1")
        if model not in self.MODELS:
            return _invalid(["body", "model_id"], "Input should be 'music_v1' or 'music_v2'",
                            "literal_error")
        length = body.get("music_length_ms")
        if length is not None and (not isinstance(length, int) or not 3000 <= length <= 600000):
            return _invalid(["body", "music_length_ms"], "Must be between 3000ms and 600000ms",
                            "value_error")
        fmt = (request.query.get("output_format") or ["auto"])[0]
        if fmt == "auto":
            fmt = "mp3_44100_128" if model == "music_v1" else "mp3_48000_192"
        codec, _, rest = fmt.partition("_")
        if codec != "mp3":
            return _invalid(["query", "output_format"], "the fake serves MP3 formats only",
                            "enum")
        rate = int(rest.split("_")[0])
        headers = {"Content-Type": "audio/mpeg"}
        if body.get("store_for_inpainting"):
            headers["song-id"] = secrets.token_hex(10)
        return Canned(200, sine("MP3", sample_rate=rate), headers)


def _detail(status: int, code: str, message: str, data: Mapping[str, Any] | None = None) -> Canned:
    detail: dict[str, Any] = {"status": code, "message": message}
    if data is not None:
        detail["data"] = dict(data)
    return Canned.json(status, {"detail": detail})


def _invalid(loc: list[str], message: str, kind: str) -> Canned:
    return Canned.json(422, {"detail": [{"type": kind, "loc": loc, "msg": message,
                                         "input": None}]})


# --- helpers --------------------------------------------------------------------------------------


def bad_prompt(suggestion: str) -> Canned:
    """ElevenLabs' refusal of a prompt naming an artist, with its suggested rewording."""
    return _detail(400, "bad_prompt", "The prompt references copyrighted material.",
                   {"prompt_suggestion": suggestion})


def quota_exceeded() -> Canned:
    """ElevenLabs' 401 that is no verdict on the key."""
    return _detail(401, "quota_exceeded", "This request exceeds your quota of 10000. You have "
                                          "0 credits remaining.")


def content_moderation() -> Canned:
    """Stability's 403 for a flagged prompt."""
    return _stability(403, "content_moderation", "Your request was flagged by our content "
                                                 "moderation system.")


def _multipart(content_type: str, body: bytes) -> dict[str, str]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8")
    return fields


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")

