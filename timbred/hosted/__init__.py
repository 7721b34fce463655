"""Hosted providers: models that run at Replicate, Stability AI or ElevenLabs, through the
same queue, takes and history as local ones (see :mod:`timbred.hosted.base`).

:func:`provider` imports a provider's module on first use (they need httpx; the client and
the studio read only :mod:`timbred.hosted.names`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from timbred.errors import InvalidParams
from timbred.hosted.names import PROVIDERS, split

if TYPE_CHECKING:
    from timbred.hosted.base import Provider

__all__ = ["PROVIDERS", "provider", "split"]


def provider(name: str) -> Provider:
    """The provider called ``name`` (``replicate``); :class:`InvalidParams` otherwise."""
    if name not in PROVIDERS:
        raise InvalidParams(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}",
                            param="model")
    found: Provider = importlib.import_module(f"timbred.hosted.{name}").PROVIDER
    return found
