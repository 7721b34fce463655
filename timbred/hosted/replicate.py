"""Replicate: any model on replicate.com, named ``replicate:OWNER/NAME[:VERSION]``.

Documentation this module follows (read 2026):

* HTTP API reference, https://replicate.com/docs/reference/http: ``POST /v1/predictions``
  (``predictions.create``) with ``{"version", "input"}``, where ``version`` is
  ``OWNER/NAME:VERSION_ID`` or, for an official model, ``OWNER/NAME``
  (https://replicate.com/changelog/2025-08-05-run-all-models-with-the-same-api-endpoint);
  ``GET /v1/models/{owner}/{name}`` (``models.get``: its ``latest_version.id``);
  ``GET`` the prediction's ``urls.get`` (``predictions.get``); ``POST`` its ``urls.cancel``
  (``predictions.cancel``). Auth: ``Authorization: Bearer <token>``. Errors are RFC 7807
  problem details (``{"title", "detail", "status"}``).
* Sync mode, https://replicate.com/docs/topics/predictions/create-a-prediction: a
  ``Prefer: wait=N`` header (N in 1..60) holds the create request open up to N seconds; a
  prediction still running then comes back as it is, to be polled.
* Statuses, https://replicate.com/docs/topics/predictions/lifecycle: ``starting``,
  ``processing``, and the terminal ``succeeded``, ``failed``, ``canceled`` and ``aborted``
  (its deadline passed before it started).
* meta/musicgen's input schema, https://replicate.com/meta/musicgen/api: ``prompt``,
  ``duration`` (integer seconds), ``seed`` (integer; -1 or none: random), ``output_format``
  (``wav`` | ``mp3``), ``model_version`` (``stereo-melody-large`` by default,
  ``stereo-large``, ``melody-large``, ``large``); the output is one file URL (32 kHz).
* Pricing, https://replicate.com/pricing: public models are billed per second of the hardware
  they run on (:data:`GPU_PRICE_PER_S`); a prediction reports its ``metrics.predict_time``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import anyio
import httpx

from timbred.errors import InvalidParams, ProviderError
from timbred.hosted import http
from timbred.hosted.base import Call, Cost, Result
from timbred.hosted.names import PROVIDERS
from timbred.request import Request

__all__ = ["GPU_PRICE_PER_S", "PROVIDER", "ReplicateProvider"]

NAME = "replicate"

#: Replicate's published price of the GPU meta/musicgen runs on (Nvidia A100 (80GB),
#: ``gpu-a100-large``, as its model page named it), in US dollars per second
#: (https://replicate.com/pricing). Other models are billed for their own hardware; the cost
#: of a take on one says which price it assumed.
GPU_PRICE_PER_S = 0.0014
GPU_NAME = "Nvidia A100 (80GB)"
#: Seconds of GPU time a second of MusicGen large audio is expected to take, for the estimate
#: made before a job is sent (its budget check): Timbre's allowance, generous so that a budget
#: is not overrun (MusicGen large makes ~50 tokens a second of audio, autoregressively, and a
#: prediction adds its setup); the bill is worked out afterwards from the prediction's own
#: ``metrics.predict_time``.
GPU_S_PER_AUDIO_S = 3.0
#: The longest sync wait asked of the create request (``Prefer: wait=N``), in seconds: short,
#: so that the prediction's handle is recorded soon (a daemon restart can resume it).
PREFER_WAIT_S = 10
#: Seconds between polls of a running prediction.
POLL_INTERVAL_S = 1.0
#: The model Timbre offers by name; its inputs are mapped as the module docstring says.
MUSICGEN = "meta/musicgen"

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99})"
_MODEL = re.compile(rf"^(?P<owner>{_PART})/(?P<name>{_PART})(?::(?P<version>[0-9a-f]{{64}}))?$")
_AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif",
                   ".aiff")
#: The common request fields Timbre itself sends; ``input`` may not set them again.
_OWN_INPUTS = frozenset({"prompt", "duration", "seed"})


class ReplicateProvider:
    """Replicate's predictions API (see the module docstring)."""

    name = NAME
    default_base_url = PROVIDERS[NAME].default_base_url
    env_var = PROVIDERS[NAME].env_var
    models: Mapping[str, str] = MappingProxyType({
        MUSICGEN: "Meta's MusicGen (stereo-melody-large by default; input.model_version "
                  "picks another), billed per second of GPU time",
    })
    params: Mapping[str, Any] = MappingProxyType({
        "input": {
            "type": "object", "default": {},
            "description": "Extra inputs for the model, passed as they are (its own input "
                           "schema on replicate.com), e.g. {\"model_version\": "
                           "\"stereo-large\"}; prompt, duration and seed are Timbre's own "
                           "fields",
        },
    })
    # GPU sampling on shared hardware: a version pin is recorded, but Replicate promises
    # nothing about bit-identical outputs for the same seed (kernels, batch and hardware can
    # differ between runs), so a replay may differ.
    seeded = False
    sample_rates = (32000,)
    channels = (1, 2)
    max_duration_s = 30.0
    """MusicGen's window (longer takes are made by the model in windows, if at all)."""

    def __init__(self, *, poll_interval_s: float = POLL_INTERVAL_S,
                 prefer_wait_s: int = PREFER_WAIT_S) -> None:
        self.poll_interval_s = poll_interval_s
        self.prefer_wait_s = prefer_wait_s

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def check_model(self, model: str) -> None:
        _parse(model)

    def check_request(self, model: str, request: Request) -> None:
        """Refuse at submit what the model cannot take: extra ``input`` that is not an object
        or that sets Timbre's own fields again."""
        _parse(model)
        extra = request.options.get("input") or {}
        if not isinstance(extra, Mapping):
            raise InvalidParams("input: must be an object of the model's own inputs",
                                param="input")
        clash = sorted(set(extra) & _OWN_INPUTS)
        if clash:
            raise InvalidParams(f"input: {', '.join(clash)} are Timbre's own fields; set them "
                                "as --prompt, --duration and --seed", param="input")

    def deterministic(self, model: str) -> bool:
        """No: see :attr:`seeded`."""
        return False

    def estimate(self, model: str, request: Request) -> Cost:
        self.check_request(model, request)
        gpu_s = max(1.0, request.duration) * GPU_S_PER_AUDIO_S
        return Cost(usd=gpu_s * GPU_PRICE_PER_S, estimate=True,
                    basis=f"about {gpu_s:.0f} s of GPU time ({GPU_S_PER_AUDIO_S:g} s a second "
                          f"of audio) x ${GPU_PRICE_PER_S}/s ({GPU_NAME}, published price)")

    async def generate(self, call: Call) -> Result:
        owner, name, version = _parse(call.model)
        if call.remote is not None:
            prediction = await self._get(call.client, call.remote, call.policy)
        else:
            ref = (f"{owner}/{name}:{version}" if version
                   else await self._latest(call.client, owner, name, call.policy))
            prediction = await self._create(call, ref)
            if call.record is not None:
                await call.record(_handle(prediction))
        status = _status(prediction)
        if call.progress is not None:
            call.progress(status)
        handle = call.remote if call.remote is not None else _handle(prediction)
        while status not in TERMINAL:
            await anyio.sleep(self.poll_interval_s)
            prediction = await self._get(call.client, handle, call.policy)
            new = _status(prediction)
            if new != status and call.progress is not None:
                call.progress(new)
            status = new
        return await self._result(call, prediction)

    async def cancel(self, client: httpx.AsyncClient, remote: Mapping[str, Any]) -> None:
        url = _own_url(client, remote.get("cancel"), remote.get("id"), "/cancel")
        await http.send(client, "POST", url, provider=NAME,
                        policy=http.RetryPolicy(max_elapsed_s=20.0), idempotent=True,
                        max_bytes=http.MAX_JSON_BYTES)

    # --- the predictions API ------------------------------------------------------------------

    async def _latest(self, client: httpx.AsyncClient, owner: str, name: str,
                      policy: http.RetryPolicy) -> str:
        """``OWNER/NAME:VERSION`` of the model's latest version (``models.get``); just
        ``OWNER/NAME`` when it shows none (an official model, run by name)."""
        response = await http.send(client, "GET", f"/v1/models/{owner}/{name}", provider=NAME,
                                   policy=policy, idempotent=True,
                                   max_bytes=http.MAX_JSON_BYTES)
        doc = http.expect_json(response, NAME)
        latest = doc.get("latest_version")
        found = latest.get("id") if isinstance(latest, Mapping) else None
        return f"{owner}/{name}:{found}" if isinstance(found, str) and found else \
            f"{owner}/{name}"

    async def _create(self, call: Call, ref: str) -> dict[str, Any]:
        body = {"version": ref, "input": _inputs(call.model, call.request)}
        headers = {}
        wait = self._prefer_wait(call.client)
        if wait >= 1:
            headers["Prefer"] = f"wait={wait}"
        response = await http.send(call.client, "POST", "/v1/predictions", provider=NAME,
                                   policy=call.policy, idempotent=False,
                                   max_bytes=http.MAX_JSON_BYTES, json=body, headers=headers)
        prediction = http.expect_json(response, NAME)
        _handle(prediction)  # refuses an answer without an id
        return prediction

    async def _get(self, client: httpx.AsyncClient, handle: Mapping[str, Any],
                   policy: http.RetryPolicy) -> dict[str, Any]:
        url = _own_url(client, handle.get("get"), handle.get("id"), "")
        response = await http.send(client, "GET", url, provider=NAME, policy=policy,
                                   idempotent=True, max_bytes=http.MAX_JSON_BYTES)
        return http.expect_json(response, NAME)

    def _prefer_wait(self, client: httpx.AsyncClient) -> int:
        """The sync wait, short of the client's read timeout (the answer must come first)."""
        read = client.timeout.read
        room = math.inf if read is None else read - 5
        return int(max(0, min(self.prefer_wait_s, 60, room)))

    async def _result(self, call: Call, prediction: Mapping[str, Any]) -> Result:
        status = _status(prediction)
        ident = prediction.get("id")
        if status == "failed":
            raise ProviderError(NAME, f"prediction {ident} failed: "
                                      f"{_clip(prediction.get('error')) or 'no reason given'}")
        if status == "canceled":
            raise ProviderError(NAME, f"prediction {ident} was canceled at Replicate")
        if status == "aborted":
            raise ProviderError(NAME, f"prediction {ident} was aborted: its deadline passed "
                                      "before it started", retryable=True)
        url = _output_url(prediction.get("output"))
        if url is None:
            raise ProviderError(NAME, f"prediction {ident} succeeded without an audio file "
                                      f"in its output ({_clip(prediction.get('output'))})")
        if call.download is not None:
            audio, content_type = await call.download(url)
        else:
            audio, content_type = await http.download(
                call.client, url, provider=NAME, policy=call.policy,
                max_bytes=call.max_audio_bytes, base_url=str(call.client.base_url))
        http.check_audio(audio, content_type, provider=NAME,
                         where=f"the output of prediction {ident}")
        metrics = prediction.get("metrics")
        metrics = dict(metrics) if isinstance(metrics, Mapping) else {}
        return Result(audio=audio, content_type=content_type,
                      cost=self._cost(metrics, call), info=_info(prediction, call))

    def _cost(self, metrics: Mapping[str, Any], call: Call) -> Cost:
        predict = metrics.get("predict_time")
        if not isinstance(predict, int | float) or isinstance(predict, bool) or predict < 0:
            return self.estimate(call.model, call.request)
        return Cost(usd=float(predict) * GPU_PRICE_PER_S, estimate=True,
                    basis=f"{predict:.1f} s of GPU time (the prediction's predict_time) x "
                          f"${GPU_PRICE_PER_S}/s ({GPU_NAME}, published price)")


