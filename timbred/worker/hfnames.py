"""The names transformers gives the decoder's KV cache, read from the installed version.

Imported only inside the worker process (it pulls in transformers).

transformers 5.24 renamed the cache everywhere the fast paths touch it: the ``past_key_values``
keyword of the decoders' ``forward``, of ``generate``'s model kwargs and of the mask builders
became ``cache`` (the old keyword still works there, with a deprecation warning, until 5.40),
and the output field ``past_key_values`` of ``BaseModelOutputWithPast`` and its siblings became
``cache`` (the old one is gone). Code that names it by hand breaks on one side of that release
or the other, so every such place asks here instead; the names are read off the installed
classes' signatures and fields, not off a version number, so a backport or a later rename
back is followed too. :mod:`timbred.worker.fastpath` still checks the result at load time.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder

__all__ = ["CACHE_ARG", "MASK_CACHE_ARG", "OUTPUT_CACHE_FIELD", "output_cache"]

_NAMES = ("cache", "past_key_values")


def _parameter(function: Any) -> str:
    """The cache's keyword in ``function``'s signature (following ``functools.wraps``)."""
    params = inspect.signature(function).parameters
    for name in _NAMES:
        if name in params:
            return name
    raise ImportError(f"{function.__qualname__} takes no KV cache keyword (looked for {_NAMES})")


def _field(output_class: type[Any]) -> str:
    fields = {f.name for f in dataclasses.fields(output_class)}
    for name in _NAMES:
        if name in fields:
            return name
    raise ImportError(f"{output_class.__name__} has no KV cache field (looked for {_NAMES})")


#: The decoder's (and ``generate``'s model kwargs') name for the cache.
CACHE_ARG: str = _parameter(MusicgenDecoder.forward)
#: ``create_causal_mask``'s name for it.
MASK_CACHE_ARG: str = _parameter(create_causal_mask)
#: The field of ``BaseModelOutputWithPast`` (and ``...AndCrossAttentions``) that holds it.
OUTPUT_CACHE_FIELD: str = _field(BaseModelOutputWithPast)


def output_cache(output: Any) -> Any:
    """The cache a forward returned (a decoder's or the whole model's), whatever the installed
    version calls it."""
    for name in dict.fromkeys((OUTPUT_CACHE_FIELD, *_NAMES)):
        if hasattr(output, name):
            return getattr(output, name)
    raise AttributeError(f"{type(output).__name__} holds no KV cache (looked for {_NAMES})")
