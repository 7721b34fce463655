"""Takes through the real daemon: layout, formats, presets, history, export, rate/tag/rm,
replay, and a full disk. Uses the tiny MusicGen test fixture (noise, not music)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import jsonschema
import miniaudio
import pytest
import soundfile as sf

from tests.conftest import FAST
from tests.support import RawConnection, check_error, check_event, check_result, file_lufs, req
from timbrectl.client import Client, connect
from timbred.daemon.app import Daemon
from timbred.errors import InvalidParams, PresetInvalid, PresetNotFound, TakeNotFound
from timbred.protocol.schema import load as load_schema
from timbred.protocol.schema import rooted
from timbred.takes.sidecars import sidecar_path
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


async def run_job(client: Client, **params: Any) -> dict[str, Any]:
    """Submit and wait; the final job record."""
    job_id = (await client.call("generate.submit", params))["job_id"]
    job: dict[str, Any] = await client.call("jobs.wait", {"job_id": job_id, "timeout": 120})
    return job


async def only_take(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    assert job["state"] == "done", job["error"]
    take: dict[str, Any] = await client.call("takes.show", {"take": job["outputs"][0]})
    jsonschema.validate(take, rooted({"$ref": "#/components/schemas/Take"}))
    return take


def fresh_process_tags(path: str) -> dict[str, str]:
    """Read tags with mutagen in a separate interpreter (not the one that wrote them)."""
    code = ("import json,sys; from timbred.takes.tags import read_tags; "
            "print(json.dumps(read_tags(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    tags: dict[str, str] = json.loads(out)
    return tags


class TestWriting:
    async def test_layout_sidecar_tags_and_history(self, client: Client, gen: Daemon) -> None:
        """A take lands at <dir>/YYYY/MM/DD/take-1.wav (today's session is the day folder:
        the path says the date once) with a valid sidecar, tags another process reads,
        loudness recorded, and a history row."""
        job = await run_job(client, prompt="warm lofi rhodes", duration=1.0, seed=3)
        take = await only_take(client, job)
        day = dt.datetime.now().strftime("%Y/%m/%d")
        session = dt.datetime.now().strftime("%Y-%m-%d")
        expected = gen.generation.output_root / day / "take-1.wav"
        assert take["path"] == str(expected) and take["session"] == session
        sidecar = json.loads(sidecar_path(expected).read_text())
        jsonschema.validate(sidecar, load_schema("take.schema.json"))
        assert sidecar["seed"] == 3 and sidecar["job_id"] == job["id"]
        tags = fresh_process_tags(str(expected))
        assert "warm lofi rhodes" in json.dumps(tags) and "3" in tags.values()
        assert take["loudness_after_lufs"] == pytest.approx(-14.0, abs=0.5)
        assert miniaudio.wav_read_file_f32(str(expected)).num_frames == 32000

    async def test_second_job_gets_the_next_number(self, client: Client) -> None:
        """Takes in one session are numbered on; nothing is overwritten."""
        a = await only_take(client, await run_job(client, prompt="a", duration=0.5,
                                                  session="demo"))
        b = await only_take(client, await run_job(client, prompt="b", duration=0.5,
                                                  session="demo", variations=2))
        names = [Path(a["path"]).name, Path(b["path"]).name]
        assert names == ["take-1.wav", "take-2.wav"]

    @pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg"])
    async def test_formats_by_param_and_by_extension(self, client: Client, fmt: str,
                                                     tmp_path: Path) -> None:
        """--format picks the encoding; so does an output path's extension."""
        by_param = await only_take(client, await run_job(client, prompt="x", duration=1.0,
                                                         format=fmt))
        assert by_param["path"].endswith("." + fmt) and by_param["format"] == fmt
        out = tmp_path / f"named.{fmt}"
        by_ext = await only_take(client, await run_job(client, prompt="x", duration=1.0,
                                                       output=str(out)))
        assert by_ext["path"] == str(out) and out.stat().st_size > 0
        assert "TIMBRE" in json.dumps(fresh_process_tags(str(out))).upper()

    async def test_preset_applies_under_explicit_values(self, client: Client) -> None:
        """A preset's prompt prefix/suffix and defaults apply; explicit values win."""
        shown = await client.call("presets.show", {"name": "lofi"})
        job = await run_job(client, prompt="rainy window", preset="lofi", duration=1.0)
        assert job["params"]["preset"] == "lofi"
        assert "rainy window" in job["params"]["prompt"]
        assert shown["prompt_prefix"] in job["params"]["prompt"]
        assert job["params"]["duration"] == 1.0  # explicit beats the preset's 30
        with pytest.raises(PresetNotFound) as info:
            await client.call("generate.submit", {"prompt": "x", "preset": "lofy"})
        assert "lofi" in info.value.message
        listed = await client.call("presets.list", {})
        assert {"lofi", "ambient"} <= {p["name"] for p in listed["presets"]}

    async def test_mismatched_output_extension_is_refused(self, client: Client,
                                                          tmp_path: Path) -> None:
        """An output name whose extension contradicts the format is refused at submit."""
        with pytest.raises(InvalidParams) as info:
            await client.call("generate.submit", {"prompt": "x", "format": "mp3",
                                                  "output": str(tmp_path / "a.wav")})
        assert info.value.data["param"] == "output"


