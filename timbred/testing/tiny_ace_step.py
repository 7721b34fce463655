"""Tiny ACE-Step 1.5 pipelines for tests: TEST FIXTURES ONLY.

:func:`build_tiny_ace_step` writes a complete diffusers ``AceStepPipeline`` directory
(``model_index.json``; a Qwen3 text encoder and its tokenizer; the condition encoder that
fuses text, lyrics and timbre; the DiT; a stereo 48 kHz Oobleck autoencoder; the audio
tokenizer pair a cover needs; the flow-matching scheduler) whose weights are random but
seeded, so every build is identical. It runs the real ``from_pretrained`` and denoising loop
on CPU in a fraction of a second per step, the way diffusers' own tests build theirs from
configs (``get_dummy_components``), except that the tokenizer is built here: a byte-level
BPE without merges (every UTF-8 byte one token, so any lyrics in any script tokenize) with
Qwen's ``<|endoftext|>``, saved as the ``Qwen2Tokenizer`` the real checkpoints name. Nothing
is downloaded.

The weights are random: it produces noise, not music. It is never a real model and must never
be offered to users as one.

The shapes mirror ACE-Step 1.5 where the code under test cares (48 kHz stereo; a 1920-sample
hop, so 25 latent frames a second; the DiT's input is its latents beside the source latents
and the chunk mask) and are tiny everywhere else. ``turbo=True`` marks the transformer as the
guidance-distilled turbo model (8 steps, no guidance); ``turbo=False`` as a base model
(``model_version = "base"``), the one variant trained to extract, add and complete tracks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

from timbred.testing.checkpoint import build_once
from timbred.worker.diffusion import quiet

__all__ = ["BUILDER_VERSION", "SAMPLE_RATE", "build_tiny_ace_step"]

#: Bump whenever the pipeline this module writes changes; stale caches are then rebuilt.
BUILDER_VERSION = 1

SAMPLE_RATE = 48_000
#: ACE-Step 1.5's autoencoder hop: 2 x 4 x 4 x 6 x 10 = 1920 samples, 25 latent frames a second.
_HOP_RATIOS = [2, 4, 4, 6, 10]
_LATENT = 8  # acoustic channels (ACE-Step 1.5: 64)
_WIDTH = 32

_STAMP = "timbre-fixture.json"
_SEED = 1515


def build_tiny_ace_step(dest: Path, *, turbo: bool = True) -> Path:
    """Write the tiny pipeline to ``dest`` (if not already there) and return ``dest``.

    Idempotent and safe to share between processes (see
    :func:`timbred.testing.checkpoint.build_once`).
    """
    stamp = {"builder": "timbre-tiny-ace-step", "version": BUILDER_VERSION,
             "diffusers": diffusers.__version__, "variant": "turbo" if turbo else "base"}
    return build_once(Path(dest), stamp, _STAMP, lambda out: _write_pipeline(out, turbo))


def _tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE without merges: the 256 byte symbols and ``<|endoftext|>`` (which pads
    and ends, as in Qwen's)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    end = "<|endoftext|>"
    return Qwen2Tokenizer(tokenizer_object=bpe, eos_token=end, pad_token=end, unk_token=end)


def _write_pipeline(out: Path, turbo: bool) -> None:
    with torch.random.fork_rng(devices=[]), quiet():
        torch.manual_seed(_SEED)
        tokenizer = _tokenizer()
        attention: dict[str, Any] = {"num_attention_heads": 4, "num_key_value_heads": 2,
                                     "head_dim": 8}
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=_WIDTH, intermediate_size=64,
            num_hidden_layers=2, max_position_embeddings=4096, **attention))
        layers: dict[str, Any] = {"hidden_size": _WIDTH, "intermediate_size": 64,
                                  "rope_theta": 10000.0, "sliding_window": 16, **attention}
        condition_encoder = AceStepConditionEncoder(  # type: ignore[no-untyped-call]
            text_hidden_dim=_WIDTH, timbre_hidden_dim=_LATENT,
            num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2, **layers)
        # The DiT reads its latents beside the context: the source latents and the mask.
        transformer = AceStepTransformer1DModel(
            num_hidden_layers=2, in_channels=3 * _LATENT, audio_acoustic_hidden_dim=_LATENT,
            patch_size=2, is_turbo=turbo, model_version="turbo" if turbo else "base",
            **layers)
        tokens: dict[str, Any] = {"audio_acoustic_hidden_dim": _LATENT, "pool_window_size": 5,
                                  **layers}
        audio_tokenizer = AceStepAudioTokenizer(  # type: ignore[no-untyped-call]
            fsq_dim=_WIDTH, **tokens)
        audio_token_detokenizer = AceStepAudioTokenDetokenizer(  # type: ignore[no-untyped-call]
            **tokens)
        # Its encoder's output holds the latent distribution's mean and scale: twice the
        # latent channels.
        vae = AutoencoderOobleck(  # type: ignore[no-untyped-call]
            encoder_hidden_size=2 * _LATENT, downsampling_ratios=_HOP_RATIOS,
            channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4,
            decoder_input_channels=_LATENT, audio_channels=2, sampling_rate=SAMPLE_RATE)
        # ACE-Step's own: it computes its shifted sigmas and hands them over verbatim.
        scheduler = FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
            num_train_timesteps=1, shift=1.0)
        # The converter stores the autoencoder's encoding of silence here (zeros are out of
        # distribution, its comment says); small random values stand in for it. Parameters
        # a trained model starts at zero are randomised too, so the audio depends on every
        # input.
        parts: list[Any] = [transformer, condition_encoder, audio_tokenizer,
                            audio_token_detokenizer, vae]
        with torch.no_grad():
            condition_encoder.silence_latent.normal_(0.0, 0.5)  # type: ignore[attr-defined]
            for part in parts:
                for param in part.parameters():
                    if param.ndim > 1 and not param.any():
                        param.normal_(0.0, 0.2)
        pipe = AceStepPipeline(  # type: ignore[no-untyped-call]
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
            condition_encoder=condition_encoder, scheduler=scheduler,
            audio_tokenizer=audio_tokenizer, audio_token_detokenizer=audio_token_detokenizer)
        pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
