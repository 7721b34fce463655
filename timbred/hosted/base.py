"""What a hosted provider is to the daemon: one request in, audio bytes and a cost out.

A provider module (:mod:`timbred.hosted.replicate`, :mod:`~timbred.hosted.stability`,
:mod:`~timbred.hosted.elevenlabs`) turns one :class:`Call` (the request as Timbre built it,
the provider's model name, an HTTP client already pointed at its base URL with its key) into
one :class:`Result`: the audio file the provider returned, what it cost, and the provider's
own account (ids, seed, version). It speaks the provider's documented HTTP API and nothing
else: the queue, the job records, the export and the history are the daemon's
(:mod:`timbred.executors.hosted`).

Every failure is a :mod:`timbred.errors` error; the HTTP layer (:mod:`timbred.hosted.http`)
retries what may be retried and translates the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from timbred.hosted.http import MAX_AUDIO_BYTES, RetryPolicy
from timbred.request import Request

__all__ = ["Call", "Cost", "Provider", "Result"]


@dataclass(frozen=True)
class Cost:
    """What one job cost at a provider, in US dollars."""

    usd: float
    estimate: bool
    """True when Timbre worked it out from the provider's published price (and, where the
    price is per second, the job's duration or compute time) rather than reading the
    provider's own figure."""
    basis: str
    """How it was reached, for people: ``"20 credits x $0.01 (published price)"``."""

    def to_dict(self) -> dict[str, Any]:
        return {"usd": round(self.usd, 6), "estimate": self.estimate, "basis": self.basis}


@dataclass
class Call:
    """One take to make at a provider (a job of ``variations`` N makes N calls)."""

    client: httpx.AsyncClient
    """Points at the provider's configured base URL, with its key in the auth header the
    provider documents, and timeouts set. Only requests to that base URL carry the key;
    downloads from other hosts (a CDN link) go through :attr:`download` without it."""
    model: str
    """The provider's model, as the user named it after ``provider:`` (``meta/musicgen``,
    ``meta/musicgen:VERSION``, ``stable-audio-2.5``, ``music``)."""
    request: Request
    """The request (prompt, duration, lyrics, the provider's own parameters in
    ``request.options``); its ``seed`` is this take's (the job's seed + the take's index)."""
    index: int
    """Which take of the job this is (0-based)."""
    remote: Mapping[str, Any] | None = None
    """What an earlier run of this call recorded with :attr:`record` (a daemon restart while
    it ran): resume it (poll the same prediction) instead of starting (and paying) again."""
    record: Callable[[Mapping[str, Any]], Awaitable[None]] | None = None
    """Store the provider's handle for this call (``{"id": ..., "get": url, "cancel": url}``)
    durably with the job *before* waiting on it; the daemon commits it before returning."""
    progress: Callable[[str], None] | None = None
    """Say where the call is in the provider's words (``starting``, ``processing``)."""
    download: Callable[[str], Awaitable[tuple[bytes, str]]] | None = None
    """Fetch an output URL (any host), size-limited: ``(body, content type)``."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    """How the provider's own API requests are retried (``providers.retry_s``,
    ``providers.offline``)."""
    max_audio_bytes: int = MAX_AUDIO_BYTES
    """The largest audio file the provider may answer with (in the API's own answer, as
    Stability and ElevenLabs send it)."""


@dataclass(frozen=True)
class Result:
    """One take as the provider returned it."""

    audio: bytes
    """The encoded audio file (WAV, MP3, FLAC or Ogg) exactly as downloaded."""
    content_type: str
    cost: Cost | None
    info: Mapping[str, Any] = field(default_factory=dict)
    """The provider's own account, recorded in the recipe and the tags: ``id`` (prediction or
    request id), ``version`` (the model version that ran), ``seed`` (the seed it used, when
    it says), ``status``, ``metrics``..."""


class Provider(Protocol):
    """One hosted service (see the module docstring)."""

    name: str
    """``replicate``, ``stability``, ``elevenlabs``: the part before ``:`` in a model name."""
    default_base_url: str
    env_var: str
    """The environment variable its key is read from (``REPLICATE_API_TOKEN``)."""
    models: Mapping[str, str]
    """Models it suggests in ``models list``: name after ``provider:`` -> one-line summary."""
    params: Mapping[str, Any]
    """JSON Schema (an object's ``properties``) of its own parameters, with defaults; they
    arrive in ``request.options``."""

    def auth_headers(self, key: str) -> dict[str, str]:
        """The header(s) carrying ``key``, as the provider documents."""

    def check_model(self, model: str) -> None:
        """Refuse (:class:`timbred.errors.InvalidParams`, ``param="model"``) a model name the
        provider cannot take, at submit."""

    def deterministic(self, model: str) -> bool:
        """Whether the same seed and parameters give the same audio (as documented)."""

    def estimate(self, model: str, request: Request) -> Cost:
        """What a call is expected to cost, before it is sent (for budgets)."""

    async def generate(self, call: Call) -> Result:
        """Make (or resume) one take; raise :class:`timbred.errors.Cancelled`-free: a
        cancellation arrives as anyio's cancellation, and :meth:`cancel` is then called."""

    async def cancel(self, client: httpx.AsyncClient, remote: Mapping[str, Any]) -> None:
        """Cancel a call :attr:`Call.record` recorded (best effort; nothing if it cannot)."""