class TestHistory:
    async def test_search_rate_tag_export_rm(self, client: Client) -> None:
        """The history finds takes by text, tag and rating; export writes a new format beside
        the take; rm deletes the files and keeps the record marked deleted."""
        t1 = await only_take(client, await run_job(client, prompt="glassy ambient pads",
                                                   duration=0.5))
        t2 = await only_take(client, await run_job(client, prompt="boom bap drums",
                                                   duration=0.5))
        found = await client.call("history.search", {"text": "ambient"})
        assert [t["id"] for t in found["takes"]] == [t1["id"]]
        rated = await client.call("takes.rate", {"take": t2["id"], "value": "up",
                                                 "note": "keeper"})
        assert rated["rating"] == "up" and rated["note"] == "keeper"
        await client.call("takes.tag", {"take": t2["id"], "add": ["Drums", "draft"]})
        assert [t["id"] for t in (await client.call(
            "history.search", {"tag": "drums"}))["takes"]] == [t2["id"]]
        assert [t["id"] for t in (await client.call(
            "history.search", {"rating": "up"}))["takes"]] == [t2["id"]]
        updates: list[dict[str, Any]] = []
        while len(updates) < 2:
            ev = await client.next_event(5)
            if ev["type"] == "take.updated":
                check_event({k: v for k, v in ev.items() if k != "method"})
                updates.append(ev)
        exported = await client.call("takes.export", {"take": t2["id"], "format": "flac"})
        assert exported["path"] == str(Path(t2["path"]).with_suffix(".flac"))
        assert (await anyio.Path(exported["path"]).stat()).st_size > 0
        removed = await client.call("takes.rm", {"take": t1["id"]})
        assert removed["deleted_at"] is not None
        assert not await anyio.Path(t1["path"]).exists()
        assert not await anyio.Path(sidecar_path(t1["path"])).exists()
        assert (await client.call("history.search", {"text": "ambient"}))["takes"] == []
        assert len((await client.call("history.search", {"text": "ambient",
                                                         "include_deleted": True}))["takes"]) == 1
        with pytest.raises(TakeNotFound):
            await client.call("takes.show", {"take": "t-nonexistent"})

    async def test_replay_is_bit_identical(self, client: Client) -> None:
        """takes.replay re-renders from the recipe and reports bit_identical: true; the new
        take's samples equal the original's."""
        original = await only_take(client, await run_job(client, prompt="replay me",
                                                         duration=1.0, variations=2, seed=5))
        second = (await client.call("history.search", {"text": "replay"}))["takes"]
        take2 = next(t for t in second if t["take_index"] == 2)
        submitted = await client.call("takes.replay", {"take": take2["id"]})
        job = await client.call("jobs.wait", {"job_id": submitted["job_id"], "timeout": 120})
        assert job["state"] == "done", job["error"]
        assert job["recipe"]["replay"] == {"of": take2["id"], "bit_identical": True}
        assert len(job["outputs"]) == 1
        a = miniaudio.wav_read_file_f32(take2["path"]).samples
        b = miniaudio.wav_read_file_f32(job["outputs"][0]).samples
        assert list(a) == list(b)
        assert original["id"] != take2["id"]


    async def test_a_take_from_before_the_one_vocabulary_replays(self, client: Client,
                                                                 gen: Daemon) -> None:
        """A take whose recipe was written with GenerationParams' names (duration_s,
        guidance_scale, sampling as fields; every take before the one Request type) replays
        bit-identical, and the replay's recipe uses today's names."""
        made = await run_job(client, prompt="old recipe", duration=1.0, seed=9,
                             temperature=0.8, top_k=40, guidance=2.5)
        take = (await client.call("history.search", {"text": "old recipe"}))["takes"][0]
        new = take["recipe"]["params"]
        assert new["options"] == {"temperature": 0.8, "top_k": 40, "top_p": 0.0,
                                  "guidance": 2.5}
        old = {"prompt": new["prompt"], "duration_s": new["duration"], "seed": new["seed"],
               "temperature": 0.8, "top_k": 40, "top_p": 0.0, "guidance_scale": 2.5,
               "variations": 1, "melody_path": None, "continuation_path": None}
        schema = load_schema("take.schema.json")
        jsonschema.validate({**take["recipe"], "params": old},
                            {**schema["properties"]["recipe"], "$defs": schema["$defs"]})
        with contextlib.closing(sqlite3.connect(gen.generation.store.path)) as db, db:
            db.execute("UPDATE takes SET recipe = ? WHERE id = ?",
                       (json.dumps({**take["recipe"], "params": old}), take["id"]))
        submitted = await client.call("takes.replay", {"take": take["id"]})
        job = await client.call("jobs.wait", {"job_id": submitted["job_id"], "timeout": 120})
        assert job["state"] == "done", job["error"]
        assert job["recipe"]["replay"] == {"of": take["id"], "bit_identical": True}
        assert job["recipe"]["params"] == new
        a = miniaudio.wav_read_file_f32(made["outputs"][0]).samples
        assert list(a) == list(miniaudio.wav_read_file_f32(job["outputs"][0]).samples)


