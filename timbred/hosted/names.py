"""The hosted providers by name: what a client needs without importing httpx or the daemon.

``timbrectl`` (``auth``, ``models list``) and the studio read this; the providers themselves
live in :mod:`timbred.hosted.replicate`, :mod:`~timbred.hosted.stability` and
:mod:`~timbred.hosted.elevenlabs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["KEYRING_SERVICE", "PROVIDERS", "ProviderName", "split"]

#: The keyring service Timbre's keys are stored under (the username is the provider's name).
KEYRING_SERVICE = "timbre"


@dataclass(frozen=True)
class ProviderName:
    name: str
    title: str
    env_var: str
    """The environment variable its key is read from; it wins over the keyring."""
    default_base_url: str

    @property
    def host(self) -> str:
        return urlsplit(self.default_base_url).hostname or self.default_base_url


PROVIDERS: dict[str, ProviderName] = {p.name: p for p in (
    ProviderName("replicate", "Replicate", "REPLICATE_API_TOKEN", "https://api.replicate.com"),
    ProviderName("stability", "Stability AI", "STABILITY_API_KEY", "https://api.stability.ai"),
    ProviderName("elevenlabs", "ElevenLabs", "ELEVENLABS_API_KEY",
                 "https://api.elevenlabs.io"),
)}


def split(model: str) -> tuple[str, str] | None:
    """``("replicate", "meta/musicgen")`` for ``replicate:meta/musicgen``; ``None`` when the
    part before the first ``:`` is no provider's name (a local path may hold a ``:``)."""
    provider, sep, rest = model.partition(":")
    if not sep or provider not in PROVIDERS:
        return None
    return provider, rest
