"""Stability AI: Stable Audio through Stability's REST API, named ``stability:MODEL``.

Documentation this module follows (read 2026):

* API reference, Text-to-Audio, https://platform.stability.ai/docs/api-reference
  (``#tag/Text-to-Audio``): ``POST /v2beta/audio/stable-audio-2/text-to-audio`` as
  ``multipart/form-data`` with ``prompt`` (required), ``duration`` (1..190 s, default 190),
  ``seed`` (0..4294967294; 0 or none: random), ``steps`` (stable-audio-2.5: 4..8, default 8;
  stable-audio-2: 30..100, default 50), ``cfg_scale`` (1..25), ``model``
  (``stable-audio-2.5`` | ``stable-audio-2``) and ``output_format`` (``mp3`` | ``wav``).
  Headers: ``authorization: Bearer sk-...`` and ``accept: audio/*`` (the audio itself in the
  answer; ``application/json`` would base64 it). The answer's headers carry ``seed``,
  ``finish-reason`` (``SUCCESS`` | ``CONTENT_FILTERED``) and ``x-request-id``. Errors are
  ``{"id", "name", "errors": [...]}``: 400 ``bad_request``, 403 ``content_moderation``, 413,
  422, 429 (more than 150 requests in 10 s), 500.
* Pricing, https://platform.stability.ai/pricing: 1 credit is $0.01; a Stable Audio 2.5
  generation is 20 credits; Stable Audio 2 typically 20 to 23, growing with ``steps``
  (:func:`credits`).

The seed is documented as guiding the generation's randomness, with no promise that the same
seed and parameters give the same audio: :meth:`StabilityProvider.deterministic` says no.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import httpx

from timbred.errors import InvalidParams, ProviderError
from timbred.hosted import http
from timbred.hosted.base import Call, Cost, Result
from timbred.hosted.names import PROVIDERS
from timbred.request import Request

__all__ = ["PROVIDER", "StabilityProvider", "credits"]

NAME = "stability"
ENDPOINT = "/v2beta/audio/stable-audio-2/text-to-audio"

#: Dollars per credit (https://platform.stability.ai/pricing).
USD_PER_CREDIT = 0.01
#: Each model's ``steps`` range and default, as the API reference gives them.
STEPS: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    "stable-audio-2.5": (4, 8, 8),
    "stable-audio-2": (30, 100, 50),
})
MIN_DURATION_S = 1.0
MAX_DURATION_S = 190.0
MAX_SEED = 4294967294
MAX_PROMPT_CHARS = 10000
#: The shortest read timeout a generation is given: the answer comes only when the audio is
#: made (seconds for Stable Audio 2.5, up to a minute or so for 2.0 at 100 steps).
GENERATION_READ_S = 180.0


def credits(model: str, steps: int | None) -> float:
    """Credits one generation costs: 20 for Stable Audio 2.5 (flat, as published); for Stable
    Audio 2, whose price the documentation gives as "typically 20-23 credits" depending on its
    steps, 19 plus 0.06 a step (Timbre's reading of that range: 22 at the default 50)."""
    if model == "stable-audio-2":
        return 19.0 + 0.06 * (steps if steps is not None else STEPS[model][2])
    return 20.0


class StabilityProvider:
    """Stability's Stable Audio REST API (see the module docstring)."""

    name = NAME
    default_base_url = PROVIDERS[NAME].default_base_url
    env_var = PROVIDERS[NAME].env_var
    models: Mapping[str, str] = MappingProxyType({
        "stable-audio-2.5": "Stable Audio 2.5: up to 190 s of 44.1 kHz stereo in seconds "
                            "(4-8 steps); 20 credits a take",
        "stable-audio-2": "Stable Audio 2.0: up to 190 s of 44.1 kHz stereo (30-100 steps); "
                          "about 20-23 credits a take",
    })
    params: Mapping[str, Any] = MappingProxyType({
        "steps": {"type": "integer", "minimum": 4, "maximum": 100,
                  "description": "Sampling steps (stable-audio-2.5: 4-8, default 8; "
                                 "stable-audio-2: 30-100, default 50)"},
        "cfg_scale": {"type": "number", "minimum": 1, "maximum": 25,
                      "description": "How strictly the audio follows the prompt (the "
                                     "model's own default when unset)"},
        "output_format": {"type": "string", "enum": ["wav", "mp3"], "default": "wav",
                          "description": "The file Stability sends (wav: lossless; Timbre "
                                         "encodes the export itself)"},
    })
    seeded = False
    sample_rates = (44100,)
    channels = (2,)
    max_duration_s = MAX_DURATION_S

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def check_model(self, model: str) -> None:
        if model not in STEPS:
            raise InvalidParams(f"model: Stability's audio models are "
                                f"{', '.join('stability:' + m for m in STEPS)}; got "
                                f"stability:{model}", param="model")

    def check_request(self, model: str, request: Request) -> None:
        """Refuse at submit what the API would: a duration outside 1..190 s, steps outside
        the model's range, an over-long prompt."""
        self.check_model(model)
        if not MIN_DURATION_S <= request.duration <= MAX_DURATION_S:
            raise InvalidParams(f"duration: Stable Audio makes {MIN_DURATION_S:g} to "
                                f"{MAX_DURATION_S:g} s; got {request.duration:g}",
                                param="duration",
                                allowed={"minimum": MIN_DURATION_S, "maximum": MAX_DURATION_S})
        low, high, _ = STEPS[model]
        steps = request.options.get("steps")
        if steps is not None and not low <= steps <= high:
            raise InvalidParams(f"steps: {model} takes {low} to {high} steps; got {steps}",
                                param="steps", allowed={"minimum": low, "maximum": high})
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise InvalidParams(f"prompt: Stability takes at most {MAX_PROMPT_CHARS} "
                                "characters", param="prompt")

    def deterministic(self, model: str) -> bool:
        """No: the seed "guides the randomness"; the documentation promises no more."""
        return False

    def estimate(self, model: str, request: Request) -> Cost:
        self.check_request(model, request)
        return _cost(model, request.options.get("steps"))

    async def generate(self, call: Call) -> Result:
        self.check_request(call.model, call.request)
        options = call.request.options
        seed = seed_for(call.request.seed)
        fields: dict[str, str] = {
            "prompt": call.request.prompt,
            "duration": f"{call.request.duration:g}",
            "seed": str(seed),
            "model": call.model,
            "output_format": str(options.get("output_format") or "wav"),
        }
        for name in ("steps", "cfg_scale"):
            if options.get(name) is not None:
                fields[name] = f"{options[name]:g}"
        response = await http.send(
            call.client, "POST", ENDPOINT, provider=NAME, policy=call.policy,
            idempotent=False, max_bytes=call.max_audio_bytes,
            files={k: (None, v) for k, v in fields.items()},  # plain multipart fields
            headers={"Accept": "audio/*"},
            timeout=http.patient(call.client.timeout, GENERATION_READ_S))
        audio, content_type = http.expect_audio(response, NAME)
        finish = response.headers.get("finish-reason")
        if finish is not None and finish != "SUCCESS":
            raise ProviderError(NAME, f"the generation finished with {finish} (Stability's "
                                      "content filter); rephrase the prompt")
        return Result(audio=audio, content_type=content_type,
                      cost=_cost(call.model, options.get("steps")),
                      info=_info(response, call, seed))

    async def cancel(self, client: httpx.AsyncClient, remote: Mapping[str, Any]) -> None:
        """Nothing to cancel: a generation is one synchronous request, and nothing is
        recorded for it."""


def seed_for(seed: int) -> int:
    """The seed sent: Timbre's folded into 1..4294967294 (0 would ask for a random one)."""
    return seed % MAX_SEED + 1


def _cost(model: str, steps: int | None) -> Cost:
    spent = credits(model, steps)
    return Cost(usd=spent * USD_PER_CREDIT, estimate=True,
                basis=f"{spent:g} credits x ${USD_PER_CREDIT} (published price)")


def _info(response: httpx.Response, call: Call, seed: int) -> dict[str, Any]:
    said = response.headers.get("seed", "")
    info: dict[str, Any] = {"model": call.model, "seed": int(said) if said.isdigit() else seed}
    for header, key in (("x-request-id", "id"), ("finish-reason", "finish_reason")):
        if response.headers.get(header):
            info[key] = response.headers[header]
    return info


PROVIDER = StabilityProvider()
