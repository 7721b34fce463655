"""The hosted lane: jobs for ``provider:model`` run beside the local worker's.

A hosted job waits on a provider's servers, not on this machine, so it does not queue behind
a long local decode (nor a local one behind it): this lane takes hosted jobs from the same
durable queue, in their own priority order, up to ``providers.max_concurrent`` at once, and
runs each through the same states, events, export, history and recipe as a local job.

What makes it hosted:

* each take is one call at the provider, its handle (a prediction id) committed with the job
  *before* it is waited on, so a daemon restart resumes the same predictions instead of
  paying twice (:meth:`JobStore.recover` keeps such jobs running; :meth:`HostedLane.schedule`
  picks them up first);
* a cancel cancels the predictions at the provider; a daemon stop leaves them running there,
  to be resumed;
* what a job cost is recorded with it (the provider's figure or an estimate from its
  published price), and budgets are checked at submit (:meth:`Generation.resolve`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import numpy as np

from timbred import __version__
from timbred.backends import registry
from timbred.errors import Cancelled, InternalError, Interrupted, ProviderError, TimbreError
from timbred.executors.hosted import HostedExecutor, Take
from timbred.hosted.names import PROVIDERS, split
from timbred.queue.jobs import Job, JobState
from timbred.request import MAX_SEED, Request
from timbred.worker.audio_io import convert_channels, fit_length
from timbred.worker.backend import GenerationOutput

if TYPE_CHECKING:
    from timbred.queue.generation import Generation

log = logging.getLogger(__name__)

__all__ = ["HostedLane", "resumable"]


def resumable(job: Job) -> bool:
    """Whether a hosted job left running by a stopped daemon can be resumed: every take's
    call was recorded at its provider (one not yet created might have been, unseen, so that
    job is interrupted rather than risk paying twice)."""
    calls = (job.remote or {}).get("calls") or []
    return (str(job.params.get("backend")) in PROVIDERS and bool(calls)
            and all(isinstance(c, dict) and c.get("id") for c in calls))


@dataclasses.dataclass
class _Run:
    scope: anyio.CancelScope | None = None
    user_cancelled: bool = False
    #: The recorded call of each take (None until recorded), and the takes finished.
    calls: list[dict[str, Any] | None] = dataclasses.field(default_factory=list)
    finished: set[int] = dataclasses.field(default_factory=set)


class HostedLane:
    """Schedules and runs the hosted jobs of one daemon (see the module docstring)."""

    def __init__(self, generation: Generation) -> None:
        self.gen = generation
        self.executor = HostedExecutor(generation.settings)
        self.running: dict[str, _Run] = {}
        self.backends = frozenset(PROVIDERS)
        self._wake = anyio.Event()
        self._slots = anyio.Semaphore(generation.settings["providers.max_concurrent"])
        self._idle = anyio.Event()
        self._idle.set()
        self._record_lock = anyio.Lock()

    def wake(self) -> None:
        self._wake.set()

    async def schedule(self, tg: anyio.abc.TaskGroup, resumed: tuple[str, ...]) -> None:
        """Resume the jobs a stopped daemon left running at their providers, then run queued
        hosted jobs as slots free up, until the daemon stops."""
        for job_id in resumed:
            await self._slots.acquire()
            job = await self.gen.get(job_id)
            log.info("job %s: resuming its %s prediction(s)", job.id, job.params["backend"])
            tg.start_soon(self._run, job)
        while not self.gen.stopping:
            self._wake = anyio.Event()
            await self._slots.acquire()
            found: Job | None = await anyio.to_thread.run_sync(
                lambda: self.gen.store.next_queued(self.backends, among=True))
            if found is None or self.gen.stopping:
                self._slots.release()
                if found is None:
                    await self._wake.wait()
                continue
            try:
                job = await self.gen._transition(found, JobState.LOADING)
            except TimbreError:  # cancelled since it was read
                self._slots.release()
                continue
            tg.start_soon(self._run, job)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a running hosted job (its predictions too); whether it was running here."""
        run = self.running.get(job_id)
        if run is None:
            return False
        run.user_cancelled = True
        if run.scope is not None:
            run.scope.cancel()
        return True

    async def close(self) -> None:
        """Stop every hosted job here, leaving their predictions running at the providers
        (recorded: the next start resumes them)."""
        for run in list(self.running.values()):
            if run.scope is not None:
                run.scope.cancel()
        with anyio.move_on_after(10):
            await self._idle.wait()

    # --- one job ------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        run = _Run()
        self.running[job.id] = run
        self._idle = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                try:
                    if (await self.gen.get(job.id)).cancel_requested:
                        scope.cancel()  # asked between its claim and this task's start
                        await anyio.lowlevel.checkpoint()
                    await self._make(job, run)
                except TimbreError as exc:
                    log.warning("job %s failed: %s", job.id, exc)
                    await self._cancel_calls(job, run)
                    await self.gen._finish(job, JobState.FAILED, exc)
                except Exception as exc:  # a bug: fail the job with the reason, keep serving
                    log.exception("job %s failed unexpectedly", job.id)
                    await self._cancel_calls(job, run)
                    await self.gen._finish(job, JobState.FAILED,
                                           InternalError(f"{type(exc).__name__}: {exc}"))
            if scope.cancelled_caught:
                await self._stopped(job, run)
        finally:
            self.running.pop(job.id, None)
            self._slots.release()
            if not self.running:
                self._idle.set()

    async def _stopped(self, job: Job, run: _Run) -> None:
        """After a cancel (the user's) or a stop (the daemon's)."""
        with anyio.CancelScope(shield=True):
            if run.user_cancelled or (await self.gen.get(job.id)).cancel_requested:
                await self._cancel_calls(job, run)
                await self.gen._finish(job, JobState.CANCELLED, None)
                return
            current = await self.gen.get(job.id)
            if current.terminal or resumable(current):
                return  # left running at the provider: the next start resumes it
            await self.gen._finish(job, JobState.INTERRUPTED, Interrupted(current.state.value))

    async def _cancel_calls(self, job: Job, run: _Run) -> None:
        name = str(job.params.get("backend"))
        with anyio.CancelScope(shield=True):
            for index, call in enumerate(run.calls):
                if call is not None and index not in run.finished:
                    await self.executor.cancel(name, call)

    async def _make(self, job: Job, run: _Run) -> None:
        began = time.monotonic()
        name, model = split(job.model) or (str(job.params["backend"]), job.model)
        spec = registry.get(name)
        base = Request.from_job(job.params, spec.params)
        count = base.variations
        # Take i samples from seed + i, as a local batch's rows draw from one seed's stream:
        # the recipe records each call's seed, and a replay of take i asks for it again.
        requests = [dataclasses.replace(base, seed=(base.seed + i) % (MAX_SEED + 1),
                                        variations=1) for i in range(count)]
        remote: dict[str, Any] = dict(job.remote or {})
        remote.setdefault("provider", name)
        calls = list(remote.get("calls") or [None] * count)
        remote["calls"] = calls
        run.calls = [c if isinstance(c, dict) else None for c in calls]
        if job.state is JobState.LOADING:
            job = await self.gen._transition(job, JobState.GENERATING)
        on_progress = self.gen._progress_callback([job], time.monotonic())
        on_progress(0, count)
        takes: list[Take | None] = [None] * count

        async def one(index: int) -> None:
            async def record(handle: Any) -> None:
                async with self._record_lock:
                    calls[index] = run.calls[index] = dict(handle)
                    await anyio.to_thread.run_sync(
                        lambda: self.gen.store.set_remote(job.id, remote))

            def on_status(status: str) -> None:
                self.gen.bus.publish("job.remote", {"job_id": job.id, "take_index": index + 1,
                                                    "provider": name, "status": status})

            takes[index] = await self.executor.take(
                name, model, requests[index], index, remote=run.calls[index], record=record,
                on_status=on_status)
            run.finished.add(index)
            on_progress(len(run.finished), count)

        try:
            async with anyio.create_task_group() as tg:
                for index in range(count):
                    tg.start_soon(one, index)
        except BaseExceptionGroup as group:
            # One take's failure is the job's (the others were cancelled with it).
            failures = [e for e in group.exceptions if isinstance(e, TimbreError)]
            if failures:
                raise failures[0] from None
            raise
        made = [t for t in takes if t is not None]
        if len(made) != count:
            raise Cancelled()
        decode_s = time.monotonic() - began
        output = _output(made, base.duration, name, model)
        output.decode_s = decode_s
        cost = _cost(name, [t.result for t in made])
        await anyio.to_thread.run_sync(lambda: self.gen.store.set_cost(job.id, cost))
        recipe = self._recipe(job, name, model, made, output, requests, cost)
        await self.gen._encode(job, None, output, [base], 0, began=began, load_s=0.0,
                               recipe=recipe)

    def _recipe(self, job: Job, name: str, model: str, takes: list[Take],
                output: GenerationOutput, requests: list[Request], cost: dict[str, Any]
                ) -> dict[str, Any]:
        hosted = dict(job.params.get("hosted") or {})
        first = takes[0].result.info
        version = first.get("version")
        pinned = job.model
        if name == "replicate" and version and ":" not in model:
            pinned = f"{job.model}:{version}"
        spec = registry.get(name)
        return {
            "model": job.model, "model_id": job.model, "revision": version,
            "source": self.executor.base_url(name), "backend": name,
            "device": f"hosted:{name}", "dtype": "unknown",
            "params": Request.from_job(job.params, spec.params).to_dict(),
            "sample_rate": output.sample_rate, "timbre_version": __version__,
            "info": output.info,
            "hosted": {
                "provider": name, "model": model, "pinned_model": pinned,
                "deterministic": bool(hosted.get("deterministic", False)),
                "calls": [{"seed": r.seed, **{k: v for k, v in t.result.info.items()
                                              if _plain(v)}}
                          for r, t in zip(requests, takes, strict=True)],
            },
            "cost": cost,
        }


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def _output(takes: list[Take], duration: float, name: str, model: str) -> GenerationOutput:
    """The takes as one ``(variations, channels, frames)`` array of the asked length."""
    rate = takes[0].sample_rate
    if any(t.sample_rate != rate for t in takes):
        raise ProviderError(name, "its takes came back at different sample rates: "
                            + ", ".join(str(t.sample_rate) for t in takes))
    channels = max(t.audio.shape[0] for t in takes)
    frames = round(duration * rate)
    returned = [t.audio.shape[1] / rate for t in takes]
    audio = np.stack([fit_length(convert_channels(t.audio, channels), frames)
                      for t in takes]).astype(np.float32, copy=False)
    info = {"backend": name, "source": model, "revision": takes[0].result.info.get("version"),
            "device": f"hosted:{name}", "dtype": "unknown",
            "returned_s": [round(s, 3) for s in returned]}
    return GenerationOutput(audio=audio, sample_rate=rate, info=info)


def _cost(name: str, results: list[Any]) -> dict[str, Any]:
    """A job's cost: the sum of its takes', an estimate if any part is one."""
    costs = [r.cost for r in results if r.cost is not None]
    usd = sum(c.usd for c in costs)
    estimate = any(c.estimate for c in costs) or len(costs) < len(results)
    bases = sorted({c.basis for c in costs})
    return {"provider": name, "usd": round(usd, 6), "estimate": estimate,
            "basis": "; ".join(bases) or "unknown (the provider gave no figure)"}
