"""Which files a checkpoint needs: shared by the families that load the same layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Component classes that hold no weights: configs and vocabularies only.
_WEIGHTLESS_SUFFIXES = ("Scheduler", "Tokenizer", "TokenizerFast", "FeatureExtractor",
                        "Processor", "ImageProcessor")


def transformers_checkpoint_missing(snapshot: Path) -> tuple[str, ...]:
    """What a transformers ``from_pretrained`` load needs from ``snapshot`` that is missing.

    Needs ``config.json`` and complete weights: every shard an index names, or the single file.
    A broken symlink (a blob deleted under the snapshot) counts as missing.
    """
    missing: list[str] = []
    if not (snapshot / "config.json").is_file():
        missing.append("config.json")
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        shards = index_shards(snapshot / index_name)
        if shards is not None:
            missing.extend(s for s in shards if not (snapshot / s).is_file())
            return tuple(missing)
        if (snapshot / single).is_file():
            return tuple(missing)
    missing.append("model.safetensors")
    return tuple(missing)


def index_shards(index: Path) -> list[str] | None:
    """The shard files an ``*.index.json`` names; ``None`` without one; the index if unreadable."""
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(v) for v in weight_map.values()})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        # An unreadable index cannot vouch for any shard: report the index itself as missing.
        return [index.name]


def read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pipeline_class(directory: Path) -> str | None:
    """The pipeline class a diffusers directory's ``model_index.json`` names, or ``None``."""
    name = read_json(directory / "model_index.json").get("_class_name")
    return name if isinstance(name, str) else None


def pipeline_components(directory: Path) -> dict[str, str]:
    """Each component folder of a diffusers pipeline, with its class name."""
    components: dict[str, str] = {}
    for key, value in read_json(directory / "model_index.json").items():
        if (not key.startswith("_") and isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            components[key] = value[1]
    return components


def diffusers_pipeline_missing(snapshot: Path) -> tuple[str, ...]:
    """What a diffusers ``from_pretrained`` load needs from ``snapshot`` that is missing.

    ``model_index.json``, and in each component's folder a config file; a model component
    also needs its weights (every shard an index names, or a single safetensors or ``.bin``
    file). Schedulers and tokenizers hold configs and vocabularies only.
    """
    if not (snapshot / "model_index.json").is_file():
        return ("model_index.json",)
    missing: list[str] = []
    for folder, cls in pipeline_components(snapshot).items():
        base = snapshot / folder
        if not any(p.is_file() for p in base.glob("*.json")):
            missing.append(f"{folder}/ (its config)")
            continue
        if cls.endswith(_WEIGHTLESS_SUFFIXES):
            continue
        missing.extend(f"{folder}/{name}" for name in _component_weights_missing(base))
    return tuple(missing)


def _component_weights_missing(folder: Path) -> list[str]:
    for index in sorted(folder.glob("*.index.json")):
        shards = index_shards(index)
        if shards is not None:
            return [s for s in shards if not (folder / s).is_file()]
    if any(p.is_file() for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern)):
        return []
    return ["*.safetensors (its weights)"]
