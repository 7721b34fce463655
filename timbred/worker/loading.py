"""What every torch backend does the same way with its model: the device check, the dtype
table, the revision of a hub snapshot, a failed load translated into Timbre's tree, and the
one loaded model's state (:class:`OneModel`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from timbred import errors
from timbred.backends.files import pipeline_class
from timbred.worker.backend import Capabilities
from timbred.worker.device import is_oom, oom_reason, release_memory

__all__ = ["TORCH_DTYPES", "LoadedState", "OneModel", "load_failure", "snapshot_revision",
           "source_pipeline_class", "torch_device"]

#: torch's dtype for each name in :data:`timbred.worker.backend.DTYPES`.
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_SNAPSHOT_RE = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def torch_device(source: str, device: str) -> torch.device:
    """``device`` as torch's, refused (naming what torch sees) when it is not there."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise errors.ModelLoadFailed(
                source, f"device {device!r} requested but torch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise errors.ModelLoadFailed(
                source, f"device {device!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    return torch.device(device)


def snapshot_revision(source: str) -> str | None:
    """The commit of a Hugging Face cache snapshot ``source`` lies in, or ``None``."""
    match = _SNAPSHOT_RE.search(str(Path(source).resolve()))
    return match.group(1) if match else None


def source_pipeline_class(source: str) -> str | None:
    """The class ``model_index.json`` names, for a directory or a cached hub snapshot."""
    directory = Path(source)
    if not directory.is_dir():
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(source, local_files_only=True))
        except Exception as exc:
            raise errors.ModelNotFound(
                source, "not a local directory and not in the Hugging Face cache (pull it "
                "first)") from exc
    return pipeline_class(directory)


def load_failure(source: str, exc: BaseException, device: torch.device) -> errors.TimbreError:
    """A foreign exception raised while loading, as the error to raise (memory released)."""
    release_memory(str(device))
    if is_oom(exc):
        return errors.ModelLoadFailed(
            source, f"{oom_reason(exc, str(device))} (try dtype=float16/bfloat16, "
            "another device, or unload other models)"
        )
    return errors.ModelLoadFailed(source, f"{type(exc).__name__}: {exc}")


class LoadedState(Protocol):
    """What :class:`OneModel` reads of a backend's loaded-model state."""

    @property
    def device(self) -> torch.device: ...
    @property
    def capabilities(self) -> Capabilities: ...
    @property
    def memory_bytes(self) -> int: ...


S = TypeVar("S", bound=LoadedState)


class OneModel(Generic[S]):
    """A backend's hold on its one loaded model: the state it set at load (``_state``), and
    the :class:`timbred.worker.backend.Backend` members that only read or drop it."""

    _state: S | None = None
    #: What :meth:`_require` says when nothing is loaded.
    _nothing_loaded = "no model is loaded in this backend"

    def unload(self) -> None:
        """Drop the model; on CUDA also return the cached blocks to the driver."""
        state, self._state = self._state, None
        if state is not None:
            device = state.device
            del state
            release_memory(str(device))

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded."""
        return self._state is not None

    @property
    def capabilities(self) -> Capabilities:
        """What the loaded model can do."""
        return self._require().capabilities

    def memory_bytes(self) -> int:
        """Bytes of weights and buffers, computed once at load (safe from any thread)."""
        state = self._state
        return 0 if state is None else state.memory_bytes

    def _require(self) -> S:
        if self._state is None:
            raise errors.GenerationFailed(self._nothing_loaded)
        return self._state