def _parse(model: str) -> tuple[str, str, str | None]:
    found = _MODEL.match(model) if isinstance(model, str) else None
    if found is None:
        raise InvalidParams(
            f"model: name a Replicate model as replicate:OWNER/NAME or "
            f"replicate:OWNER/NAME:VERSION (the 64-character version id from the model's "
            f"page), e.g. replicate:{MUSICGEN}; got replicate:{model}", param="model")
    return found["owner"], found["name"], found["version"]


def _inputs(model: str, request: Request) -> dict[str, Any]:
    """The prediction's ``input``: the model's extra inputs, then Timbre's own fields."""
    owner, name, _ = _parse(model)
    extra = request.options.get("input") or {}
    inputs: dict[str, Any] = {}
    duration: float | int = request.duration
    if f"{owner}/{name}" == MUSICGEN:
        inputs["output_format"] = "wav"  # lossless: Timbre encodes the export itself
        duration = max(1, round(request.duration))  # its schema: integer seconds
    elif float(duration).is_integer():
        duration = int(duration)
    inputs.update(extra if isinstance(extra, Mapping) else {})
    inputs.update(prompt=request.prompt, duration=duration, seed=seed_for(request.seed))
    return inputs


def seed_for(seed: int) -> int:
    """The seed sent: Timbre's (up to 2**63 - 1) folded into 0..2**31 - 1, which a model's
    integer input takes (MusicGen's predictor seeds NumPy, which refuses 2**32 and over)."""
    return seed & 0x7FFFFFFF


