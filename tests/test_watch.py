"""Watch folders against the real file system and a real event loop.

The generation service is the seam: :class:`FakeGeneration` is a small real in-process stand-in
used only as WatchService's ``submit``/``wait`` callbacks (it records submissions and finishes a
job by writing a tiny WAV to its output path); one test runs the real daemon instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from timbred.errors import InvalidParams, JobNotFound, ModelNotFound, StoreError, WatchFolderError
from timbred.watch.files import DONE_DIR, OUTBOX_DIR, REJECTED_DIR
from timbred.watch.promptfile import parse
from timbred.watch.service import WatchService, _idempotency_key
from timbred.watch.store import FileRecord, WatchStore

pytestmark = pytest.mark.anyio

Event = tuple[str, dict[str, Any]]


class FakeGeneration:
    """Records submissions; a job finishes (writing a tiny WAV) when waited for, after
    ``delay`` and once ``release`` is set. Refuses model "missing" as the daemon would."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.release = anyio.Event()
        self.release.set()
        self.submitted: list[dict[str, Any]] = []
        self.submit_times: list[float] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self.outstanding = 0  # submitted, and wait() not returned yet
        self.max_outstanding = 0
        self.keys: dict[str, str] = {}  # idempotency key -> job id, as the daemon keeps

    async def submit(self, request: dict[str, Any]) -> str:
        key = request.get("idempotency_key")
        if key in self.keys:
            if self.jobs[self.keys[key]] != request:  # the daemon compares a digest
                raise InvalidParams(f"idempotency key {key} was used for another request",
                                    param="idempotency_key")
            return self.keys[key]
        params = request["params"]
        if params.get("model") == "missing":
            raise ModelNotFound("missing", "not downloaded yet")
        output = Path(params["output"])
        if not await anyio.to_thread.run_sync(usable_output, output):
            raise InvalidParams(f"bad output {output}", param="output")
        job_id = f"j-{len(self.submitted) + 1:05d}"
        self.submitted.append(request)
        self.submit_times.append(time.monotonic())
        self.jobs[job_id] = request
        if key is not None:
            self.keys[key] = job_id
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        return job_id

    async def wait(self, job_id: str) -> dict[str, Any]:
        if job_id in self.finished:
            return self.finished[job_id]
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        await self.release.wait()
        await anyio.sleep(self.delay)
        output = Path(self.jobs[job_id]["params"]["output"])
        await anyio.to_thread.run_sync(write_tiny_wav, output)
        self.outstanding -= 1
        job = {"id": job_id, "state": "done", "outputs": [str(output)], "error": None}
        self.finished[job_id] = job
        return job

    @property
    def prompts(self) -> list[str]:
        return [r["params"]["prompt"] for r in self.submitted]


def usable_output(path: Path) -> bool:
    """What the daemon checks of an output path: absolute, its folder exists, it does not."""
    return path.is_absolute() and path.parent.is_dir() and not path.exists()


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file())


def write_tiny_wav(path: Path) -> None:
    with path.open("xb") as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 80)


