"""Hosted models in the studio, beside the local ones: ``models.list``'s ``hosted`` entries
are offered by ``/model`` (completion and the panel's stepping), marked with their provider,
price and the key they need; choosing one sends the next prompt to it (with the key in the
studio's environment, as timbrectl sends it); the panel and the status bar say it runs at
the provider instead of showing local residency; a hosted take shows its provider and cost;
a hosted job's failure is one line like any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input

from tests.tui.factories import (
    HOSTED_MODEL,
    HOSTED_PRICE,
    MUSICGEN_MODEL,
    STABILITY_MODEL,
    hosted_backends,
    hosted_job,
    job,
    models_listing,
    swell,
)
from tests.tui.support import (
    FakeClock,
    Harness,
    RecordingDaemon,
    SizedOutput,
    check_result,
    render,
    running_studio,
)
from tests.tui.test_studio import send_command, socket_under
from timbre_tui.app import Studio
from timbre_tui.commands import SlashCompleter
from timbre_tui.data import take_from_history
from timbre_tui.layout import params_line, take_line
from timbre_tui.playback import NullBackend
from timbre_tui.state import Cost, HostedModel, StudioState, short_model
from timbrectl.client import connect
from timbred.errors import KeyMissing, error_from_wire
from timbred.protocol.schema import check, openrpc, params_specs, rooted
from timbred.testing.daemon import running_daemon

pytestmark = pytest.mark.anyio

KEY_HINT = "needs a key — timbrectl auth set replicate"


def hosted_state(*, replicate_key: str | None = None) -> StudioState:
    """A state that has heard ``models_listing()`` (the daemon's default model MusicGen),
    with an environment holding no provider's key."""
    st = StudioState(environ={})
    st.set_status({"models": [], "default_model": {"name": MUSICGEN_MODEL,
                                                   "backend": "musicgen"}})
    st.set_backends(hosted_backends())
    listing = models_listing(replicate_key=replicate_key)
    st.set_models(listing["installed"], [m["name"] for m in listing["catalogue"]],
                  listing["hosted"])
    return st


class TestListing:
    def test_the_fakes_listing_is_the_daemons_contract(self) -> None:
        """The listing these tests feed the studio passes models.list's result schema."""
        check_result("models.list", models_listing())

    def test_hosted_models_come_after_the_local_ones(self) -> None:
        """The names offered are the installed, then the catalogue's, then the hosted ones;
        a hosted model's family is its provider's (whose parameters the panel shows)."""
        st = hosted_state()
        assert st.model_names == [MUSICGEN_MODEL, HOSTED_MODEL, STABILITY_MODEL]
        assert st.family_of(HOSTED_MODEL) == "replicate"
        assert st.family_of("replicate:someone/else") == "replicate"  # not listed: by name
        assert st.family_of("/models/with:colon") is None  # a path, not a provider
        assert st.hosted_model(MUSICGEN_MODEL) is None and st.chosen_hosted() is None

    def test_a_listing_without_hosted_models_is_read(self) -> None:
        """An older daemon's models.list has no ``hosted``: nothing hosted is offered."""
        st = StudioState(environ={})
        st.set_models([{"name": MUSICGEN_MODEL, "backend": "musicgen"}], ["musicgen-small"])
        assert st.model_names == [MUSICGEN_MODEL, "musicgen-small"] and st.hosted == {}

    def test_a_name_the_daemon_did_not_list(self) -> None:
        """A pinned Replicate version borrows the listed model's price and key state; another
        model of a listed provider its key state; short names keep the provider."""
        st = hosted_state()
        pinned = f"{HOSTED_MODEL}:671ac645ce5e552cc63a54a2bbff63fc"
        found = st.hosted_model(pinned)
        assert found is not None and (found.name, found.price, found.needs_key) == (
            pinned, HOSTED_PRICE, True)
        other = st.hosted_model("stability:stable-audio-2")
        assert other == HostedModel("stability:stable-audio-2", "stability", key="env")
        assert short_model(pinned) == "replicate:meta/musicgen:671ac645…"
        assert short_model(HOSTED_MODEL) == HOSTED_MODEL
        assert short_model("/models/musicgen-small") == "musicgen-small"

    def test_choosing_one_says_where_it_runs_its_key_and_price(self) -> None:
        """/model with a hosted name: the panel takes the provider's parameters, and the line
        says it is hosted, the key it needs and its price; a key in the studio's environment
        is named as sent instead; one the daemon has is not mentioned."""
        st = hosted_state()
        line = st.set_param("model", HOSTED_MODEL)
        assert line == f"model: {HOSTED_MODEL} — hosted at Replicate · {KEY_HINT} · " \
                       f"{HOSTED_PRICE}"
        assert st.family == "replicate"
        assert dict(st.params.options) == {"model_version": "stereo-large",
                                           "output_format": "wav"}
        sent = st.request("warm pad")
        assert (sent["model"], sent["options"]["model_version"]) == (HOSTED_MODEL,
                                                                     "stereo-large")
        params_specs()["generate.submit"].normalise(sent)

        st.environ = {"REPLICATE_API_TOKEN": "r8_from_the_shell"}
        hosted = st.chosen_hosted()
        assert hosted is not None and not hosted.key_missing(st.environ)
        assert hosted.key_note(st.environ) == "key sent from your $REPLICATE_API_TOKEN"
        assert "r8_from_the_shell" not in hosted.about(st.environ)
        assert st.set_param("model", STABILITY_MODEL) == (
            f"model: {STABILITY_MODEL} — hosted at Stability AI · ~$0.20 a take (published "
            "price)")
        assert st.set_param("model", MUSICGEN_MODEL) == "model: musicgen"
        assert st.family == "musicgen"

    def test_stepping_the_model_reaches_the_hosted_ones(self) -> None:
        """Right on the panel's model row steps through the local models into the hosted
        ones, as it does through local ones."""
        st = hosted_state()
        assert st.step_param("model", +1).startswith(f"model: {short_model(MUSICGEN_MODEL)}")
        assert st.step_param("model", +1).startswith(f"model: {HOSTED_MODEL} — hosted at")
        assert st.params.model == HOSTED_MODEL and st.family == "replicate"

    def test_costs_read_from_a_record(self) -> None:
        """A recipe's cost as shown: two decimals, under a cent as such, marked when it is
        an estimate; a local job's (null) or a malformed one is no cost."""
        assert Cost.from_record({"usd": 0.0475, "estimate": True, "basis": "x"}) == \
            Cost(0.0475, True, "x")
        assert Cost(0.0475, True).text() == "$0.05 (estimate)"
        assert Cost(0.001, False).text() == "<$0.01"
        assert Cost(0.0).text() == "$0.00"
        assert Cost.from_record(None) is None
        assert Cost.from_record({"usd": "free"}) is None


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[Studio]:
    """A studio that is not running, on a CPU daemon with MusicGen loaded, that has heard
    the hosted models (no Replicate key anywhere), with a hosted take, a hosted job at its
    provider and one that failed for want of a key."""
    with create_pipe_input() as pipe:
        s = Studio(tmp_path / "none.sock", backend=NullBackend("no audio device",
                                                               clock=FakeClock()),
                   input=pipe, output=SizedOutput(160, 48))
        st = s.state
        st.environ = {}
        st.connection = "connected"
        st.set_status({"device": {"requested": "auto", "active": {
            "type": "cpu", "name": "x", "dtype": "float32", "threads": 2, "device": "cpu"}},
            "models": [{"model": MUSICGEN_MODEL, "device": "cpu", "dtype": "float32"}],
            "default_model": {"name": MUSICGEN_MODEL, "backend": "musicgen"}})
        st.set_backends(hosted_backends())
        listing = models_listing()
        st.set_models(listing["installed"], [], listing["hosted"])
        missing = KeyMissing("replicate", "REPLICATE_API_TOKEN")
        st.load_jobs([
            hosted_job("j-1", "done", "warm lofi rhodes",
                       outputs=[str(swell(tmp_path / "take-1.wav"))], created_at=1.0),
            hosted_job("j-2", "generating", "a cello answers", created_at=2.0),
            hosted_job("j-3", "failed", "no key yet", created_at=3.0,
                       error={"kind": missing.kind, "message": missing.message}),
            job("j-4", "done", "a local one", outputs=[str(tmp_path / "local.wav")],
                created_at=4.0),
        ])
        yield s


def resized(studio: Studio, columns: int, rows: int) -> str:
    output = studio.app.output
    assert isinstance(output, SizedOutput)
    output.size = output.size._replace(columns=columns, rows=rows)
    return render(studio.app, columns, rows)


class TestScreens:
    async def test_the_panel_and_status_bar_say_it_runs_at_the_provider(
            self, studio: Studio) -> None:
        """With a hosted model chosen the panel's rows are the provider's parameters, under
        them that it runs at Replicate, its price and the key it needs; the status bar says
        where it runs and that a key is missing instead of the device and the loaded models.
        Back on a local model both show the device and residency again."""
        st = studio.state
        st.set_param("model", HOSTED_MODEL)
        screen = resized(studio, 160, 48)
        assert " model-vers… stereo-large" in screen
        assert "hosted: runs at Replicate, nothing" in screen
        assert "~$0.05 for 30 s (estimate:" in screen
        assert "needs a key —" in screen and "timbrectl auth set replicate" in screen
        status = screen.splitlines()[-1]
        assert f"│ runs at Replicate │ {KEY_HINT} │" in status
        assert "loaded:" not in status and "cpu float32" not in status

        st.environ = {"REPLICATE_API_TOKEN": "r8_from_the_shell"}
        screen = resized(studio, 160, 48)
        panel = [ln.rpartition("│")[2] for ln in screen.splitlines()]
        assert " key sent from your" in panel and " $REPLICATE_API_TOKEN" in panel
        assert "needs a key" not in screen and "r8_from_the_shell" not in screen

        st.set_param("model", MUSICGEN_MODEL)
        screen = resized(studio, 160, 48)
        assert "runs at" not in screen and "hosted:" not in screen
        assert "│ cpu float32 │ loaded: musicgen" in screen.splitlines()[-1]

    async def test_the_summary_line_marks_it_hosted(self, studio: Studio) -> None:
        """At 80x24 (no panel) the one-line summary names the hosted model and that it is
        hosted and needs a key; the status bar still says where it runs."""
        studio.state.set_param("model", HOSTED_MODEL)
        screen = resized(studio, 80, 24)
        assert f" {HOSTED_MODEL} (hosted, needs a key) · 10s · seed random" in screen
        assert "│ runs at Replicate" in screen.splitlines()[-1]

    async def test_the_timeline_shows_provider_cost_remote_status_and_failure(
            self, studio: Studio) -> None:
        """A hosted job's line names its provider and (once done) its cost, marked as an
        estimate; a running one says what its provider last said (job.remote), one starting
        that it is being sent there (no model loads); one that failed for want of a key
        shows the daemon's one line, the way forward first, like any failure; a local job
        names no provider."""
        st = studio.state
        assert st.apply_event({"type": "job.remote", "data": {
            "job_id": "j-2", "take_index": 1, "provider": "replicate",
            "status": "processing"}})
        done, running, _, local = st.timeline()
        assert params_line(st, done).endswith(" · at Replicate · $0.05 (estimate)")
        assert params_line(st, running).endswith(" · at Replicate")
        assert "at " not in params_line(st, local)
        screen = resized(studio, 160, 48)
        assert "at Replicate · $0.05 (estimate)" in screen
        assert "▶ generating" in screen and "at Replicate: processing" in screen
        assert "✗ failed: set a replicate key with `timbrectl auth set replicate` (or" \
            in screen
        assert "Traceback" not in screen and "KeyMissing" not in screen

        st.upsert_job(hosted_job("j-5", "loading", "next", created_at=5.0))
        assert "◌ sending it to Replicate…" in resized(studio, 160, 48)

        # the provider's word goes with the job's end
        finished = hosted_job("j-2", "done", "a cello answers", created_at=2.0,
                              outputs=["/t/c.wav"], estimate=False, usd=0.12)
        assert st.upsert_job(finished) and "j-2" not in st.remote_status
        assert params_line(st, finished).endswith(" · at Replicate · $0.12")

    async def test_a_library_row_shows_provider_and_cost(self, studio: Studio,
                                                         tmp_path: Path) -> None:
        """A hosted take from the daemon's history (its record as history.search gives it)
        shows its provider and its job's cost in the library, for how many takes the job
        made; a local take shows neither."""
        recipe = hosted_job("j-9", "done", "two takes", outputs=["/a", "/b"],
                            usd=0.095)["recipe"]
        recipe["params"]["variations"] = 2
        record: dict[str, Any] = {
            "id": "t-9", "job_id": "j-9", "session": "s", "prompt": "two takes",
            "take_index": 1, "path": str(swell(tmp_path / "lib-1.wav")), "format": "wav",
            "sample_rate": 32000, "channels": 1, "duration_s": 2.0,
            "loudness_before_lufs": None, "loudness_after_lufs": -14.0,
            "created_at": 1_800_000_000.0, "recipe": recipe, "deleted_at": None,
            "rating": None, "note": None, "tags": [], "bpm": None, "key": None,
            "stems": []}
        check("history.search take", rooted(openrpc()["components"]["schemas"]["Take"]),
              record)
        take = take_from_history(record)
        assert (take.provider, take.cost, take.job_takes) == (
            "replicate", Cost(0.095, True, recipe["cost"]["basis"]), 2)
        row = "".join(t for _, t, *_ in take_line(studio, take, 160, label="two takes"))
        assert "-14.0 LUFS  Replicate $0.10 (estimate) for 2 takes" in row
        local = take_from_history({**record, "recipe": {"model": MUSICGEN_MODEL,
                                                        "backend": "musicgen"},
                                   "bpm": 121.6, "key": "Am"})
        assert local.provider is None and local.cost is None
        row = "".join(t for _, t, *_ in take_line(studio, local, 160, label="local"))
        assert "Replicate" not in row and "$" not in row
        assert "122 BPM Am  -14.0 LUFS" in row  # what the analysis measured
        # the timeline's take rows leave it to the job's line
        (timeline_take,) = studio.state.takes()[:1]
        row = "".join(t for _, t, *_ in take_line(studio, timeline_take, 160))
        assert "$" not in row


def last_said(h: Harness, text: str) -> Any:
    return lambda: any(m.text == text for m in h.studio.state.message_log)


class TestInTheStudio:
    async def test_complete_choose_and_send_to_a_hosted_model(
            self, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The daemon's models.list (its answer checked against the schema) reaches the
        studio; /model completes the hosted names, each with where it runs, its key and
        price; choosing one and sending a prompt submits to it. With the provider's variable
        in the studio's environment the key goes along as ``credentials`` (as timbrectl
        sends it) and is not shown; a local model's job carries none."""
        daemon = RecordingDaemon({"models.list": models_listing()})
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            st = h.studio.state
            st.environ = {}
            st.set_backends(hosted_backends())
            await h.studio.link._refresh_models()
            assert HOSTED_MODEL in st.model_names

            offered = {c.text: c.display_meta_text for c in SlashCompleter(
                h.studio).get_completions(Document("/model "), CompleteEvent())}
            assert offered[HOSTED_MODEL] == f"hosted at Replicate · {KEY_HINT} · " \
                                            f"{HOSTED_PRICE}"
            assert offered[STABILITY_MODEL].startswith("hosted at Stability AI · ~$0.20")
            assert offered[MUSICGEN_MODEL] == ""
            narrowed = [c.text for c in SlashCompleter(h.studio).get_completions(
                Document("/model repl"), CompleteEvent())]
            assert narrowed == [HOSTED_MODEL]

            await send_command(h, f"/model {HOSTED_MODEL}")
            assert h.message.startswith(f"model: {HOSTED_MODEL} — hosted at Replicate")
            h.type("warm lofi rhodes")
            h.press("enter")
            await h.until(last_said(h, "queued j-sent-1"), "the hosted job queued")
            assert daemon.sent[-1]["model"] == HOSTED_MODEL
            assert "credentials" not in daemon.sent[-1]

            st.environ = {"REPLICATE_API_TOKEN": "r8_from_the_shell"}
            h.type("again, with my key")
            h.press("enter")
            await h.until(last_said(h, "queued j-sent-2"), "the second hosted job queued")
            assert daemon.sent[-1]["credentials"] == {"replicate": "r8_from_the_shell"}
            assert all("r8_from_the_shell" not in m.text for m in st.message_log)
            assert "r8_from_the_shell" not in h.screen()

            await send_command(h, f"/model {MUSICGEN_MODEL}")
            h.type("a local one")
            h.press("enter")
            await h.until(last_said(h, "queued j-sent-3"), "the local job queued")
            assert "credentials" not in daemon.sent[-1]

    async def test_a_refused_hosted_submit_is_one_line(
            self, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key error as the client raises it from the daemon's reply is the message line's
        one line (its way forward first), never a traceback; the prompt goes back into the
        composer."""
        missing = KeyMissing("replicate", "REPLICATE_API_TOKEN")
        refusal = error_from_wire(missing.code, missing.message, missing.data)
        daemon = RecordingDaemon({"models.list": models_listing()}, refuse=refusal)
        async with running_studio(socket_under(short_tmp), preview=False) as h:
            monkeypatch.setattr(h.studio.link, "call", daemon.call)
            h.studio.state.environ = {}
            await h.studio.link._refresh_models()
            await send_command(h, f"/model {HOSTED_MODEL}")
            h.type("warm lofi rhodes")
            h.press("enter")
            expected = ("submit failed: set a replicate key with `timbrectl auth set "
                        "replicate` (or $REPLICATE_API_TOKEN); none is set")
            await h.until(last_said(h, expected), "the refusal")
            assert h.studio.state.message_log[-1].level == "error"
            await h.until(lambda: h.studio.widgets.composer.text == "warm lofi rhodes",
                          "the prompt given back")


class TestAgainstTheDaemon:
    async def test_the_daemons_hosted_models_are_offered(self, short_tmp: Path,
                                                         tiny: Path) -> None:
        """A real daemon's models.list: every hosted model it lists is offered after the
        local ones, in its provider's family, with its price."""
        st = StudioState(environ={})
        async with running_daemon(short_tmp, models__default=str(tiny)) as d, \
                connect(d.socket_path) as client:
            st.set_backends((await client.call("backends.list"))["backends"])
            listing = await client.call("models.list")
            st.set_models(listing["installed"], [m["name"] for m in listing["catalogue"]],
                          listing["hosted"])
        assert listing["hosted"], "the daemon lists no hosted model"
        for entry in listing["hosted"]:
            hosted = st.hosted_model(entry["name"])
            assert hosted is not None and hosted.price == entry["price"]
            assert entry["name"] in st.model_names
            assert st.family_of(entry["name"]) == entry["provider"]
            assert entry["provider"] in (st.backends or {})
