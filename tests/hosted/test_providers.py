"""The hosted providers over real loopback HTTP, against fakes that answer as the providers
document (:mod:`timbred.testing.fake_providers`): each provider's request field by field, its
auth header, the audio it returns and what it costs; the HTTP layer's retries (429 with
Retry-After, 5xx, bounded in time), its size limits and its translation of failures
(KeyRejected, ProviderError with the provider's own reason, ProviderUnreachable naming the
host); Replicate's resume and cancel; a key that never leaves for another origin and never
appears in an error message or a log line.

The documentation the fakes and the assertions follow:

* Replicate: https://replicate.com/docs/reference/http,
  https://replicate.com/docs/topics/predictions/create-a-prediction,
  https://replicate.com/docs/topics/predictions/lifecycle, https://replicate.com/meta/musicgen/api,
  https://replicate.com/pricing
* Stability AI: https://platform.stability.ai/docs/api-reference#tag/Text-to-Audio,
  https://platform.stability.ai/pricing
* ElevenLabs: https://elevenlabs.io/docs/api-reference/music/compose,
  https://elevenlabs.io/docs/api-reference/authentication,
  https://elevenlabs.io/docs/error-messages, https://elevenlabs.io/pricing/api
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest
import soundfile as sf

from timbred.errors import (
    InvalidParams,
    KeyRejected,
    ProviderError,
    ProviderUnreachable,
    TimbreError,
)
from timbred.hosted import elevenlabs, http, replicate, stability
from timbred.hosted.base import Call, Provider, Result
from timbred.request import Request
from timbred.testing.fake_providers import (
    Canned,
    FakeElevenLabs,
    FakeReplicate,
    FakeServer,
    FakeStability,
    bad_prompt,
    chunked,
    content_moderation,
    dropped,
    malformed_json,
    oversized,
    quota_exceeded,
    rate_limited,
    server_error,
    slow,
    undecodable_audio,
    wrong_type,
)

pytestmark = pytest.mark.anyio

KEY = "r8_TestKey0123456789abcdefABCDEF"
WRONG = "r8_WrongKey9876543210fedcbaFEDCBA"
#: Quick retries, so that a test waits for what it means to and little more.
FAST = http.RetryPolicy(max_elapsed_s=5.0, base_delay_s=0.01, max_delay_s=0.05)


def no_key(error: BaseException) -> None:
    """The key appears nowhere in an error: its message, its text, its wire data."""
    assert isinstance(error, TimbreError)
    for text in (str(error), error.message, json.dumps(error.data, default=str), repr(error)):
        assert KEY not in text and WRONG not in text


@asynccontextmanager
async def client_for(fake: FakeServer, provider: Provider, key: str = KEY,
                     timeout: float = 15.0) -> AsyncIterator[httpx.AsyncClient]:
    """A client as the executor builds one: the fake's base URL, the key's header, timeouts."""
    async with httpx.AsyncClient(base_url=fake.base_url, headers=provider.auth_headers(key),
                                 timeout=httpx.Timeout(timeout),
                                 follow_redirects=True) as client:
        yield client


def make_call(client: httpx.AsyncClient, model: str, base_url: str, *, prompt: str = "lo-fi",
              duration: float = 8.0, seed: int = 7, options: Mapping[str, Any] | None = None,
              remote: Mapping[str, Any] | None = None,
              record: Callable[[Mapping[str, Any]], Awaitable[None]] | None = None,
              progress: Callable[[str], None] | None = None,
              policy: http.RetryPolicy = FAST) -> Call:
    async def download(url: str) -> tuple[bytes, str]:
        return await http.download(client, url, provider="test", policy=policy,
                                   max_bytes=http.MAX_AUDIO_BYTES, base_url=base_url)

    return Call(client=client, model=model,
                request=Request(prompt=prompt, duration=duration, seed=seed,
                                options=dict(options or {})),
                index=0, remote=remote, record=record, progress=progress, download=download,
                policy=policy)


def decoded(result: Result) -> tuple[int, int, int]:
    """``(sample rate, channels, frames)`` of the audio a provider returned."""
    info = sf.info(io.BytesIO(result.audio))
    return info.samplerate, info.channels, info.frames


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- Replicate ------------------------------------------------------------------------------------


class TestReplicate:
    provider = replicate.ReplicateProvider(poll_interval_s=0.01)

    async def test_end_to_end(self) -> None:
        """meta/musicgen without a version: the latest version is looked up (models.get), the
        prediction created with the documented body and headers, its handle recorded before
        the first poll, polled to succeeded, its WAV fetched from the files' origin without
        the key; the cost is predict_time x the published GPU price."""
        events: list[str] = []
        with FakeReplicate(KEY, polls=2, predict_time=12.5) as fake:
            async with client_for(fake, self.provider) as client:

                async def record(handle: Mapping[str, Any]) -> None:
                    events.append(f"record {handle['id']}")
                    assert not fake.seen("GET", "/v1/predictions/"), "recorded after polling"

                call = make_call(client, "meta/musicgen", fake.base_url, prompt="lo-fi piano",
                                 duration=7.6, seed=(1 << 40) + 5,
                                 options={"input": {"model_version": "stereo-large"}},
                                 record=record, progress=events.append)
                result = await self.provider.generate(call)
        lookup, create = fake.seen("GET", "/v1/models/"), fake.seen("POST", "/v1/predictions")
        assert [r.path for r in lookup] == ["/v1/models/meta/musicgen"]
        assert len(create) == 1
        body = create[0].json()
        assert body["version"] == f"meta/musicgen:{FakeReplicate.VERSION}"
        assert body["input"] == {"prompt": "lo-fi piano", "duration": 8, "seed": 5,
                                 "output_format": "wav", "model_version": "stereo-large"}
        assert create[0].headers["authorization"] == f"Bearer {KEY}"
        assert create[0].headers["prefer"] == "wait=10"
        assert create[0].headers["content-type"] == "application/json"
        ident = result.info["id"]
        assert events == [f"record {ident}", "starting", "processing", "succeeded"]
        assert [r.path for r in fake.seen("GET", "/v1/predictions/")] == \
            [f"/v1/predictions/{ident}"] * 2
        files = fake.files.seen("GET")
        assert len(files) == 1 and "authorization" not in files[0].headers
        assert result.content_type == "audio/wav"
        assert decoded(result)[:2] == (32000, 2)
        assert result.cost is not None and result.cost.estimate
        assert result.cost.usd == pytest.approx(12.5 * replicate.GPU_PRICE_PER_S)
        assert "predict_time" in result.cost.basis
        assert result.info["version"] == FakeReplicate.VERSION
        assert result.info["metrics"]["predict_time"] == 12.5

    async def test_pinned_version_and_sync_mode(self) -> None:
        """A pinned version is sent as OWNER/NAME:VERSION with no model lookup; a prediction
        that finishes within the Prefer: wait answer is not polled at all."""
        version = "a" * 64
        with FakeReplicate(KEY, finish_on_create=True) as fake:
            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(
                    make_call(client, f"someone/song-model:{version}", fake.base_url,
                              duration=4.5))
        assert not fake.seen("GET", "/v1/models/")
        assert not fake.seen("GET", "/v1/predictions/")
        body = fake.seen("POST", "/v1/predictions")[0].json()
        assert body["version"] == f"someone/song-model:{version}"
        assert body["input"] == {"prompt": "lo-fi", "duration": 4.5, "seed": 7}
        assert result.info["status"] == "succeeded"

    async def test_official_model_is_run_by_name(self) -> None:
        """A model whose page shows no version (an official model) is run as OWNER/NAME."""
        with FakeReplicate(KEY, latest_version=None) as fake:
            async with client_for(fake, self.provider) as client:
                await self.provider.generate(make_call(client, "acme/tune", fake.base_url))
        assert fake.seen("POST", "/v1/predictions")[0].json()["version"] == "acme/tune"

    async def test_resume_polls_and_creates_nothing(self) -> None:
        """With a recorded handle (a daemon restart), the same prediction is polled to its
        end: no second create, no second bill."""
        with FakeReplicate(KEY, polls=1) as fake:
            earlier = fake.create(f"meta/musicgen:{FakeReplicate.VERSION}",
                                  {"prompt": "lo-fi", "duration": 8, "seed": 7})
            remote = {"id": earlier["id"], "get": earlier["urls"]["get"],
                      "cancel": earlier["urls"]["cancel"], "version": earlier["version"]}
            recorded: list[Mapping[str, Any]] = []

            async def record(handle: Mapping[str, Any]) -> None:
                recorded.append(handle)

            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(
                    make_call(client, "meta/musicgen", fake.base_url, remote=remote,
                              record=record))
        assert not fake.seen("POST")
        assert not fake.seen("GET", "/v1/models/")
        assert not recorded
        assert result.info["id"] == earlier["id"]
        assert fake.seen("GET", f"/v1/predictions/{earlier['id']}")

    async def test_cancel_posts_the_cancel_link(self) -> None:
        """A prediction still processing when its job is cancelled: cancel POSTs its
        urls.cancel, and the prediction is canceled at the provider."""
        with FakeReplicate(KEY, hold=True) as fake:
            async with client_for(fake, self.provider) as client:
                handles: list[Mapping[str, Any]] = []
                processing = anyio.Event()

                async def record(handle: Mapping[str, Any]) -> None:
                    handles.append(handle)

                def progress(status: str) -> None:
                    if status == "processing":  # it has polled
                        processing.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.provider.generate,
                                  make_call(client, "meta/musicgen", fake.base_url,
                                            record=record, progress=progress))
                    with anyio.fail_after(5):
                        await processing.wait()
                    tg.cancel_scope.cancel()
                await self.provider.cancel(client, handles[0])
        ident = handles[0]["id"]
        cancels = fake.seen("POST", f"/v1/predictions/{ident}/cancel")
        assert len(cancels) == 1 and cancels[0].headers["authorization"] == f"Bearer {KEY}"
        assert fake.predictions[ident]["status"] == "canceled"

    @pytest.mark.parametrize(("outcome", "words"), [("failed", "CUDA out of memory"),
                                                    ("aborted", "deadline")])
    async def test_a_prediction_that_does_not_succeed(self, outcome: str, words: str) -> None:
        with FakeReplicate(KEY, outcome=outcome, polls=1) as fake:
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, "meta/musicgen",
                                                           fake.base_url))
        assert words in str(caught.value)
        assert caught.value.data["retryable"] is (outcome == "aborted")
        assert not fake.files.requests

    async def test_first_audio_of_a_list_of_outputs(self) -> None:
        """A model answering a list of files: the first audio one is taken."""
        with FakeReplicate(KEY, polls=1,
                           output=lambda url: [url.replace(".wav", ".json"), url]) as fake:
            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(
                    make_call(client, f"x/y:{'b' * 64}", fake.base_url))
        assert [r.path.rsplit(".", 1)[1] for r in fake.files.requests] == ["wav"]
        assert decoded(result)[0] == 32000

    async def test_wrong_key_is_rejected(self) -> None:
        with FakeReplicate(KEY) as fake:
            async with client_for(fake, self.provider, key=WRONG) as client:
                with pytest.raises(KeyRejected) as caught:
                    await self.provider.generate(make_call(client, "meta/musicgen",
                                                           fake.base_url))
        assert caught.value.data["status"] == 401
        assert "You did not pass a valid authentication token" in str(caught.value)
        no_key(caught.value)

    async def test_validation_problem_is_the_reason(self) -> None:
        """A 422 problem document's title, detail and invalid fields make the reason."""
        with FakeReplicate(KEY) as fake:
            fake.script("POST", "/v1/predictions", Canned.json(
                422, {"title": "Input validation failed", "status": 422,
                      "detail": "- input.duration: Must be less than or equal to 30",
                      "invalid_fields": [{"type": "less_than_equal", "field": "input.duration",
                                          "description": "Must be less than or equal to 30"}]},
                content_type="application/problem+json"))
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, f"x/y:{'c' * 64}",
                                                           fake.base_url))
        text = str(caught.value)
        assert "422" in text and "Input validation failed" in text and "input.duration" in text
        assert caught.value.data["status"] == 422

    @pytest.mark.parametrize("model", ["meta", "meta/", "meta/musicgen:123", "/musicgen",
                                       "meta/music gen", "meta/musicgen:" + "G" * 64])
    def test_malformed_names_are_refused(self, model: str) -> None:
        with pytest.raises(InvalidParams) as caught:
            self.provider.check_model(model)
        assert "replicate:OWNER/NAME" in str(caught.value)
        assert caught.value.data["param"] == "model"

    def test_estimate_and_submit_checks(self) -> None:
        """The estimate is the duration x the documented GPU-seconds factor x the price;
        extra inputs may not set Timbre's own fields."""
        request = Request(prompt="x", duration=10.0, seed=1)
        cost = self.provider.estimate("meta/musicgen", request)
        assert cost.estimate
        assert cost.usd == pytest.approx(10 * replicate.GPU_S_PER_AUDIO_S
                                         * replicate.GPU_PRICE_PER_S)
        with pytest.raises(InvalidParams, match="--duration"):
            self.provider.check_request("meta/musicgen", Request(
                prompt="x", duration=10.0, seed=1, options={"input": {"duration": 30}}))
        assert not self.provider.deterministic("meta/musicgen")
        assert set(self.provider.params) == {"input"}


