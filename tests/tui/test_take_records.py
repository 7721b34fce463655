"""The timeline's takes show what the daemon's history measured of them (tempo and key): the
studio asks ``takes.show`` about each done take once, in the background, as jobs finish and
when they are loaded, and says nothing when the daemon cannot answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tui.factories import job, stems_job, swell, take_record
from tests.tui.support import Harness, RecordingDaemon, running_studio
from tests.tui.test_studio import socket_under
from timbre_tui.state import StudioState, takes_of
from timbred.errors import DaemonUnavailable, TakeNotFound

pytestmark = pytest.mark.anyio


def done_event(record: dict[str, Any]) -> dict[str, Any]:
    """A ``job.state`` event as the link gets it from the event stream."""
    return {"method": "event", "type": "job.state", "data": {"job": record}}


def line_of(h: Harness, label: str) -> str:
    return next(ln for ln in h.screen().splitlines() if label in ln)


def errors(h: Harness) -> list[str]:
    return [m.text for m in h.studio.state.message_log if m.level == "error"]


class TestMerging:
    def test_a_record_adds_tempo_key_and_loudness(self) -> None:
        """takes_of takes the tempo, key and (when the job does not say it) loudness from
        the history's record of each path; a take without a record has none."""
        record = job("j-1", "done", "rhodes", outputs=["/a.wav", "/b.wav"])
        takes = takes_of(record, {"/a.wav": take_record("/a.wav", bpm=120.0, key="Am")})
        assert [(t.bpm, t.musical_key, t.loudness) for t in takes] == [
            (120.0, "Am", -14.0), (None, None, None)]
        record["takes"] = [{"loudness_lufs": -9.0}]  # the job's own word wins
        (first, _) = takes_of(record, {"/a.wav": take_record("/a.wav", bpm=120.0)})
        assert (first.bpm, first.loudness) == (120.0, -9.0)

    def test_each_done_take_is_claimed_once_and_stems_are_not(self) -> None:
        """Only done jobs' takes are asked about, newest first, each once; a stems job's
        files are not takes of the history; a reload keeps what is still listed."""
        st = StudioState()
        st.load_jobs([job("j-1", "done", "a", outputs=["/a.wav"], created_at=1.0),
                      job("j-2", "generating", "b", created_at=2.0),
                      job("j-3", "done", "c", outputs=["/c1.wav", "/c2.wav"], created_at=3.0),
                      stems_job("j-4", "done", "/a.wav", created_at=4.0)])
        assert st.claim_take_lookups() == ["/c1.wav", "/c2.wav", "/a.wav"]
        assert st.claim_take_lookups() == []
        assert st.learn_take("/a.wav", take_record("/a.wav", bpm=90.0, key="F#"))
        st.load_jobs([job("j-1", "done", "a", outputs=["/a.wav"], created_at=1.0)])
        assert st.take_records.keys() == {"/a.wav"} and st.take_lookups == {"/a.wav"}
        assert st.takes()[0].bpm == 90.0
        st.unclaim_take_lookups(["/a.wav"])
        assert st.claim_take_lookups() == ["/a.wav"]


class TestTimeline:
    async def test_a_done_job_shows_its_takes_tempo_and_key(
            self, short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A job.state event for a done job: takes.show is asked about each take once, and
        the take line reads "120 BPM Am"; a take the history has no analysis of (an older
        daemon) or no record of shows as before, and nothing is said of it."""
        paths = [str(swell(tmp_path / f"take-{i}.wav")) for i in (1, 2, 3)]
        records = {paths[0]: take_record(paths[0], bpm=120.0, key="Am"),
                   paths[1]: take_record(paths[1], index=2)}  # not analysed
        old = {k: v for k, v in records[paths[1]].items() if k not in ("bpm", "key")}

        def show(params: dict[str, Any]) -> dict[str, Any]:
            if params["take"] not in records:
                raise TakeNotFound(params["take"])
            return records[params["take"]]

        daemon = RecordingDaemon(handlers={"takes.show": show})
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            done = job("j-1", "done", "warm lofi rhodes", outputs=paths)
            await h.studio.link.handle(done_event(done))
            await h.until(lambda: "120 BPM Am" in h.screen(), "the tempo and key")
            assert "120 BPM Am  -14.0 LUFS" in line_of(h, "take 1")
            await h.until(lambda: len(daemon.asked("takes.show")) == 3, "every take asked")
            assert "BPM" not in line_of(h, "take 2") and "BPM" not in line_of(h, "take 3")

            await h.studio.link.handle(done_event(done))  # the same job again: not re-asked
            assert daemon.asked("takes.show") == [{"take": p} for p in paths]
            assert errors(h) == []
            assert h.studio.state.learn_take(paths[1], old)  # an answer without bpm reads
            assert h.studio.state.takes()[1].bpm is None

    async def test_jobs_loaded_at_start_up_are_looked_up(
            self, short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The jobs a (re)load lists are looked up too; a lookup cut short by a lost
        connection is asked again later; a daemon without takes.show is not asked again
        and nothing is said."""
        path = str(swell(tmp_path / "take-1.wav"))
        listed = {"jobs": [job("j-1", "done", "warm lofi rhodes", outputs=[path])],
                  "next_cursor": None}
        lost = [DaemonUnavailable("/run/timbred.sock", "connection lost")]

        def show(params: dict[str, Any]) -> dict[str, Any]:
            if lost:  # the first answer never comes
                raise lost.pop()
            return take_record(path, bpm=98.4, key="F#")

        daemon = RecordingDaemon({"jobs.list": listed}, handlers={"takes.show": show},
                                 older=True)
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            link = h.studio.link
            monkeypatch.setattr(link, "call", daemon.call)
            monkeypatch.setattr(link, "batch", daemon.batch)
            await link.reload()
            await h.until(lambda: len(daemon.asked("takes.show")) == 1, "the first lookup")
            assert "BPM" not in h.screen()
            link.look_up_takes()  # as on reconnecting
            await h.until(lambda: "98 BPM F#" in h.screen(), "the tempo and key")
            assert len(daemon.asked("takes.show")) == 2

            older = RecordingDaemon({"jobs.list": {**listed, "jobs": [
                job("j-2", "done", "cello", outputs=[path + "2", path + "3"])]}}, older=True)
            monkeypatch.setattr(link, "call", older.call)
            monkeypatch.setattr(link, "batch", older.batch)
            await link.reload()
            await h.until(lambda: "cello" in h.screen(), "the new listing")
            await h.until(lambda: older.asked("takes.show"), "the lookup")
            await h.studio.link.handle(done_event(older.answers["jobs.list"]["jobs"][0]))
            assert len(older.asked("takes.show")) == 1  # MethodNotFound: not asked again
            assert errors(h) == []
