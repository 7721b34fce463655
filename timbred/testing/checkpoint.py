"""What the two random-weight MusicGen builders share: the tiny test fixture
(:mod:`timbred.testing.tiny_musicgen`) and the benchmark's full-size model
(:mod:`bench.musicgen_small_random`).

Both write a complete Hugging Face checkpoint offline, once: the build goes to a temporary
sibling directory and is renamed into place under a stamp, so an interrupted build never
looks finished, a stale one rebuilds itself, and concurrent builders do not trip over
each other.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import EncodecFeatureExtractor, GenerationConfig, MusicgenProcessor, T5Tokenizer

__all__ = [
    "build_once",
    "generation_config",
    "randomise_codebooks",
    "save_processor",
    "t5_tokenizer",
]


def build_once(dest: Path, stamp: dict[str, Any], stamp_name: str,
               write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` and move ``tmp`` to ``dest`` unless ``dest`` already has ``stamp``."""
    dest = Path(dest)
    if _read_stamp(dest, stamp_name) == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(tmp)
        (tmp / stamp_name).write_text(json.dumps(stamp, sort_keys=True) + "\n",
                                      encoding="utf-8")
        _replace_dir(tmp, dest, stamp, stamp_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_stamp(dest: Path, stamp_name: str) -> dict[str, Any] | None:
    try:
        loaded = json.loads((dest / stamp_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _replace_dir(tmp: Path, dest: Path, stamp: dict[str, Any], stamp_name: str) -> None:
    """Move the finished build into place; a concurrent builder that won the race also counts."""
    if dest.exists():
        if _read_stamp(dest, stamp_name) == stamp:
            return
        # Stale: move it aside first, because rename() cannot replace a non-empty directory.
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale.", dir=dest.parent))
        with contextlib.suppress(FileNotFoundError):  # another builder moved it first
            dest.rename(trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        tmp.rename(dest)
    except OSError:
        if _read_stamp(dest, stamp_name) != stamp:
            raise


def randomise_codebooks(model: Any) -> None:
    """EnCodec initialises its codebooks to zeros (trained ones are learned), which would map
    every code to the same sound; random codebooks make distinct codes decode differently."""
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            book = layer.codebook
            book.embed.copy_(torch.randn_like(book.embed))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)


def generation_config(codebook_size: int, **extra: Any) -> GenerationConfig:
    """MusicGen's published generation settings (pad/BOS = the codebook size)."""
    return GenerationConfig(  # type: ignore[no-untyped-call]
        decoder_start_token_id=codebook_size, pad_token_id=codebook_size,
        bos_token_id=codebook_size, do_sample=True, guidance_scale=3.0, max_length=1500,
        **extra)


def t5_tokenizer(words: Sequence[str]) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over a hand-written vocabulary: offline and deterministic."""
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?-'"
    vocab: list[tuple[str, float]] = [(p, 0.0) for p in pieces]
    vocab += [("\u2581" + w, -2.0) for w in words]
    vocab += [(c, -5.0) for c in chars]
    vocab += [("\u2581" + c, -6.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def save_processor(out: Path, tokenizer: T5Tokenizer, sample_rate: int) -> None:
    """The tokenizer and a mono EnCodec feature extractor, as ``AutoProcessor`` loads them."""
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=sample_rate,
                                        padding_value=0.0)
    processor = MusicgenProcessor(  # type: ignore[no-untyped-call]
        feature_extractor=extractor, tokenizer=tokenizer)
    processor.save_pretrained(out)