# --- Stability AI ---------------------------------------------------------------------------------


class TestStability:
    provider = stability.PROVIDER

    async def test_end_to_end(self) -> None:
        """The documented multipart request (every field), the auth and accept headers, the
        WAV it answers (44.1 kHz stereo), the seed it says it used, 20 credits."""
        with FakeStability(KEY) as fake:
            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(make_call(
                    client, "stable-audio-2.5", fake.base_url, prompt="warm pads",
                    duration=12.5, seed=4294967294 + 9,
                    options={"steps": 6, "cfg_scale": 2.5, "output_format": "wav"}))
        (sent,) = fake.seen("POST", FakeStability.PATH)
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.headers["accept"] == "audio/*"
        assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert sent.form() == {"prompt": "warm pads", "duration": "12.5", "seed": "10",
                               "model": "stable-audio-2.5", "output_format": "wav",
                               "steps": "6", "cfg_scale": "2.5"}
        assert result.content_type == "audio/wav"
        assert decoded(result)[:2] == (44100, 2)
        assert result.info["seed"] == 10 and result.info["finish_reason"] == "SUCCESS"
        assert len(result.info["id"]) == 32
        assert result.cost is not None and result.cost.estimate
        assert result.cost.usd == pytest.approx(0.20)
        assert result.cost.basis == "20 credits x $0.01 (published price)"

    async def test_mp3_and_stable_audio_2(self) -> None:
        """MP3 on request; Stable Audio 2 costs 19 credits + 0.06 a step."""
        with FakeStability(KEY) as fake:
            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(make_call(
                    client, "stable-audio-2", fake.base_url,
                    options={"steps": 50, "output_format": "mp3"}))
        assert result.content_type == "audio/mpeg"
        assert decoded(result)[0] == 44100
        assert result.cost is not None and result.cost.usd == pytest.approx(0.22)
        assert "cfg_scale" not in fake.requests[0].form()

    async def test_wrong_key_is_rejected(self) -> None:
        with FakeStability(KEY) as fake:
            async with client_for(fake, self.provider, key=WRONG) as client:
                with pytest.raises(KeyRejected) as caught:
                    await self.provider.generate(make_call(client, "stable-audio-2.5",
                                                           fake.base_url))
        assert "unauthorized" in str(caught.value)
        no_key(caught.value)

    async def test_moderation_is_no_key_problem(self) -> None:
        """A 403 content_moderation is a refusal of the prompt, not of the key."""
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, content_moderation())
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, "stable-audio-2.5",
                                                           fake.base_url))
        assert not isinstance(caught.value, KeyRejected)
        assert "content_moderation: Your request was flagged" in str(caught.value)

    async def test_bad_request_names_the_fields(self) -> None:
        with FakeStability(KEY) as fake:
            async with client_for(fake, self.provider) as client:
                call = make_call(client, "stable-audio-2.5", fake.base_url, prompt="")
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(call)
        assert "400" in str(caught.value) and "bad_request: prompt: cannot be empty" in \
            str(caught.value)

    async def test_content_filtered(self) -> None:
        with FakeStability(KEY, finish_reason="CONTENT_FILTERED") as fake:
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError, match="CONTENT_FILTERED"):
                    await self.provider.generate(make_call(client, "stable-audio-2.5",
                                                           fake.base_url))

    def test_submit_checks(self) -> None:
        """Unknown models, durations past 190 s and steps outside a model's range are
        refused at submit, naming the limit."""
        with pytest.raises(InvalidParams, match=r"stability:stable-audio-2\.5"):
            self.provider.check_model("stable-audio-3")
        with pytest.raises(InvalidParams, match="190") as caught:
            self.provider.estimate("stable-audio-2.5", Request(prompt="x", duration=200,
                                                                 seed=1))
        assert caught.value.data["param"] == "duration"
        with pytest.raises(InvalidParams, match="4 to 8"):
            self.provider.check_request("stable-audio-2.5", Request(
                prompt="x", duration=10, seed=1, options={"steps": 50}))
        assert not self.provider.deterministic("stable-audio-2.5")


