"""Demucs: separating a take into stems (drums, bass, other, vocals), not generating one.

Its models are *bags* as demucs 4.1 keeps them on the Hugging Face hub (``adefossez/HTDemucs``
for ``htdemucs``; ``demucs.hf``): ``<name>.yaml`` names the signatures of the models in the bag
(and, for a bag of several, how each one's sources are weighted), and each model is one
``<signature>.safetensors`` whose metadata holds its class and constructor arguments. The
separation itself runs in the inference worker (:mod:`timbred.worker.stems`), like a
generation, through ``takes.stems``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

from timbred.backends.spec import BackendCapabilities, BackendSpec

_SIGNATURE = re.compile(r"^[0-9a-f]{8}$")
#: The bag file is small; anything bigger is not one.
_MAX_BAG_BYTES = 64 * 1024


def bag_file(directory: Path) -> Path | None:
    """The directory's bag file (``htdemucs.yaml``), or ``None``."""
    try:
        found = sorted(p for p in directory.glob("*.yaml") if p.is_file())
    except OSError:
        return None
    for path in found:
        if signatures(path) is not None:
            return path
    return None


def signatures(path: Path) -> list[str] | None:
    """The model signatures a bag file names, or ``None`` when it is not a bag file.

    Read without a YAML parser (the daemon stays light): the bag's ``models:`` line is a
    flow list (``models: ['955717e8']``) in every published bag.
    """
    try:
        if path.stat().st_size > _MAX_BAG_BYTES:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r"^models:\s*\[([^\]]*)\]", text, re.MULTILINE)
    if match is None:
        return None
    names = [part.strip().strip("'\"") for part in match.group(1).split(",") if part.strip()]
    if not names or not all(_SIGNATURE.match(name) for name in names):
        return None
    return names


def recognises(directory: Path) -> bool:
    return bag_file(directory) is not None


def missing(directory: Path) -> tuple[str, ...]:
    bag = bag_file(directory)
    if bag is None:
        return ("<name>.yaml (the bag file)",)
    return tuple(f"{sig}.safetensors" for sig in signatures(bag) or ()
                 if not (directory / f"{sig}.safetensors").is_file())


def sources(directory: Path) -> tuple[str, ...]:
    """The stems a bag's models separate (from the first model's metadata); empty when it
    cannot be read."""
    bag = bag_file(directory)
    sigs = signatures(bag) if bag is not None else None
    if not sigs:
        return ()
    kwargs = _metadata(directory / f"{sigs[0]}.safetensors").get("kwargs")
    try:
        names = json.loads(kwargs).get("sources") if isinstance(kwargs, str) else None
    except (ValueError, AttributeError):
        return ()
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def _metadata(path: Path) -> dict[str, Any]:
    """A safetensors file's ``__metadata__`` (its header is JSON after an 8-byte length)."""
    try:
        with path.open("rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 0 < length <= 100 * 1024 * 1024:
                return {}
            header = json.loads(fh.read(length))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def estimate_memory(directory: Path, dtype: str | None) -> int:
    """Its weights in float32, however they are stored (Demucs always runs in float32)."""
    from timbred.models import folder_weight_bytes

    return folder_weight_bytes(str(directory), directory, "float32")


SPEC = BackendSpec(
    name="demucs",
    summary="Meta's Hybrid Transformer Demucs: separates a take into drums, bass, other and "
            "vocals (htdemucs_6s: also guitar and piano); takes.stems, not generation",
    implementation="timbred.worker.stems:DemucsBackend",
    recognises=recognises,
    missing=missing,
    capabilities=BackendCapabilities(sample_rates=(44100,), channels=(2,),
                                     max_native_duration_s=7.8, features=frozenset()),
    model_features=lambda directory: frozenset(),
    params=MappingProxyType({
        "shifts": {"type": "integer", "minimum": 0, "maximum": 20, "default": 1,
                   "description": "Passes with the input shifted by a random offset (seeded), "
                                  "averaged: better separation, proportionally slower; 0 "
                                  "makes one pass without shifting."},
        "overlap": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.25,
                    "description": "How much consecutive segments overlap (crossfaded)."},
    }),
    estimate_memory=estimate_memory,
    needs=("local_weights",),
    model_hint="a Demucs bag: NAME.yaml naming its models' SIGNATURE.safetensors files "
               "(timbrectl models pull htdemucs)",
    task="separate",
)
