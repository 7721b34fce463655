"""The state object: daemon events applied in order, parameters parsed and undone."""

from __future__ import annotations

import pytest

from tests.tui.factories import job
from timbre_tui.state import Params, Preset, StudioState, parse_value, spec_for


class TestDaemonData:
    def test_events_never_move_a_job_backwards(self) -> None:
        """A trailing 'generating' event after a reload that said 'done' is ignored; progress
        for a finished job too."""
        st = StudioState()
        st.load_jobs([job("j-1", "done", "a", outputs=["/t/a-1.wav"])])
        assert not st.apply_event({"type": "job.state",
                                   "data": {"job": job("j-1", "generating", "a")}})
        assert not st.apply_event({"type": "job.progress", "data": {
            "job_id": "j-1", "step": 1, "total": 2, "elapsed_s": 0.1, "eta_s": 0.1}})
        assert st.jobs["j-1"]["state"] == "done" and st.progress == {}

    def test_a_new_take_takes_the_selection_when_following(self) -> None:
        """When the newest take is selected (or nothing is), a newly finished take is
        selected; a take picked further back stays picked."""
        st = StudioState()
        st.upsert_job(job("j-1", "done", "a", outputs=["/t/a.wav"], created_at=1))
        assert st.selected_take == ("j-1", 1)
        st.upsert_job(job("j-2", "done", "b", outputs=["/t/b.wav"], created_at=2))
        assert st.selected_take == ("j-2", 1)
        st.move_take(-1)
        st.upsert_job(job("j-3", "done", "c", outputs=["/t/c.wav"], created_at=3))
        assert st.selected_take == ("j-1", 1)

    def test_prompt_history_is_distinct_and_oldest_first(self) -> None:
        """Prompts come back oldest first, a repeated prompt counted at its latest use."""
        st = StudioState()
        st.load_jobs([job("j-1", "done", "a", created_at=1), job("j-2", "done", "b",
                                                               created_at=2),
                      job("j-3", "failed", "a", created_at=3)])
        assert st.prompt_history() == ["b", "a"]


class TestParams:
    @pytest.mark.parametrize(("name", "text", "value"), [
        ("duration", "1:30", 90.0), ("duration", "10s", 10.0), ("duration", "2m", 120.0),
        ("seed", "42", 42), ("seed", "random", "random"), ("top-k", "50", 50),
        ("top_p", "0.9", 0.9), ("preset", "wild", "wild"), ("model", "", None),
    ])
    def test_parse(self, name: str, text: str, value: object) -> None:
        """Values parse the way they are typed after a /command."""
        assert parse_value(spec_for(name), text) == value

    @pytest.mark.parametrize(("name", "text", "message"), [
        ("duration", "700", "duration: must be between 0.5 and 600, got 700"),
        ("top-k", "1.5", "top-k: expected a whole number, got '1.5'"),
        ("seed", "-1", "seed: must be between 0 and"),
        ("format", "aiff", "format: 'aiff' is not one of wav, flac, ogg, mp3"),
    ])
    def test_refusals_name_the_parameter(self, name: str, text: str, message: str) -> None:
        """Out-of-range and malformed values raise ValueError saying what is allowed."""
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")[:40]):
            parse_value(spec_for(name), text)

    def test_presets_are_the_daemons(self) -> None:
        """/preset takes the daemon's presets: an unknown or broken one is refused naming the
        usable ones or the problem, stepping skips broken ones, and editing a value keeps the
        preset chosen (its prompt wrapping and export still apply)."""
        st = StudioState()
        with pytest.raises(ValueError, match="none loaded yet"):
            st.set_param("preset", "lofi")
        st.presets = {"lofi": Preset("lofi", "Mellow", {"duration": 30}),
                      "bad": Preset("bad", problem="params.duration: 9000 is too large"),
                      "mine": Preset("mine", params={"model": "musicgen-small"})}
        with pytest.raises(ValueError, match=r"'jazz' is not one of the daemon's presets "
                                             r"\(lofi, mine\)"):
            st.set_param("preset", "jazz")
        with pytest.raises(ValueError, match=r"bad cannot be used: params\.duration"):
            st.set_param("preset", "bad")
        assert st.params == Params()
        assert [st.step_param("preset", +1) for _ in range(3)] == [
            "preset: lofi", "preset: mine", "preset: none"]
        st.set_param("preset", "lofi")
        st.set_param("duration", 5.0)
        assert (st.params.preset, st.params.duration) == ("lofi", 5.0)
        assert st.presets["bad"].summary().startswith("broken: ")

    def test_format_applies_to_new_takes(self) -> None:
        """/format sets the format of new takes (sent, winning over a preset's); until then
        none is sent (the daemon's output.format decides); a preset's [export] format fills
        the panel, and /format after it still wins; /preset none keeps the chosen format."""
        st = StudioState()
        assert "format" not in st.params.submit_params("x")
        st.set_param("format", "ogg")
        assert st.params.submit_params("x")["format"] == "ogg"
        st.presets = {"share": Preset("share", export={"format": "mp3"})}
        st.set_param("preset", "share")
        assert st.params.format == "mp3"
        assert "format" not in st.params.submit_params("x")  # the preset brings it
        st.set_param("format", "flac")
        assert st.params.submit_params("x") | {"preset": "share"} == \
            st.params.submit_params("x")
        assert st.params.submit_params("x")["format"] == "flac"
        st.set_param("preset", None)
        assert st.params.submit_params("x")["format"] == "flac"

    def test_undo_redo_and_seed_lock(self) -> None:
        """Each change is one undo step; locking the seed takes the latest take's seed; only a
        locked seed is sent."""
        st = StudioState()
        st.load_jobs([job("j-1", "done", "a", seed=1234)])
        st.set_param("duration", 5.0)
        st.toggle_seed_lock()
        assert st.params.seed == 1234 and st.params.submit_params("x")["seed"] == 1234
        st.presets = {"wild": Preset("wild", params={"temperature": 1.3, "top_k": 0.0,
                                                      "keep_alive": 60})}
        st.set_param("preset", "wild")
        assert st.params.temperature == 1.3 and st.params.preset == "wild"
        assert st.params.top_k == 0 and isinstance(st.params.top_k, int)
        assert st.params.submit_params("x")["preset"] == "wild"
        assert st.undo() and st.params.preset is None and st.params.temperature == 1.0
        assert st.undo() and "seed" not in st.params.submit_params("x")
        assert st.undo() and st.params == Params()
        assert not st.undo()
        assert st.redo() and st.params.duration == 5.0
