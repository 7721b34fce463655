"""MusicGen checkpoints with the real architecture and random weights: FOR TIMING ONLY.

:func:`build` writes a Hugging Face checkpoint whose every shape is that of
``facebook/musicgen-small`` (or ``-medium``) and whose weights are random, so generation
benchmarks can run offline, with no download, at the real cost per decoding step:

* decoder: 4 codebooks of 2048 codes (pad/BOS token 2048), small = hidden 1024, 24 layers,
  16 heads, FFN 4096; medium = hidden 1536, 48 layers, 24 heads, FFN 6144 (as in
  transformers' ``convert_musicgen_transformers.py``);
* text encoder: T5-base (d_model 768, 12 layers, 12 heads, d_kv 64, d_ff 3072, vocabulary
  32128), of which MusicGen uses the encoder;
* audio codec: ``facebook/encodec_32khz`` (transformers' ``convert_encodec.py``): 32 kHz mono,
  upsampling ratios [8, 5, 4, 4] (hop 640, 50 frames/s), 64 filters, hidden 128, two LSTM
  layers, 2048-code codebooks, 2.2 kbps (4 codebooks), no causal convolutions, no
  normalisation, no conv shortcut, no chunking;
* generation config as published: sampling with top-k 250, guidance 3, max_length 1500.

The weights are random (seeded, so every build is identical): the model produces noise, not
music. Decoding cost does not depend on the weights' values, which is all a timing needs; never
offer this checkpoint to anyone as a model. The tokenizer is a small hand-written T5 (Unigram)
vocabulary whose ids all lie inside T5's 32128, so it is built offline too; text encoding is a
negligible part of a generation either way.

A finished build is stamped (builder version, size, transformers version); later calls with
the same stamp reuse it. Also runnable: ``python -m bench.musicgen_small_random DEST``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from timbred.testing.checkpoint import (
    build_once,
    generation_config,
    randomise_codebooks,
    save_processor,
    t5_tokenizer,
)

__all__ = ["BUILDER_VERSION", "DECODERS", "SAMPLE_RATE", "Size", "build"]

#: Bump whenever the checkpoint this module writes changes; stale caches are then rebuilt.
BUILDER_VERSION = 1

Size = Literal["small", "medium"]

#: Sample rate of EnCodec 32 kHz.
SAMPLE_RATE = 32_000

#: Decoder shapes per size: (hidden, layers, heads, ffn).
DECODERS: dict[str, tuple[int, int, int, int]] = {
    "small": (1024, 24, 16, 4096),
    "medium": (1536, 48, 24, 6144),
}

_STAMP = "timbre-bench-model.json"
_SEED = 20240601
_CODEBOOK_SIZE = 2048
_NUM_CODEBOOKS = 4
_T5_VOCAB = 32128
#: The tokenizer's words; every id lies well inside T5's 32128.
_WORDS = (
    "a", "an", "the", "and", "with", "of", "in", "for", "to", "on", "at", "by", "lo",
    "fi", "hip", "hop", "jazz", "rock", "pop", "funk", "soul", "blues", "metal", "folk",
    "techno", "house", "disco", "reggae", "orchestral", "cinematic", "epic", "piano",
    "drums", "bass", "guitar", "synth", "strings", "violin", "cello", "saxophone",
    "trumpet", "flute", "organ", "vocals", "choir", "ambient", "calm", "relaxing",
    "loud", "slow", "fast", "upbeat", "groovy", "warm", "soft", "heavy", "beat", "song",
    "music", "track", "melody", "rhythm", "chill", "happy", "sad", "dark", "bright",
    "dreamy", "retro", "80s", "90s", "bpm", "electric", "acoustic", "electronic",
    "background", "study", "night", "summer", "rain", "dance", "solo", "minor", "major",
)


def build(dest: Path, *, size: Size = "small") -> Path:
    """Write the random-weight checkpoint of ``size`` to ``dest`` (unless already there).

    Returns ``dest``. Raises :class:`ValueError` for an unknown ``size``. The build is written
    to a temporary sibling directory and renamed into place, so an interrupted build never
    looks finished.
    """
    if size not in DECODERS:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(DECODERS)}")
    return build_once(Path(dest), _stamp(size), _STAMP, lambda out: _write_checkpoint(out, size))


def _stamp(size: str) -> dict[str, Any]:
    return {
        "builder": "timbre-bench-musicgen-random",
        "version": BUILDER_VERSION,
        "size": size,
        "transformers": transformers.__version__,
    }


def _configs(size: str) -> MusicgenConfig:
    hidden, layers, heads, ffn = DECODERS[size]
    text = T5Config(  # t5-base
        vocab_size=_T5_VOCAB,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
    )
    audio = EncodecConfig(  # encodec_32khz
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        target_bandwidths=[2.2],
        upsampling_ratios=[8, 5, 4, 4],
        num_filters=64,
        hidden_size=128,
        num_residual_layers=1,
        num_lstm_layers=2,
        codebook_size=_CODEBOOK_SIZE,
        codebook_dim=128,
        norm_type="weight_norm",
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        compress=2,
        pad_mode="reflect",
        trim_right_ratio=1.0,
        use_causal_conv=False,
        use_conv_shortcut=False,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=_CODEBOOK_SIZE,
        max_position_embeddings=2048,
        num_hidden_layers=layers,
        ffn_dim=ffn,
        num_attention_heads=heads,
        hidden_size=hidden,
        activation_function="gelu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        initializer_factor=0.02,
        scale_embedding=False,
        use_cache=True,
        num_codebooks=_NUM_CODEBOOKS,
        audio_channels=1,
        pad_token_id=_CODEBOOK_SIZE,
        bos_token_id=_CODEBOOK_SIZE,
        tie_word_embeddings=False,
    )
    return MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict()
    )


def _write_checkpoint(out: Path, size: str) -> None:
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_SEED)
        # Any: transformers' model classes are only partly typed (nn.Module attribute access).
        model: Any = MusicgenForConditionalGeneration(_configs(size))
        randomise_codebooks(model)
        model.generation_config = generation_config(_CODEBOOK_SIZE, top_k=250)
        model.eval()
        model.save_pretrained(out)
        del model
    tokenizer = t5_tokenizer(_WORDS)
    tokenizer.save_pretrained(out)
    save_processor(out, tokenizer, SAMPLE_RATE)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.musicgen_small_random DEST [--size small|medium]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.musicgen_small_random",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dest", type=Path, help="checkpoint directory (reused when current)")
    parser.add_argument("--size", choices=sorted(DECODERS), default="small")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the path
        path = build(args.dest, size=args.size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
