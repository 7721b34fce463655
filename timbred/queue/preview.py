"""Streaming preview: a running job's audio as short WAV chunk files, announced by events.

The worker hands over finished audio while it generates (:class:`timbred.worker.backend.
Preview`); :class:`PreviewWriter` writes each piece as ``chunk-<index>-<variation>.wav``
(16-bit PCM, playable by anything) under ``previews/<job id>/`` in the daemon's private
runtime directory, then publishes a ``job.preview`` event naming the files and where they
sit in the take. A client plays the chunks in index order to hear the take while it is
still being made.

Why files and not audio inside events: events go to every subscriber and are kept for
replay, so they stay small; a file is read only by whoever plays it, and the runtime
directory is private (0700) and usually a tmpfs. Previews are for listening while waiting:
a job's folder is removed ``keep_s`` after the job ends, and the whole ``previews/`` folder
is swept when the daemon starts.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred import errors

__all__ = ["PreviewWriter", "preview_root", "remove_job_previews", "sweep"]

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], object]


def preview_root(runtime_dir: Path) -> Path:
    """Where previews live: ``previews/`` in the daemon's private runtime directory."""
    return runtime_dir / "previews"


def sweep(root: Path) -> int:
    """Remove every job's previews (at start-up: nothing can be playing them)."""
    if not root.is_dir():
        return 0
    removed = 0
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    return removed


def remove_job_previews(root: Path, job_id: str) -> None:
    """Remove one job's preview folder, if any."""
    shutil.rmtree(root / job_id, ignore_errors=True)


class PreviewWriter:
    """Writes one job's preview chunks in order and announces each with ``publish``.

    :meth:`put` is called from the worker handle's callback (in the event loop, where
    nothing may block); the files are written by :meth:`run` in a thread, in arrival order.
    :meth:`close` waits until everything put so far is written and announced, so that every
    ``job.preview`` event precedes the job's final ``job.state``.
    """

    def __init__(self, root: Path, job_id: str, *, sample_rate: int, channels: int,
                 total_samples: int, publish: Publish) -> None:
        self.folder = root / job_id
        self.job_id = job_id
        self.sample_rate = sample_rate
        self.channels = channels
        self.total_samples = total_samples
        self.publish = publish
        self.index = 0
        self.failed = False
        self._drained = anyio.Event()
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[int, npt.NDArray[np.float32]]](math.inf)

    def put(self, start: int, audio: npt.NDArray[np.float32]) -> None:
        """Queue a chunk: ``audio`` is ``(variations, channels, samples)`` from ``start``."""
        if not self.failed:
            self._send.send_nowait((start, audio))

    async def run(self) -> None:
        """Write queued chunks until :meth:`close`."""
        try:
            async with self._receive:
                async for start, audio in self._receive:
                    if self.failed:
                        continue
                    try:
                        event = await anyio.to_thread.run_sync(self._write, start, audio)
                    except (OSError, sf.LibsndfileError, errors.TimbreError) as exc:
                        # A preview is a convenience: a full runtime dir (or a chunk it cannot
                        # write) must not fail the job, nor escape into the daemon's tasks.
                        self.failed = True
                        log.warning("job %s: preview stopped: %s", self.job_id, exc)
                        continue
                    self.publish(event)
        finally:
            self._drained.set()

    async def close(self, timeout: float = 10.0) -> None:
        """No more chunks; returns once :meth:`run` has written and announced them all
        (or after ``timeout`` seconds)."""
        await self._send.aclose()
        with anyio.move_on_after(timeout):
            await self._drained.wait()

    def _write(self, start: int, audio: npt.NDArray[np.float32]) -> dict[str, Any]:
        if audio.ndim != 3 or audio.shape[1] != self.channels:
            raise errors.InternalError(f"preview chunk of shape {audio.shape}")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        frames = int(audio.shape[-1])
        paths = []
        for variation, take in enumerate(audio, start=1):
            path = self.folder / f"chunk-{self.index:04d}-{variation}.wav"
            # Written under a temporary name and renamed: a player never sees half a file.
            tmp = path.with_name(f".{path.name}.partial")
            sf.write(tmp, np.clip(take.T, -1.0, 1.0), self.sample_rate, subtype="PCM_16",
                     format="WAV")
            tmp.replace(path)
            paths.append(str(path))
        event = {
            "job_id": self.job_id,
            "index": self.index,
            "paths": paths,
            "start_sample": start,
            "frames": frames,
            "start_s": round(start / self.sample_rate, 6),
            "duration_s": round(frames / self.sample_rate, 6),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "final": start + frames >= self.total_samples,
        }
        self.index += 1
        return event
