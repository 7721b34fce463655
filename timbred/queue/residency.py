"""Model residency: which models the executor holds, for how long, and within what memory.

Models stay loaded for their keep-alive after each use (per request, else the configured
default; 0 unloads at once, -1 never) and idle models are evicted, least recently used first,
when loading another would pass the memory budget. The budget is the host's memory until the
executor reports a GPU, then that GPU's. A lost executor (a crashed worker) held nothing: its
models are forgotten and the next use starts it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from timbred import models
from timbred.backends import BackendSpec, registry
from timbred.config import Settings
from timbred.daemon.events import EventBus
from timbred.errors import InvalidJobState, ModelNotFound, WorkerCrashed
from timbred.executors import Executor
from timbred.worker.device import choose_device, choose_dtype, memory_budget_bytes
from timbred.worker.process import LoadedModel

log = logging.getLogger(__name__)

MiB = 1024 * 1024


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for ``daemon.status``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 1024 * MiB


@dataclass
class Loaded:
    """A model held by the executor, with the daemon's bookkeeping."""

    model_id: str
    name: str
    info: LoadedModel
    revision: str | None
    loaded_at: float
    last_used: float
    keep_alive_s: float
    in_use: int = 0
    #: How it was loaded (device, dtype, the family's load options): a replay whose recipe
    #: says otherwise loads it again its own way.
    load_key: tuple[Any, ...] = ()

    @property
    def expires_at(self) -> float | None:
        if self.in_use or self.keep_alive_s < 0:
            return None
        return self.last_used + self.keep_alive_s

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "model_id": self.model_id, "source": self.info.source,
                "revision": self.revision, "backend": self.info.backend,
                "device": self.info.device, "dtype": self.info.dtype,
                "memory_bytes": self.info.memory_bytes, "loaded_at": self.loaded_at,
                "last_used": self.last_used, "in_use": self.in_use > 0,
                "expires_at": self.expires_at,
                "capabilities": self.info.capabilities.to_dict()}


