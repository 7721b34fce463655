"""Tests for timbred.worker.device: device and dtype choice, the memory budget, out of memory
and freeing device memory. They run on CPU; the CUDA cases are fed the numbers a GPU reports."""

from __future__ import annotations

import gc
import multiprocessing
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from timbred import errors
from timbred.request import Request
from timbred.worker import device as dev
from timbred.worker.backend import Backend, Capabilities
from timbred.worker.device import CudaDevice
from timbred.worker.musicgen import MusicgenBackend
from timbred.worker.process import WorkerInfo, _Slot, _Worker

GiB = 1 << 30
MiB = 1 << 20
H200 = CudaDevice(name="NVIDIA H200", total_bytes=140 * GiB, bf16=True)
T4 = CudaDevice(name="Tesla T4", total_bytes=15 * GiB, bf16=False)

#: torch >= 2.1's message, as CUDACachingAllocator words it.
OOM_NEW = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
           "79.19 GiB of which 1.50 GiB is free. Including non-PyTorch memory, this process "
           "has 77.67 GiB memory in use. Of the allocated memory 76.90 GiB is allocated by "
           "PyTorch, and 312.51 MiB is reserved by PyTorch but unallocated.")
#: torch < 2.1's message.
OOM_OLD = ("CUDA out of memory. Tried to allocate 36.00 MiB (GPU 0; 7.93 GiB total capacity; "
           "130.35 MiB already allocated; 47.06 MiB free; 188.00 MiB reserved in total by "
           "PyTorch)")


class TestChooseDevice:
    def test_auto_prefers_cuda(self) -> None:
        """auto is cuda when the worker sees a GPU, else cpu."""
        assert dev.choose_device("auto", [H200]) == "cuda"
        assert dev.choose_device("auto", []) == "cpu"

    def test_explicit_setting_wins(self) -> None:
        """An explicit device is used as asked, normalised."""
        assert dev.choose_device("cpu", [H200]) == "cpu"
        assert dev.choose_device(" CUDA:1 ", [H200, T4]) == "cuda:1"

    @pytest.mark.parametrize(("requested", "seen", "match"), [
        ("cuda", [], "sees no CUDA device"),
        ("cuda:2", [H200, T4], "sees 2 CUDA device"),
        ("mps", [], "unknown device"),
        ("gpu0", [H200], "unknown device"),
    ])
    def test_unusable_device_is_a_clear_error(self, requested: str,
                                              seen: Sequence[CudaDevice], match: str) -> None:
        """A device that is no device, or a GPU the worker does not see, is InvalidParams."""
        with pytest.raises(errors.InvalidParams, match=match) as caught:
            dev.choose_device(requested, seen)
        assert caught.value.data["param"] == "device"


class TestChooseDtype:
    def test_auto_on_cuda_follows_bf16_support(self) -> None:
        """auto is bfloat16 on a card that computes it (Ampere+), float16 on one that does not."""
        assert dev.choose_dtype("auto", "cuda", [H200]) == "bfloat16"
        assert dev.choose_dtype("auto", "cuda", [T4]) == "float16"
        assert dev.choose_dtype("auto", "cuda:1", [H200, T4]) == "float16"

    def test_auto_on_cpu_is_float32(self) -> None:
        """auto is float32 on CPU whatever GPUs exist."""
        assert dev.choose_dtype("auto", "cpu", [H200]) == "float32"

    def test_explicit_dtype_wins(self) -> None:
        """An explicit dtype is kept, even where auto would choose another."""
        assert dev.choose_dtype("float32", "cuda", [H200]) == "float32"
        assert dev.choose_dtype("bfloat16", "cuda", [T4]) == "bfloat16"
        assert dev.choose_dtype("float16", "cpu") == "float16"

    def test_unknown_dtype_is_refused(self) -> None:
        """A dtype name that is not one is InvalidParams naming the field."""
        with pytest.raises(errors.InvalidParams, match="unknown dtype"):
            dev.choose_dtype("int4", "cuda", [H200])


