"""Tests for timbred.worker.process: a real spawned worker running the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import timbred
from tests.worker.conftest import WavWriter
from timbred import errors
from timbred.request import Request
from timbred.worker import WorkerHandle
from timbred.worker.process import _describe_exit

pytestmark = pytest.mark.anyio

SR = 32_000
#: Long enough (two 30 s windows, thousands of steps) never to finish before a test acts.
LONG_S = 60.0


def params(duration: float = 1.0, seed: int = 1, **kw: Any) -> Request:
    return Request(prompt="lo fi hip hop", duration=duration, seed=seed, **kw)


class FirstStep:
    """on_progress that records steps and signals the first one."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.started = anyio.Event()
        self.threads: set[int] = set()

    def __call__(self, step: int, total: int) -> None:
        self.steps.append((step, total))
        self.threads.add(threading.get_ident())
        self.started.set()


@pytest.fixture(scope="module")
async def worker(tiny_model: Path) -> AsyncIterator[WorkerHandle]:
    """One warm worker for the module, with the tiny model loaded as 'tiny'."""
    handle = WorkerHandle(threads=1)
    await handle.start()
    await handle.load("tiny", str(tiny_model), "cpu", "float32")
    try:
        yield handle
    finally:
        await handle.stop()


class TestWorkerRequests:
    async def test_generate_round_trip(self, worker: WorkerHandle) -> None:
        """A generation comes back whole, with progress in this thread rising to its total."""
        progress = FirstStep()
        out = await worker.generate("tiny", params(1.5, variations=2), progress)
        assert out.audio.shape == (2, 1, round(1.5 * SR))
        assert out.sample_rate == SR
        assert out.info["model_id"] == "tiny"
        steps = [s for s, _ in progress.steps]
        assert steps == sorted(steps)
        assert len({t for _, t in progress.steps}) == 1
        assert progress.steps[-1][0] == progress.steps[-1][1]
        assert progress.threads == {threading.get_ident()}

    async def test_worker_info(self, worker: WorkerHandle) -> None:
        """The worker reports its pid and applies the torch thread setting."""
        assert worker.info is not None
        assert worker.info.pid == worker.pid != os.getpid()
        assert worker.info.threads == 1
        assert worker.info.torch

    async def test_same_seed_is_bit_identical(self, worker: WorkerHandle) -> None:
        """Two renders of the same params in the worker are bit-identical."""
        a = await worker.generate("tiny", params(seed=5))
        b = await worker.generate("tiny", params(seed=5))
        assert np.array_equal(a.audio, b.audio)

    async def test_cancel_mid_generation(self, worker: WorkerHandle) -> None:
        """cancel() stops a running generation promptly: generate raises Cancelled, long
        before the job's total, and the worker stays usable."""
        progress = FirstStep()

        async def cancel_when_started() -> None:
            await progress.started.wait()
            await worker.cancel()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started)
                started = time.monotonic()
                with pytest.raises(errors.Cancelled):
                    await worker.generate("tiny", params(LONG_S), progress)
                elapsed = time.monotonic() - started
        step, total = progress.steps[-1]
        assert step < total / 10
        assert elapsed < 5
        assert (await worker.generate("tiny", params(0.2))).audio.shape == (1, 1, 6400)

    async def test_cancelling_the_caller_drops_the_generation(self, worker: WorkerHandle) -> None:
        """If the awaiting task is cancelled, the worker abandons that generation, so the
        next request is served at once."""
        progress = FirstStep()
        with anyio.move_on_after(30):
            async with anyio.create_task_group() as tg:

                async def give_up_when_started() -> None:
                    await progress.started.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(give_up_when_started)
                await worker.generate("tiny", params(LONG_S), progress)
        with anyio.fail_after(10):
            out = await worker.generate("tiny", params(0.2))
        assert out.audio.shape == (1, 1, 6400)

    async def test_ps_answers_during_generation(self, worker: WorkerHandle) -> None:
        """ps() is answered while a generation runs (the reader thread replies)."""
        progress = FirstStep()
        listing: list[Any] = []

        async def ps_then_cancel() -> None:
            await progress.started.wait()
            listing.extend(await worker.ps())
            listing.append(progress.steps[-1])
            await worker.cancel()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ps_then_cancel)
                with pytest.raises(errors.Cancelled):
                    await worker.generate("tiny", params(LONG_S), progress)
        assert [m.model_id for m in listing[:-1]] == ["tiny"]
        step, total = listing[-1]
        assert step < total

    async def test_event_loop_keeps_running(self, worker: WorkerHandle) -> None:
        """The event loop is never blocked while the worker generates and replies."""
        gaps: list[float] = []
        done = anyio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            # About two seconds of work in the worker, then a 2 MB reply.
            await worker.generate("tiny", params(8.0, variations=2))
            done.set()
        assert len(gaps) > 10
        assert max(gaps) < 0.5

    async def test_progress_callback_error_is_raised(self, worker: WorkerHandle) -> None:
        """An exception in on_progress cancels the job and is raised by generate()."""

        def explode(step: int, total: int) -> None:
            raise LookupError("boom")

        with anyio.fail_after(30), pytest.raises(LookupError, match="boom"):
            await worker.generate("tiny", params(LONG_S), explode)

    async def test_load_ps_unload(self, worker: WorkerHandle, tiny_melody_model: Path) -> None:
        """Several models can be loaded; ps lists them with memory; unload removes one."""
        loaded = await worker.load("mel", str(tiny_melody_model), "cpu", "float32",
                                   options={"window_s": 1.0, "stride_s": 0.6})
        assert loaded.capabilities.melody
        assert loaded.capabilities.max_native_duration_s == 1.0
        again = await worker.load("mel", str(tiny_melody_model), "cpu", "float32",
                                  options={"window_s": 1.0, "stride_s": 0.6})
        assert again == loaded
        models = {m.model_id: m for m in await worker.ps()}
        assert set(models) == {"tiny", "mel"}
        assert models["mel"].memory_bytes > 0
        assert (models["mel"].source, models["mel"].device, models["mel"].dtype) == (
            str(tiny_melody_model), "cpu", "float32")
        assert await worker.unload("mel") is True
        assert await worker.unload("mel") is False
        assert [m.model_id for m in await worker.ps()] == ["tiny"]

    async def test_errors_cross_as_the_same_class(self, worker: WorkerHandle, tmp_path: Path,
                                                  write_wav: WavWriter) -> None:
        """Errors raised in the worker arrive as the same timbred.errors class and data."""
        with pytest.raises(errors.InvalidParams) as invalid:
            await worker.generate("tiny", params(melody=str(write_wav("m.wav"))))
        assert invalid.value.data["param"] == "melody"

        missing = str(tmp_path / "missing.wav")
        with pytest.raises(errors.AudioInputError) as audio:
            await worker.generate("tiny", params(continuation=missing))
        assert (audio.value.data["param"], audio.value.data["path"]) == ("continuation", missing)

        with pytest.raises(errors.ModelNotFound):
            await worker.generate("not-loaded", params())
        with pytest.raises(errors.ModelNotFound):
            await worker.load("x", str(tmp_path / "no-such-model"))
        with pytest.raises(errors.InvalidParams) as bad_option:
            await worker.load("x", str(tmp_path), options={"colour": "blue"})
        assert bad_option.value.data["param"] == "options"
        with pytest.raises(errors.InvalidParams):
            await worker.load("x", str(tmp_path), device="abacus")


