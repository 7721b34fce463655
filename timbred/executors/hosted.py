"""The hosted executor: takes made at a provider's API from inside the daemon.

No worker process and no torch: one HTTP client per job, pointed at the provider's configured
base URL with its key, runs one :class:`~timbred.hosted.base.Call` per take and decodes the
audio the provider returned. Keys are looked up when a job runs (the environment, then a key
a client sent, then the OS keyring) and live only in the client's headers: never in a job,
a recipe, an event or a log line.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred.config import Settings
from timbred.errors import InvalidParams, KeyMissing, ProviderError
from timbred.hosted import http, keys
from timbred.hosted import provider as load_provider
from timbred.hosted.base import Call, Provider, Result
from timbred.hosted.names import PROVIDERS
from timbred.request import Request

log = logging.getLogger(__name__)

__all__ = ["HostedExecutor", "Take"]

MiB = 1024 * 1024
#: The largest audio file a provider may send (a 10-minute 48 kHz stereo float WAV is 220 MiB).
MAX_AUDIO_BYTES = 256 * MiB
#: The largest JSON body (a prediction with its logs).
MAX_JSON_BYTES = 4 * MiB


@dataclass(frozen=True)
class Take:
    """One take as decoded: ``(channels, frames)`` float32 at ``sample_rate``."""

    audio: npt.NDArray[np.float32]
    sample_rate: int
    result: Result


class HostedExecutor:
    """Runs takes at the providers (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Keys clients sent with a request (``generate.submit``'s ``credentials``), by
        #: provider: in memory only, for this daemon's life.
        self.client_keys: dict[str, str] = {}

    def remember_keys(self, credentials: Mapping[str, Any]) -> None:
        """Hold the keys a client sent (checked: a known provider, a plausible key)."""
        for name, key in credentials.items():
            if name not in PROVIDERS:
                raise InvalidParams(f"credentials: unknown provider {name!r}; known: "
                                    f"{', '.join(PROVIDERS)}", param="credentials")
            try:
                self.client_keys[name] = keys.check_key(str(key))
            except InvalidParams as exc:  # its message never quotes the key
                raise InvalidParams(f"credentials: {name}: {exc.message}",
                                    param="credentials") from None

    def key_source(self, name: str) -> str | None:
        """Where a key for ``name`` would come from (``env``, ``client``, ``keyring``), or
        ``None``. Blocking (the keyring may ask D-Bus)."""
        found = keys.lookup(name, client=self.client_keys)
        return None if found is None else found[1]

    def policy(self) -> http.RetryPolicy:
        return http.RetryPolicy(max_elapsed_s=self.settings["providers.retry_s"],
                                wait_offline=self.settings["providers.offline"] == "wait")

    def base_url(self, name: str) -> str:
        return str(self.settings[f"providers.{name}.base_url"]).rstrip("/")

    @asynccontextmanager
    async def client(self, name: str) -> AsyncIterator[tuple[Provider, httpx.AsyncClient]]:
        """The provider and an HTTP client carrying its key; :class:`KeyMissing` without one."""
        provider = load_provider(name)
        found = await anyio.to_thread.run_sync(
            lambda: keys.lookup(name, client=self.client_keys))
        if found is None:
            raise KeyMissing(name, PROVIDERS[name].env_var)
        timeout = float(self.settings["providers.timeout_s"])
        async with httpx.AsyncClient(
                base_url=self.base_url(name), headers=provider.auth_headers(found[0]),
                timeout=httpx.Timeout(timeout), follow_redirects=True) as client:
            yield provider, client

    async def take(self, name: str, model: str, request: Request, index: int, *,
                   remote: Mapping[str, Any] | None,
                   record: Callable[[Mapping[str, Any]], Awaitable[None]],
                   on_status: Callable[[str], None]) -> Take:
        """Make (or resume, from ``remote``) one take at provider ``name`` and decode it."""
        policy = self.policy()
        base_url = self.base_url(name)
        async with self.client(name) as (provider, client):

            async def download(url: str) -> tuple[bytes, str]:
                return await http.download(client, url, provider=name, policy=policy,
                                           max_bytes=MAX_AUDIO_BYTES, base_url=base_url)

            call = Call(client=client, model=model, request=request, index=index,
                        remote=remote, record=record, progress=on_status, download=download,
                        policy=policy)
            limit = float(self.settings["providers.max_wait_s"])
            with anyio.move_on_after(limit) as waited:
                result = await provider.generate(call)
            if waited.cancelled_caught:
                raise ProviderError(name, f"the take did not finish within {limit:g} s "
                                    "(providers.max_wait_s); it was cancelled there",
                                    retryable=True)
        audio, rate = await anyio.to_thread.run_sync(decode, name, result.audio)
        return Take(audio=audio, sample_rate=rate, result=result)

    async def cancel(self, name: str, remote: Mapping[str, Any]) -> None:
        """Cancel a recorded call at its provider; best effort, a failure is logged."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                async with self.client(name) as (provider, client):
                    await provider.cancel(client, remote)
            except Exception as exc:  # the job is over for its owner either way
                log.warning("%s: could not cancel %s: %s", name, remote.get("id"), exc)


def decode(provider: str, data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    """An audio file's bytes as ``(channels, frames)`` float32 and its sample rate."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise ProviderError(provider, f"the audio it returned does not decode ({exc}); "
                            f"{len(data)} bytes starting {data[:16]!r}") from exc
    if audio.shape[0] == 0:
        raise ProviderError(provider, "the audio it returned is empty")
    if not np.isfinite(audio).all():
        raise ProviderError(provider, "the audio it returned holds NaN or infinite samples")
    return np.ascontiguousarray(audio.T), int(rate)
