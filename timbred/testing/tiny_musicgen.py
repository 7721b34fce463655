"""A tiny MusicGen checkpoint for tests: TEST FIXTURE ONLY.

:func:`build_tiny_musicgen` writes a complete Hugging Face MusicGen checkpoint (T5 text
encoder, 32 kHz EnCodec, delay-pattern decoder, tokenizer, feature extractor and generation
config) whose weights are random but seeded, so every build is identical. It exercises the
real ``from_pretrained`` + ``generate`` path on CPU in well under a second per clip, the way
audiocraft's ``MusicGen.get_pretrained('debug')`` does.

The weights are random: it produces noise, not music. It is never a real backend and must
never be offered to users as a model.

Everything is built offline from configs; nothing is downloaded. The shapes mirror
``facebook/musicgen-small`` where it matters to the code under test (32 kHz audio, 50 Hz
frames, 4 codebooks, pad/bos token = vocabulary size), and are tiny everywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    T5Config,
)

from timbred.testing.checkpoint import (
    build_once,
    generation_config,
    randomise_codebooks,
    save_processor,
    t5_tokenizer,
)

__all__ = ["BUILDER_VERSION", "SAMPLE_RATE", "build_tiny_musicgen"]

#: Bump whenever the checkpoint this module writes changes; stale caches are then rebuilt.
BUILDER_VERSION = 1

#: Audio sample rate of the tiny model (that of facebook/musicgen-*).
SAMPLE_RATE = 32_000

_STAMP = "timbre-fixture.json"
_SEED = 1234
_CODEBOOK_SIZE = 64  # a power of two, as EnCodec requires
_NUM_CODEBOOKS = 4
_CHROMA_LENGTH = 235  # facebook/musicgen-melody's value: 30 s of chroma at 32 kHz / 4096
_WORDS = (
    "a", "an", "the", "and", "with", "of", "in", "for", "to", "lo", "fi", "hip", "hop",
    "jazz", "rock", "pop", "piano", "drums", "bass", "guitar", "synth", "ambient", "calm",
    "loud", "slow", "fast", "beat", "song", "music", "track", "chill", "happy", "sad",
    "dark", "bright",
)


def build_tiny_musicgen(dest: Path, *, melody: bool = False, stereo: bool = False) -> Path:
    """Write the tiny MusicGen checkpoint to ``dest`` (if not already there) and return ``dest``.

    ``melody=True`` builds a ``musicgen_melody`` model (chroma conditioning) instead of a
    plain ``musicgen`` one; ``stereo=True`` a stereo decoder (two interleaved codebook sets
    over one mono EnCodec, like ``facebook/musicgen-stereo-*``).

    The build is idempotent and safe to share between processes: it is written to a
    temporary sibling directory and renamed into place, and a stamp (builder version,
    variant, transformers version) makes a stale cache rebuild itself.
    """
    return build_once(Path(dest), _stamp(melody, stereo), _STAMP,
                      lambda out: _write_checkpoint(out, melody=melody, stereo=stereo))


def _stamp(melody: bool, stereo: bool) -> dict[str, Any]:
    return {
        "builder": "timbre-tiny-musicgen",
        "version": BUILDER_VERSION,
        "melody": melody,
        "stereo": stereo,
        "transformers": transformers.__version__,
    }


def _write_checkpoint(out: Path, *, melody: bool, stereo: bool) -> None:
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        tokenizer = t5_tokenizer(_WORDS)
        text_config = T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
        audio_config = EncodecConfig(
            sampling_rate=SAMPLE_RATE,
            upsampling_ratios=[8, 5, 4, 4],  # hop 640 -> 50 Hz frames, as in encodec_32khz
            # 4 codebooks of 6 bits at 50 Hz = 1.2 kbps (encodec_32khz: 4 x 11 bits = 2.2 kbps)
            target_bandwidths=[1.2],
            codebook_size=_CODEBOOK_SIZE,
            hidden_size=16,
            num_filters=4,
            num_lstm_layers=1,
            use_causal_conv=False,
            chunk_length_s=None,
            overlap=None,
            normalize=False,
        )
        decoder_kwargs: dict[str, Any] = {
            "vocab_size": _CODEBOOK_SIZE,
            "max_position_embeddings": 2048,
            "num_hidden_layers": 2,
            "ffn_dim": 64,
            "num_attention_heads": 4,
            "hidden_size": 48,  # differs from d_model so enc_to_dec_proj exists, as in real models
            "dropout": 0.0,
            # Ten times the usual init scale: with std 0.02 the logits are so flat that the
            # text and melody barely change which token is sampled; 0.2 keeps sampling random
            # but makes the conditioning visible in the output, as it is for a trained model.
            "initializer_factor": 0.2,
            "num_codebooks": _NUM_CODEBOOKS * (2 if stereo else 1),
            "audio_channels": 2 if stereo else 1,
            "pad_token_id": _CODEBOOK_SIZE,
            "bos_token_id": _CODEBOOK_SIZE,
        }
        # Any: transformers' model classes are only partly typed (nn.Module attribute access).
        model: Any
        if melody:
            melody_config = MusicgenMelodyConfig(
                text_encoder=text_config.to_dict(),
                audio_encoder=audio_config.to_dict(),
                decoder=MusicgenMelodyDecoderConfig(**decoder_kwargs).to_dict(),
                num_chroma=12,
                chroma_length=_CHROMA_LENGTH,
            )
            model = MusicgenMelodyForConditionalGeneration(melody_config)
        else:
            config = MusicgenConfig(
                text_encoder=text_config.to_dict(),
                audio_encoder=audio_config.to_dict(),
                decoder=MusicgenDecoderConfig(**decoder_kwargs).to_dict(),
            )
            model = MusicgenForConditionalGeneration(config)
        randomise_codebooks(model)
        model.generation_config = generation_config(_CODEBOOK_SIZE)
        model.eval()
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if melody:
        # MusicgenMelodyFeatureExtractor cannot be instantiated without torchaudio, which
        # Timbre does not depend on; write the file save_pretrained() would have written.
        _write_melody_preprocessor_config(out)
    else:
        save_processor(out, tokenizer, SAMPLE_RATE)


def _write_melody_preprocessor_config(out: Path) -> None:
    config = {
        "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
        "processor_class": "MusicgenMelodyProcessor",
        "feature_size": 12,
        "num_chroma": 12,
        "sampling_rate": SAMPLE_RATE,
        "hop_length": 4096,
        "chunk_length": 30,
        "n_fft": 16384,
        "n_samples": 30 * SAMPLE_RATE,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
        "stem_indices": [3, 2],
    }
    path = out / "preprocessor_config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
