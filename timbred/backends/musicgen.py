"""MusicGen (Meta's, through transformers) as the registry sees it: torch-free.

Its inference lives in :mod:`timbred.worker.musicgen`; this module only says how to recognise
a checkpoint, what the family can do and which parameters it takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

from timbred.backends.files import transformers_checkpoint_missing
from timbred.backends.spec import BackendCapabilities, BackendSpec

#: The ``model_type`` values of transformers' MusicGen configs.
MODEL_TYPES = frozenset({"musicgen", "musicgen_melody"})


def _model_type(directory: Path) -> str | None:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def recognises(directory: Path) -> bool:
    # A config.json without model_type has always been taken for MusicGen (the checkpoint's
    # own loader says so precisely if it is not); another model_type is another family.
    if not (directory / "config.json").is_file():
        return False
    model_type = _model_type(directory)
    return model_type is None or model_type in MODEL_TYPES


def model_features(directory: Path) -> frozenset[str]:
    base = {"continuation", "batching", "streaming", "seeded"}
    if _model_type(directory) == "musicgen_melody":
        base.add("melody")
    return frozenset(base)


SPEC = BackendSpec(
    name="musicgen",
    summary="Meta's MusicGen through transformers: text (and a melody, or audio to "
            "continue) to 32 kHz mono or stereo music, autoregressive, windowed past 30 s",
    implementation="timbred.worker.musicgen:MusicgenBackend",
    recognises=recognises,
    missing=transformers_checkpoint_missing,
    capabilities=BackendCapabilities(
        sample_rates=(32000,), channels=(1, 2), max_native_duration_s=30.0,
        features=frozenset({"melody", "continuation", "batching", "streaming", "seeded"})),
    model_features=model_features,
    params=MappingProxyType({
        "temperature": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.0,
                        "description": "Sampling temperature (0 = greedy)."},
        "top_k": {"type": "integer", "minimum": 0, "maximum": 2048, "default": 250,
                  "description": "Sample from the k most likely tokens (0 = off)."},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                  "description": "Nucleus sampling threshold (0 = off)."},
        "guidance": {"type": "number", "minimum": 0, "maximum": 30, "default": 3.0,
                     "description": "Classifier-free guidance scale (<= 1 = off)."},
    }),
    # Guidance on doubles the rows a request decodes: requests share it or go apart.
    batch_key=lambda params: (float(params["guidance"]) > 1,),
    load_options=("window_s", "stride_s", "precision"),
    needs=("local_weights",),
    model_hint="a directory with a MusicGen config.json (model_type musicgen or "
               "musicgen_melody) and its weights",
)