class Events:
    """Published events, and a way to wait for a condition on them (no polling sleeps)."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self._changed = anyio.Event()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((kind, data))
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def files(self, status: str | None = None) -> list[dict[str, Any]]:
        return [d for k, d in self.items if k == "watch.file"
                and (status is None or d["status"] == status)]

    def folders(self, status: str) -> list[dict[str, Any]]:
        return [d for k, d in self.items if k == "watch.folder" and d["status"] == status]

    async def until(self, predicate: Callable[[], bool], timeout: float = 15) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


def make(base: Path, gen: FakeGeneration, events: Events, **overrides: Any) -> WatchService:
    """A service on ``base/inbox`` with test-sized intervals."""
    options: dict[str, Any] = {"stable_checks": 3, "stable_interval_s": 0.1,
                               "retry_initial_s": 0.1, "retry_max_s": 0.3}
    options.update(overrides)
    folders = options.pop("folders", [base / "inbox"])
    return WatchService(folders, database=base / "timbre.sqlite3", submit=gen.submit,
                        wait=gen.wait, publish=events.publish, **options)


@asynccontextmanager
async def running(service: WatchService) -> AsyncIterator[WatchService]:
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def result_of(inbox: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((inbox / DONE_DIR / f"{name}.result.json").read_text())
    return data


def error_of(inbox: Path, name: str) -> str:
    return (inbox / REJECTED_DIR / f"{name}.error.txt").read_text()


async def settle(service: WatchService, ticks: int = 5) -> None:
    """Let the service run a few more stability checks (to show nothing else happens)."""
    await anyio.sleep(service.stable_interval_s * ticks)


class TestCompleteFiles:
    async def test_file_written_byte_by_byte_makes_one_job_once_complete(
            self, tmp_path: Path, inbox: Path) -> None:
        """A file written one byte at a time over ~2.5 s becomes exactly one job, submitted
        only after its last byte, with the whole prompt."""
        gen, events = FakeGeneration(), Events()
        content = b"duration: 2\nseed: 5\n\nA slow ambient pad with distant bells\n"
        async with running(make(tmp_path, gen, events, stable_interval_s=0.3)):
            with (inbox / "slow.txt").open("wb", buffering=0) as f:
                for byte in content:
                    f.write(bytes([byte]))
                    await anyio.sleep(2.5 / len(content))
            finished_writing = time.monotonic()
            await events.until(lambda: bool(events.files("done")))
        assert gen.prompts == ["A slow ambient pad with distant bells"]
        assert gen.submitted[0]["params"]["duration"] == 2
        assert gen.submit_times[0] > finished_writing
        assert [d["status"] for d in events.files()] == ["accepted", "done"]
        assert not (inbox / "slow.txt").exists()
        result = result_of(inbox, "slow.txt")
        assert result["state"] == "done"
        assert result["prompts"][0]["outputs"] == [str(inbox / OUTBOX_DIR / "slow.wav")]
        assert (inbox / OUTBOX_DIR / "slow.wav").stat().st_size > 0

    async def test_file_renamed_into_the_folder_is_taken_at_once(
            self, tmp_path: Path, inbox: Path) -> None:
        """A complete file renamed into the folder is taken without the stability wait."""
        gen, events = FakeGeneration(), Events()
        staging = tmp_path / "staging.txt"
        staging.write_text("A finished prompt")
        await anyio.sleep(0.05)  # the rename's ctime must be later than the write's mtime
        service = make(tmp_path, gen, events, stable_checks=100)  # ~10 s of checks otherwise
        async with running(service):
            started = time.monotonic()
            staging.rename(inbox / "ready.txt")
            await events.until(lambda: bool(events.files("done")), timeout=5)
            assert time.monotonic() - started < 3
        assert gen.prompts == ["A finished prompt"]

    async def test_hidden_temporary_and_other_files_are_left_alone(
            self, tmp_path: Path, inbox: Path) -> None:
        """Hidden files, editor and download temporaries, other suffixes, take sidecars and
        directories are never taken or moved."""
        gen, events = FakeGeneration(), Events()
        ignored = [".hidden.txt", "notes.txt~", ".notes.txt.swp", "draft.txt.swp", "x.txt.part",
                   "y.json.crdownload", ".#lock.txt", "#auto.txt#", "song.tmp", "readme.md",
                   "take.wav.json", "a.txt.result.json"]
        for name in ignored:
            (inbox / name).write_text("A prompt")
        (inbox / "folder.txt").mkdir()
        async with running(make(tmp_path, gen, events)) as service:
            (inbox / "real.txt").write_text("The one real prompt")
            await events.until(lambda: bool(events.files("done")))
            await settle(service)
        assert gen.prompts == ["The one real prompt"]
        assert all((inbox / name).exists() for name in ignored)
        assert (inbox / "folder.txt").is_dir()
        assert [d["file"] for d in events.files()] == ["real.txt", "real.txt"]

    async def test_files_that_arrived_while_stopped_are_taken_at_start(
            self, tmp_path: Path, inbox: Path) -> None:
        """The start-up scan takes files dropped while the service was not running."""
        gen, events = FakeGeneration(), Events()
        for i in range(3):
            (inbox / f"early-{i}.txt").write_text(f"prompt {i}")
        async with running(make(tmp_path, gen, events)):
            await events.until(lambda: len(events.files("done")) == 3)
        assert sorted(gen.prompts) == ["prompt 0", "prompt 1", "prompt 2"]


class TestExactlyOnce:
    async def test_touch_and_rename_make_no_duplicates(self, tmp_path: Path,
                                                       inbox: Path) -> None:
        """Touching a file and renaming it inside the folder while it settles, then touching
        and renaming the taken file, and a later rescan, make one job."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events, rescan_interval_s=0.3)) as service:
            (inbox / "a.txt").write_text("Touched and renamed")
            for _ in range(3):
                os.utime(inbox / "a.txt")
                await anyio.sleep(0.05)
            (inbox / "a.txt").rename(inbox / "b.txt")
            os.utime(inbox / "b.txt")
            await events.until(lambda: bool(events.files("done")))
            os.utime(inbox / DONE_DIR / "b.txt")
            (inbox / DONE_DIR / "b.txt").rename(inbox / DONE_DIR / "c.txt")
            await settle(service, ticks=8)  # more than one rescan
        assert gen.prompts == ["Touched and renamed"]
        assert [d["status"] for d in events.files()] == ["accepted", "done"]

    async def test_restart_while_jobs_run_resumes_without_resubmitting(
            self, tmp_path: Path, inbox: Path) -> None:
        """Stopping the service while its jobs run and starting it again waits for the same
        jobs; nothing is submitted twice, and the result file is completed."""
        gen, events = FakeGeneration(), Events()
        gen.release = anyio.Event()  # jobs do not finish until released
        (inbox / "two.txt").write_text("first\n---\nsecond")
        async with running(make(tmp_path, gen, events)):
            await events.until(lambda: bool(events.files("accepted")))
        assert len(gen.submitted) == 2
        assert result_of(inbox, "two.txt")["state"] == "submitted"
        gen.release.set()
        async with running(make(tmp_path, gen, events)) as service:
            await events.until(lambda: bool(events.files("done")))
            await settle(service)
        assert gen.prompts == ["first", "second"]
        result = result_of(inbox, "two.txt")
        assert result["state"] == "done"
        assert [p["job_id"] for p in result["prompts"]] == ["j-00001", "j-00002"]
        assert [p["output"] for p in result["prompts"]] == [
            str(inbox / OUTBOX_DIR / "two-1.wav"), str(inbox / OUTBOX_DIR / "two-2.wav")]

    @pytest.mark.parametrize("linked_into_done", [False, True],
                             ids=["before-move", "between-link-and-unlink"])
    async def test_crash_after_claim_submits_once(self, tmp_path: Path, inbox: Path,
                                                  linked_into_done: bool) -> None:
        """A claim recorded by a run that died before submitting is submitted exactly once
        at restart, and its file ends up in done/ only once."""
        gen, events = FakeGeneration(), Events()
        path = inbox / "claimed.txt"
        path.write_text("Claimed before the crash")
        if linked_into_done:
            (inbox / DONE_DIR).mkdir()
            os.link(path, inbox / DONE_DIR / "claimed.txt")
        seed_claim(tmp_path, path, status="pending")
        async with running(make(tmp_path, gen, events)) as service:
            await events.until(lambda: bool(events.files("done")))
            await settle(service)
        assert gen.prompts == ["Claimed before the crash"]
        assert gen.submitted[0]["idempotency_key"].startswith("watch:")
        assert not path.exists()
        assert sorted(p.name for p in (inbox / DONE_DIR).iterdir()) == [
            "claimed.txt", "claimed.txt.result.json"]

    @pytest.mark.parametrize("job_made", [True, False],
                             ids=["after-the-job-was-made", "before-the-job-was-made"])
    async def test_crash_inside_submit_makes_exactly_one_job(
            self, tmp_path: Path, inbox: Path, job_made: bool) -> None:
        """A prompt caught mid-submit by a crash may or may not be a job already. It is
        submitted again under the idempotency key its first attempt used: the job made
        then is kept and waited for, or (none made) exactly one is made now."""
        gen, events = FakeGeneration(), Events()
        (inbox / DONE_DIR).mkdir()
        path = inbox / DONE_DIR / "mid.txt"
        path.write_text("Maybe submitted")
        record = seed_claim(tmp_path, path, status="submitting",
                            location=f"{DONE_DIR}/mid.txt", name="mid.txt")
        if job_made:  # what the first attempt left in the daemon before the crash
            key = _idempotency_key(record, record.prompts[0])
            first = {"params": {"prompt": "Maybe submitted",
                                "output": record.prompts[0]["output"]},
                     "export": {}, "preset": None, "idempotency_key": key}
            gen.jobs["j-early"], gen.keys[key] = first, "j-early"
        async with running(make(tmp_path, gen, events)):
            await events.until(lambda: bool(events.files("done")))
        [prompt] = result_of(inbox, "mid.txt")["prompts"]
        assert prompt["status"] == "done"
        if job_made:
            assert gen.submitted == []
            assert prompt["job_id"] == "j-early"
        else:
            assert [r["params"]["prompt"] for r in gen.submitted] == ["Maybe submitted"]
            assert prompt["job_id"] == "j-00001"
        assert len(gen.keys) == 1 and list(gen.keys.values()) == [prompt["job_id"]]

    async def test_the_format_is_fixed_at_claim_time(self, tmp_path: Path,
                                                     inbox: Path) -> None:
        """format_for names the outputs' format when a file is claimed (a free name for that
        suffix is reserved), and a prompt caught mid-submit is resubmitted with the output its
        claim recorded even though format_for now says otherwise (a preset edited between a
        crash and the restart): the same request, so the first attempt's job."""
        gen, events = FakeGeneration(), Events()
        (inbox / OUTBOX_DIR).mkdir()
        (inbox / OUTBOX_DIR / "song.flac").write_bytes(b"taken")
        (inbox / "song.txt").write_text("Lossless please")
        async with running(make(tmp_path, gen, events, format_for=lambda req: "flac")):
            await events.until(lambda: bool(events.files("done")))
        [prompt] = result_of(inbox, "song.txt")["prompts"]
        assert prompt["output"] == str(inbox / OUTBOX_DIR / "song.2.flac")
        assert gen.submitted[0]["params"]["output"] == prompt["output"]

        path = inbox / DONE_DIR / "mid.txt"
        path.write_text("Maybe submitted")
        record = seed_claim(tmp_path, path, status="submitting",
                            location=f"{DONE_DIR}/mid.txt", name="mid.txt")
        key = _idempotency_key(record, record.prompts[0])
        first = {"params": {"prompt": "Maybe submitted", "output": record.prompts[0]["output"]},
                 "export": {}, "preset": None, "idempotency_key": key}
        gen.jobs["j-early"], gen.keys[key] = first, "j-early"
        async with running(make(tmp_path, gen, events, format_for=lambda req: "mp3")):
            await events.until(lambda: len(events.files("done")) == 2)
        [prompt] = result_of(inbox, "mid.txt")["prompts"]
        assert prompt["status"] == "done" and prompt["job_id"] == "j-early"
        assert prompt["output"].endswith(".wav") and len(gen.submitted) == 1

    async def test_same_content_dropped_again_is_a_new_request(self, tmp_path: Path,
                                                               inbox: Path) -> None:
        """Exactly once is per file: a new file with the same content (dropped again) is a
        new request and makes a new take, under a free name; nothing is overwritten."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events)):
            (inbox / "again.txt").write_text("Once more")
            await events.until(lambda: len(events.files("done")) == 1)
            (inbox / "again.txt").write_text("Once more")
            await events.until(lambda: len(events.files("done")) == 2)
        assert gen.prompts == ["Once more", "Once more"]
        assert sorted(p.name for p in (inbox / DONE_DIR).iterdir()) == [
            "again.2.txt", "again.2.txt.result.json", "again.txt", "again.txt.result.json"]
        assert sorted(p.name for p in (inbox / OUTBOX_DIR).iterdir()) == [
            "again.2.wav", "again.wav"]


def seed_claim(base: Path, path: Path, *, status: str, location: str | None = None,
               name: str | None = None) -> FileRecord:
    """Record a claim the way a run that then crashed would have left it."""
    inbox = base / "inbox"
    data = path.read_bytes()
    st = path.stat()
    [req] = parse(path.name, data)
    prompt: dict[str, Any] = {
        "request": req.to_dict(), "output": str(inbox / OUTBOX_DIR / f"{path.stem}.wav"),
        "status": status, "job_id": None, "outputs": [], "error": None}
    store = WatchStore(base / "timbre.sqlite3")
    try:
        record, new = store.claim(folder=str(inbox), name=name or path.name, size=len(data),
                                  sha256=hashlib.sha256(data).hexdigest(),
                                  identity=f"{st.st_dev}:{st.st_ino}", prompts=[prompt])
        assert new
        if location is not None:
            record.location = location
            store.save(record)
    finally:
        store.close()
    return record


class TestBurst:
    async def test_a_thousand_files_each_once_with_bounded_work(self, tmp_path: Path,
                                                                inbox: Path) -> None:
        """1,000 files dropped at once are each processed exactly once, and never more than
        max_inflight_files are submitted but unfinished."""
        gen, events = FakeGeneration(delay=0.002), Events()
        count, bound = 1000, 8
        service = make(tmp_path, gen, events, max_inflight_files=bound, stable_checks=2,
                       stable_interval_s=0.05)
        async with running(service):
            for i in range(count):
                (inbox / f"p{i:04d}.txt").write_text(f"prompt number {i}")
            await events.until(lambda: len(events.files("done")) == count, timeout=60)
            assert service.list()[0]["inflight"] == 0
        assert sorted(gen.prompts) == sorted(f"prompt number {i}" for i in range(count))
        assert gen.max_outstanding <= bound
        assert service.max_inflight_seen <= bound
        assert len(list((inbox / OUTBOX_DIR).iterdir())) == count
        assert len(list((inbox / DONE_DIR).glob("*.result.json"))) == count
        assert files_in(inbox) == []


class TestRejections:
    async def test_bad_files_are_rejected_with_the_reason_and_work_goes_on(
            self, tmp_path: Path, inbox: Path) -> None:
        """A symlink to a file outside, a '../' output name, a 50 MB file, random bytes,
        non-UTF-8 text and bad TOML each go to rejected/ with a reason naming the problem;
        a good file dropped with them is still processed."""
        gen, events = FakeGeneration(), Events()
        secret = tmp_path / "secret.txt"
        secret.write_text("A prompt outside the folder")
        bad = {
            "link.txt": "is a symbolic link",
            "escape.txt": "output '../evil' holds a path separator or '..' and would escape "
                          "the output folder",
            "big.txt": "too large: 52428800 bytes; prompt files are limited to 65536 bytes",
            "noise.txt": "binary content: NUL byte at byte offset",
            "latin1.txt": "not UTF-8: invalid byte 0xe9 at byte offset 3",
            "bad.toml": "bad TOML at line 1",
        }
        async with running(make(tmp_path, gen, events)):
            (inbox / "link.txt").symlink_to(secret)
            (inbox / "escape.txt").write_text("output: ../evil\n\nA prompt")
            with (inbox / "big.txt").open("wb") as f:
                f.truncate(50 * 1024 * 1024)  # sparse: only its size can refuse it correctly
            (inbox / "noise.txt").write_bytes(random.Random(7).randbytes(4096))
            (inbox / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
            (inbox / "bad.toml").write_bytes(b'prompt = "unterminated\n')
            os.mkfifo(inbox / "pipe.txt")  # opening it for reading would block
            bad["pipe.txt"] = "not a regular file"
            (inbox / "good.txt").write_text("A good prompt")
            await events.until(lambda: len(events.files("rejected")) == len(bad)
                               and bool(events.files("done")))
        left = files_in(inbox)
        for name, words in bad.items():
            assert words in error_of(inbox, name), name
            assert name not in left
        reasons = {d["file"]: d["reason"] for d in events.files("rejected")}
        assert all(words in reasons[name] for name, words in bad.items())
        assert (inbox / REJECTED_DIR / "link.txt").is_symlink()
        assert secret.read_text() == "A prompt outside the folder"
        assert gen.prompts == ["A good prompt"]
        assert not (tmp_path / "evil.wav").exists()

    async def test_rejected_names_never_overwrite(self, tmp_path: Path, inbox: Path) -> None:
        """The same bad name rejected twice is kept twice, each with its own error file."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events)):
            (inbox / "oops.json").write_text('{"prompt": "x", "durations": 3}')
            await events.until(lambda: len(events.files("rejected")) == 1)
            (inbox / "oops.json").write_text('{"prompt": "x", "seed": -1}')
            await events.until(lambda: len(events.files("rejected")) == 2)
        assert "unknown key 'durations' (did you mean 'duration'?)" in error_of(inbox,
                                                                              "oops.json")
        assert "seed: -1 is out of range; allowed: at least 0" in error_of(inbox, "oops.2.json")

    async def test_refused_at_submit_goes_to_rejected(self, tmp_path: Path,
                                                      inbox: Path) -> None:
        """A file whose every prompt the daemon refuses goes to rejected/ with the daemon's
        reason; one with some prompts accepted goes to done/ and reports the others."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events)):
            (inbox / "nomodel.txt").write_text("model: missing\n\nA prompt")
            (inbox / "half.txt").write_text("fine\n---\nmodel: missing\n\nnot fine")
            await events.until(lambda: bool(events.files("rejected"))
                               and bool(events.files("failed")))
        assert "prompt 1: model 'missing' not found" in error_of(inbox, "nomodel.txt")
        assert gen.prompts == ["fine"]
        [failed] = events.files("failed")
        assert failed["file"] == "half.txt"
        assert "prompt 2: model 'missing' not found" in failed["reason"]
        statuses = [p["status"] for p in result_of(inbox, "half.txt")["prompts"]]
        assert statuses == ["done", "refused"]


class TestOutputs:
    async def test_names_never_overwrite(self, tmp_path: Path, inbox: Path) -> None:
        """Output names come from the file (or its output key) and skip existing takes and
        their sidecars; a name clash in done/ gets a suffix too."""
        gen, events = FakeGeneration(), Events()
        (inbox / OUTBOX_DIR).mkdir()
        (inbox / OUTBOX_DIR / "song.wav").write_bytes(b"old take")
        (inbox / OUTBOX_DIR / "intro.mp3.json").write_text("{}")  # a sidecar without its take
        (inbox / DONE_DIR).mkdir()
        (inbox / DONE_DIR / "song.txt").write_text("an older file")
        async with running(make(tmp_path, gen, events)):
            (inbox / "song.txt").write_text("A song")
            (inbox / "named.json").write_text('{"prompt": "x", "output": "intro.mp3"}')
            await events.until(lambda: len(events.files("done")) == 2)
        outputs = sorted(r["params"]["output"] for r in gen.submitted)
        assert outputs == [str(inbox / OUTBOX_DIR / "intro.2.mp3"),
                           str(inbox / OUTBOX_DIR / "song.2.wav")]
        mp3 = next(r for r in gen.submitted if r["params"]["output"].endswith(".mp3"))
        assert mp3["export"] == {"format": "mp3"}
        assert (inbox / OUTBOX_DIR / "song.wav").read_bytes() == b"old take"
        assert (inbox / DONE_DIR / "song.txt").read_text() == "an older file"
        assert result_of(inbox, "song.2.txt")["file"] == "song.txt"

    async def test_beside_puts_takes_next_to_the_prompt(self, tmp_path: Path,
                                                        inbox: Path) -> None:
        """With outputs='beside' the takes land in the watched folder itself (and are not
        taken for prompt files)."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events, outputs="beside")) as service:
            (inbox / "here.txt").write_text("variations: 2\n\nTwo takes")
            await events.until(lambda: bool(events.files("done")))
            await settle(service)
        assert gen.submitted[0]["params"]["output"] == str(inbox / "here.wav")
        assert (inbox / "here.wav").exists()
        assert len(gen.submitted) == 1

    async def test_export_and_preset_travel_in_their_own_parts(self, tmp_path: Path,
                                                               inbox: Path) -> None:
        """submit gets params (generate.submit), export and preset apart, and relative audio
        paths made absolute against the folder."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events)):
            (inbox / "full.toml").write_text(
                'prompt = "x"\nduration = 4\nformat = "flac"\nloudness_target_lufs = -14\n'
                'preset = "lofi"\ncontinuation = "clips/start.wav"\n')
            await events.until(lambda: bool(events.files("done")))
        [request] = gen.submitted
        assert request["params"] == {"prompt": "x", "duration": 4,
                                     "continuation": str(inbox / "clips" / "start.wav"),
                                     "output": str(inbox / OUTBOX_DIR / "full.flac")}
        assert request["export"] == {"format": "flac", "loudness_target_lufs": -14}
        assert request["preset"] == "lofi"


class TestFolders:
    async def test_deleted_folder_is_reattached_when_it_comes_back(
            self, tmp_path: Path, inbox: Path) -> None:
        """Deleting the watched folder publishes 'missing'; recreating it re-attaches and
        files dropped into the new folder are taken."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events)) as service:
            await events.until(lambda: bool(events.folders("watching")))
            shutil.rmtree(inbox)
            await events.until(lambda: bool(events.folders("missing")))
            assert service.list()[0]["state"] == "missing"
            await anyio.sleep(0.3)  # a few retries while it is gone
            await anyio.Path(inbox).mkdir()
            await events.until(lambda: len(events.folders("watching")) == 2)
            (inbox / "back.txt").write_text("After the folder came back")
            await events.until(lambda: bool(events.files("done")))
            assert service.list()[0]["state"] == "watching"
        assert gen.prompts == ["After the folder came back"]
        assert "does not exist" in (events.folders("missing")[0]["reason"] or "")

    async def test_replaced_folder_is_reattached(self, tmp_path: Path) -> None:
        """A folder replaced by another directory at the same path (what an unmount and
        remount looks like) is detected by its device and inode and re-attached; the old
        directory is no longer watched. The path is a symlink re-pointed with one rename, so
        the path never stops resolving (a rename-then-mkdir would let the watcher see it
        missing in between, which is a different, also correct, report)."""
        gen, events = FakeGeneration(), Events()
        first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "inbox"
        first.mkdir()
        second.mkdir()
        link.symlink_to(first)
        async with running(make(tmp_path, gen, events, folders=[link])):
            await events.until(lambda: bool(events.folders("watching")))
            (tmp_path / "next-link").symlink_to(second)
            os.replace(tmp_path / "next-link", link)  # atomic: no moment without a folder
            await events.until(lambda: len(events.folders("watching")) == 2)
            (first / "old.txt").write_text("Not watched any more")
            (link / "new.txt").write_text("In the new folder")
            await events.until(lambda: bool(events.files("done")))
        assert gen.prompts == ["In the new folder"]
        assert [e["reason"] for e in events.folders("missing")] == [
            "was replaced (another directory now has its path)"]
        assert (first / "old.txt").exists()

    async def test_missing_folder_at_start_is_attached_when_created(self, tmp_path: Path
                                                                    ) -> None:
        """A configured folder that does not exist yet is waited for, not an error."""
        gen, events = FakeGeneration(), Events()
        late = tmp_path / "late"
        async with running(make(tmp_path, gen, events, folders=[late])):
            await events.until(lambda: bool(events.folders("missing")))
            late.mkdir()
            (late / "x.txt").write_text("Late folder")
            await events.until(lambda: bool(events.files("done")))
        assert gen.prompts == ["Late folder"]

    async def test_add_remove_list(self, tmp_path: Path, inbox: Path) -> None:
        """add() watches a folder now and after restarts; remove() stops; bad paths are
        refused with WatchFolderError naming the problem."""
        gen, events = FakeGeneration(), Events()
        async with running(make(tmp_path, gen, events, folders=[])) as service:
            assert service.list() == []
            for path, words in [("relative/dir", "not an absolute path"),
                                (str(tmp_path / "nope"), "does not exist"),
                                (str(tmp_path / "timbre.sqlite3"), "is not a directory")]:
                with pytest.raises(WatchFolderError, match=words):
                    await service.add(path)
            entry = await service.add(inbox)
            assert (entry["path"], entry["source"]) == (str(inbox), "added")
            with pytest.raises(WatchFolderError, match="subfolder of the watched folder"):
                await service.add(inbox / DONE_DIR)
            (inbox / "added.txt").write_text("Via add")
            await events.until(lambda: bool(events.files("done")))
        async with running(make(tmp_path, gen, events, folders=[])) as service:
            assert [f["path"] for f in service.list()] == [str(inbox)]
            await service.remove(inbox)
            assert service.list() == []
            with pytest.raises(WatchFolderError, match="is not watched"):
                await service.remove(inbox)
        async with running(make(tmp_path, gen, events, folders=[])) as service:
            assert service.list() == []
        assert gen.prompts == ["Via add"]