class TestMemoryBudget:
    def test_default_is_three_quarters_of_the_device(self) -> None:
        """With no budget set, 75% of the GPU's memory when the models live there."""
        assert dev.memory_budget_bytes(0, host_bytes=64 * GiB, device_bytes=16 * GiB) == 12 * GiB

    def test_default_on_cpu_is_three_quarters_of_the_host(self) -> None:
        """Without a reporting device, 75% of the host's memory (as before)."""
        assert dev.memory_budget_bytes(0, host_bytes=64 * GiB) == 48 * GiB

    def test_configured_budget_is_capped_by_the_device(self) -> None:
        """A configured budget is used, but never more than the GPU has."""
        assert dev.memory_budget_bytes(8192, host_bytes=64 * GiB,
                                       device_bytes=16 * GiB) == 8 * GiB
        assert dev.memory_budget_bytes(32768, host_bytes=64 * GiB,
                                       device_bytes=16 * GiB) == 16 * GiB
        assert dev.memory_budget_bytes(100_000, host_bytes=64 * GiB) == 100_000 * MiB

    def test_worker_info_carries_device_memory(self) -> None:
        """The worker's report round-trips each GPU's memory; an older bare name has none."""
        assert CudaDevice.from_dict(H200.to_dict()) == H200
        assert CudaDevice.from_dict("GeForce") == CudaDevice("GeForce", 0, False)
        info = WorkerInfo(pid=1, python="3", torch="2", threads=1, cuda_devices=("H200",),
                          cuda=(H200,))
        assert info.cuda[0].total_bytes == 140 * GiB


