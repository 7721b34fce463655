"""Tiny Stable Audio pipelines for tests: TEST FIXTURES ONLY.

:func:`build_tiny_stable_audio` writes a complete diffusers ``StableAudioPipeline`` directory
(``model_index.json``; a T5 text encoder and its tokenizer; the seconds-conditioning projection
model; a DiT; a stereo 44.1 kHz Oobleck autoencoder; Stable Audio Open's own cosine DPM-Solver
scheduler) whose weights are random but seeded, so every build is identical. It runs the real
``from_pretrained`` and denoising loop on CPU in well under a second per step, the way
diffusers' own tests build theirs from configs (``get_dummy_components``), except that the
tokenizer is built here from a word list: nothing is downloaded.

The weights are random: it produces noise, not music. It is never a real model and must never
be offered to users as one.

The shapes mirror ``stabilityai/stable-audio-open-1.0`` where the code under test cares
(44.1 kHz stereo, a 2048-sample hop, v-prediction), and are tiny everywhere else; its latent
length is :data:`LATENT_FRAMES`, so it makes takes of up to :data:`MAX_DURATION_S` seconds.

:func:`build_tiny_stable_audio_3` writes a ``StableAudio3Pipeline`` the same way: a T5Gemma
encoder with a character-level Gemma tokenizer, the duration embedder, the SAME autoencoder
with Stable Audio 3's 4096-sample hop, a DiT and the distilled checkpoint's stochastic
("ping-pong") flow-matching scheduler. Its audio-to-audio and inpaint pipelines load from the
same directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderOobleck,
    AutoencoderSAME,
    CosineDPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    StableAudio3DiTModel,
    StableAudio3Pipeline,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
    StableAudio3DurationEmbedder,
)
from transformers import (
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
    T5GemmaConfig,
    T5GemmaEncoderModel,
    T5GemmaModuleConfig,
)

from timbred.testing.checkpoint import build_once, t5_tokenizer
from timbred.worker.diffusion import quiet

__all__ = ["BUILDER_VERSION", "MAX_DURATION_S", "SA3_MAX_DURATION_S", "SAMPLE_RATE",
           "build_tiny_stable_audio", "build_tiny_stable_audio_3"]

#: Bump whenever the pipeline this module writes changes; stale caches are then rebuilt.
BUILDER_VERSION = 1

SAMPLE_RATE = 44_100
_HOP_RATIOS = [2, 4, 4, 8, 8]  # stable-audio-open-1.0's: a 2048-sample hop
#: Latent frames the DiT denoises (stable-audio-open-1.0: 1024, 47.55 s).
LATENT_FRAMES = 64
#: The longest take it makes: 64 x 2048 / 44100 s.
MAX_DURATION_S = LATENT_FRAMES * 2048 / SAMPLE_RATE

#: The tiny Stable Audio 3's longest take: its duration embedder's range (SA3 Medium: 384 s).
SA3_MAX_DURATION_S = 6.0

_STAMP = "timbre-fixture.json"
_SEED = 4321
_WORDS = (
    "a", "an", "the", "and", "with", "of", "in", "for", "warm", "rhodes", "piano", "drums",
    "bass", "guitar", "synth", "pad", "ambient", "calm", "slow", "fast", "beat", "strings",
    "no", "loud", "dark", "bright",
)


def build_tiny_stable_audio(dest: Path) -> Path:
    """Write the tiny pipeline to ``dest`` (if not already there) and return ``dest``.

    Idempotent and safe to share between processes (see
    :func:`timbred.testing.checkpoint.build_once`).
    """
    return build_once(Path(dest), _stamp(), _STAMP, _write_pipeline)


def _stamp() -> dict[str, Any]:
    return {"builder": "timbre-tiny-stable-audio", "version": BUILDER_VERSION,
            "diffusers": diffusers.__version__}


def _write_pipeline(out: Path) -> None:
    with torch.random.fork_rng(devices=[]), quiet():
        torch.manual_seed(_SEED)
        tokenizer = t5_tokenizer(_WORDS)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
            eos_token_id=1))
        conditioning = 16
        projection = StableAudioProjectionModel(  # type: ignore[no-untyped-call]
            text_encoder_dim=32, conditioning_dim=conditioning, min_value=0, max_value=512)
        latent_channels = 8
        transformer = StableAudioDiTModel(  # type: ignore[no-untyped-call]
            sample_size=LATENT_FRAMES, in_channels=latent_channels, num_layers=2,
            attention_head_dim=8, num_attention_heads=2, num_key_value_attention_heads=1,
            out_channels=latent_channels, cross_attention_dim=16, time_proj_dim=16,
            global_states_input_dim=2 * conditioning, cross_attention_input_dim=conditioning)
        vae = AutoencoderOobleck(  # type: ignore[no-untyped-call]
            encoder_hidden_size=8, downsampling_ratios=_HOP_RATIOS,
            channel_multiples=[1, 1, 2, 2, 2], decoder_channels=8,
            decoder_input_channels=latent_channels, audio_channels=2,
            sampling_rate=SAMPLE_RATE)
        # stable-audio-open-1.0's scheduler_config.json, verbatim in substance.
        scheduler = CosineDPMSolverMultistepScheduler(  # type: ignore[no-untyped-call]
            sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
            solver_order=2, prediction_type="v_prediction", rho=7.0)
        pipe = StableAudioPipeline(  # type: ignore[no-untyped-call]
            vae=vae, text_encoder=text_encoder, projection_model=projection,
            tokenizer=tokenizer, transformer=transformer, scheduler=scheduler)
        pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]


def build_tiny_stable_audio_3(dest: Path) -> Path:
    """Write the tiny Stable Audio 3 pipeline to ``dest`` (if not already there)."""
    stamp = {**_stamp(), "builder": "timbre-tiny-stable-audio-3"}
    return build_once(Path(dest), stamp, _STAMP, _write_pipeline_3)


def _gemma_tokenizer() -> GemmaTokenizer:
    """A character-level Gemma (BPE) tokenizer: specials, then each character alone and after
    a word boundary. No merges, so every word is spelled out: offline and deterministic."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?-'")
    tokens = [*specials, "\u2581", *chars, *("\u2581" + c for c in chars)]
    return GemmaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def _write_pipeline_3(out: Path) -> None:
    with torch.random.fork_rng(devices=[]), quiet():
        torch.manual_seed(_SEED)
        tokenizer = _gemma_tokenizer()
        width = 32
        module: dict[str, Any] = {
            "vocab_size": len(tokenizer), "hidden_size": width, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64,
            "max_position_embeddings": 512}
        text_encoder = T5GemmaEncoderModel(T5GemmaConfig(
            encoder=T5GemmaModuleConfig(**module),
            decoder=T5GemmaModuleConfig(**module, is_decoder=True),
            vocab_size=len(tokenizer), is_encoder_decoder=False))
        latent = 8
        # stable-audio-3's hop: 256-sample patches, then a stride of 16 (4096 samples).
        vae = AutoencoderSAME(  # type: ignore[no-untyped-call]
            audio_channels=2, patch_size=256, encoder_channels=16, encoder_c_mults=[2],
            encoder_strides=[16], encoder_transformer_depths=[1], latent_dim=latent,
            dim_heads=8, ff_mult=2, sampling_rate=SAMPLE_RATE)
        transformer = StableAudio3DiTModel(  # type: ignore[no-untyped-call]
            io_channels=latent, embed_dim=width, depth=2, num_heads=2, cond_token_dim=width,
            global_cond_dim=width, local_add_cond_dim=latent + 1, timestep_features_dim=16,
            num_memory_tokens=4)
        durations = StableAudio3DurationEmbedder(
            output_dim=width, fourier_dim=16, max_val=SA3_MAX_DURATION_S)
        scheduler = FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
            stochastic_sampling=True, shift=1.0)
        # Trained models start some projections at zero (the DiT's outputs, the inpaint
        # conditioning, the autoencoder's last layers); left at zero, the fixture's audio would
        # not depend on its latents, its init audio or its mask. Small random values instead.
        for part in (transformer, vae):
            with torch.no_grad():
                for param in part.parameters():  # type: ignore[union-attr]
                    if param.ndim > 1 and not param.any():
                        param.normal_(0.0, 0.2)
        pipe = StableAudio3Pipeline(  # type: ignore[no-untyped-call]
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            duration_embedder=durations, transformer=transformer, scheduler=scheduler)
        pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