#: A user preset for masters: FLAC at -20 LUFS, plus generation settings an export ignores.
ARCHIVE_PRESET = """description = "Quiet FLAC masters"
prompt_prefix = "kazoo solo"

[params]
duration = 30

[export]
format = "flac"
loudness_target_lufs = -20.0
"""


async def export_raw(daemon: Daemon, **params: Any) -> dict[str, Any]:
    """The raw JSON-RPC reply to ``takes.export`` (params validated by the daemon's schema)."""
    conn = await RawConnection.open(daemon.socket_path)
    try:
        reply: dict[str, Any] = await conn.call(req("takes.export", params), timeout=60)
    finally:
        await conn.aclose()
    return reply


def folder_listing(path: str) -> list[str]:
    return sorted(p.name for p in Path(path).parent.iterdir())


class TestExportWithPreset:
    async def test_the_preset_export_table_layers_under_explicit_options(
        self, client: Client, gen: Daemon, user_presets: Path, tmp_path: Path
    ) -> None:
        """The preset's [export] goes over the take's recorded options (WAV, -14 LUFS): a
        FLAC at the preset's -20 LUFS, measured on the file. An explicit loudness or format
        beats the preset's. The preset's prompt words and params are not applied."""
        (user_presets / "archive.toml").write_text(ARCHIVE_PRESET)
        take = await only_take(client, await run_job(client, prompt="glassy pads",
                                                     duration=1.0, seed=7))
        assert take["format"] == "wav"

        flac = check_result("takes.export",
                            await export_raw(gen, take=take["id"], preset="archive"))
        assert flac["path"] == str(Path(take["path"]).with_suffix(".flac"))
        assert flac["format"] == "flac" and sf.info(flac["path"]).format == "FLAC"
        assert file_lufs(flac["path"]) == pytest.approx(-20.0, abs=0.5)
        assert flac["duration_s"] == pytest.approx(1.0)
        sidecar = json.loads(await anyio.Path(flac["sidecar_path"]).read_text())
        assert sidecar["prompt"] == "glassy pads"

        louder = check_result("takes.export", await export_raw(
            gen, take=take["id"], preset="archive", loudness_target_lufs=-16.0,
            output=str(tmp_path / "louder.flac")))
        assert louder["path"] == str(tmp_path / "louder.flac") and louder["format"] == "flac"
        assert file_lufs(louder["path"]) == pytest.approx(-16.0, abs=0.5)

        ogg = check_result("takes.export", await export_raw(gen, take=take["id"],
                                                            preset="archive", format="ogg"))
        assert ogg["path"] == str(Path(take["path"]).with_suffix(".ogg"))
        assert file_lufs(ogg["path"]) == pytest.approx(-20.0, abs=0.5)

    async def test_an_output_name_and_a_preset_format(self, client: Client, gen: Daemon,
                                                      user_presets: Path,
                                                      tmp_path: Path) -> None:
        """As for generate: a preset's format is not overruled by the output's extension (a
        mismatch is refused naming output, nothing written); without a format from the
        request or the preset, the output's extension picks it over the take's own."""
        (user_presets / "archive.toml").write_text(ARCHIVE_PRESET)
        out = tmp_path / "out"
        out.mkdir()
        take = await only_take(client, await run_job(client, prompt="x", duration=0.5))
        with pytest.raises(InvalidParams) as info:
            await client.call("takes.export", {"take": take["id"], "preset": "archive",
                                               "output": str(out / "a.wav")})
        assert info.value.data["param"] == "output"
        assert list(out.iterdir()) == []
        shared = await client.call("takes.export", {"take": take["id"], "preset": "share",
                                                    "output": str(out / "a.mp3")})
        assert shared["format"] == "mp3" and shared["path"] == str(out / "a.mp3")
        named = await client.call("takes.export", {"take": take["id"],
                                                   "output": str(out / "b.ogg")})
        assert named["format"] == "ogg" and named["path"] == str(out / "b.ogg")

    async def test_unknown_or_broken_preset_is_refused_and_nothing_written(
        self, client: Client, gen: Daemon, user_presets: Path
    ) -> None:
        """An unknown preset is PresetNotFound (-32061) naming it, with a close name as a
        hint; a malformed one PresetInvalid (-32062) naming the file; no file is written."""
        (user_presets / "broken.toml").write_text('[export]\nformat = "aiff"\n')
        take = await only_take(client, await run_job(client, prompt="x", duration=0.5))
        before = folder_listing(take["path"])
        err = check_error(await export_raw(gen, take=take["id"], preset="shar"),
                          PresetNotFound.code, PresetNotFound.kind)
        assert err["data"]["preset"] == "shar" and "share" in err["data"]["hint"]
        err = check_error(await export_raw(gen, take=take["id"], preset="broken",
                                           format="flac"),
                          PresetInvalid.code, PresetInvalid.kind)
        assert err["data"]["path"] == str(user_presets / "broken.toml")
        assert err["data"]["key"] == "export.format"
        assert folder_listing(take["path"]) == before


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_full_disk_fails_the_job_and_keeps_history_consistent(short_tmp: Path,
                                                                   tiny: Path) -> None:
    """With the output directory on a full disk the job fails with output_error naming the
    reason; no take is recorded and nothing lies under a final name; the daemon goes on."""
    with tiny_tmpfs(short_tmp / "disk", "64k") as disk:
        async with running_daemon(short_tmp, models__default=str(tiny), output__dir=str(disk),
                                  **FAST) as d, connect(d.socket_path) as c:
            job = await run_job(c, prompt="too big", duration=5.0, format="wav",
                                wav_subtype="FLOAT")
            assert job["state"] == "failed"
            assert job["error"]["kind"] == "output_error"
            assert "full" in job["error"]["message"]
            assert (await c.call("history.search", {}))["takes"] == []
            finals = [p for p in disk.rglob("*") if p.is_file()]
            assert finals == []
            small = await run_job(c, prompt="fits", duration=0.1, format="mp3")
            assert small["state"] == "done", small["error"]
        await anyio.lowlevel.checkpoint()