def _handle(prediction: Mapping[str, Any]) -> dict[str, Any]:
    ident = prediction.get("id")
    if not isinstance(ident, str) or not ident:
        raise ProviderError(NAME, f"the prediction it answered has no id "
                                  f"({_clip(dict(prediction))})")
    urls = prediction.get("urls")
    urls = urls if isinstance(urls, Mapping) else {}
    return {"id": ident, "get": urls.get("get"), "cancel": urls.get("cancel"),
            "version": prediction.get("version")}


def _status(prediction: Mapping[str, Any]) -> str:
    status = prediction.get("status")
    if not isinstance(status, str) or not status:
        raise ProviderError(NAME, f"prediction {prediction.get('id')} has no status")
    return status


def _own_url(client: httpx.AsyncClient, url: Any, ident: Any, suffix: str) -> str:
    """A prediction's link when it is on the base URL's origin (the key goes only there);
    else the documented path for its id on the base URL."""
    if isinstance(url, str) and url:
        target = client.base_url.join(url)
        base = client.base_url
        if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
            return str(target)
    if not isinstance(ident, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", ident):
        raise ProviderError(NAME, "the recorded prediction has neither a link nor an id")
    return f"/v1/predictions/{ident}{suffix}"


def _output_url(output: Any) -> str | None:
    """The audio file in a prediction's output: a URL, or the first audio one of a list (or
    of an object's values)."""
    if isinstance(output, str):
        return output if output.startswith(("https://", "http://", "data:")) else None
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, list):
        urls = [u for u in (_output_url(o) for o in output) if u is not None]
        for url in urls:
            path = url.split("?", 1)[0].lower()
            if url.startswith("data:audio/") or path.endswith(_AUDIO_SUFFIXES):
                return url
        return urls[0] if urls else None
    return None


def _info(prediction: Mapping[str, Any], call: Call) -> dict[str, Any]:
    info: dict[str, Any] = {"id": prediction.get("id"), "status": prediction.get("status"),
                            "seed": seed_for(call.request.seed)}
    for key in ("version", "model", "metrics", "created_at", "completed_at"):
        if prediction.get(key) is not None:
            info[key] = prediction[key]
    return info


def _clip(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else ("" if value is None else repr(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


PROVIDER = ReplicateProvider()