class TestOutOfMemory:
    def test_parse_both_message_formats(self) -> None:
        """The needed, free and total sizes come out of either torch wording."""
        new = dev.parse_oom(OOM_NEW)
        assert (new.needed_bytes, new.free_bytes) == (2 * GiB, round(1.5 * GiB))
        assert new.total_bytes == round(79.19 * GiB)
        old = dev.parse_oom(OOM_OLD)
        assert (old.needed_bytes, old.free_bytes) == (36 * MiB, round(47.06 * MiB))
        assert old.total_bytes == round(7.93 * GiB)

    def test_reason_from_a_real_torch_error(self) -> None:
        """torch.cuda.OutOfMemoryError reads as 'CUDA out of memory: needs N GiB, has M'."""
        exc = torch.cuda.OutOfMemoryError(OOM_NEW)
        assert dev.is_oom(exc)
        assert dev.oom_reason(exc, "cuda:0") == (
            "CUDA out of memory: needs 2.00 GiB, has 1.50 GiB free of 79.19 GiB on cuda:0")

    def test_missing_figures_are_asked_of_the_device(self) -> None:
        """Without figures in the message, the free and total memory come from mem_get_info."""
        exc = RuntimeError("CUDA error: out of memory")
        reason = dev.oom_reason(exc, "cuda", lambda d: (GiB // 2, 16 * GiB))
        assert reason == ("CUDA out of memory: needs more than it has, has 0.50 GiB free of "
                          "16.00 GiB on cuda")

    def test_not_every_error_is_oom(self) -> None:
        """Other runtime errors are not mistaken for out of memory."""
        assert not dev.is_oom(RuntimeError("shape mismatch"))
        assert dev.is_oom(MemoryError())

    def test_backend_translates_oom_to_a_job_error(self, backend: MusicgenBackend,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """A torch OOM inside MusicGen's generate becomes GenerationFailed with the figures."""
        model = backend._state.model  # type: ignore[union-attr]

        def oom(**kwargs: Any) -> Any:
            raise torch.cuda.OutOfMemoryError(OOM_NEW)

        monkeypatch.setattr(model, "generate", oom)
        with pytest.raises(errors.GenerationFailed) as caught:
            backend.generate(Request(prompt="lo fi", duration=0.2, seed=1))
        assert "CUDA out of memory: needs 2.00 GiB, has 1.50 GiB free of 79.19 GiB" in str(
            caught.value)
        assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)

    def test_worker_error_path_translates_a_raw_oom(self) -> None:
        """A backend that lets torch's OOM through still gets a job error with the figures."""
        parent, child = multiprocessing.Pipe()
        worker = _Worker(child)
        worker.models["m"] = _Slot("m", "src", "cuda:0", "bfloat16", "stub", {}, _OomBackend())
        worker.inbox.put(("generate", 7, {"model_id": "m", "items": [
            Request(prompt="x", duration=1.0, seed=1).to_dict()]}))
        worker.inbox.put(None)
        worker.main_loop()
        kind, rid, (code, message, data) = parent.recv()
        assert (kind, rid, code) == ("error", 7, errors.GenerationFailed.code)
        assert message == ("generation failed: CUDA out of memory: needs 2.00 GiB, has 1.50 "
                           "GiB free of 79.19 GiB on cuda:0")
        assert data["kind"] == "generation_failed"


class _OomBackend(Backend):
    """A backend whose every generation runs out of CUDA memory, as torch says it."""

    name = "stub"

    def load(self, source: str, *, device: str, dtype: str) -> None:
        pass

    def unload(self) -> None:
        pass

    @property
    def loaded(self) -> bool:
        return True

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(melody=False, continuation=False, stereo=False,
                            max_native_duration_s=30, sample_rate=32000, frame_rate=50,
                            channels=1)

    def generate_batch(self, items: Sequence[Request], progress: Any = None,
                       cancels: Any = None, preview: Any = None) -> Any:
        raise torch.cuda.OutOfMemoryError(OOM_NEW)

    def memory_bytes(self) -> int:
        return 0


class TestReleaseMemory:
    def test_backend_unload_drops_the_model(self, tiny_model: Path) -> None:
        """After unload() nothing holds the model: its weights can be freed."""
        backend = MusicgenBackend()
        backend.load(str(tiny_model), device="cpu", dtype="float32")
        backend.generate(Request(prompt="lo fi", duration=0.2, seed=1))
        ref = weakref.ref(backend._state.model)  # type: ignore[union-attr]
        backend.unload()
        gc.collect()
        assert ref() is None

    def test_worker_unload_frees_device_memory(self, tiny_model: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """The worker's unload drops its slot and returns the device's cached memory."""
        released: list[str] = []
        monkeypatch.setattr("timbred.worker.process.release_memory", released.append)
        _parent, child = multiprocessing.Pipe()
        worker = _Worker(child)
        worker.load("tiny", str(tiny_model), "cpu", "float32", "musicgen", {})
        backend = worker.models["tiny"].backend
        assert isinstance(backend, MusicgenBackend)
        model_ref = weakref.ref(backend._state.model)  # type: ignore[union-attr]
        backend_ref = weakref.ref(backend)
        del backend
        assert worker.unload("tiny")
        gc.collect()
        assert released == ["cpu"]
        assert model_ref() is None and backend_ref() is None

    def test_release_empties_the_cuda_cache(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On CUDA (once initialised) the allocator's cached blocks go back to the driver."""
        emptied: list[bool] = []
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
        dev.release_memory("cpu")
        assert emptied == []
        dev.release_memory("cuda:0")
        assert emptied == [True]


class TestDaemonUsesTheWorkersReport:
    """Residency.ensure_executor resolves device, dtype and budget from the worker's report
    (the worker itself is stood in for: only its ready report matters here)."""

    @staticmethod
    async def _ensure(base: Path, monkeypatch: pytest.MonkeyPatch, gpus: tuple[CudaDevice, ...],
                      **settings: Any) -> Any:
        from timbred.daemon.events import EventBus
        from timbred.queue.generation import Generation
        from timbred.testing.daemon import test_settings
        from timbred.worker.process import WorkerHandle

        started: list[bool] = []

        async def start(self: WorkerHandle) -> None:
            started.append(True)
            self._info = WorkerInfo(pid=1, python="3", torch="2", threads=2,
                                    cuda_devices=tuple(g.name for g in gpus), cuda=gpus)

        monkeypatch.setattr(WorkerHandle, "start", start)
        monkeypatch.setattr(WorkerHandle, "alive", property(lambda self: bool(started)))
        gen = Generation(test_settings(base, **settings), EventBus())
        residency = gen.pool.workers[0].residency
        try:
            await residency.ensure_executor()
        finally:
            gen.store.close()
            gen.history.library.close()
        return residency

    @pytest.mark.anyio
    async def test_gpu_memory_is_the_budget(self, short_tmp: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """On a bf16 GPU: cuda, bfloat16, and 75% of the card's memory as the budget."""
        res = await self._ensure(short_tmp, monkeypatch, (H200,))
        assert res.device is not None
        assert (res.device["device"],
                res.device["dtype"]) == ("cuda", "bfloat16")
        assert res.device["name"] == "NVIDIA H200"
        assert res.memory_budget == int(140 * GiB * 0.75)

    @pytest.mark.anyio
    async def test_older_gpu_gets_float16_and_a_capped_budget(
            self, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without bf16: float16; a configured budget beyond the card is capped at the card."""
        res = await self._ensure(short_tmp, monkeypatch, (T4,), models__memory_budget_mb=65536)
        assert res.device is not None and res.device["dtype"] == "float16"
        assert res.memory_budget == 15 * GiB

    @pytest.mark.anyio
    async def test_configured_cuda_without_a_gpu_is_a_clear_error(
            self, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """daemon.device=cuda on a machine without one fails with InvalidParams, not later."""
        with pytest.raises(errors.InvalidParams, match="sees no CUDA device"):
            await self._ensure(short_tmp, monkeypatch, (), daemon__device="cuda")
