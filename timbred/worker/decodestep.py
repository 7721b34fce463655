"""MusicGen's decoding step without transformers' per-module machinery.

Imported only inside the worker process (it pulls in torch and transformers).

Why
---
A decoding step adds one position per codebook, so on a CPU much of it is not arithmetic but
the Python around it. Measured with musicgen-small's 24 layers made 64 wide (no arithmetic to
speak of) on the 2-core benchmark machine: about 14 ms per step, as much as int8's whole
linear work in the full-size model. cProfile puts that time in ``nn.Module`` calls (about 380
per step), transformers' output capturing and config lookups, the per-layer layer-drop draw,
the attention-interface lookup, and cache bookkeeping.

What
----
:class:`LeanDecoder` runs one decoding step of a ``MusicgenDecoder`` or
``MusicgenMelodyDecoder`` as a plain loop over the layers' tensors: the same torch operations
on the same tensors in the same order as transformers' modules (including the attention masks,
which transformers' own functions still build), so every step's hidden states are bit-identical
to the transformers forward (tested on every step, float32 and int8, mono, stereo and melody).
:func:`lean_steps` routes one ``generate`` pass's decoding steps through it. Everything else
goes to transformers unchanged: the prefill, the first step (which fills the caches), a call
that asks for attentions or hidden states, a decoder in training mode.

It covers what Timbre runs and nothing more. :func:`lean_decoder` returns ``None`` for a
decoder that does not look exactly like that (other layer or attention classes, another
attention implementation than sdpa, grouped-query heads), and that decoder then runs entirely
in transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPastAndCrossAttentions,
)
from transformers.models.musicgen.modeling_musicgen import (
    MusicgenAttention,
    MusicgenDecoder,
    MusicgenDecoderLayer,
)
from transformers.models.musicgen_melody.modeling_musicgen_melody import (
    MusicgenMelodyAttention,
    MusicgenMelodyDecoder,
    MusicgenMelodyDecoderLayer,
)
from transformers.utils.generic import ModelOutput

from timbred.worker.hfnames import CACHE_ARG, MASK_CACHE_ARG, OUTPUT_CACHE_FIELD

__all__ = ["LeanDecoder", "lean_decoder", "lean_steps"]

Op = Callable[[torch.Tensor], torch.Tensor]


def _direct(module: nn.Module) -> Op:
    """``module``'s computation, called without ``nn.Module.__call__`` where that is the same.

    A plain ``nn.Linear`` or ``nn.LayerNorm`` becomes the functional call its ``forward``
    makes; any other module without hooks its bound ``forward`` (the dynamically quantized
    linears, the activation). A module with hooks keeps its full call, hooks and all.
    """
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if type(module) is nn.LayerNorm:
        shape, lw, lb, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, lw, lb, eps)
    forward: Op = module.forward
    return forward


@dataclass(frozen=True, slots=True)
class _Attention:
    q: Op
    k: Op
    v: Op
    out: Op
    head_dim: int
    scaling: float


@dataclass(frozen=True, slots=True)
class _Layer:
    self_norm: Op
    self_attn: _Attention
    cross_norm: Op | None  # None: MusicGen-Melody (its conditioning is part of the sequence)
    cross_attn: _Attention | None
    ffn_norm: Op
    fc1: Op
    act: Op
    fc2: Op


def _attention(module: Any) -> _Attention:
    return _Attention(q=_direct(module.q_proj), k=_direct(module.k_proj),
                      v=_direct(module.v_proj), out=_direct(module.out_proj),
                      head_dim=int(module.head_dim), scaling=float(module.scaling))


def _attend(attn: _Attention, query_in: torch.Tensor, keys: torch.Tensor,
            values: torch.Tensor, mask: Any) -> torch.Tensor:
    """What ``MusicgenAttention`` + transformers' ``sdpa_attention_forward`` do for one query.

    One query position: sdpa's ``is_causal`` is off (transformers sets it only for q > 1),
    no dropout (inference), no grouped-query reshaping (MusicGen has none; checked at build).
    """
    batch = query_in.shape[0]
    query = attn.q(query_in).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=0.0,
                                         scale=attn.scaling, is_causal=False)
    out = out.reshape(out.shape[0], -1, 1, values.shape[-1]).transpose(1, 2).contiguous()
    return attn.out(out.reshape(batch, 1, -1).contiguous())


class LeanDecoder:
    """One decoding step of a MusicGen(-Melody) decoder, bit-identical to transformers'.

    Built per ``generate`` pass (it holds references to the decoder's current modules, so it
    must be rebuilt after they are replaced, e.g. by quantization). :meth:`covers` says which
    calls it takes; :meth:`step` runs one.
    """

    def __init__(self, decoder: Any) -> None:
        # Any: transformers' modules are only partly typed (nn.Module attribute access).
        self.decoder = decoder
        self.melody = isinstance(decoder, MusicgenMelodyDecoder)
        self.codebooks = int(decoder.num_codebooks)
        self.embed: list[nn.Module] = list(decoder.embed_tokens)
        self.layers: list[_Layer] = []
        for layer in decoder.layers:
            cross = None if self.melody else layer.encoder_attn
            self.layers.append(_Layer(
                self_norm=_direct(layer.self_attn_layer_norm),
                self_attn=_attention(layer.self_attn),
                cross_norm=None if cross is None else _direct(layer.encoder_attn_layer_norm),
                cross_attn=None if cross is None else _attention(cross),
                ffn_norm=_direct(layer.final_layer_norm),
                fc1=_direct(layer.fc1),
                act=_direct(layer.activation_fn),
                fc2=_direct(layer.fc2),
            ))
        self.final_norm = _direct(decoder.layer_norm)

    def covers(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
               encoder_hidden_states: torch.Tensor | None, cache: Any,
               extra: dict[str, Any]) -> bool:
        """Whether a forward call is a decoding step this class computes exactly."""
        if (extra or input_ids is None or inputs_embeds is not None
                or input_ids.shape[-1] != 1 or self.decoder.training
                or not isinstance(cache, EncoderDecoderCache) or cache.get_seq_length() == 0):
            return False
        if self.melody:
            # Melody's conditioning enters only with the prefill, as sequence positions.
            return encoder_hidden_states is None
        # Cross-attention keys and values must already be cached (the first step makes them).
        return encoder_hidden_states is not None and all(
            cache.is_updated.get(i) for i in range(len(self.layers)))

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             encoder_hidden_states: torch.Tensor | None,
             encoder_attention_mask: torch.Tensor | None,
             cache: Any) -> ModelOutput:
        """One position for every codebook of every row; updates the self-attention cache."""
        dec = self.decoder
        codes = input_ids.reshape(-1, self.codebooks, input_ids.shape[-1])
        past = cache.get_seq_length()
        # sum() as transformers writes it: 0 + e0 + e1 + ..., in that order.
        embeds = sum(self.embed[c](codes[:, c]) for c in range(self.codebooks))
        assert isinstance(embeds, torch.Tensor)
        mask = create_causal_mask(config=dec.config, inputs_embeds=embeds,
                                  attention_mask=attention_mask, **{MASK_CACHE_ARG: cache})
        cross_mask = None
        if not self.melody:
            cross_mask = create_bidirectional_mask(
                config=dec.config, inputs_embeds=embeds, attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states)
        positions = dec.embed_positions(embeds if self.melody else codes, past)
        hidden = embeds + positions.to(embeds.device)
        batch = hidden.shape[0]
        self_cache = cache.self_attention_cache
        cross_cache = cache.cross_attention_cache.layers
        for i, layer in enumerate(self.layers):
            x = layer.self_norm(hidden)
            sa = layer.self_attn
            keys = sa.k(x).view(batch, 1, -1, sa.head_dim).transpose(1, 2)
            values = sa.v(x).view(batch, 1, -1, sa.head_dim).transpose(1, 2)
            keys, values = self_cache.update(keys, values, i)
            hidden = hidden + _attend(sa, x, keys, values, mask)
            if layer.cross_norm is not None and layer.cross_attn is not None:
                x = layer.cross_norm(hidden)
                hidden = hidden + _attend(layer.cross_attn, x, cross_cache[i].keys,
                                          cross_cache[i].values, cross_mask)
            x = layer.ffn_norm(hidden)
            hidden = hidden + layer.fc2(layer.act(layer.fc1(x)))
        hidden = self.final_norm(hidden)
        output = (BaseModelOutputWithPast if self.melody
                  else BaseModelOutputWithPastAndCrossAttentions)
        return output(last_hidden_state=hidden, **{OUTPUT_CACHE_FIELD: cache})


def lean_decoder(model: Any) -> LeanDecoder | None:
    """A :class:`LeanDecoder` for ``model``'s decoder, or ``None`` where it does not apply.

    ``model`` is a MusicGen or MusicGen-Melody ``...ForConditionalGeneration``.
    """
    decoder = model.decoder.model.decoder
    config = decoder.config
    if isinstance(decoder, MusicgenMelodyDecoder):
        layer_type: type[nn.Module] = MusicgenMelodyDecoderLayer
        attention_type: type[nn.Module] = MusicgenMelodyAttention
    elif isinstance(decoder, MusicgenDecoder):
        layer_type, attention_type = MusicgenDecoderLayer, MusicgenAttention
    else:
        return None
    if (getattr(config, "_attn_implementation", None) != "sdpa"
            or getattr(config, "output_attentions", False)
            or getattr(config, "output_hidden_states", False)
            or not getattr(config, "return_dict", True)):
        return None
    for layer in decoder.layers:
        attentions = [layer.self_attn]
        if attention_type is MusicgenAttention:
            attentions.append(getattr(layer, "encoder_attn", None))
        if type(layer) is not layer_type or any(
                type(a) is not attention_type or getattr(a, "num_key_value_groups", 1) != 1
                for a in attentions):
            return None
    return LeanDecoder(decoder)


@contextlib.contextmanager
def lean_steps(model: Any) -> Iterator[bool]:
    """Route one ``generate`` pass's decoding steps through a :class:`LeanDecoder`.

    Yields whether it applies. The decoder's ``forward`` (whatever it is on entry, e.g.
    :func:`timbred.worker.kvcache.preallocated_kv`'s wrapper) is wrapped for the pass and
    put back on exit.
    """
    lean = lean_decoder(model)
    if lean is None:
        yield False
        return
    decoder = model.decoder.model.decoder
    had_own = "forward" in vars(decoder)
    original = decoder.forward

    def forward(input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs: Any) -> Any:
        # The cache arrives under the installed transformers' name for it (hfnames).
        cache = kwargs.pop(CACHE_ARG, None)
        if lean.covers(input_ids, inputs_embeds, encoder_hidden_states, cache, kwargs):
            assert input_ids is not None
            return lean.step(input_ids, attention_mask, encoder_hidden_states,
                             encoder_attention_mask, cache)
        return original(input_ids=input_ids, attention_mask=attention_mask,
                        encoder_hidden_states=encoder_hidden_states,
                        encoder_attention_mask=encoder_attention_mask,
                        inputs_embeds=inputs_embeds, use_cache=use_cache,
                        **{CACHE_ARG: cache}, **kwargs)

    decoder.forward = forward
    try:
        yield True
    finally:
        if had_own:
            decoder.forward = original
        else:
            del decoder.forward  # the class's method shows through again