class TestReplayUsesTheRecipe:
    """Everything that decides the audio comes from the recipe, not the daemon's config."""

    async def test_windowing_survives_a_restart_with_other_settings(
            self, short_tmp: Path, tiny: Path) -> None:
        """A take made with window_s 2 / stride_s 1.2 (so 3 s are decoded in two windows)
        replays bit-identical after the daemon restarts with the default 30 s / 18 s windows;
        the recipe and the sidecar record window, stride, precision, device and dtype, and
        validate against take.schema.json; the model is then loaded back the config's way."""
        made: dict[str, Any] = {"models__window_s": 2.0, "models__stride_s": 1.2}
        async with running_daemon(short_tmp, models__default=str(tiny), **made) as d, \
                connect(d.socket_path) as c:
            job = await run_job(c, prompt="windows", duration=3.0, seed=11)
            assert job["state"] == "done", job["error"]
        recipe = job["recipe"]
        assert (recipe["window_s"], recipe["stride_s"]) == (2.0, 1.2)
        assert recipe["device"] == "cpu" and recipe["dtype"] == "float32"
        assert "precision" in recipe and recipe["info"]["windows"] == 2
        sidecar = json.loads(await anyio.Path(sidecar_path(job["outputs"][0])).read_text())
        jsonschema.validate(sidecar, load_schema("take.schema.json"))

        async with running_daemon(short_tmp, models__default=str(tiny)) as d, \
                connect(d.socket_path) as c:
            take = (await c.call("history.search", {"text": "windows"}))["takes"][0]
            submitted = await c.call("takes.replay", {"take": take["id"]})
            replay = await c.call("jobs.wait", {"job_id": submitted["job_id"], "timeout": 120})
            assert replay["state"] == "done", replay["error"]
            assert replay["recipe"]["replay"]["bit_identical"] is True
            assert (replay["recipe"]["window_s"], replay["recipe"]["stride_s"]) == (2.0, 1.2)
            assert replay["recipe"]["info"]["windows"] == 2
            fresh = await run_job(c, prompt="after", duration=3.0, seed=11)
            assert fresh["recipe"]["window_s"] == 30.0 and fresh["recipe"]["info"]["windows"] == 1