# --- ElevenLabs -----------------------------------------------------------------------------------


class TestElevenLabs:
    provider = elevenlabs.PROVIDER

    async def test_end_to_end(self) -> None:
        """The documented JSON body (no seed: the API takes none with a prompt), the
        output_format query, the xi-api-key header and no other, MP3 at music_v2's 48 kHz,
        minutes x the published price."""
        with FakeElevenLabs(KEY) as fake:
            async with client_for(fake, self.provider) as client:
                result = await self.provider.generate(make_call(
                    client, "music", fake.base_url, prompt="a chill lo-fi beat",
                    duration=30.0, options={"model_id": "music_v2",
                                            "force_instrumental": True,
                                            "output_format": "auto"}))
        (sent,) = fake.seen("POST", "/v1/music")
        assert sent.json() == {"prompt": "a chill lo-fi beat", "music_length_ms": 30000,
                               "model_id": "music_v2", "force_instrumental": True}
        assert sent.query == {"output_format": ["auto"]}
        assert sent.headers["xi-api-key"] == KEY and "authorization" not in sent.headers
        assert result.content_type == "audio/mpeg"
        assert decoded(result)[:2] == (48000, 2)
        assert result.cost is not None and result.cost.estimate
        assert result.cost.usd == pytest.approx(0.5 * elevenlabs.USD_PER_MINUTE)
        assert result.info["seed"] is None

    async def test_defaults(self) -> None:
        """Options absent (a caller that did not fill the schema's defaults): music_v2,
        not instrumental, auto."""
        with FakeElevenLabs(KEY) as fake:
            async with client_for(fake, self.provider) as client:
                await self.provider.generate(make_call(client, "music", fake.base_url,
                                                       duration=3.0))
        sent = fake.requests[0]
        assert sent.json()["model_id"] == "music_v2"
        assert sent.json()["force_instrumental"] is False
        assert sent.json()["music_length_ms"] == 3000

    @pytest.mark.parametrize(("key", "code"), [(WRONG, "invalid_api_key"),
                                               ("", "needs_authorization")])
    async def test_wrong_key_is_rejected(self, key: str, code: str) -> None:
        with FakeElevenLabs(KEY) as fake:
            headers = {} if not key else self.provider.auth_headers(key)
            async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
                with pytest.raises(KeyRejected if key else ProviderError) as caught:
                    await self.provider.generate(make_call(client, "music", fake.base_url))
        assert code in str(caught.value)
        no_key(caught.value)

    async def test_quota_is_no_key_problem(self) -> None:
        """ElevenLabs answers an exhausted quota with 401 quota_exceeded: the key is fine."""
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", quota_exceeded())
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, "music", fake.base_url))
        assert not isinstance(caught.value, KeyRejected)
        assert "quota_exceeded" in str(caught.value)

    async def test_bad_prompt_carries_the_suggestion(self) -> None:
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", bad_prompt("a jangly 60s British pop song"))
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, "music", fake.base_url,
                                                           prompt="a Beatles song"))
        text = str(caught.value)
        assert "bad_prompt" in text and "a jangly 60s British pop song" in text

    async def test_validation_items_name_the_field(self) -> None:
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", Canned.json(422, {"detail": [
                {"type": "value_error", "loc": ["body", "music_length_ms"],
                 "msg": "Must be between 3000ms and 600000ms", "input": 1}]}))
            async with client_for(fake, self.provider) as client:
                with pytest.raises(ProviderError) as caught:
                    await self.provider.generate(make_call(client, "music", fake.base_url))
        assert "music_length_ms: Must be between 3000ms and 600000ms" in str(caught.value)

    @pytest.mark.parametrize("duration", [2.0, 600.5])
    def test_impossible_lengths_are_refused_at_submit(self, duration: float) -> None:
        request = Request(prompt="x", duration=duration, seed=1)
        with pytest.raises(InvalidParams, match="3 to 600 s") as caught:
            self.provider.estimate("music", request)
        assert caught.value.data["param"] == "duration"
        with pytest.raises(InvalidParams, match="elevenlabs:music"):
            self.provider.check_model("music_v2")
        assert not self.provider.deterministic("music")


