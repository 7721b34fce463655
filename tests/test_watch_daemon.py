"""The watch folder wired into the real daemon: defaults, format naming, RPC and events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import miniaudio
import pytest

from tests.conftest import FAST
from tests.support import check_event
from timbrectl.client import Client, connect
from timbred.daemon.app import Daemon
from timbred.errors import WatchFolderError
from timbred.testing.daemon import running_daemon
from timbred.watch.store import WatchStore

pytestmark = pytest.mark.anyio


async def next_file_event(client: Client, status: str) -> dict[str, Any]:
    with anyio.fail_after(180):
        while True:
            ev = await client.next_event()
            check_event({k: v for k, v in ev.items() if k != "method"})
            if ev["type"] == "watch.file" and ev["data"]["status"] == status:
                data: dict[str, Any] = ev["data"]
                return data


async def test_default_inbox_to_outbox(gen: Daemon, client: Client) -> None:
    """The default inbox is <output dir>/inbox; a dropped file makes a take in outbox/."""
    inbox = gen.generation.output_root / "inbox"
    for _ in range(600):  # the folder task attaches just after start-up
        (listed,) = (await client.call("watch.list", {}))["folders"]
        if listed["state"] == "watching":
            break
        await anyio.sleep(0.05)
    assert listed["path"] == str(inbox) and listed["state"] == "watching"
    await anyio.Path(inbox / "idea.txt").write_text("duration: 0.5\n\nwarm lofi rhodes\n")
    accepted = await next_file_event(client, "accepted")
    assert accepted["file"] == "idea.txt" and len(accepted["jobs"]) == 1
    done = await next_file_event(client, "done")
    job = await client.call("jobs.get", {"job_id": done["jobs"][0]})
    (out,) = job["outputs"]
    assert Path(out).parent == inbox / "outbox" and out.endswith(".wav")
    assert miniaudio.wav_read_file_f32(out).num_frames == 16000


async def test_preset_format_names_the_output(gen: Daemon, client: Client) -> None:
    """A preset that picks MP3 gets an .mp3 output name (the prompt file named no format)."""
    inbox = gen.generation.output_root / "inbox"
    await anyio.Path(inbox / "share.toml").write_text(
        'prompt = "bright synth"\npreset = "share"\nduration = 0.5\n')
    done = await next_file_event(client, "done")
    job = await client.call("jobs.get", {"job_id": done["jobs"][0]})
    assert job["outputs"][0].endswith(".mp3"), job


async def test_add_list_rm(gen: Daemon, client: Client, short_tmp: Path) -> None:
    """watch.add watches a new folder, watch.rm stops; a relative path is refused."""
    extra = short_tmp / "extra"
    await anyio.Path(extra).mkdir()
    added = await client.call("watch.add", {"path": str(extra)})
    assert added["path"] == str(extra)
    paths = {f["path"] for f in (await client.call("watch.list", {}))["folders"]}
    assert str(extra) in paths
    await client.call("watch.rm", {"path": str(extra)})
    paths = {f["path"] for f in (await client.call("watch.list", {}))["folders"]}
    assert str(extra) not in paths
    with pytest.raises(WatchFolderError):
        await client.call("watch.add", {"path": "relative/dir"})


async def test_a_preset_edited_between_crash_and_restart_keeps_the_job(
        short_tmp: Path, tiny: Path, user_presets: Path) -> None:
    """The output's format is fixed when the file is claimed. A crash inside submit, then
    the preset's format edited, then a restart: the prompt is submitted again as the very
    request its first attempt sent (same output name), so it gets that job, not a refusal as
    "another request" under its idempotency key, and no second job."""
    (user_presets / "mine.toml").write_text('[export]\nformat = "flac"\n')
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as d, \
            connect(d.socket_path) as client:
        await client.subscribe(["watch.*"])
        inbox = d.generation.output_root / "inbox"
        await anyio.Path(inbox / "x.toml").write_text(
            'prompt = "glass pads"\npreset = "mine"\nduration = 0.5\n')
        (job_id,) = (await next_file_event(client, "done"))["jobs"]
        database = d.generation.store.path
    # What a crash inside submit leaves: the claim open, its prompt caught "submitting",
    # no result file yet.
    (inbox / "done" / "x.toml.result.json").unlink()
    store = WatchStore(database)
    try:
        [record] = store.records()
        record.state, record.outcome, record.finished_at = "claimed", None, None
        record.prompts[0].update(status="submitting", job_id=None, outputs=[])
        store.save(record)
    finally:
        store.close()
    (user_presets / "mine.toml").write_text('[export]\nformat = "mp3"\n')
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as d, \
            connect(d.socket_path) as client:
        result_path = anyio.Path(inbox / "done" / "x.toml.result.json")
        for _ in range(1200):  # the restarted watch resumes the claim on its own
            if await result_path.exists():
                result = json.loads(await result_path.read_text())
                if result["state"] != "submitted":
                    break
            await anyio.sleep(0.05)
        jobs = (await client.call("jobs.list", {}))["jobs"]
    [prompt] = result["prompts"]
    assert result["state"] == "done" and prompt["job_id"] == job_id, result
    assert [j["id"] for j in jobs] == [job_id]
    assert prompt["output"].endswith(".flac")


async def test_a_prompt_waiting_for_room_is_the_request_it_was_claimed_as(
        short_tmp: Path, tiny: Path, user_presets: Path) -> None:
    """The whole request is resolved once, when the file is claimed (model, preset, every
    default, the seed, the export). A prompt that waits for room in a full queue is then
    submitted as that request, even though its preset was deleted meanwhile: the preset's
    words, duration and format, and no refusal (submitting used to read the preset again)."""
    (user_presets / "mine.toml").write_text(
        'prompt_prefix = "glassy"\n[params]\nduration = 0.7\n[export]\nformat = "flac"\n')
    async with running_daemon(short_tmp, models__default=str(tiny), jobs__max_queued=1,
                              **FAST) as d, connect(d.socket_path) as client:
        # The queue holds one job (queued or running): this one, until it is cancelled.
        blocker = await client.call("generate.submit", {"prompt": "long", "duration": 60})
        inbox = d.generation.output_root / "inbox"
        await anyio.Path(inbox / "x.toml").write_text('prompt = "pads"\npreset = "mine"\n')
        for _ in range(2400):  # claimed: the file is moved into done/ first
            if await anyio.Path(inbox / "done" / "x.toml").exists():
                break
            await anyio.sleep(0.05)
        (user_presets / "mine.toml").unlink()
        await client.call("jobs.cancel", {"job_id": blocker["job_id"]})
        result_path = anyio.Path(inbox / "done" / "x.toml.result.json")
        for _ in range(3600):
            if await result_path.exists():
                result = json.loads(await result_path.read_text())
                if result["state"] not in ("claimed", "submitted"):
                    break
            await anyio.sleep(0.05)
        [prompt] = result["prompts"]
        assert result["state"] == "done", result
        job = await client.call("jobs.get", {"job_id": prompt["job_id"]})
    assert job["params"]["prompt"] == "glassy, pads" and job["params"]["duration"] == 0.7
    assert job["params"]["preset"] == "mine"
    (out,) = job["outputs"]
    assert out.endswith(".flac") and out == prompt["output"]
    assert miniaudio.decode_file(out).duration == pytest.approx(0.7, abs=1e-3)