class TestWorkerLifecycle:
    async def test_kill_9_mid_generation_then_restart(self, tiny_model: Path) -> None:
        """SIGKILL during a generation fails it promptly with WorkerCrashed (signal named),
        later requests fail the same way, start() brings up a fresh worker that generates,
        and stop() during a generation cancels it and ends the process."""
        handle = WorkerHandle(threads=1)
        await handle.start()
        try:
            await handle.load("tiny", str(tiny_model))
            first_pid = handle.pid
            assert first_pid is not None
            progress = FirstStep()
            killed_at: list[float] = []

            async def kill_when_started() -> None:
                await progress.started.wait()
                killed_at.append(time.monotonic())
                os.kill(first_pid, signal.SIGKILL)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_when_started)
                    with pytest.raises(errors.WorkerCrashed) as crashed:
                        await handle.generate("tiny", params(LONG_S), progress)
            assert time.monotonic() - killed_at[0] < 5
            assert crashed.value.data["reason"] == "killed by signal 9 (SIGKILL)"
            assert crashed.value.data["exitcode"] == -signal.SIGKILL
            assert not handle.alive
            with pytest.raises(errors.WorkerCrashed, match="SIGKILL"):
                await handle.ps()

            await handle.start()
            assert handle.alive
            assert handle.pid not in (None, first_pid)
            assert await handle.ps() == []  # a fresh process: nothing loaded
            await handle.load("tiny", str(tiny_model))
            out = await handle.generate("tiny", params(0.5))
            assert out.audio.shape == (1, 1, SR // 2)

            progress = FirstStep()

            async def stop_when_started() -> None:
                await progress.started.wait()
                await handle.stop()

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_when_started)
                    with pytest.raises((errors.Cancelled, errors.WorkerCrashed)):
                        await handle.generate("tiny", params(LONG_S), progress)
            assert not handle.alive
            assert handle.pid is None
        finally:
            await handle.stop()

    async def test_requests_before_start(self) -> None:
        """A handle that was never started refuses requests with WorkerCrashed."""
        handle = WorkerHandle()
        assert not handle.alive
        assert handle.pid is None
        with pytest.raises(errors.WorkerCrashed, match="not running"):
            await handle.ps()
        await handle.stop()  # a no-op


@pytest.mark.parametrize(
    ("exitcode", "reason"),
    [
        (-9, "killed by signal 9 (SIGKILL)"),
        (-11, "killed by signal 11 (SIGSEGV)"),
        (3, "exited with status 3"),
        (None, "it stopped answering"),
    ],
)
def test_exit_descriptions(exitcode: int | None, reason: str) -> None:
    """Exit codes become the reasons WorkerCrashed reports (signals by name)."""
    assert _describe_exit(exitcode) == reason


def test_parent_side_never_imports_torch() -> None:
    """Importing the worker package (as the daemon does) pulls in neither torch nor
    transformers: only the spawned worker process does."""
    root = Path(timbred.__file__).resolve().parent.parent
    code = (
        "import sys, timbred.worker, timbred.worker.process, timbred.worker.audio_io\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
