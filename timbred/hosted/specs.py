"""The hosted providers as families in the backend registry.

Each provider is one :class:`~timbred.backends.spec.BackendSpec` (``replicate``,
``stability``, ``elevenlabs``): ``backends.list`` shows its parameters beside the local
families', requests are checked against its schema at submit like any family's, and recipes
name it as their backend. It recognises no model directory (its models are named
``provider:model``), needs an API key instead of local weights, and runs in the daemon's
hosted executor (:mod:`timbred.executors.hosted`), never in the inference worker.
"""

from __future__ import annotations

from pathlib import Path

from timbred.backends.spec import BackendCapabilities, BackendSpec
from timbred.hosted import provider as load_provider
from timbred.hosted.names import PROVIDERS

__all__ = ["ELEVENLABS", "REPLICATE", "STABILITY"]

_SUMMARIES = {
    "replicate": "Models hosted on Replicate (replicate:OWNER/NAME[:VERSION]), such as "
                 "replicate:meta/musicgen; billed by Replicate per second of compute.",
    "stability": "Stability AI's Stable Audio API (stability:MODEL); billed in credits per "
                 "take.",
    "elevenlabs": "ElevenLabs' Eleven Music (elevenlabs:music); billed by ElevenLabs.",
}


def _nothing(_: Path) -> bool:
    return False


def _no_files(_: Path) -> tuple[str, ...]:
    return ()


def _no_features(_: Path) -> frozenset[str]:
    return frozenset()


def _spec(name: str) -> BackendSpec:
    provider = load_provider(name)
    seeded = getattr(provider, "seeded", False)
    return BackendSpec(
        name=name,
        summary=_SUMMARIES[name],
        implementation=f"timbred.hosted.{name}:PROVIDER",
        recognises=_nothing,
        missing=_no_files,
        capabilities=BackendCapabilities(
            sample_rates=tuple(getattr(provider, "sample_rates", (44100,))),
            channels=tuple(getattr(provider, "channels", (1, 2))),
            max_native_duration_s=float(getattr(provider, "max_duration_s", 30.0)),
            # "seeded" is a promise of bit-identical audio; hosted ones make none (replay
            # says so), whatever seed they take.
            features=frozenset({"seeded"}) if seeded else frozenset()),
        model_features=_no_features,
        params=provider.params,
        needs=("api_key",),
        model_hint=f"{name}:MODEL (hosted; a key from `timbrectl auth set {name}` or "
                   f"${PROVIDERS[name].env_var})",
        hosted=True,
    )


REPLICATE = _spec("replicate")
STABILITY = _spec("stability")
ELEVENLABS = _spec("elevenlabs")
