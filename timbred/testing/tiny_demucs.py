"""A tiny Hybrid Transformer Demucs for tests: TEST FIXTURE ONLY.

:func:`build_tiny_htdemucs` writes a directory laid out as the Hugging Face hub holds
``htdemucs`` (``adefossez/HTDemucs``, the layout demucs 4.1's ``demucs.hf`` reads): a bag file
``<name>.yaml`` naming its models' signatures, and one ``<signature>.safetensors`` per model
whose metadata holds the model class and its constructor arguments as JSON. The model is an
``HTDemucs`` with the real architecture's kinds of layers (time and frequency branches, a
cross-domain transformer) at toy widths, random but seeded weights, so the real loading and
separation code (``apply_model`` with its segments, shifts and overlaps) runs in well under a
second per second of audio.

The weights are random: its "stems" are noise-shaped filters of the input, never a
separation. It is never a real model and must never be offered to users as one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from timbred.testing.checkpoint import build_once

__all__ = ["BUILDER_VERSION", "SAMPLE_RATE", "SEGMENT_S", "SOURCES", "build_tiny_htdemucs",
           "htdemucs_kwargs", "save_bag"]

BUILDER_VERSION = 1
SAMPLE_RATE = 44100
SOURCES = ("drums", "bass", "other", "vocals")
#: Seconds of audio the model takes in one pass (htdemucs: 7.8); longer audio is split into
#: overlapping segments, which the tests want to see several of.
SEGMENT_S = 1.0
_STAMP = ".timbre-tiny-htdemucs.json"


def htdemucs_kwargs(*, tiny: bool = True) -> dict[str, Any]:
    """``HTDemucs`` constructor arguments: toy widths, or (``tiny=False``) those of the
    published htdemucs (the class's defaults, 4 sources, 7.8 s segments) for benchmarks."""
    if not tiny:
        return {"sources": list(SOURCES), "segment": 7.8}
    return {"sources": list(SOURCES), "audio_channels": 2, "samplerate": SAMPLE_RATE,
            "segment": SEGMENT_S, "channels": 4, "depth": 2, "nfft": 512,
            "t_layers": 1, "t_heads": 2, "t_hidden_scale": 1.0, "bottom_channels": 0,
            "dconv_comp": 2, "norm_starts": 4}


def save_bag(directory: Path, name: str, kwargs: dict[str, Any], *, seed: int = 0,
             models: int = 1) -> None:
    """Write ``<name>.yaml`` and its models' ``.safetensors`` into ``directory`` (seeded
    random weights), as the hub keeps a Demucs bag."""
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    signatures = []
    for index in range(models):
        torch.manual_seed(seed + index)
        model = HTDemucs(**kwargs)
        signature = f"{seed + index:08x}"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / f"{signature}.safetensors"), metadata={
            "klass": "demucs.htdemucs.HTDemucs",
            "args": json.dumps([]),
            "kwargs": json.dumps(kwargs),
        })
        signatures.append(signature)
    # The bag file is YAML; these lines are its JSON subset (YAML 1.2 reads JSON).
    (directory / f"{name}.yaml").write_text(f"models: {json.dumps(signatures)}\n",
                                            encoding="utf-8")


def build_tiny_htdemucs(dest: Path, *, seed: int = 0) -> Path:
    """A tiny random htdemucs bag at ``dest`` (built once per ``seed`` and builder version)."""
    stamp = {"builder": BUILDER_VERSION, "seed": seed, "torch": torch.__version__}
    return build_once(dest, stamp, _STAMP,
                      lambda tmp: save_bag(tmp, "tiny-htdemucs", htdemucs_kwargs(), seed=seed))
