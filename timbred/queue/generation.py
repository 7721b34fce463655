"""The generation service: the durable queue and the scheduler that feeds the workers.

One scheduler task takes queued jobs in priority order and runs each through
queued → loading → generating → encoding → done | failed | cancelled | interrupted, publishing a
``job.state`` event at every transition and throttled ``job.progress`` events while decoding.
Inference runs on the workers of a :class:`~timbred.queue.pool.Pool` (executors: local worker
processes, one per device, or Ray actors on a cluster), one batch per worker at a time, so
several batches decode at once; the event loop only waits on them. A worker crash fails only
the jobs it was running (with the reason) and the next job starts a fresh worker; a Ray actor
or node that is lost requeues its jobs on another worker (``executor.retries``). Which models
a worker holds, and for how long, is :mod:`timbred.queue.residency`'s business; which family
loads a model, :mod:`timbred.backends`'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import platformdirs

from timbred import __version__, models, presets
from timbred.backends import BackendSpec, registry
from timbred.config import Settings
from timbred.daemon.events import Event, EventBus
from timbred.daemon.runtime import check_socket_path, default_socket_path
from timbred.errors import (
    BudgetExceeded,
    Cancelled,
    ExecutorLost,
    InternalError,
    Interrupted,
    InvalidJobState,
    InvalidParams,
    ModelNotFound,
    ShuttingDown,
    TimbreError,
    WorkerCrashed,
)
from timbred.executors import Executor
from timbred.hosted import provider as load_provider
from timbred.hosted.base import Provider
from timbred.hosted.names import split as split_hosted
from timbred.protocol import schema
from timbred.queue import preview, stems
from timbred.queue.hosted import HostedLane
from timbred.queue.hosted import resumable as hosted_resumable
from timbred.queue.jobs import (
    TERMINAL_STATES,
    Job,
    JobState,
    JobStore,
    RecoveryReport,
    request_digest,
)
from timbred.queue.pool import REFRESH_S, Pool, Worker
from timbred.queue.residency import Loaded, spec_of
from timbred.request import DEFAULT_DURATION_S, DEFAULT_STRENGTH, DEFAULT_VARIATIONS, Request
from timbred.takes import publish
from timbred.takes.history import History, audio_sha256, request_export
from timbred.takes.library import Library, Take
from timbred.takes.options import ExportOptions
from timbred.testing import failpoints
from timbred.worker.audio_io import probe_audio
from timbred.worker.backend import GenerationOutput

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PROGRESS_EVENTS_PER_S = 10


def default_database() -> Path:
    return Path(platformdirs.user_data_dir("timbre")) / "timbre.sqlite3"


def default_output_dir() -> Path:
    return Path(platformdirs.user_music_dir()) / "Timbre"


def to_plain(obj: Any) -> Any:
    """A models.* dataclass as JSON types (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_plain(x) for x in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


#: Shortest take accepted at submit (``minimum`` of ``duration`` in ``schemas/``): a few
#: frames of any model; 1e-9 s rounded to no frame at all and failed only in the worker.
MIN_DURATION_S = 0.1


class Generation:
    """Jobs, the worker and the loaded models of one daemon run."""

    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.bus = bus
        db = Path(settings["data.database"] or default_database()).expanduser()
        db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = JobStore(db, max_queued=settings["jobs.max_queued"])
        self.output_root = Path(settings["output.dir"] or default_output_dir()).expanduser()
        self.history = History(settings, Library(db), self.output_root)
        #: The workers local models run on (one or more worker processes, or Ray actors),
        #: each decoding one batch at a time with its own warm models.
        self.pool = Pool(settings, bus)
        #: Jobs for hosted models (provider:model) run in their own lane, beside the worker.
        self.hosted = HostedLane(self)
        runtime_dir = check_socket_path(settings["daemon.socket"] or default_socket_path()).parent
        self.preview_root = preview.preview_root(runtime_dir)
        self.stopping = False
        self._wake = anyio.Event()
        self._idle = anyio.Event()  # set whenever a batch finishes running
        self._scheduler_done = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        #: Jobs requeued after their executor was lost -> the workers they were lost on.
        self._avoid: dict[str, set[str]] = {}
        # _finish is check-then-move; a cancel and the end of its batch may both finish one
        # job at the same moment, and the second must see the first's result.
        self._finishing = anyio.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Repair the queue, then schedule jobs and expire models until cancelled."""
        report = await self.recover()
        await self.pool.start()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._schedule)
            tg.start_soon(self.hosted.schedule, tg, report.resumed)
            tg.start_soon(self.pool.expire)
            task_status.started()

    @property
    def running(self) -> list[Job]:
        """The jobs decoding now on every worker (each worker's in batch order)."""
        return self.pool.running()

    @property
    def worker(self) -> Executor:
        """The first worker's executor (the only one with one local worker)."""
        return self.pool.workers[0].executor

    async def recover(self) -> RecoveryReport:
        """Repair what the last run left: job records agree with the takes written, partial
        files and previews are swept. Called by :meth:`run`; on its own by tests."""
        report = await anyio.to_thread.run_sync(self.store.recover, self._published,
                                                hosted_resumable)
        if report.done:
            log.info("jobs stopped after writing all their takes, recorded as done: %s",
                     ", ".join(report.done))
        if report.interrupted:
            log.warning("jobs interrupted by the last stop (not re-run): %s",
                        ", ".join(report.interrupted))
        swept = await anyio.to_thread.run_sync(publish.sweep_partials, self.output_root)
        if swept:
            log.info("removed %d leftover partial file(s) under %s", len(swept),
                     self.output_root)
        if report.queued:
            log.info("%d queued job(s) resume", report.queued_count)
        if report.resumed:
            log.info("hosted jobs still running at their providers, resumed: %s",
                     ", ".join(report.resumed))
        await anyio.to_thread.run_sync(preview.sweep, self.preview_root)
        return report

    def _published(self, job: Job) -> list[str]:
        """The paths of ``job``'s takes that made it into the history (files in place)."""
        return [t.path for t in self.history.library.takes_for_job(job.id)
                if t.deleted_at is None]

    async def close(self) -> None:
        """Stop taking jobs; interrupt the running one (recorded, never silently re-run)."""
        self.stopping = True
        self._wake.set()
        self.hosted.wake()
        await self.hosted.close()
        with anyio.move_on_after(10):
            while self.running:
                idle = self._idle = anyio.Event()
                for worker in self.pool.workers:
                    if worker.running:
                        await worker.executor.cancel()
                await idle.wait()
        if self._tg is not None and not self.running:
            # The scheduler may be mid-read (gathering a batch in a thread, which no cancel
            # stops): the stores close only once it is out, or their last read fails.
            with anyio.move_on_after(10):
                await self._scheduler_done.wait()
        with anyio.CancelScope(shield=True):
            await self.pool.stop()
            await anyio.to_thread.run_sync(self.store.close)
            await anyio.to_thread.run_sync(self.history.library.close)

    # --- state and events ---------------------------------------------------------------

    async def _transition(self, job: Job, state: JobState, **fields: Any) -> Job:
        job = await anyio.to_thread.run_sync(
            lambda: self.store.set_state(job.id, state, **fields))
        self._announce(job)
        return job

    def _announce(self, job: Job) -> None:
        self.bus.publish("job.state", {"job": job.to_dict()})

    def queue(self) -> dict[str, int]:
        return {"queued": self.store.queue_depth(),
                "running": len(self.running) + len(self.hosted.running)}

    # --- submit and control -------------------------------------------------------------

    async def submit(self, params: Mapping[str, Any]) -> Job:
        """Validate, record durably, and wake the scheduler; the job id is final on return.

        With ``idempotency_key``, submitting the same request again returns the job the
        first submission made (however often, across restarts); another request under a
        used key is refused, naming the parameter."""
        if self.stopping:
            raise ShuttingDown()
        key = params.get("idempotency_key")
        digest = None
        if key is not None:
            # A repeat (a client retrying after a lost reply, the watch folder after a crash
            # inside this call) gets the job its first attempt made, before anything is
            # resolved again: a random seed would differ, and a model removed since must not
            # turn an accepted request into a refused one.
            params = {k: v for k, v in params.items() if k != "idempotency_key"}
            digest = request_digest(params)
            if (found := await self._submitted(key, digest)) is not None:
                return found
        model, job_params = await anyio.to_thread.run_sync(self.resolve, params)
        return await self._enqueue(model, job_params, params.get("priority", 0), key, digest)

    async def submit_resolved(self, model: str, job_params: Mapping[str, Any], *,
                              idempotency_key: str | None = None) -> Job:
        """Queue a request :meth:`resolve` made, as it is (nothing resolved again: the same
        seed, preset and export on every attempt). Its output name, free when it was
        resolved, is checked again; ``idempotency_key`` works as in :meth:`submit`."""
        if self.stopping:
            raise ShuttingDown()
        job_params = dict(job_params)
        digest = None
        if idempotency_key is not None:
            # First: a repeat whose first attempt already wrote its takes would find its
            # own output name taken.
            digest = request_digest({"model": model, "params": job_params})
            if (found := await self._submitted(idempotency_key, digest)) is not None:
                return found
        if job_params.get("output") is not None:
            extension = ExportOptions.from_dict(job_params["export"]).extension
            await anyio.to_thread.run_sync(lambda: publish.check_output(
                job_params["output"], job_params["variations"], extensions=[extension]))
        return await self._enqueue(model, job_params, 0, idempotency_key, digest)

    async def _submitted(self, key: str, digest: str) -> Job | None:
        """The job an earlier submission under ``key`` made (None: none yet); another
        request under the key is refused, naming it."""
        return await anyio.to_thread.run_sync(self.store.find_submitted, key, digest)

    async def _enqueue(self, model: str, job_params: dict[str, Any], priority: int,
                       key: str | None, digest: str | None) -> Job:
        if key is None or digest is None:
            job = await anyio.to_thread.run_sync(
                lambda: self.store.submit(model, job_params, priority=priority))
            failpoints.hit("queued")
        else:
            job, created = await anyio.to_thread.run_sync(
                lambda: self.store.submit_once(model, job_params, priority, key=key,
                                               digest=digest))
            if not created:  # the same key raced in from another connection
                return job
        self._announce(job)
        self._wake.set()
        self.hosted.wake()
        return job

    def resolve(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Everything refusable at submit time is refused here, naming the parameter.

        Returns the model and the job's stored params: every default filled in (the seed
        drawn), the preset applied under explicit values, and the export options resolved.
        :meth:`submit` stores them; the watch folder resolves each prompt once, when its file
        is claimed, and queues the result with :meth:`submit_resolved`. Blocking (it reads
        files).
        """
        request = {k: v for k, v in params.items() if v is not None}
        preset_export: dict[str, Any] = {}
        if request.get("preset"):
            preset = presets.load(request["preset"])
            request, preset_export = presets.apply(preset, request)
        options = self.history.export_options(preset_export,
                                              request_export(request, preset_export))
        if options.master is not None:
            # An unknown or broken chain is refused now, not after the take is generated.
            from timbred.takes import mastering
            from timbred.takes.writer import chain_dir

            mastering.load_chain(options.master, chain_dir())
        model = request.get("model") or self.settings["models.default"]
        hosted = split_hosted(model)
        ref: models.ModelRef | None = None
        provider: Provider | None = None
        if hosted is not None:
            # provider:model: no weights here; the provider's own checks stand in for the
            # model directory's, and a key is looked for only when the job runs.
            provider = load_provider(hosted[0])
            provider.check_model(hosted[1])
            spec = registry.get(hosted[0])
            limit: float | None = getattr(provider, "max_duration_s", None)
        else:
            ref = models.resolve(model)
            if ref.backend is not None and registry.get(ref.backend).task != "generate":
                raise InvalidParams(
                    f"choose a model that makes music (timbrectl models list): {model} "
                    f"({ref.backend}) separates takes into stems; for that, run `timbrectl "
                    f"takes stems TAKE --model {model}`", param="model")
            if not ref.ready:
                missing = f" (missing {', '.join(ref.missing)})" if ref.missing else ""
                raise ModelNotFound(model, f"not downloaded yet{missing}; run "
                                    f"`timbrectl models pull {model}` first")
            spec = spec_of(ref)
            limit = (spec.max_duration(ref.local_path)
                     if spec.max_duration is not None and ref.local_path is not None else None)
        directory = ref.local_path if ref is not None else None
        init_s = _init_seconds(request)
        # A variation or repaint is as long as its init audio unless told otherwise (up to
        # what the model makes); a repaint keeps it exactly.
        fallback = DEFAULT_DURATION_S if init_s is None else init_s
        if init_s is not None and limit is not None:
            fallback = min(fallback, math.floor(limit * 1000) / 1000)
        duration = float(request.get("duration", fallback))
        # The schema says the same for requests on the wire; prompts also arrive from presets,
        # prompt files and replays, and nothing impossible may be queued to fail later.
        if not str(request["prompt"]).strip():
            raise InvalidParams("prompt: must hold some text, not only whitespace",
                                param="prompt")
        if not duration >= MIN_DURATION_S:
            raise InvalidParams(f"duration: {duration:g} s is too short; at least "
                                f"{MIN_DURATION_S:g} s", param="duration",
                                allowed={"minimum": MIN_DURATION_S, "maximum": 600})
        shortest = getattr(provider, "min_duration_s", None)
        if shortest is not None and duration < shortest:
            raise InvalidParams(f"duration: {model} makes takes of at least {shortest:g} s; "
                                f"ask for {shortest:g} s or more", param="duration",
                                allowed={"minimum": shortest, "maximum": limit})
        if limit is not None and duration > limit + 1e-9:
            raise InvalidParams(
                f"duration: {duration:g} s is longer than {model} makes ({limit:.2f} s, its "
                f"trained length); ask for {math.floor(limit * 100) / 100:g} s or less",
                param="duration", allowed={"minimum": MIN_DURATION_S, "maximum": limit})
        # The request, built once: everything that decides the audio, in the wire's names,
        # the family's own parameters checked against its schema with its defaults filled in.
        request, asked = _tempo_and_key(spec, request)
        family_params = _backend_params(spec, request, directory)
        # A family's own task on init audio (ACE-Step extracting a track) is not a variation:
        # no default strength, and its own check_request says what it needs.
        edits = spec.edits_init is None or spec.edits_init(family_params)
        req = Request(
            prompt=request["prompt"], duration=duration,
            seed=request["seed"] if "seed" in request else secrets.randbelow(2**31),
            variations=int(request.get("variations", DEFAULT_VARIATIONS)),
            melody=request.get("melody"), continuation=request.get("continuation"),
            init=request.get("init"), repaint=request.get("repaint"),
            lyrics=request.get("lyrics"),
            strength=request.get("strength", DEFAULT_STRENGTH if request.get("init")
                                 and not request.get("repaint") and edits else None),
            options=family_params)
        out: dict[str, Any] = {
            **req.job_params(),
            "output": request.get("output"),
            "keep_alive": request.get("keep_alive"),
            "preset": request.get("preset"),
            "preview": bool(request.get("preview", False)),
            "session": request.get("session"),
            "export": options.to_dict(),
            "backend": spec.name,
        }
        if asked:
            out["asked"] = asked
        if request.get("loop_bars"):
            out["loop_bars"] = int(request["loop_bars"])
        if "replay" in params:
            out["replay"] = dict(params["replay"])
        features = spec.model_features(directory) if directory else frozenset()
        if out["melody"] is not None:
            if "melody" not in features:
                raise InvalidParams(f"melody: {model} cannot follow a melody; use a melody "
                                    "model such as musicgen-melody", param="melody")
            probe_audio(_absolute(out["melody"], "melody"), param="melody")
        if out["continuation"] is not None:
            if "continuation" not in features:
                raise InvalidParams(f"continuation: {model} ({spec.name}) cannot continue "
                                    "audio; choose a model that can (timbrectl backends)",
                                    param="continuation")
            info = probe_audio(_absolute(out["continuation"], "continuation"),
                               param="continuation")
            length = info.frames / info.sample_rate
            if out["duration"] <= length:
                raise InvalidParams(
                    f"duration: {out['duration']:g} s must exceed the continued audio's "
                    f"{length:.2f} s (the result includes it)", param="duration",
                    allowed={"exclusiveMinimum": round(length, 3)})
        if out["init"] is not None and edits:
            wanted = "inpainting" if out["repaint"] is not None else "variation"
            if wanted not in features:
                what = "repaint a span" if wanted == "inpainting" else "vary audio (init)"
                raise InvalidParams(
                    f"{'repaint' if wanted == 'inpainting' else 'init'}: {model} "
                    f"({spec.name}) cannot {what}; choose a model that can (timbrectl "
                    "backends lists each family's features)",
                    param="repaint" if wanted == "inpainting" else "init")
        if out["init"] is not None and out["repaint"] is not None and init_s is not None \
                and abs(out["duration"] - init_s) > 1e-3:
            raise InvalidParams(
                f"duration: a repaint keeps its audio's length ({init_s:.3f} s); leave "
                "duration out", param="duration")
        if out["lyrics"] is not None and "lyrics" not in features:
            raise InvalidParams(
                f"lyrics: {model} ({spec.name}) does not sing; choose a model that does "
                "(an ace-step model: timbrectl backends lists each family's features)",
                param="lyrics")
        if spec.check_request is not None and directory is not None:
            spec.check_request(directory, req)
        if provider is not None and hosted is not None:
            check = getattr(provider, "check_request", None)
            if check is not None:  # what only the provider can refuse (its steps' range)
                check(hosted[1], req)
            out["hosted"] = self._hosted_job(provider, hosted[1], req)
        if out["output"] is not None:
            publish.check_output(out["output"], out["variations"], extensions=[options.extension])
        return model, out

    async def get(self, job_id: str) -> Job:
        return await anyio.to_thread.run_sync(self.store.get, job_id)

    async def cancel(self, job_id: str) -> Job:
        job = await anyio.to_thread.run_sync(self.store.cancel, job_id)
        if job.state is JobState.CANCELLED:
            self._announce(job)
        elif await self.hosted.cancel(job_id):
            # Its predictions are cancelled at the provider, then the job (see HostedLane).
            self.bus.publish("job.state", {"job": job.to_dict()})
        elif (worker := self.pool.worker_of(job_id)) is not None:
            running = {j.id: i for i, j in enumerate(worker.running)}
            # Remembered as well as sent: a cancel that reaches the worker before its
            # generate request would be lost, so the progress callback repeats it.
            index = worker.cancel_jobs[job_id] = worker.cancel_repeats[job_id] = running[job_id]
            if len(running) == 1:
                await worker.executor.cancel()  # generate() raises Cancelled within a few steps
                self.bus.publish("job.state", {"job": job.to_dict()})
            else:
                # Its rows keep being decoded for the others' sake (their numbers must not
                # depend on when it left), but the job is over for its owner now.
                await worker.executor.cancel(item=index)
                # None: the batch ended meanwhile (this was its last request) and finished it.
                job = await self._finish(job, JobState.CANCELLED, None) or await self.get(job_id)
        return job

    async def retry(self, job_id: str) -> Job:
        job = await anyio.to_thread.run_sync(self.store.retry, job_id)
        self._announce(job)
        self._wake.set()
        return job

    async def wait(self, job_id: str, timeout: float | None) -> Job:
        """The job once it is finished, or as it is when ``timeout`` runs out.

        Follows ``job.state`` events, as any client can: whoever finishes a job (this
        scheduler, or an executor elsewhere that reports through the bus) needs to know
        nothing about who waits for it."""
        finished = anyio.Event()
        terminal = {state.value for state in TERMINAL_STATES}

        def on_state(_: object, event: Event) -> bool:
            job = event.data["job"]
            if job["id"] == job_id and job["state"] in terminal:
                finished.set()
                return False  # done: drop this subscription
            return True

        # Subscribed before the first read, so a finish between the two is not missed.
        sub, _ = self.bus.subscribe(["job.state"], on_state)
        try:
            job = await self.get(job_id)
            if job.terminal:
                return job
            with anyio.move_on_after(timeout):
                await finished.wait()
        finally:
            self.bus.unsubscribe(sub.id)
        return await self.get(job_id)

    # --- scheduling ---------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Feed the pool's workers: the next queued job goes, with what can be batched with
        it, to a free worker (one holding its model warm if any), and the loop goes on to
        the next while that batch decodes."""
        assert self._tg is not None  # started by run()
        try:
            while not self.stopping:
                self._wake = anyio.Event()
                if self.pool.error is not None:
                    await self._fail_queued(self.pool.error)
                    await self._wake.wait()
                    continue
                if not any(not w.busy for w in self.pool.usable()):
                    with anyio.move_on_after(REFRESH_S if self.pool.cluster else None):
                        await self._wake.wait()  # set when a batch ends or a job arrives
                    await self.pool.refresh()
                    continue
                # Hosted jobs are the hosted lane's; this one feeds the workers.
                job = await anyio.to_thread.run_sync(self.store.next_queued,
                                                     self.hosted.backends)
                if job is None:
                    await self._wake.wait()
                    continue
                worker = self.pool.choose(job.model, self._avoid.get(job.id, ()))
                if worker is None:  # it waits for a worker other than the one it was lost on
                    with anyio.move_on_after(REFRESH_S):
                        await self._wake.wait()
                    continue
                worker.claimed = True
                try:
                    batch = await self._gather(job)
                    if self.stopping:
                        break  # gathered while the daemon began to stop: they stay queued
                    await self._tg.start(self._run, batch, worker)
                finally:
                    worker.claimed = False
        finally:
            self._scheduler_done.set()

    async def _fail_queued(self, error: TimbreError) -> None:
        """Nowhere to run local jobs (the cluster unreachable, no fallback): each fails
        saying so, rather than waiting forever."""
        while (job := await anyio.to_thread.run_sync(self.store.next_queued,
                                                     self.hosted.backends)) is not None:
            await self._finish(job, JobState.FAILED, error)

    async def _gather(self, head: Job) -> list[Job]:
        """``head`` and the queued jobs that can be decoded with it, in queue order.

        Jobs submitted together (a script's loop, several clients) reach the queue a few
        milliseconds apart, so a batchable head waits ``jobs.batch_window_s`` for them.
        """
        limit = self.settings["jobs.max_batch_takes"]
        if limit <= 1 or _batch_key(head) is None or head.params["variations"] >= limit:
            return [head]
        await anyio.sleep(self.settings["jobs.batch_window_s"])
        found = await anyio.to_thread.run_sync(
            lambda: self.store.next_queued_batch(head.model, limit=limit, key=_batch_key))
        if not found:  # cancelled while we waited
            return [head]
        batch: list[Job] = []
        takes = 0
        for job in found:
            if _batch_key(job) is None or takes + job.params["variations"] > limit:
                continue
            batch.append(job)
            takes += job.params["variations"]
        return batch or [found[0]]

    async def _run(self, batch: list[Job], worker: Worker, *,
                   task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                   ) -> None:
        """Decode ``batch`` (one job, or several decoded together) on ``worker`` and write
        their takes. Started once its jobs are loading (the scheduler may then look for
        the next)."""
        worker.running = list(batch)
        worker.cancel_jobs, worker.cancel_repeats = {}, {}
        worker.batches += 1
        residency, executor = worker.residency, worker.executor
        entry: Loaded | None = None
        writers: dict[str, preview.PreviewWriter] = {}
        keep_alive = batch[0].params.get("keep_alive")
        jobs: list[Job] = []
        try:
            try:
                for job in batch:
                    with contextlib.suppress(TimbreError):  # cancelled since it was picked
                        jobs.append(await self._transition(job, JobState.LOADING))
                worker.running = jobs
            finally:
                task_status.started()
            if not jobs:
                return
            failpoints.hit("loading")
            began = time.monotonic()  # with started_at (the loading transition)
            # Replays go alone; theirs are the recipe's settings, never the daemon's current.
            replay = jobs[0].params.get("replay") or {}
            entry = await residency.acquire(jobs[0].model, keep_alive, replay.get("decoding"))
            load_s = time.monotonic() - began
            await self._place(jobs, worker)
            for job in list(jobs):
                if (await self.get(job.id)).cancel_requested:
                    await self._finish(job, JobState.CANCELLED, None)
                    jobs.remove(job)
            if not jobs:
                return
            jobs = [await self._transition(job, JobState.GENERATING) for job in jobs]
            worker.running = jobs
            failpoints.hit("generating")
            if stems.is_stems(jobs[0]):  # gathered alone: a separator does not batch
                await self._separate(jobs[0], worker, entry, began=began, load_s=load_s)
                return
            requests, own = _requests(jobs)
            for job in jobs:
                if job.params.get("preview"):
                    writers[job.id] = self._preview_writer(job, entry)
            by_request = {own[i]: writers.get(job.id) for i, job in enumerate(jobs)}

            def on_preview(index: int, start: int, audio: Any) -> None:
                writer = by_request.get(index)
                if writer is not None:
                    writer.put(start, audio)

            try:
                outputs = await executor.generate_batch(
                    entry.model_id, requests,
                    self._progress_callback(jobs, time.monotonic(), worker=worker),
                    on_preview=on_preview if writers else None,
                    preview_chunk_s=self.settings["preview.chunk_s"])
            finally:
                with anyio.CancelScope(shield=True):
                    for writer in writers.values():
                        await writer.close()
            for i, job in enumerate(jobs):
                if (await self.get(job.id)).terminal:  # cancelled while the batch ran
                    continue
                await self._encode(job, entry, outputs[own[i]], requests, own[i],
                                   began=began, load_s=load_s)
        except Cancelled:
            state = JobState.INTERRUPTED if self.stopping else JobState.CANCELLED
            for job in jobs:
                await self._finish(job, state, Interrupted(job.state.value)
                                   if self.stopping else None)
        except WorkerCrashed as exc:
            if self.stopping:  # the worker was stopped under it: recorded, never re-run
                for job in jobs:
                    await self._finish(job, JobState.INTERRUPTED, Interrupted(job.state.value))
                return
            names = ", ".join(job.id for job in jobs)
            log.error("job %s: %s", names, exc)
            residency.forget()  # whatever the worker held died with it
            if isinstance(exc, ExecutorLost):
                await self._lost(jobs, worker, exc)
                return
            for job in jobs:
                self.bus.publish("worker.crashed", {
                    "job_id": job.id, "reason": exc.data["reason"],
                    "exitcode": exc.data.get("exitcode")})
                await self._finish(job, JobState.FAILED, exc)
        except TimbreError as exc:
            for job in jobs or batch:
                log.warning("job %s failed: %s", job.id, exc)
                await self._finish(job, JobState.FAILED, exc)
        except Exception as exc:  # a bug: fail the job with the reason, keep serving
            log.exception("job(s) %s failed unexpectedly", ", ".join(j.id for j in batch))
            for job in jobs or batch:
                await self._finish(job, JobState.FAILED,
                                   InternalError(f"{type(exc).__name__}: {exc}"))
        finally:
            worker.running = []
            worker.cancel_jobs, worker.cancel_repeats = {}, {}
            self._idle.set()
            self._wake.set()  # a worker is free
            if self._tg is not None:
                for job_id in writers:
                    self._tg.start_soon(self._expire_previews, job_id)
            if entry is not None:
                await residency.release(entry)

    async def _separate(self, job: Job, worker: Worker, entry: Loaded, *, began: float,
                        load_s: float) -> None:
        """Run a stems job on ``worker`` (its separator loaded as ``entry``) and write its
        stems beside the take. Errors are the caller's, as for a generation."""
        take, audio, rate, metadata = await anyio.to_thread.run_sync(
            self.history.stems_source, job.params["take"])
        separating = time.monotonic()
        separation = await worker.executor.separate(
            entry.model_id, audio, rate,
            {k: job.params[k] for k in ("shifts", "overlap", "seed")},
            self._progress_callback([job], separating, worker=worker))
        separate_s = time.monotonic() - separating
        if (await self.get(job.id)).terminal:  # cancelled as it finished
            return
        job = await self._transition(job, JobState.ENCODING)
        failpoints.hit("encoding")
        recipe = stems.recipe(job, entry.model_id, separation)
        exporting = time.monotonic()
        written = await anyio.to_thread.run_sync(lambda: self.history.write_stems(
            take, metadata, job_id=job.id, model=job.model, names=separation.names,
            stems=separation.stems, sample_rate=rate, request=job.params["export"],
            separation=stems.separation_record(job, separation)))
        done = time.monotonic()
        timings = {"load_s": load_s, "decode_s": separate_s, "export_s": done - exporting,
                   "other_s": (done - began) - load_s - separate_s - (done - exporting)}
        await self._transition(job, JobState.DONE, outputs=[str(w.path) for w in written],
                               recipe=recipe,
                               timings={k: round(v, 4) for k, v in timings.items()})
        self.bus.publish("take.updated", {"take": (await anyio.to_thread.run_sync(
            self.history.show, take.id)).to_dict()})

    async def submit_stems(self, params: Mapping[str, Any]) -> Job:
        """Queue the separation of a take into stems (``takes.stems``)."""
        if self.stopping:
            raise ShuttingDown()
        model, job_params = await anyio.to_thread.run_sync(stems.resolve, self.history,
                                                           params)
        return await self._enqueue(model, job_params, params.get("priority", 0), None, None)

    async def _place(self, jobs: list[Job], worker: Worker) -> None:
        """Record where ``jobs`` run (``Job.placement``), once their model is loaded there."""
        placement = worker.placement()
        for job in jobs:
            # Not announced: the next transition's job.state carries it.
            with contextlib.suppress(TimbreError):  # finished meanwhile (a cancel)
                await anyio.to_thread.run_sync(self.store.set_placement, job.id, placement)

    async def _lost(self, jobs: list[Job], worker: Worker, exc: ExecutorLost) -> None:
        """The executor under ``jobs`` was lost (a Ray actor or its node, not the job's
        doing): each job is interrupted with the reason, and queued again to run on another
        worker while it has retries left. Nothing of it was written, so it can never make
        two takes."""
        retries = int(self.settings["executor.retries"])
        for job in jobs:
            current = await self.get(job.id)
            if current.terminal:
                continue
            lost_before = len((current.placement or {}).get("interruptions") or [])
            if current.cancel_requested or lost_before >= retries:
                await self._finish(job, JobState.INTERRUPTED, exc)
                continue
            requeued = await anyio.to_thread.run_sync(self.store.requeue, job.id, exc,
                                                      worker.placement())
            self._avoid.setdefault(job.id, set()).add(worker.name)
            log.warning("job %s: %s; queued again (attempt %d), on another worker",
                        job.id, exc, requeued.attempts)
            self.bus.publish("job.requeued", {"job_id": job.id, "reason": exc.message,
                                              "attempt": requeued.attempts,
                                              "worker": worker.name})
            self._announce(requeued)
        await self.pool.refresh(force=True)

    async def _encode(self, job: Job, entry: Loaded | None, output: GenerationOutput,
                      requests: list[Request], index: int, *, began: float,
                      load_s: float, recipe: dict[str, Any] | None = None) -> None:
        """Export one job's takes and finish it; a failure here fails only this job.

        ``began`` (monotonic, when the job started loading) and ``load_s`` feed the job's
        ``timings`` (see the Job schema). ``recipe``: made by the caller (a hosted job has
        no loaded model to make it from).
        """
        try:
            if job.state is not JobState.ENCODING:  # a resumed hosted job may be there
                job = await self._transition(job, JobState.ENCODING)
            failpoints.hit("encoding")
            if recipe is None:
                assert entry is not None  # a local job's recipe comes from its model
                recipe = self._recipe(job, entry, output)
            if len(requests) > 1:
                # Decoded with others: a bit-identical re-render repeats the whole batch
                # (on some devices and precisions a row's numbers depend on its neighbours).
                recipe["batch"] = {"index": index, "requests": [r.to_dict() for r in requests]}
            exporting = time.monotonic()
            written = await anyio.to_thread.run_sync(self._write_takes, job, output, recipe)
            failpoints.hit("takes-written")
            done = time.monotonic()
            decode_s = output.decode_s or 0.0
            timings = {"load_s": load_s, "decode_s": decode_s, "export_s": done - exporting,
                       "other_s": (done - began) - load_s - decode_s - (done - exporting)}
            await self._transition(job, JobState.DONE, outputs=[t.path for t in written],
                                   recipe=recipe,
                                   timings={k: round(v, 4) for k, v in timings.items()})
        except TimbreError as exc:
            log.warning("job %s failed: %s", job.id, exc)
            await self._finish(job, JobState.FAILED, exc)

    async def _finish(self, job: Job, state: JobState, error: TimbreError | None
                      ) -> Job | None:
        """Move ``job`` to a final ``state`` unless it is there already; the new job or None."""
        with anyio.CancelScope(shield=True):
            async with self._finishing:
                current = await self.get(job.id)
                self._avoid.pop(job.id, None)
                if current.terminal:
                    return None
                if state is JobState.FAILED and current.state is JobState.QUEUED:
                    # queued -> failed is not a legal edge; go through loading first.
                    current = await self._transition(current, JobState.LOADING)
                return await self._transition(current, state, error=error)
        return None  # not reached; a shielded scope cannot be cancelled

    def _progress_callback(self, jobs: list[Job], started: float, *,
                           worker: Worker | None = None) -> Any:
        """One decoding's progress, published for each job in it (throttled per job).

        ``worker``: the worker decoding it, whose progress repeats pending cancels (a
        hosted job has none)."""
        last_event = dict.fromkeys((job.id for job in jobs), 0.0)
        last_saved = dict.fromkeys((job.id for job in jobs), 0.0)

        def on_progress(step: int, total: int) -> None:
            if worker is not None and self._tg is not None and worker.cancel_repeats:
                # Progress means the worker holds the generate request, so a cancel sent now
                # reaches it; once each is enough (not at every step of a long batch).
                for index in worker.cancel_repeats.values():
                    self._tg.start_soon(worker.executor.cancel,
                                        None if len(jobs) == 1 else index)
                worker.cancel_repeats = {}
            now = time.monotonic()
            elapsed = now - started
            eta = elapsed / step * (total - step) if step else None
            for job_id in last_event:
                if worker is not None and job_id in worker.cancel_jobs and len(jobs) > 1:
                    continue  # already over for its owner
                if step < total and now - last_event[job_id] < 1 / PROGRESS_EVENTS_PER_S:
                    continue
                last_event[job_id] = now
                self.bus.publish("job.progress", {
                    "job_id": job_id, "step": step, "total": total,
                    "elapsed_s": round(elapsed, 3),
                    "eta_s": None if eta is None else round(eta, 3)})
                # Persist at most once a second, off the event loop (events carry the rest).
                if (step == total or now - last_saved[job_id] >= 1.0) and self._tg:
                    last_saved[job_id] = now
                    self._tg.start_soon(self._save_progress, job_id, step, total)

        return on_progress

    def _preview_writer(self, job: Job, entry: Loaded) -> preview.PreviewWriter:
        caps = entry.info.capabilities
        writer = preview.PreviewWriter(
            self.preview_root, job.id, sample_rate=caps.sample_rate, channels=caps.channels,
            total_samples=round(float(job.params["duration"]) * caps.sample_rate),
            publish=lambda data: self.bus.publish("job.preview", data))
        assert self._tg is not None  # jobs run only inside run()'s task group
        self._tg.start_soon(writer.run)
        return writer

    async def _expire_previews(self, job_id: str) -> None:
        await anyio.sleep(self.settings["preview.keep_s"])
        await anyio.to_thread.run_sync(preview.remove_job_previews, self.preview_root, job_id)

    async def _save_progress(self, job_id: str, step: int, total: int) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.set_progress, job_id, step, total)
        except TimbreError as exc:  # losing a progress row is harmless; say so in the log
            log.debug("progress of %s not recorded: %s", job_id, exc)

    def _write_takes(self, job: Job, output: GenerationOutput,
                     recipe: dict[str, Any]) -> list[Take]:
        """Hand the audio to the history; a replay writes only its take and says whether the
        samples are bit-identical to the original's (recorded in ``recipe["replay"]``)."""
        replay = job.params.get("replay")
        indices = None
        if replay is not None:
            index = int(replay["take_index"])
            indices = [index]
            recipe["replay"] = {
                "of": replay["take_id"],
                "bit_identical": audio_sha256(output.audio[index - 1]) == replay["audio_sha256"],
            }
            hosted = job.params.get("hosted")
            if hosted is not None and not hosted.get("deterministic"):
                # Said with the answer, not left for the user to guess from a "no".
                recipe["replay"]["note"] = (
                    f"{hosted['provider']} does not promise the same audio for the same seed "
                    "and parameters, so a replay there is a new take in the same recipe")
        return self.history.write(job_id=job.id, params=job.params, recipe=recipe,
                                  audio=output.audio, sample_rate=output.sample_rate,
                                  indices=indices)

    async def replay(self, take_id: str) -> Job:
        """Re-render a take from its recipe as a new job (same model, parameters and seed)."""
        take = await anyio.to_thread.run_sync(self.history.show, take_id)
        recipe = take.recipe
        req = Request.from_recipe(recipe.get("params", {}))
        take_index = take.take_index
        calls = (recipe.get("hosted") or {}).get("calls") or []
        if calls and take_index is not None and 0 < take_index <= len(calls):
            # A hosted take was one call of its own: make only that one again, on its seed.
            req = dataclasses.replace(req, seed=int(calls[take_index - 1]["seed"]),
                                      variations=1)
            take_index = 1
        decoding = _decoding(recipe, _recipe_spec(recipe))
        # A hosted take replays on the model version that made it, where the provider pins one.
        model = (recipe.get("hosted") or {}).get("pinned_model") or recipe.get("model")
        request = {
            **req.to_dict(), "model": model,
            "session": take.session, **recipe.get("export", {}),
            "replay": {"take_id": take.id, "take_index": take_index,
                       "audio_sha256": recipe.get("audio_sha256"),
                       "batch": recipe.get("batch"), "decoding": decoding},
        }
        if request["loudness_target_lufs"] is None:
            request["loudness_target_lufs"] = False
        return await self.submit(request)

    def _recipe(self, job: Job, entry: Loaded, output: GenerationOutput) -> dict[str, Any]:
        spec = registry.get(entry.info.backend)
        recipe: dict[str, Any] = {
            "model": job.model, "model_id": entry.model_id, "revision": entry.revision,
            "source": entry.info.source, "backend": entry.info.backend,
            "device": entry.info.device, "dtype": entry.info.dtype,
            "params": Request.from_job(job.params, spec.params).to_dict(),
            "sample_rate": output.sample_rate,
            "timbre_version": __version__,
            "info": json.loads(json.dumps(output.info, default=str)),
        }
        # What the model was loaded with (a replay's may differ from the config's); the
        # backend's own account wins (the precision "auto" became).
        settings = dict(zip(("device", "dtype", *spec.load_options), entry.load_key,
                            strict=True))
        for option in spec.load_options:
            recipe[option] = output.info.get(option, settings[option])
        return recipe

    def _hosted_job(self, provider: Provider, model: str, req: Request) -> dict[str, Any]:
        """What a hosted job carries besides its request: the provider's model, its cost
        estimate (checked against the provider's monthly budget here, before anything is
        sent) and whether its audio is reproducible. Blocking (reads the store)."""
        estimate = provider.estimate(model, req)
        usd = estimate.usd * req.variations
        budget = float(self.settings[f"providers.{provider.name}.monthly_budget"])
        if budget > 0:
            spent = sum(cost for backend, cost, _ in self.store.costs(month_start())
                        if backend == provider.name)
            spent += self.store.pending_estimates(provider.name)
            if spent + usd > budget + 1e-9:
                raise BudgetExceeded(provider.name, budget, spent, usd)
        return {"provider": provider.name, "model": model, "estimate_usd": round(usd, 6),
                "estimate_basis": estimate.basis,
                "deterministic": provider.deterministic(model)}

    def costs(self, since: float) -> dict[str, Any]:
        """What hosted jobs created since ``since`` cost, per provider (``costs.summary``).
        Blocking."""
        start = month_start()
        recent = self.store.costs(since)
        month = self.store.costs(start)
        budgets = {name: float(self.settings[f"providers.{name}.monthly_budget"])
                   for name in self.hosted.backends}
        names = {backend for backend, _, _ in recent + month} | {
            name for name, budget in budgets.items() if budget > 0}
        providers: list[dict[str, Any]] = []
        for name in sorted(names):
            mine = [(usd, est) for backend, usd, est in recent if backend == name]
            providers.append({
                "provider": name, "jobs": len(mine),
                "usd": round(sum(usd for usd, _ in mine), 6),
                "estimated": any(est for _, est in mine),
                "month_usd": round(sum(usd for backend, usd, _ in month if backend == name), 6),
                "monthly_budget": budgets.get(name) or None})
        total = sum(float(p["usd"]) for p in providers)
        return {"since": since, "month_start": start, "providers": providers,
                "total_usd": round(total, 6)}

    async def unload_model(self, model: str) -> bool:
        """Unload ``model`` from every worker, unless a running job uses it (then say
        which)."""
        def busy(worker: Worker) -> InvalidJobState | None:
            if not worker.running:
                return None
            job = worker.running[0]
            return InvalidJobState(job.id, job.state.value,
                                   f"{model} is in use; unload it once the job finishes")

        return await self.pool.unload_model(model, busy=busy)


def month_start(now: float | None = None) -> float:
    """When this calendar month began, local time (budgets are monthly)."""
    today = dt.datetime.fromtimestamp(time.time() if now is None else now)
    return today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _absolute(path: str, param: str) -> str:
    if not Path(path).is_absolute():
        raise InvalidParams(f"{param} must be an absolute path (clients resolve relative ones)",
                            param=param)
    return path


def _init_seconds(request: Mapping[str, Any]) -> float | None:
    """The length of the request's ``init`` audio (checked readable), or None without one."""
    if request.get("init") is None:
        return None
    info = probe_audio(_absolute(str(request["init"]), "init"), param="init")
    return info.frames / info.sample_rate


def _recipe_spec(recipe: Mapping[str, Any]) -> BackendSpec:
    # Recipes written before the registry all came from MusicGen.
    return registry.get(str(recipe.get("backend") or "musicgen"))


def _tempo_and_key(spec: BackendSpec, request: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``bpm`` and ``key`` asked for: the family's own parameters where it has them
    (ACE-Step's metas), else words added to the prompt ("120 bpm, in A minor"), which is how
    a text-conditioned model is told. Returns the request to build and what was asked
    (``{"bpm", "key"}``, for the analysis to say how close the take came)."""
    out = dict(request)
    asked: dict[str, Any] = {}
    if out.get("bpm"):
        bpm = out["bpm"]
        if isinstance(bpm, bool) or not isinstance(bpm, int | float) or not 20 <= bpm <= 300:
            raise InvalidParams(f"bpm: a tempo in 20..300 beats per minute, got {bpm!r}",
                                param="bpm")
        asked["bpm"] = bpm
    if out.get("key"):
        from timbred.takes.analysis import parse_key

        tonic, mode = parse_key(out["key"])
        asked["key"] = out["key"] = f"{tonic} {mode}"
    words = []
    if "bpm" not in spec.params:
        if "bpm" in asked:
            words.append(f"{asked['bpm']:g} bpm")
        out.pop("bpm", None)  # 0: "let the model choose", which a prompt does anyway
    if "key" not in spec.params:
        if "key" in asked:
            words.append(f"in {asked['key']}")
        out.pop("key", None)
    if words:
        out["prompt"] = f"{str(out['prompt']).rstrip().rstrip(',')}, {', '.join(words)}"
    return out, asked


def _backend_params(spec: BackendSpec, request: Mapping[str, Any],
                    directory: Path | None = None) -> dict[str, Any]:
    """The family's own parameters of ``request``, checked against its schema, defaults
    filled in (the model's own where it has them: a distilled diffusion model's step
    count): given flat (``guidance``) or in ``options`` (the same names)."""
    flat = {k: request[k] for k in spec.params if k in request}
    nested = dict(request.get("options") or {})
    for key in flat.keys() & nested.keys():
        if flat[key] != nested[key]:
            raise InvalidParams(f"{key}: given twice, as {flat[key]!r} and as "
                                f"options.{key} {nested[key]!r}; give it once", param=key)
    unknown = sorted(k for k in registry.param_names() if k in request
                     and k not in spec.params)
    if unknown:
        raise InvalidParams(
            f"{unknown[0]}: the {spec.name} backend does not take it; it takes "
            f"{', '.join(spec.params) or 'no parameters of its own'}", param=unknown[0])
    given = {**flat, **nested}
    schema.check(f"{spec.name} parameters", spec.params_schema(), given)
    model = spec.model_defaults(directory) if spec.model_defaults and directory else {}
    return {**spec.defaults(), **model, **given}


def _batch_key(job: Job) -> tuple[Any, ...] | None:
    """Jobs with equal keys can be decoded together; None: this one is decoded alone.

    A batch shares one decoding plan (duration), whether a melody conditions them (each job
    its own), the audio it continues, if any (its frames are every row's prompt and set the
    plan; the same path, which submit requires to be absolute), what the family's
    ``batch_key`` says (MusicGen: the guidance rows), and the loaded model (``model`` already
    groups them). Replays (which repeat their original batch exactly) go alone, and so do
    jobs of a family that does not batch.
    """
    p = job.params
    spec = _job_spec(job)
    if p.get("replay") or spec.batch_key is None:
        return None
    return (float(p["duration"]), bool(p.get("melody")), p.get("continuation"),
            *spec.batch_key(p))


def _requests(jobs: list[Job]) -> tuple[list[Request], list[int]]:
    """What the worker decodes for ``jobs``, and where each job's takes are in it.

    A replay of a take that was decoded in a batch decodes that whole batch again (its
    recipe holds every request) and keeps only its own.
    """
    replay = jobs[0].params.get("replay") if len(jobs) == 1 else None
    if replay is not None and replay.get("batch"):
        requests = [Request.from_recipe(r) for r in replay["batch"]["requests"]]
        return requests, [int(replay["batch"]["index"])]
    return [Request.from_job(job.params, _job_spec(job).params)
            for job in jobs], list(range(len(jobs)))


def _decoding(recipe: Mapping[str, Any], spec: BackendSpec) -> dict[str, Any]:
    """What decides a take's audio besides its parameters, as its recipe recorded it.

    The windowing (``window_s``, ``stride_s``), the decoder ``precision``, ``device`` and
    ``dtype``. A recipe from before a field was recorded falls back to its ``info`` (the
    worker's own account), and a field in neither is left out: the daemon's current
    configuration decides it (:meth:`Generation._load_settings`).
    """
    info = recipe.get("info") or {}
    keys = ("device", "dtype", *spec.load_options)
    return {key: source[key] for key in keys for source in (info, recipe) if key in source}


def _job_spec(job: Job) -> BackendSpec:
    # Jobs queued before the registry recorded their backend were all MusicGen's.
    return registry.get(str(job.params.get("backend") or "musicgen"))
