"""Finishing takes end to end: mastering chains, tempo and key (asked for and measured),
loops and the history's tempo and key search, through the real CLI, daemon, worker process
and files read back by a second decoder (miniaudio) and tag reader (mutagen).

Takes come from the test-only ``pulse`` family (tests/backends/pulse.py: a chord struck on
every beat at the tempo and in the key asked for, a fixture, not music), which takes ``bpm``
and ``key`` natively as ACE-Step does; the tiny MusicGen fixture shows the other path, where
they are written into the prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import miniaudio
import mutagen
import numpy as np
import pyloudnorm
import pytest

from tests.backends import pulse
from tests.support import RawConnection, check_error, req
from timbred.daemon.app import Daemon
from timbred.protocol.schema import load as load_schema
from timbred.takes.loops import seam_jump
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture
async def daemon(short_tmp: Path, tmp_path: Path, pulse_backend: None
                 ) -> AsyncIterator[Daemon]:
    model = pulse.make_model(tmp_path / "pulse-model")
    async with running_daemon(short_tmp, models__default=str(model)) as d:
        yield d


def ctl(d: Daemon, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / "empty.toml").write_text("")
    env = dict(os.environ, TIMBRE_SOCKET=str(d.socket_path),
               TIMBRE_CONFIG=str(tmp / "empty.toml"))
    return subprocess.run([sys.executable, "-m", "timbrectl", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


async def run_ctl(d: Daemon, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: ctl(d, tmp, *args))


def decoded(path: str | Path) -> tuple[np.ndarray[Any, Any], int]:
    """(samples, channels) float32 and the rate, decoded by miniaudio (not libsndfile)."""
    data = path if isinstance(path, str) else str(path)
    if data.endswith(".flac"):
        sound = miniaudio.flac_read_file_f32(data)
    else:
        sound = miniaudio.wav_read_file_f32(data)
    frames = np.asarray(sound.samples, dtype=np.float32).reshape(-1, sound.nchannels)
    return frames, sound.sample_rate


def true_peak_dbtp(frames: np.ndarray[Any, Any]) -> float:
    import importlib

    up = importlib.import_module("scipy.signal").resample_poly(frames, 4, 1, axis=0)
    return float(20 * np.log10(max(np.abs(up).max(), np.abs(frames).max())))


class TestGenerateMasteredAnalysedLooped:
    async def test_one_command_masters_analyses_and_loops(
            self, daemon: Daemon, short_tmp: Path) -> None:
        """generate --master streaming --bpm 120 --key Am --loop 2 -f flac: a FLAC at
        -14 LUFS +- 0.5 under -1 dBTP, its chain, tempo and key in the sidecar and the tags,
        a 2-bar loop beside it that plays end to end without a click, and the history finds
        it by tempo and key."""
        made = await run_ctl(daemon, short_tmp, "generate", "pulse", "-d", "8", "--seed", "1",
                             "--bpm", "120", "--key", "Am", "--master", "streaming", "-f",
                             "flac", "--loop", "2", "--json")
        assert made.returncode == 0, made.stderr
        job = json.loads(made.stdout)
        assert job["state"] == "done", job["error"]
        # Native to this family (as to ACE-Step): passed as its own, the prompt untouched.
        assert job["recipe"]["params"]["options"] == {"bpm": 120, "key": "A minor"}
        assert job["params"]["prompt"] == "pulse"
        path = job["outputs"][0]
        frames, rate = decoded(path)
        loudness = pyloudnorm.Meter(rate).integrated_loudness(frames.astype(np.float64))
        assert abs(loudness - -14.0) <= 0.5, loudness
        assert true_peak_dbtp(frames) <= -0.9

        side = json.loads(await anyio.Path(f"{path}.json").read_text())
        jsonschema.validate(side, load_schema("take.schema.json"))
        chain = side["mastering"]["chain"]
        assert chain["name"] == "streaming" and side["export"]["master"] == "streaming"
        assert [e["type"] for e in chain["effects"]] == ["highpass", "compressor"]
        analysis = side["analysis"]
        assert abs(analysis["bpm"] - 120) <= 2.4, analysis["bpm"]
        assert analysis["key"] == "A minor" and analysis["key_short"] == "Am"
        assert analysis["asked"] == {"bpm": 120, "key": "A minor"}
        assert analysis["key_match"] is True and abs(analysis["bpm_off"]) <= 2.4

        tags: Any = mutagen.File(path)
        assert tags["BPM"] == [str(round(analysis["bpm"]))]
        assert tags["KEY"] == ["Am"] and tags["TIMBRE_MASTER"] == ["streaming"]
        assert json.loads(tags["TIMBRE_MASTERING"][0])["chain"] == chain

        loop = Path(path).with_name(Path(path).stem + "-loop2bars.flac")
        looped, loop_rate = decoded(loop)
        bar_s = 4 * 60.0 / analysis["bpm"]
        assert looped.shape[0] == round(2 * bar_s * loop_rate)
        assert seam_jump(looped.T) < 3.0
        loop_side = json.loads(await anyio.Path(f"{loop}.json").read_text())
        jsonschema.validate(loop_side, load_schema("take.schema.json"))
        assert loop_side["loop"]["bars"] == 2 and loop_side["loop"]["source"]
        assert (mutagen.File(loop) or {}).get("TIMBRE_LOOP")

        found = await run_ctl(daemon, short_tmp, "history", "bpm:118-122", "key:Am", "--json")
        assert found.returncode == 0, found.stderr
        takes = json.loads(found.stdout)["takes"]
        assert [t["path"] for t in takes] == [path]
        assert takes[0]["key"] == "Am" and abs(takes[0]["bpm"] - 120) <= 2.4
        for words in (("bpm:60-70",), ("key:F#",), ("bpm:120", "key:C")):
            none = await run_ctl(daemon, short_tmp, "history", *words, "--json")
            assert json.loads(none.stdout)["takes"] == [], words
        bad = await run_ctl(daemon, short_tmp, "history", "bpm:fast")
        assert bad.returncode == 2 and "bpm:120 or bpm:118-122" in bad.stderr

    async def test_takes_loop_and_export_through_another_chain(
            self, daemon: Daemon, short_tmp: Path) -> None:
        """takes loop TAKE --bars 1 writes a 1-bar loop; too many bars for the take is an
        error naming bars; takes export --master club is about -9 LUFS, and an export
        without --master does not master the take a second time."""
        made = await run_ctl(daemon, short_tmp, "generate", "pulse", "-d", "6", "--bpm", "100",
                             "--json")
        job = json.loads(made.stdout)
        assert job["state"] == "done", job["error"]
        take = job["outputs"][0]
        looped = await run_ctl(daemon, short_tmp, "takes", "loop", take, "--bars", "1")
        assert looped.returncode == 0, looped.stderr
        frames, rate = decoded(looped.stdout.strip())
        assert abs(frames.shape[0] / rate - 2.4) < 0.1  # one 4/4 bar at 100 BPM
        too_long = await run_ctl(daemon, short_tmp, "takes", "loop", take, "--bars", "8")
        assert too_long.returncode == 1 and "bars" in too_long.stderr
        assert "Traceback" not in too_long.stderr

        club = await run_ctl(daemon, short_tmp, "takes", "export", take, "--master", "club")
        assert club.returncode == 0, club.stderr
        frames, rate = decoded(club.stdout.strip())
        loudness = pyloudnorm.Meter(rate).integrated_loudness(frames.astype(np.float64))
        assert abs(loudness - -9.0) <= 0.5, loudness
        side = json.loads(await anyio.Path(club.stdout.strip() + ".json").read_text())
        assert side["mastering"]["chain"]["name"] == "club"

    async def test_an_export_of_a_mastered_take_does_not_master_it_again(
            self, daemon: Daemon, short_tmp: Path) -> None:
        """A take made with --master club, exported to another format without --master,
        keeps its level (-9 LUFS, not re-normalised to -14) and its chain's record; the
        export itself names no chain."""
        made = await run_ctl(daemon, short_tmp, "generate", "pulse", "-d", "6", "--master",
                             "club", "-f", "flac", "--json")
        job = json.loads(made.stdout)
        assert job["state"] == "done", job["error"]
        again = await run_ctl(daemon, short_tmp, "takes", "export", job["outputs"][0],
                              "-f", "wav")
        assert again.returncode == 0, again.stderr
        frames, rate = decoded(again.stdout.strip())
        loudness = pyloudnorm.Meter(rate).integrated_loudness(frames.astype(np.float64))
        assert abs(loudness - -9.0) <= 0.5, loudness
        plain = json.loads(await anyio.Path(again.stdout.strip() + ".json").read_text())
        assert plain["export"]["master"] is None
        assert plain["mastering"]["chain"]["name"] == "club"

    async def test_refusals_at_submit_name_what_was_wrong(self, daemon: Daemon) -> None:
        """An unknown chain, a key that is no key and a tempo out of range are refused at
        submit, naming the parameter; nothing is queued."""
        conn = await RawConnection.open(daemon.socket_path)
        try:
            for params, param in (({"master": "loudest"}, "master"),
                                  ({"key": "H minor"}, "key"),
                                  ({"bpm": 500}, "bpm")):
                reply = await conn.call(req("generate.submit", {"prompt": "x", **params}))
                error = check_error(reply, -32602)
                assert param in error["message"], error
            listed = await conn.call(req("jobs.list", {}))
            assert listed["result"]["jobs"] == []
        finally:
            await conn.aclose()


class TestPromptWordsForOtherFamilies:
    async def test_musicgen_gets_tempo_and_key_in_its_prompt(self, short_tmp: Path,
                                                             tiny: Path) -> None:
        """A family without its own bpm and key (MusicGen) is told in words."""
        async with running_daemon(short_tmp, models__default=str(tiny)) as d:
            conn = await RawConnection.open(d.socket_path)
            try:
                reply = await conn.call(req("generate.submit", {
                    "prompt": "dusty drums,", "bpm": 92, "key": "Gbm", "duration": 0.5}))
                job = reply["result"]["job"]
                assert job["params"]["prompt"] == "dusty drums, 92 bpm, in F# minor"
                assert job["params"]["asked"] == {"bpm": 92, "key": "F# minor"}
                await conn.call(req("jobs.cancel", {"job_id": job["id"]}))
            finally:
                await conn.aclose()
