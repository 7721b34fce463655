"""ElevenLabs: Eleven Music through the compose endpoint, named ``elevenlabs:music``.

Documentation this module follows (read 2026):

* API reference, Compose music, https://elevenlabs.io/docs/api-reference/music/compose (and
  the generated client in elevenlabs/elevenlabs-python, ``src/elevenlabs/music/raw_client.py``):
  ``POST /v1/music`` with the ``output_format`` query parameter (``auto``, the default, is
  ``mp3_44100_128`` for ``music_v1`` and ``mp3_48000_192`` for ``music_v2``) and a JSON body:
  ``prompt``, ``music_length_ms`` ("between 3000ms and 600000ms", prompt only),
  ``model_id`` (``music_v1`` | ``music_v2``), ``force_instrumental`` (prompt only); ``seed``
  "cannot be used in conjunction with prompt", and even with a composition plan "exact
  reproducibility is not guaranteed". The answer is the audio file itself.
* Authentication, https://elevenlabs.io/docs/api-reference/authentication: the
  ``xi-api-key`` header.
* Errors, https://elevenlabs.io/docs/error-messages: ``{"detail": {"status",
  "message"}}`` (401 ``invalid_api_key``; ``quota_exceeded``; 400 ``bad_prompt`` with a
  ``prompt_suggestion``), 422 validation ``{"detail": [{"loc", "msg", "type"}]}``, 429
  ``too_many_concurrent_requests`` / ``system_busy``.
* Pricing, https://elevenlabs.io/pricing/api: Eleven Music at :data:`USD_PER_MINUTE` a
  minute of music, the same rate on every plan.

Only MP3 formats are offered: PCM comes without a header (nothing says its rate to a decoder)
and μ-law/A-law are telephone formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import httpx

from timbred.errors import InvalidParams
from timbred.hosted import http
from timbred.hosted.base import Call, Cost, Result
from timbred.hosted.names import PROVIDERS
from timbred.request import Request

__all__ = ["PROVIDER", "ElevenLabsProvider"]

NAME = "elevenlabs"
ENDPOINT = "/v1/music"
MODEL = "music"

#: ElevenLabs' published API price for Eleven Music, in US dollars a minute of music
#: (https://elevenlabs.io/pricing/api, as its June 2026 summary at
#: https://developer.puter.com/tutorials/elevenlabs-api-pricing/ gives it: the same rate on
#: every plan). A plan's included credits make the real bill lower; hence ``estimate``.
USD_PER_MINUTE = 0.30
MIN_LENGTH_MS = 3000
MAX_LENGTH_MS = 600000
#: The shortest read timeout a composition is given: the answer comes as the song is made,
#: and a long song takes minutes.
GENERATION_READ_S = 300.0
MODEL_IDS = ("music_v2", "music_v1")
OUTPUT_FORMATS = ("auto", "mp3_44100_128", "mp3_44100_192", "mp3_48000_128", "mp3_48000_192",
                  "mp3_48000_240", "mp3_48000_320", "mp3_44100_96", "mp3_44100_64",
                  "mp3_44100_32", "mp3_24000_48", "mp3_22050_32")


class ElevenLabsProvider:
    """ElevenLabs' music compose API (see the module docstring)."""

    name = NAME
    default_base_url = PROVIDERS[NAME].default_base_url
    env_var = PROVIDERS[NAME].env_var
    models: Mapping[str, str] = MappingProxyType({
        MODEL: "Eleven Music: songs or instrumentals from 3 s to 10 min (model_id music_v2 "
               "by default), billed per minute",
    })
    params: Mapping[str, Any] = MappingProxyType({
        "model_id": {"type": "string", "enum": list(MODEL_IDS), "default": "music_v2",
                     "description": "Eleven Music's model (music_v2, the current one, or "
                                    "music_v1)"},
        "force_instrumental": {"type": "boolean", "default": False,
                               "description": "Guarantee no vocals (otherwise the prompt "
                                              "decides)"},
        "output_format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "auto",
                          "description": "The MP3 ElevenLabs sends, codec_rate_bitrate (auto: "
                                         "its best for the model); some need a higher plan"},
    })
    # The API takes no seed with a prompt, and promises no reproducibility even with one.
    seeded = False
    sample_rates = (44100, 48000)
    channels = (2,)
    max_duration_s = MAX_LENGTH_MS / 1000

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"xi-api-key": key}

    def check_model(self, model: str) -> None:
        if model != MODEL:
            raise InvalidParams(f"model: ElevenLabs' music model is elevenlabs:{MODEL} (its "
                                f"model_id, {' or '.join(MODEL_IDS)}, is a parameter); got "
                                f"elevenlabs:{model}", param="model")

    def check_request(self, model: str, request: Request) -> None:
        """Refuse at submit a length the API refuses (3 s to 10 min)."""
        self.check_model(model)
        length = _length_ms(request)
        if not MIN_LENGTH_MS <= length <= MAX_LENGTH_MS:
            raise InvalidParams(
                f"duration: Eleven Music makes {MIN_LENGTH_MS / 1000:g} to "
                f"{MAX_LENGTH_MS / 1000:g} s; got {request.duration:g}", param="duration",
                allowed={"minimum": MIN_LENGTH_MS / 1000, "maximum": MAX_LENGTH_MS / 1000})

    def deterministic(self, model: str) -> bool:
        """No: no seed is taken with a prompt, and none promises identical audio."""
        return False

    def estimate(self, model: str, request: Request) -> Cost:
        self.check_request(model, request)
        return _cost(_length_ms(request))

    async def generate(self, call: Call) -> Result:
        self.check_request(call.model, call.request)
        options = call.request.options
        length = _length_ms(call.request)
        model_id = str(options.get("model_id") or MODEL_IDS[0])
        output_format = str(options.get("output_format") or "auto")
        body = {"prompt": call.request.prompt, "music_length_ms": length, "model_id": model_id,
                "force_instrumental": bool(options.get("force_instrumental", False))}
        response = await http.send(call.client, "POST", ENDPOINT, provider=NAME,
                                   policy=call.policy, idempotent=False,
                                   max_bytes=call.max_audio_bytes, json=body,
                                   params={"output_format": output_format},
                                   timeout=http.patient(call.client.timeout,
                                                        GENERATION_READ_S))
        audio, content_type = http.expect_audio(response, NAME)
        info: dict[str, Any] = {"model_id": model_id, "output_format": output_format,
                                "music_length_ms": length, "seed": None}
        for header, key in (("song-id", "id"), ("request-id", "request_id")):
            if response.headers.get(header):
                info[key] = response.headers[header]
        return Result(audio=audio, content_type=content_type, cost=_cost(length), info=info)

    async def cancel(self, client: httpx.AsyncClient, remote: Mapping[str, Any]) -> None:
        """Nothing to cancel: a composition is one synchronous request."""


def _length_ms(request: Request) -> int:
    return round(request.duration * 1000)


def _cost(length_ms: int) -> Cost:
    minutes = length_ms / 60000
    return Cost(usd=minutes * USD_PER_MINUTE, estimate=True,
                basis=f"{minutes:.2f} min x ${USD_PER_MINUTE:.2f}/min (published price)")


PROVIDER = ElevenLabsProvider()