# --- the HTTP layer -------------------------------------------------------------------------------


class TestRetries:
    async def test_429_then_success_honours_retry_after(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """A 429 with Retry-After: 1 is retried after a second, not sooner; the retry is
        logged at INFO with the provider and status, never a header."""
        caplog.set_level(logging.INFO, logger="timbred.hosted.http")
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, rate_limited(retry_after=1))
            async with client_for(fake, stability.PROVIDER) as client:
                started = time.monotonic()
                result = await stability.PROVIDER.generate(
                    make_call(client, "stable-audio-2.5", fake.base_url))
                waited = time.monotonic() - started
        assert len(fake.requests) == 2 and result.audio
        assert waited >= 0.95
        retries = [r for r in caplog.records if "answered 429" in r.getMessage()]
        assert retries and retries[0].levelno == logging.INFO
        assert "stability" in retries[0].getMessage()
        assert all(KEY not in r.getMessage() for r in caplog.records)

    async def test_5xx_is_retried(self) -> None:
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", server_error(500), server_error(503))
            async with client_for(fake, elevenlabs.PROVIDER) as client:
                result = await elevenlabs.PROVIDER.generate(make_call(client, "music",
                                                                      fake.base_url))
        assert len(fake.requests) == 3 and result.audio

    async def test_retry_time_is_bounded(self) -> None:
        """A provider that keeps answering 503 is given up on within the policy's time,
        with a retryable ProviderError saying how long it was tried."""
        policy = http.RetryPolicy(max_elapsed_s=0.6, base_delay_s=0.05, max_delay_s=0.2)
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, *[server_error(503)] * 200)
            async with client_for(fake, stability.PROVIDER) as client:
                started = time.monotonic()
                with pytest.raises(ProviderError) as caught:
                    await stability.PROVIDER.generate(
                        make_call(client, "stable-audio-2.5", fake.base_url, policy=policy))
                waited = time.monotonic() - started
        assert waited < 1.5
        assert len(fake.requests) >= 2
        assert caught.value.data["status"] == 503 and caught.value.data["retryable"]
        assert "503" in str(caught.value) and "times in" in str(caught.value)
        no_key(caught.value)

    async def test_a_retry_after_longer_than_the_budget_fails_at_once(self) -> None:
        with FakeReplicate(KEY) as fake:
            fake.script("GET", "/v1/models/", rate_limited(retry_after=300))
            async with client_for(fake, replicate.PROVIDER) as client:
                started = time.monotonic()
                with pytest.raises(ProviderError) as caught:
                    await replicate.PROVIDER.generate(make_call(client, "meta/musicgen",
                                                                fake.base_url))
        assert time.monotonic() - started < 1
        assert "asked to wait 300 s (Retry-After)" in str(caught.value)
        no_key(caught.value)
        assert len(fake.requests) == 1

    def test_retry_after_forms(self) -> None:
        now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
        later = format_datetime(now + timedelta(seconds=30), usegmt=True)
        assert http.retry_after_s("7") == 7.0
        assert http.retry_after_s("1.5") == 1.5
        assert http.retry_after_s(later, now=now.timestamp()) == pytest.approx(30)
        assert http.retry_after_s(format_datetime(now - timedelta(seconds=5), usegmt=True),
                                  now=now.timestamp()) == 0.0
        assert http.retry_after_s("soon") is None and http.retry_after_s(None) is None

    async def test_a_dropped_post_is_not_sent_twice(self) -> None:
        """A create that was sent but not answered may have been made: not retried (no
        second bill); the same failure on an idempotent GET is retried."""
        with FakeReplicate(KEY, polls=1) as fake:
            fake.script("POST", "/v1/predictions", dropped())
            async with client_for(fake, replicate.PROVIDER) as client:
                with pytest.raises(ProviderUnreachable) as caught:
                    await replicate.PROVIDER.generate(make_call(client, f"x/y:{'d' * 64}",
                                                                fake.base_url))
            assert len(fake.seen("POST")) == 1
            assert "closed without a complete answer" in str(caught.value)
            fake.script("GET", "/v1/models/", dropped())
            async with client_for(fake, replicate.PROVIDER) as client:
                await replicate.ReplicateProvider(poll_interval_s=0.01).generate(
                    make_call(client, "meta/musicgen", fake.base_url))
            assert len(fake.seen("GET", "/v1/models/")) == 2

    async def test_a_generation_may_take_longer_than_a_read(self) -> None:
        """A synchronous generation waits past the client's read timeout (the answer comes
        when the music is made); a request that is not one still times out, and a POST that
        timed out is not sent again."""
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", slow(Canned(200, b"ID3" + b"\0" * 64,
                                                         {"Content-Type": "audio/mpeg"}), 0.6))
            async with client_for(fake, elevenlabs.PROVIDER, timeout=0.2) as client:
                result = await elevenlabs.PROVIDER.generate(make_call(client, "music",
                                                                      fake.base_url))
                assert result.audio.startswith(b"ID3")
                fake.script("POST", "/v1/other", slow(Canned(200, b"{}"), 0.6))
                with pytest.raises(ProviderUnreachable) as caught:
                    await http.send(client, "POST", "/v1/other", provider="elevenlabs",
                                    policy=FAST, idempotent=False, max_bytes=1024)
        assert caught.value.data["reason"] == "timed out after 0.2 s waiting for an answer"
        assert len(fake.seen("POST", "/v1/other")) == 1

    async def test_a_slow_get_times_out_and_is_retried(self) -> None:
        with FakeReplicate(KEY) as fake:
            fake.script("GET", "/v1/models/", slow(Canned.json(200, {}), 1.0))
            async with client_for(fake, replicate.PROVIDER, timeout=0.3) as client:
                response = await http.send(client, "GET", "/v1/models/meta/musicgen",
                                           provider="replicate", policy=FAST, idempotent=True,
                                           max_bytes=http.MAX_JSON_BYTES)
        assert http.expect_json(response, "replicate")["latest_version"]["id"] == \
            FakeReplicate.VERSION