class Residency:
    """The models one executor holds, loaded on demand and released by keep-alive or budget."""

    def __init__(self, settings: Settings, bus: EventBus, executor: Executor, *,
                 device: str | None = None, host_share: float = 1.0) -> None:
        self.settings = settings
        self.bus = bus
        self.executor = executor
        #: The device asked for (one worker of several: its own); None: daemon.device.
        self.requested_device = device
        #: The part of the host's memory this executor's CPU models may use (CPU workers
        #: side by side share it).
        self.host_share = host_share
        # Of the host's memory until the executor says which device holds the models.
        self.memory_budget = memory_budget_bytes(settings["models.memory_budget_mb"],
                                                 host_bytes=self._host_bytes())
        self.loaded: dict[str, Loaded] = {}
        self.device: dict[str, Any] | None = None
        self._lock = anyio.Lock()  # one load/unload/evict sequence at a time

    def _host_bytes(self) -> int:
        return int(physical_memory() * self.host_share)

    def forget(self) -> None:
        """The executor was lost, and what it held with it."""
        self.loaded.clear()

    async def release(self, entry: Loaded) -> None:
        """A job is done with ``entry``: its keep-alive starts now (0: unloaded at once)."""
        entry.in_use -= 1
        entry.last_used = time.time()
        if entry.keep_alive_s == 0 and not entry.in_use:
            with anyio.CancelScope(shield=True):
                await self.unload(entry.model_id, "keep_alive 0")

    def _keep_alive(self, requested: float | None) -> float:
        return float(self.settings["models.keep_alive_s"] if requested is None else requested)

    async def ensure_executor(self) -> None:
        """A worker that answers (started fresh if the one we had died since its last job),
        and the device it decodes on."""
        healthy = False
        if self.executor.alive:
            # alive only says the process is not reaped yet: one killed while idle is still
            # "alive" while the kernel tears it down, and the next job would fail on it. A
            # ps round trip (answered at once) is the sure sign: the dead one never answers
            # and its pipe reports EOF, so no job is ever charged for an idle worker's death.
            try:
                await self.executor.ps()
                healthy = True
            except WorkerCrashed as exc:
                log.warning("the inference worker died while idle (%s); starting a fresh one",
                            exc.data["reason"])
        if healthy and self.device is not None:
            return
        if not healthy:
            self.loaded.clear()
            self.device = None
            await self.executor.start()
        info = self.executor.info
        gpus = info.cuda if info else ()
        device = choose_device(self.requested_device or self.settings["daemon.device"], gpus)
        dtype = choose_dtype(self.settings["models.dtype"], device, gpus)
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        gpu = gpus[index] if device.startswith("cuda") and index < len(gpus) else None
        # The models live on the GPU when there is one: budget its memory, not the host's.
        self.memory_budget = memory_budget_bytes(
            self.settings["models.memory_budget_mb"], host_bytes=self._host_bytes(),
            device_bytes=gpu.total_bytes if gpu is not None else None)
        name = gpu.name if gpu is not None else cpu_name()
        self.device = {"type": "cuda" if device.startswith("cuda") else "cpu", "name": name,
                       "dtype": dtype, "threads": info.threads if info else 0,
                       "device": device}

    async def acquire(self, model: str, keep_alive: float | None,
                      decoding: Mapping[str, Any] | None = None) -> Loaded:
        """The loaded model for ``model`` (loading it if needed), marked in use.

        ``decoding`` (a replay's settings from its recipe) loads it that way; a model loaded
        otherwise is loaded again.
        """
        async with self._lock:
            ref = await anyio.to_thread.run_sync(models.resolve, model)
            await self.ensure_executor()  # forgets what a worker that died since held
            entry = self.loaded.get(ref.id)
            spec = spec_of(ref)
            if entry is not None and self.executor.alive \
                    and entry.load_key != load_key(spec, self.load_settings(spec, decoding)):
                entry = None
            if entry is None or not self.executor.alive:
                entry = await self._load(ref, model, keep_alive, decoding)
            entry.keep_alive_s = self._keep_alive(keep_alive)
            entry.in_use += 1
            return entry

    async def _load(self, ref: models.ModelRef, name: str, keep_alive: float | None,
                    decoding: Mapping[str, Any] | None = None) -> Loaded:
        if not ref.ready:
            raise ModelNotFound(name, f"not downloaded yet; run `timbrectl models pull {name}`")
        await self.ensure_executor()
        assert self.device is not None  # set by ensure_executor
        need = await anyio.to_thread.run_sync(
            lambda: models.estimate_memory(ref, dtype=self.device["dtype"]))  # type: ignore[index]
        await self._evict_for(need)
        source = str(ref.local_path or ref.path)
        spec = spec_of(ref)
        wanted = self.load_settings(spec, decoding)
        options = {k: wanted[k] for k in spec.load_options if wanted[k] is not None}
        info = await self.executor.load(ref.id, source, wanted["device"], wanted["dtype"],
                                        backend=spec.name, options=options)
        now = time.time()
        entry = Loaded(ref.id, name, info, ref.revision, now, now, self._keep_alive(keep_alive),
                       load_key=load_key(spec, wanted))
        self.loaded[ref.id] = entry
        self.bus.publish("model.loaded", {"model": name, "device": info.device,
                                          "dtype": info.dtype,
                                          "memory_bytes": info.memory_bytes})
        log.info("loaded %s on %s (%s, %.0f MiB)", name, info.device, info.dtype,
                 info.memory_bytes / MiB)
        for warning in info.warnings:
            log.warning("%s", warning)
        return entry

    async def _evict_for(self, need: int) -> None:
        used = sum(e.info.memory_bytes for e in self.loaded.values())
        for entry in sorted(self.loaded.values(), key=lambda e: e.last_used):
            if used + need <= self.memory_budget:
                break
            if entry.in_use:
                continue
            await self.unload(entry.model_id, "memory budget")
            used -= entry.info.memory_bytes
        if used + need > self.memory_budget:
            log.warning("loading needs %.0f MiB; with %.0f MiB held the budget of %.0f MiB is "
                        "exceeded", need / MiB, used / MiB, self.memory_budget / MiB)

    async def unload(self, model_id: str, reason: str) -> bool:
        entry = self.loaded.pop(model_id, None)
        if entry is None:
            return False
        if self.executor.alive:
            with contextlib.suppress(WorkerCrashed):  # a dead worker holds nothing anyway
                await self.executor.unload(model_id)
        self.bus.publish("model.unloaded", {"model": entry.name, "reason": reason})
        log.info("unloaded %s (%s)", entry.name, reason)
        return True

    async def expire(self) -> None:
        while True:
            await anyio.sleep(0.25)
            now = time.time()
            for entry in list(self.loaded.values()):
                expires = entry.expires_at
                if expires is not None and expires <= now:
                    async with self._lock:
                        if entry.expires_at is not None and entry.expires_at <= time.time():
                            await self.unload(entry.model_id, "keep_alive expired")

    async def load_model(self, model: str, keep_alive: float | None) -> Loaded:
        entry = await self.acquire(model, keep_alive)
        entry.in_use -= 1
        entry.last_used = time.time()
        return entry

    async def unload_model(self, model: str, *, busy: Callable[[], InvalidJobState | None]
                           ) -> bool:
        """Unload ``model`` now; ``busy()`` says why not while a job uses it."""
        ref = await anyio.to_thread.run_sync(models.resolve, model)
        async with self._lock:
            entry = self.loaded.get(ref.id)
            if entry is not None and entry.in_use and (refusal := busy()) is not None:
                raise refusal
            return await self.unload(ref.id, "requested")

    def ps(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.loaded.values()]

    def load_settings(self, spec: BackendSpec, decoding: Mapping[str, Any] | None
                      ) -> dict[str, Any]:
        """Device, dtype and the family's load options (``spec.load_options``, from the
        ``models.`` configuration) to load with: ``decoding`` (a replay's, from its recipe)
        wins over the configuration. ``precision`` None: the dtype decides."""
        current: dict[str, Any] = {
            "device": self.device["device"] if self.device else None,
            "dtype": self.device["dtype"] if self.device else None,
        }
        for option in spec.load_options:
            value = self.settings[f"models.{option}"]
            current[option] = None if value == "default" else value
        return {**current, **(decoding or {})}


def spec_of(ref: models.ModelRef) -> BackendSpec:
    """The family that loads ``ref`` (the registry recognised it when it was resolved)."""
    if ref.backend is None:
        raise ModelNotFound(ref.id, "no backend recognises it; see `timbrectl backends`")
    return registry.get(ref.backend)


def load_key(spec: BackendSpec, settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """The load settings that decide the audio: device, dtype, then the family's options."""
    return (settings["device"], settings["dtype"],
            *(settings[option] for option in spec.load_options))