class TestCounters:
    async def test_list_counts_survive_a_restart(self, tmp_path: Path, inbox: Path) -> None:
        """`watch list`'s taken and rejected counts carry on after the service restarts (a
        resumed claim is not counted twice); a folder removed and added again keeps them."""
        gen, events = FakeGeneration(), Events()
        gen.release = anyio.Event()  # the job is still running at the restart
        async with running(make(tmp_path, gen, events)) as service:
            (inbox / "one.txt").write_text("one prompt")
            (inbox / "bad.toml").write_bytes(b'prompt = "unterminated\n')
            await events.until(lambda: bool(events.files("accepted"))
                               and bool(events.files("rejected")))
            [entry] = service.list()
            assert (entry["taken"], entry["rejected"]) == (1, 1)
        gen.release.set()
        async with running(make(tmp_path, gen, events)) as service:
            await events.until(lambda: bool(events.files("done")))
            (inbox / "two.txt").write_text("another prompt")
            await events.until(lambda: len(events.files("done")) == 2)
            [entry] = service.list()
            assert (entry["taken"], entry["rejected"]) == (2, 1)
        async with running(make(tmp_path, gen, events, folders=[])) as service:
            await service.add(inbox)
            [entry] = service.list()
            assert (entry["taken"], entry["rejected"]) == (2, 1)