class TestAnswers:
    async def test_malformed_json(self) -> None:
        with FakeReplicate(KEY) as fake:
            fake.script("POST", "/v1/predictions", malformed_json())
            async with client_for(fake, replicate.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await replicate.PROVIDER.generate(make_call(client, f"x/y:{'e' * 64}",
                                                                fake.base_url))
        no_key(caught.value)
        text = str(caught.value)
        assert "malformed JSON" in text and "/v1/predictions" in text
        assert '{"id": "abc", "status":' in text

    async def test_wrong_content_type(self) -> None:
        """HTML where JSON was expected, and HTML where audio was: each named, with the
        body's first characters."""
        with FakeReplicate(KEY) as fake:
            fake.script("GET", "/v1/models/", wrong_type())
            async with client_for(fake, replicate.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await replicate.PROVIDER.generate(make_call(client, "meta/musicgen",
                                                                fake.base_url))
        assert "text/html where JSON was expected" in str(caught.value)
        assert "502 Bad Gateway" in str(caught.value)
        with FakeElevenLabs(KEY) as fake:
            fake.script("POST", "/v1/music", wrong_type())
            async with client_for(fake, elevenlabs.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await elevenlabs.PROVIDER.generate(make_call(client, "music",
                                                                 fake.base_url))
        assert "text/html where audio was expected" in str(caught.value)
        assert "502 Bad Gateway" in str(caught.value)

    async def test_oversized_bodies(self) -> None:
        """A body past the limit is refused, whether its Content-Length says so or it just
        keeps coming (chunked)."""
        with FakeReplicate(KEY) as fake:
            fake.script("GET", "/v1/models/", oversized(http.MAX_JSON_BYTES + 1))
            async with client_for(fake, replicate.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await replicate.PROVIDER.generate(make_call(client, "meta/musicgen",
                                                                fake.base_url))
        assert "over the 4 MiB limit" in str(caught.value)
        no_key(caught.value)
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, chunked(b"\0" * 300_000, "audio/wav"))
            async with client_for(fake, stability.PROVIDER) as client:
                call = make_call(client, "stable-audio-2.5", fake.base_url)
                call.max_audio_bytes = 100_000
                with pytest.raises(ProviderError) as caught:
                    await stability.PROVIDER.generate(call)
        assert "over the 100000 bytes limit" in str(caught.value)

    async def test_undecodable_audio_is_passed_on_untouched(self) -> None:
        """Audio that does not decode comes back as it came (the executor's decode refuses
        it, naming the provider); the provider does not pretend to know better."""
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, undecodable_audio())
            async with client_for(fake, stability.PROVIDER) as client:
                result = await stability.PROVIDER.generate(make_call(client, "stable-audio-2.5",
                                                                     fake.base_url))
        assert result.audio.startswith(b"RIFF")
        with pytest.raises(sf.LibsndfileError):
            sf.info(io.BytesIO(result.audio))

    async def test_unreachable_names_the_host(self) -> None:
        """A closed port: connection refused, retried twice quickly, then
        ProviderUnreachable naming the host; waiting for the network keeps trying until the
        policy's time is up."""
        base = f"http://127.0.0.1:{closed_port()}"
        async with httpx.AsyncClient(base_url=base, headers={"xi-api-key": KEY}) as client:
            with pytest.raises(ProviderUnreachable) as caught:
                await elevenlabs.PROVIDER.generate(make_call(client, "music", base))
            error = caught.value
            assert error.data["host"] == "127.0.0.1" and "127.0.0.1" in str(error)
            assert error.data["reason"] == "connection refused"
            no_key(error)
            waiting = http.RetryPolicy(max_elapsed_s=0.4, base_delay_s=0.02, max_delay_s=0.05,
                                       wait_offline=True)
            started = time.monotonic()
            with pytest.raises(ProviderUnreachable):
                await http.send(client, "GET", "/v1/models", provider="elevenlabs",
                                policy=waiting, idempotent=True, max_bytes=1024)
            assert 0.3 <= time.monotonic() - started < 2

    async def test_an_echoed_key_is_scrubbed(self) -> None:
        """A provider whose error body quotes the key it was sent: the message says [key]."""
        with FakeStability(KEY) as fake:
            fake.script("POST", FakeStability.PATH, Canned.json(
                400, {"id": "1", "name": "bad_request",
                      "errors": [f"authorization: Bearer {KEY} is not allowed here"]}))
            async with client_for(fake, stability.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await stability.PROVIDER.generate(make_call(client, "stable-audio-2.5",
                                                                fake.base_url))
        assert "[key]" in str(caught.value)
        no_key(caught.value)

    def test_error_shapes(self) -> None:
        """The three providers' documented error bodies, and text that is not JSON."""
        shape = http.describe_error
        assert shape(b'{"title":"Unauthenticated","detail":"no token","status":401}') == \
            ("Unauthenticated: no token", None)
        assert shape(b'{"id":"a1","name":"bad_request","errors":["prompt: required",'
                     b'"seed: too big"]}') == ("bad_request: prompt: required; seed: too big",
                                               "bad_request")
        assert shape(b'{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}') \
            == ("invalid_api_key: Invalid API key", "invalid_api_key")
        assert shape(b'{"detail":"Not Found"}') == ("Not Found", None)
        assert shape(b'{"detail":[{"loc":["query","output_format"],"msg":"bad"}]}') == \
            ("query.output_format: bad", None)
        assert shape(b"<html>\n  Bad   Gateway </html>") == ("<html> Bad Gateway </html>", None)
        assert shape(b"") == ("", None)


class TestDownloads:
    async def test_the_key_goes_only_to_its_origin(self) -> None:
        """Same origin as the base URL: the key goes along. Another origin (another port is
        another origin): no Authorization, no xi-api-key. A redirect from the base URL to
        another origin drops them on the way."""
        with FakeReplicate(KEY) as fake:
            files = fake.files
            url = files.put("/f/a.wav", Canned(200, b"RIFF....", {"Content-Type": "audio/wav"}))
            fake.script("GET", "/here.wav", Canned(200, b"RIFF....",
                                                   {"Content-Type": "audio/wav"}))
            fake.script("GET", "/redirect", Canned(302, b"", {"Location": url}))
            headers = {"Authorization": f"Bearer {KEY}", "xi-api-key": KEY}
            async with httpx.AsyncClient(base_url=fake.base_url, headers=headers,
                                         follow_redirects=True) as client:
                for target in (fake.base_url + "/here.wav", url, fake.base_url + "/redirect"):
                    body, content_type = await http.download(
                        client, target, provider="replicate", policy=FAST, max_bytes=1024,
                        base_url=fake.base_url)
                    assert body == b"RIFF...." and content_type == "audio/wav"
        here, redirect = fake.seen("GET", "/here.wav")[0], fake.seen("GET", "/redirect")[0]
        assert here.headers["authorization"] == f"Bearer {KEY}"
        assert redirect.headers["xi-api-key"] == KEY
        assert len(files.requests) == 2
        for seen in files.requests:
            assert "authorization" not in seen.headers and "xi-api-key" not in seen.headers

    async def test_an_expired_link_is_no_key_problem(self) -> None:
        """A 403 from the files' host (no key was sent there) is a ProviderError."""
        with FakeReplicate(KEY) as fake:
            fake.files.files["/gone.wav"] = Canned(403, b"Request has expired",
                                                   {"Content-Type": "text/plain"})
            async with client_for(fake, replicate.PROVIDER) as client:
                with pytest.raises(ProviderError) as caught:
                    await http.download(client, fake.files.base_url + "/gone.wav",
                                        provider="replicate", policy=FAST, max_bytes=1024,
                                        base_url=fake.base_url)
        assert not isinstance(caught.value, KeyRejected)
        assert "expired" in str(caught.value)

    async def test_data_urls(self) -> None:
        async with httpx.AsyncClient() as client:
            body, content_type = await http.download(
                client, "data:audio/wav;base64,UklGRg==", provider="replicate", policy=FAST,
                max_bytes=1024, base_url="https://api.replicate.com")
        assert (body, content_type) == (b"RIFF", "audio/wav")
