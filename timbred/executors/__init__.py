"""Where generations run: the seam between the scheduler and whatever decodes.

The scheduler (:mod:`timbred.queue.generation`) talks only to an :class:`Executor`.
The local inference worker process (:class:`timbred.worker.process.WorkerHandle`) and a Ray
actor on a cluster node (:class:`timbred.executors.ray.RayActorExecutor`) implement it; the
pool (:mod:`timbred.queue.pool`) holds one or more of them. Hosted providers run in their
own lane (:mod:`timbred.executors.hosted`). An executor holds loaded models by id, decodes batches
with progress and streaming preview, cancels, and says what it holds; every failure is a
:mod:`timbred.errors` error (``WorkerCrashed`` when the executor itself was lost, which
fails only the jobs it was running).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from timbred.request import Request
    from timbred.worker.backend import GenerationOutput, Separation
    from timbred.worker.process import LoadedModel, WorkerInfo

#: ``on_progress(step, total)`` over the whole batch, in the event loop.
ProgressHandler = Callable[[int, int], None]
#: ``on_preview(request_index, start_sample, audio)``, in the event loop.
BatchPreviewHandler = Callable[[int, int, npt.NDArray[np.float32]], None]

__all__ = ["BatchPreviewHandler", "Executor", "ProgressHandler"]


class Executor(Protocol):
    """What the scheduler needs from a place that runs generations."""

    @property
    def alive(self) -> bool:
        """Whether it is running and usable (a lost one is started again by :meth:`start`)."""

    @property
    def pid(self) -> int | None:
        """Its process id, where it has one it knows."""

    @property
    def info(self) -> WorkerInfo | None:
        """What it reported when it started: its devices, threads and versions."""

    def where(self) -> dict[str, Any]:
        """Where it runs, for the job record: ``executor`` (local, ray), and the node,
        actor and process as far as it knows them."""

    async def start(self) -> None:
        """Start (or restart after a loss) and wait until ready; a no-op when running."""

    async def stop(self) -> None:
        """Cancel what runs, release everything, stop."""

    async def load(self, model_id: str, source: str, device: str = "cpu",
                   dtype: str = "float32", *, backend: str = "musicgen",
                   options: Mapping[str, Any] | None = None) -> LoadedModel:
        """Hold ``source`` as ``model_id``, loaded by ``backend`` with ``options``."""

    async def unload(self, model_id: str) -> bool:
        """Release ``model_id``; whether it was held."""

    async def ps(self) -> list[LoadedModel]:
        """The models it holds (answered at once, even mid-generation)."""

    async def generate_batch(self, model_id: str, items: Sequence[Request],
                             on_progress: ProgressHandler | None = None, *,
                             on_preview: BatchPreviewHandler | None = None,
                             preview_chunk_s: float = 1.0) -> list[GenerationOutput]:
        """Decode ``items`` together with ``model_id``: one output per request."""

    async def separate(self, model_id: str, audio: npt.NDArray[np.float32], sample_rate: int,
                       options: Mapping[str, Any],
                       on_progress: ProgressHandler | None = None) -> Separation:
        """Separate a take's audio into stems with the loaded separator ``model_id``."""

    async def cancel(self, item: int | None = None) -> None:
        """Cancel what is decoding (``item``: only that request of the batch)."""
