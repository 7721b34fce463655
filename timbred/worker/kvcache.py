"""A self-attention KV cache that appends in place instead of re-copying itself every step.

Imported only inside the worker process (it pulls in torch and transformers).

Why
---
transformers' default ``DynamicCache`` grows each layer's keys and values with ``torch.cat``:
every decoding step copies the whole cache of every layer to add one position. For MusicGen
that is quadratic in the clip's length: a 10 s clip at guidance 3 has ~500 positions, and
near the end each step copies the whole cache, ~200 MB (24 layers x keys and values x 2 rows
x 16 heads x 500 x 64 float32), against the ~360 MB of int8 decoder weights a step reads.
Measured (bench/kvcache.py, int8): within noise for a 10 s clip, 0.80x the wall time for a
30 s one.

:class:`PreallocatedLayer` writes each new position into a buffer allocated once for the
whole pass (capacity known from ``max_new_tokens``; it doubles if ever exceeded) and hands
attention a view of the filled part. Attention sees the same values in the same order, so
the output is bit-identical to ``DynamicCache`` (tested); only where they live differs.

transformers' ``StaticCache`` also avoids the copies, but it hands attention the whole
preallocated length every step, masking the unfilled positions: more attention work per
step, and a different computation from ``DynamicCache``'s (not checked for bit-identity).
This layer keeps ``DynamicCache``'s exact semantics (sequence length, masks) instead, so
takes made before it re-render bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import MusicgenMelodyForConditionalGeneration
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from timbred.worker.hfnames import CACHE_ARG

__all__ = ["PreallocatedCache", "PreallocatedLayer", "preallocated_kv"]


class PreallocatedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's keys and values in a buffer of ``capacity`` positions, filled in place.

    ``keys``/``values`` are always views ``buffer[..., :length, :]``, which is what every
    reader of a ``DynamicLayer`` (attention, ``get_seq_length``) expects.
    """

    def __init__(self, capacity: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.capacity = max(1, int(capacity))
        self.length = 0
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._kbuf = self._vbuf = None

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        if self._kbuf is not None and self._vbuf is not None and need <= self._kbuf.shape[-2]:
            return
        size = max(need, self.capacity if self._kbuf is None else 2 * self._kbuf.shape[-2])
        kbuf = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
        vbuf = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
        if self._kbuf is not None and self._vbuf is not None and self.length:
            kbuf[..., : self.length, :] = self._kbuf[..., : self.length, :]
            vbuf[..., : self.length, :] = self._vbuf[..., : self.length, :]
        self._kbuf, self._vbuf = kbuf, vbuf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[..., self.length: end, :] = key_states
        self._vbuf[..., self.length: end, :] = value_states
        self.length = end
        self.keys = self._kbuf[..., :end, :]
        self.values = self._vbuf[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        super().reset()
        self.length = 0
        self._kbuf = self._vbuf = None

    # Beam search and assisted decoding rewrite the cache wholesale; Timbre uses neither, but
    # the layer stays correct if they are used: adopt the rewritten tensors as the new buffer.
    def _adopt(self) -> None:
        if self.is_initialized and self.keys is not None and self.values is not None:
            self._kbuf, self._vbuf = self.keys.contiguous(), self.values.contiguous()
            self.length = self._kbuf.shape[-2]
            self.keys, self.values = self._kbuf, self._vbuf

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()


class PreallocatedCache(DynamicCache):
    """A ``DynamicCache`` whose ``layers`` layers are :class:`PreallocatedLayer`."""

    def __init__(self, layers: int, capacity: int) -> None:
        # DynamicCache.__init__ would build DynamicLayers; go straight to Cache's.
        super(DynamicCache, self).__init__(
            layers=[PreallocatedLayer(capacity) for _ in range(layers)])


@contextlib.contextmanager
def preallocated_kv(model: Any, capacity: int) -> Iterator[dict[str, Any]]:
    """Make one ``model.generate`` pass decode with a preallocated self-attention cache.

    Yields extra keyword arguments for ``generate`` (merge them in). ``model`` is a MusicGen
    or MusicGen-Melody ``...ForConditionalGeneration``; ``capacity`` is the decoder positions
    the pass will hold (a hint: the buffers grow if it is short, as with Melody, whose
    conditioning is part of the sequence).

    The two models' ``generate`` treat caches differently (transformers 5.23), and each
    path keeps its model's default decoding exactly, so takes stay bit-identical (tested):

    * MusicGen's ``generate`` runs a prefill forward, drops its cache and decodes the first
      step again from no cache. A cache passed in would be filled by that prefill in place,
      putting the start token twice in the context (checked: other tokens than the default
      path). So the cache is swapped in where the decoder makes its own, for this pass only.
    * MusicGen-Melody's ``generate`` makes the cache itself and keeps the prefill's; a cache
      passed in is used the same way, so it is passed in.
    """
    layers = len(model.decoder.model.decoder.layers)

    def cache() -> EncoderDecoderCache:
        # The cache the model would make, with the self-attention half preallocated.
        return EncoderDecoderCache(PreallocatedCache(layers, capacity), DynamicCache())

    if isinstance(model, MusicgenMelodyForConditionalGeneration):
        yield {CACHE_ARG: cache()}
        return
    inner = model.decoder.model.decoder  # MusicgenDecoder
    original = inner.forward

    def forward(*args: Any, use_cache: bool | None = None, **kwargs: Any) -> Any:
        # The cache arrives under the installed transformers' name for it (hfnames).
        wanted = inner.config.use_cache if use_cache is None else use_cache
        if kwargs.get(CACHE_ARG) is None and wanted:
            kwargs[CACHE_ARG] = cache()
        return original(*args, use_cache=use_cache, **kwargs)

    inner.forward = forward
    try:
        yield {}
    finally:
        del inner.forward  # the class's method shows through again
