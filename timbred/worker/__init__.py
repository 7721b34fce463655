"""The inference side of Timbre: backends, and the worker process that keeps them warm.

Importing this package is cheap and torch-free (the daemon imports it): the backend
interface (:mod:`.backend`), audio-file checks (:mod:`.audio_io`) and the process handle
(:mod:`.process`) are plain Python + numpy. :mod:`.musicgen` imports torch and
transformers and is only ever imported inside the worker process.
"""

from __future__ import annotations

from timbred.request import Request
from timbred.worker.backend import (
    Backend,
    CancelToken,
    Capabilities,
    GenerationOutput,
    ProgressCallback,
)
from timbred.worker.process import LoadedModel, WorkerHandle, WorkerInfo

__all__ = [
    "Backend",
    "CancelToken",
    "Capabilities",
    "GenerationOutput",
    "LoadedModel",
    "ProgressCallback",
    "Request",
    "WorkerHandle",
    "WorkerInfo",
]
