"""Sidecars: ``<take file name>.json`` beside each take, everything needed to re-render it.

The name keeps the take's extension (``take-1.mp3.json``) so that exports of one take in
several formats do not clash. The format is ``schemas/take.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final

from timbred.errors import InvalidParams
from timbred.takes.metadata import TakeMetadata
from timbred.takes.options import ExportOptions

__all__ = ["SIDECAR_SCHEMA_VERSION", "SIDECAR_SUFFIX", "read_sidecar", "sidecar",
           "sidecar_bytes", "sidecar_path"]

SIDECAR_SCHEMA_VERSION: Final = 1
SIDECAR_SUFFIX: Final = ".json"


def sidecar_path(take: str | os.PathLike[str]) -> Path:
    """``<take file name>.json`` beside the take."""
    p = Path(take)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def sidecar(metadata: TakeMetadata, options: ExportOptions, *, file_name: str, data: bytes,
            sample_rate: int, channels: int, frames: int) -> dict[str, Any]:
    """The sidecar of the take file ``file_name`` holding ``data`` (the encoded, tagged bytes
    of ``frames`` sample frames), as plain JSON types."""
    md = metadata
    return {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "take": {
            "path": file_name,
            "format": options.format,
            "subtype": options.subtype,
            "sample_rate": sample_rate,
            "channels": channels,
            "frames": frames,
            "duration_s": frames / sample_rate,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "job_id": md.job_id,
        "take_index": md.take_index,
        "created_at": md.created_at,
        "timbre_version": md.timbre_version,
        "prompt": md.prompt,
        "title": md.title,
        "seed": md.seed,
        "model": md.model,
        "revision": md.revision,
        "backend": md.backend,
        "device": md.device,
        "params": md.params,
        "recipe": md.recipe,
        "loudness": None if md.loudness is None else md.loudness.to_dict(),
        "export": options.to_dict(),
        "analysis": md.analysis,
        "mastering": md.mastering,
        "loop": md.loop,
        "stem": md.stem,
        "separation": md.separation,
    }


def sidecar_bytes(metadata: TakeMetadata, options: ExportOptions, *, file_name: str,
                  data: bytes, sample_rate: int, channels: int, frames: int) -> bytes:
    """:func:`sidecar` as the UTF-8 JSON file written (indented, ending in a newline)."""
    doc = sidecar(metadata, options, file_name=file_name, data=data, sample_rate=sample_rate,
                  channels=channels, frames=frames)
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def read_sidecar(take: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``take`` as a dictionary, or ``None`` if it has none.

    InvalidParams (naming ``sidecar``) if it exists but is not a JSON object.
    """
    side = sidecar_path(take)
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"{side}: cannot read the sidecar: {exc}", param="sidecar") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"{side}: not valid JSON: {exc}", param="sidecar") from exc
    if not isinstance(data, dict):
        raise InvalidParams(f"{side}: not a JSON object", param="sidecar")
    return data