class TestStore:
    def test_own_version_table_leaves_the_job_store_pragmas_alone(self, tmp_path: Path
                                                                  ) -> None:
        """The watch tables are versioned in watch_schema; user_version and application_id
        (the job store's) stay untouched; a newer watch schema is refused."""
        db = tmp_path / "t.sqlite3"
        WatchStore(db).close()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
            assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
            assert conn.execute("SELECT version FROM watch_schema").fetchone()[0] == 2
            conn.execute("UPDATE watch_schema SET version = 99")
            conn.commit()
        finally:
            conn.close()
        with pytest.raises(StoreError, match="schema version 99 was written by a newer"):
            WatchStore(db)

    def test_foreign_database_is_refused(self, tmp_path: Path) -> None:
        """A SQLite file of another application is not touched."""
        db = tmp_path / "other.sqlite3"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA application_id = 1234")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="not a Timbre database"):
            WatchStore(db)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight MusicGen fixture (built once for this module)."""
    from timbred.testing.tiny_musicgen import build_tiny_musicgen

    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny")


class TestRealDaemon:
    @pytest.mark.slow
    async def test_dropped_file_becomes_a_take_through_the_real_daemon(
            self, short_tmp: Path, tiny: Path) -> None:
        """End to end: the real daemon's generation service, its job database (shared with
        the watch tables) and the tiny model turn a dropped file into a WAV take."""
        import soundfile as sf

        from timbred.queue.jobs import SCHEMA_VERSION
        from timbred.testing.daemon import running_daemon

        inbox = short_tmp / "inbox"
        inbox.mkdir()
        events = Events()
        async with running_daemon(short_tmp, models__default=str(tiny), models__window_s=2.0,
                                  models__stride_s=1.0) as daemon:
            gen = daemon.generation

            async def submit(request: dict[str, Any]) -> str:
                return (await gen.submit(request["params"])).id

            async def wait(job_id: str) -> dict[str, Any]:
                return (await gen.wait(job_id, None)).to_dict()

            def publish(kind: str, data: dict[str, Any]) -> None:
                daemon.bus.publish(kind, data)
                events.publish(kind, data)

            service = WatchService([inbox], database=gen.store.path, submit=submit, wait=wait,
                                   publish=publish, stable_checks=2, stable_interval_s=0.1)
            async with running(service):
                (inbox / "noise.txt").write_text("duration: 1\nseed: 3\n\nnoise for a test\n")
                await events.until(lambda: bool(events.files("done") + events.files("failed")),
                                   timeout=120)
            job = await gen.get(events.files("done")[0]["jobs"][0])
        take = inbox / OUTBOX_DIR / "noise.wav"
        assert job.state.value == "done"
        assert job.params["output"] == str(take)
        assert list(job.outputs) == [str(take)]
        info = sf.info(str(take))
        assert info.samplerate == 32000
        assert info.duration == pytest.approx(1.0, abs=0.05)
        result = result_of(inbox, "noise.txt")
        assert result["prompts"][0]["job_id"] == job.id
        assert result["prompts"][0]["outputs"] == [str(take)]
        conn = sqlite3.connect(gen.store.path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("SELECT count(*) FROM watch_files").fetchone()[0] == 1
        finally:
            conn.close()
