"""The backend registry: which families exist, and which one a model directory belongs to.

Importable without torch (the daemon, the CLI and the studio use it). Built-in families are
listed in :data:`BUILTIN`; adding one is a module with its :class:`BackendSpec` and one line
there. Tests register their own (a tone generator) with :func:`register`, never shipped.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from timbred.backends.spec import BackendSpec
from timbred.errors import InvalidParams

#: ``module:attribute`` of each built-in family's spec, in the order they are tried.
BUILTIN: tuple[str, ...] = (
    "timbred.backends.musicgen:SPEC",
    "timbred.backends.stable_audio:SPEC",
    "timbred.backends.ace_step:SPEC",
    # Stems: separates takes (takes.stems), never offered for generation.
    "timbred.backends.demucs:SPEC",
    # Hosted providers: models named provider:model, run by the daemon's hosted executor.
    "timbred.hosted.specs:REPLICATE",
    "timbred.hosted.specs:STABILITY",
    "timbred.hosted.specs:ELEVENLABS",
)

_lock = threading.Lock()
_specs: dict[str, BackendSpec] | None = None


def _loaded() -> dict[str, BackendSpec]:
    global _specs
    with _lock:
        if _specs is None:
            specs: dict[str, BackendSpec] = {}
            for path in BUILTIN:
                module, _, attr = path.partition(":")
                spec: BackendSpec = getattr(importlib.import_module(module), attr)
                specs[spec.name] = spec
            _specs = specs
        return _specs


def register(spec: BackendSpec) -> None:
    """Add a family (or replace one of the same name)."""
    specs = _loaded()
    with _lock:
        specs[spec.name] = spec


def unregister(name: str) -> None:
    """Remove a family added with :func:`register` (tests clean up with it)."""
    specs = _loaded()
    with _lock:
        specs.pop(name, None)


def specs() -> list[BackendSpec]:
    """Every family, built-ins first."""
    return list(_loaded().values())


def param_names() -> frozenset[str]:
    """Every name some family takes as its own parameter (a request naming one that its
    model's family does not take is refused, naming what that family takes)."""
    return frozenset(name for spec in _loaded().values() for name in spec.params)


def get(name: str) -> BackendSpec:
    """The family called ``name``; :class:`InvalidParams` naming the known ones otherwise."""
    spec = _loaded().get(name)
    if spec is None:
        known = ", ".join(_loaded())
        raise InvalidParams(f"unknown backend {name!r}; known: {known}", param="backend")
    return spec


def for_directory(directory: Path) -> BackendSpec | None:
    """The family whose models look like ``directory``, or ``None``."""
    for spec in _loaded().values():
        if spec.recognises(directory):
            return spec
    return None


def hints() -> str:
    """What each family's model directories hold, for a refusal's message."""
    return "; ".join(f"{s.name}: {s.model_hint}" for s in _loaded().values() if s.model_hint)
