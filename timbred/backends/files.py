"""Which files a checkpoint needs: shared by the families that load the same layouts."""

from __future__ import annotations

import json
from pathlib import Path


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
