"""Tags (mutagen): a take's metadata inside the audio file, written and read back.

MP3 and WAV get an ID3v2.4 tag (WAV in an ``id3 `` chunk): TIT2 (title), COMM (the prompt),
TDRC (creation time), TSSE (encoder), USLT (the lyrics sung, if any), TBPM and TKEY (the
measured tempo and key) and a ``TXXX:TIMBRE_*`` frame per field, including
``TXXX:TIMBRE_RECIPE`` with the JSON recipe; ``TIMBRE_MASTERING`` (the mastering chain's every
setting), ``TIMBRE_LOOP`` (a loop's bars and tempo), ``TIMBRE_STEM`` and ``TIMBRE_SEPARATION``
(a stem's name and how it was separated) where they apply. FLAC and Ogg Vorbis get Vorbis
comments with the same names: TITLE, DESCRIPTION and COMMENT (the prompt), DATE, ENCODER,
LYRICS, BPM, KEY and ``TIMBRE_*``.
:func:`read_tags` maps both back to one flat dictionary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import mutagen
import mutagen.flac
import mutagen.id3
import mutagen.mp3
import mutagen.oggvorbis
import mutagen.wave

from timbred import __version__
from timbred.errors import AudioInputError, InvalidParams, TakeNotFound
from timbred.request import Request
from timbred.takes.metadata import TakeMetadata, check_created_at, utc_now

__all__ = ["metadata_from_tags", "read_tags", "tag_bytes", "tag_items"]


def _fmt_number(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _param_key(name: str) -> str:
    return "TIMBRE_PARAM_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


#: The metadata's objects kept as compact JSON in a tag each: tag -> TakeMetadata field.
_JSON_TAGS: Final = {"TIMBRE_MASTERING": "mastering", "TIMBRE_LOOP": "loop",
                     "TIMBRE_SEPARATION": "separation"}

def tag_items(metadata: TakeMetadata) -> list[tuple[str, str]]:
    """The tags written for ``metadata``, by their normalised names (see :func:`read_tags`).

    Fields that are ``None`` are left out.
    """
    when = dt.datetime.fromisoformat(metadata.created_at).astimezone(dt.UTC)
    loud = metadata.loudness
    items: list[tuple[str, str | None]] = [
        ("TITLE", metadata.title),
        ("COMMENT", metadata.prompt),
        ("DATE", when.strftime("%Y-%m-%dT%H:%M:%S")),
        ("ENCODER", f"Timbre {metadata.timbre_version}"),
        ("TIMBRE_PROMPT", metadata.prompt),
        ("TIMBRE_SEED", None if metadata.seed is None else str(metadata.seed)),
        ("TIMBRE_MODEL", metadata.model),
        ("TIMBRE_REVISION", metadata.revision),
        ("TIMBRE_BACKEND", metadata.backend),
        ("TIMBRE_DEVICE", metadata.device),
        ("TIMBRE_VERSION", metadata.timbre_version),
        ("TIMBRE_CREATED_AT", metadata.created_at),
        ("TIMBRE_JOB_ID", metadata.job_id),
        ("TIMBRE_TAKE_INDEX", None if metadata.take_index is None else str(metadata.take_index)),
    ]
    hosted = metadata.recipe.get("hosted")
    if isinstance(hosted, dict):
        # Where a hosted take was made: the provider, the model as it ran there (a
        # Replicate version pinned) and this take's own prediction or request id.
        calls = hosted.get("calls") or []
        index = (metadata.take_index or 1) - 1
        call = calls[index] if 0 <= index < len(calls) and isinstance(calls[index], dict) \
            else {}
        items += [("TIMBRE_PROVIDER", hosted.get("provider")),
                  ("TIMBRE_PROVIDER_MODEL", hosted.get("pinned_model") or hosted.get("model")),
                  ("TIMBRE_PROVIDER_ID", None if call.get("id") is None else str(call["id"]))]
    lyrics = metadata.params.get("lyrics")
    if isinstance(lyrics, str) and lyrics:
        # The standard frame players show (USLT, LYRICS), not a TIMBRE_PARAM_ one too.
        items.append(("LYRICS", lyrics))
    for name, value in sorted(metadata.params.items()):
        if value is not None and name != "lyrics":
            items.append((_param_key(name), value if isinstance(value, str)
                          else json.dumps(value, sort_keys=True)))
    if loud is not None:
        items += [
            ("TIMBRE_LOUDNESS_BEFORE_LUFS", _fmt_number(loud.before_lufs)),
            ("TIMBRE_LOUDNESS_AFTER_LUFS", _fmt_number(loud.after_lufs)),
            ("TIMBRE_TRUE_PEAK_AFTER_DBTP", _fmt_number(loud.true_peak_after_dbtp)),
            ("TIMBRE_GAIN_DB", _fmt_number(loud.gain_db)),
        ]
    analysis = metadata.analysis or {}
    if analysis.get("bpm") is not None:
        # ID3's TBPM is an integer ("the number of beats per minute"); Vorbis BPM likewise,
        # as DJ software writes it. The exact tempo is in TIMBRE_BPM and the sidecar.
        items += [("BPM", str(round(analysis["bpm"]))),
                  ("TIMBRE_BPM", f"{analysis['bpm']:.1f}")]
    if analysis.get("key_short"):
        # TKEY: at most three characters, "A".."G", "b" or "#", "m" for minor ("Dbm").
        items += [("KEY", analysis["key_short"]), ("TIMBRE_KEY", analysis.get("key"))]
    if metadata.mastering is not None:
        items.append(("TIMBRE_MASTER", (metadata.mastering.get("chain") or {}).get("name")))
    for tag, field in _JSON_TAGS.items():
        value = getattr(metadata, field)
        if value is not None:
            items.append((tag, json.dumps(value, sort_keys=True, separators=(",", ":"))))
    items.append(("TIMBRE_STEM", metadata.stem))
    items.append(("TIMBRE_RECIPE", json.dumps(metadata.recipe, sort_keys=True,
                                              ensure_ascii=False, separators=(",", ":"))))
    return [(k, v) for k, v in items if v is not None]


_ID3_FRAMES: Final = {"TITLE": "TIT2", "DATE": "TDRC", "ENCODER": "TSSE", "BPM": "TBPM",
                      "KEY": "TKEY"}
# mutagen's frame classes and file types are only partly typed; use them as Any.
_ID3: Any = mutagen.id3
_OPENERS: dict[str, Any] = {"wav": mutagen.wave.WAVE, "mp3": mutagen.mp3.MP3,
                            "flac": mutagen.flac.FLAC, "ogg": mutagen.oggvorbis.OggVorbis}


#: ISO 639-2 codes (USLT's language field) of the lyrics languages the studio offers; others
#: are written as "XXX", ID3's "unknown".
_ISO_639_2: Final = {"en": "eng", "zh": "zho", "ja": "jpn", "ko": "kor", "es": "spa",
                     "fr": "fra", "de": "deu", "it": "ita", "pt": "por", "ru": "rus",
                     "ar": "ara", "hi": "hin", "nl": "nld", "sv": "swe", "pl": "pol",
                     "tr": "tur", "vi": "vie", "id": "ind", "th": "tha", "uk": "ukr"}


def _id3_frames(items: Sequence[tuple[str, str]], language: str | None = None) -> list[Any]:
    frames: list[Any] = []
    for key, value in items:
        if key == "LYRICS":
            frames.append(_ID3.USLT(encoding=3, lang=_ISO_639_2.get(language or "", "XXX"),
                                    desc="", text=value))
        elif key == "COMMENT":
            frames.append(_ID3.COMM(encoding=3, lang="eng", desc="", text=[value]))
        elif key in _ID3_FRAMES:
            frames.append(getattr(_ID3, _ID3_FRAMES[key])(encoding=3, text=[value]))
        else:
            frames.append(_ID3.TXXX(encoding=3, desc=key, text=[value]))
    return frames


def tag_bytes(data: bytes, fmt: str, metadata: TakeMetadata) -> bytes:
    """Add the tags for ``metadata`` to an encoded file held in memory."""
    items = tag_items(metadata)
    buf = io.BytesIO(data)
    audio = _OPENERS[fmt](buf)
    if audio.tags is None:
        audio.add_tags()
    if fmt in ("wav", "mp3"):
        language = metadata.params.get("language")
        for frame in _id3_frames(items, language if isinstance(language, str) else None):
            audio.tags.add(frame)
        buf.seek(0)
        audio.save(buf, v2_version=4)
    else:
        for key, value in items:
            audio.tags[key] = [value]
            if key == "COMMENT":
                audio.tags["DESCRIPTION"] = [value]
        buf.seek(0)
        audio.save(buf)
    return buf.getvalue()


def read_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tags of an audio file, normalised across containers.

    ID3 (MP3, WAV): TIT2 -> ``TITLE``, COMM (empty description) -> ``COMMENT``, TDRC ->
    ``DATE``, TSSE -> ``ENCODER``, USLT -> ``LYRICS``, ``TXXX:<desc>`` -> ``<desc>``. Vorbis
    comments (FLAC, Ogg): names upper-cased, DESCRIPTION -> ``COMMENT`` when there is no
    COMMENT. Several values are joined with a newline. TakeNotFound if the file does not
    exist, AudioInputError (``param`` ``path``) if it is not an audio file mutagen knows.
    """
    p = Path(path)
    if not p.is_file():
        raise TakeNotFound(str(p))
    try:
        audio: Any = mutagen.File(p)
    except (mutagen.MutagenError, OSError) as exc:
        raise AudioInputError(str(p), "path", str(exc)) from exc
    if audio is None:
        raise AudioInputError(str(p), "path", "not an audio file with tags mutagen knows")
    tags: Any = audio.tags
    out: dict[str, str] = {}
    if tags is None:
        return out
    if isinstance(tags, _ID3.ID3):
        names = {v: k for k, v in _ID3_FRAMES.items()}
        for frame in tags.values():
            if frame.FrameID == "USLT":  # one text, not a list of them
                out["LYRICS"] = str(frame.text)
                continue
            text = "\n".join(str(t) for t in getattr(frame, "text", []))
            if frame.FrameID == "TXXX":
                out[frame.desc] = text
            elif frame.FrameID == "COMM" and frame.desc == "":
                out["COMMENT"] = text
            elif frame.FrameID == "TDRC":
                out["DATE"] = text.replace(" ", "T")  # mutagen shows ID3 times with a space
            elif frame.FrameID in names:
                out[names[frame.FrameID]] = text
        return out
    for key, values in tags.as_dict().items():
        out[key.upper()] = "\n".join(values)
    if "COMMENT" not in out and "DESCRIPTION" in out:
        out["COMMENT"] = out["DESCRIPTION"]
    return out



def metadata_from_tags(tags: Mapping[str, str], fallback_prompt: str) -> TakeMetadata:
    """The metadata a file's own Timbre tags (:func:`read_tags`) hold, for a take without a
    sidecar; what is missing or unreadable takes its default (the prompt: ``fallback_prompt``)."""
    def integer(key: str) -> int | None:
        try:
            return int(tags[key])
        except (KeyError, ValueError):
            return None

    recipe: dict[str, Any] = {}
    try:
        loaded = json.loads(tags.get("TIMBRE_RECIPE", "{}"))
        recipe = loaded if isinstance(loaded, dict) else {}
    except json.JSONDecodeError:
        pass
    params = recipe.get("params")
    if isinstance(params, dict):
        # Tags and sidecars list the parameters flat, as the wire names them (the recipe
        # holds the structured request); a recipe that does not parse is shown as it is.
        with contextlib.suppress(InvalidParams):
            params = Request.from_recipe(params).job_params()
    def json_object(key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(tags[key])
        except (KeyError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    created = tags.get("TIMBRE_CREATED_AT")
    try:
        created = check_created_at(created) if created else utc_now()
    except InvalidParams:
        created = utc_now()
    return TakeMetadata(
        prompt=tags.get("TIMBRE_PROMPT", tags.get("COMMENT", fallback_prompt)),
        seed=integer("TIMBRE_SEED"),
        model=tags.get("TIMBRE_MODEL"),
        revision=tags.get("TIMBRE_REVISION"),
        backend=tags.get("TIMBRE_BACKEND"),
        device=tags.get("TIMBRE_DEVICE"),
        params=params if isinstance(params, dict) else {},
        timbre_version=tags.get("TIMBRE_VERSION", __version__),
        created_at=created,
        job_id=tags.get("TIMBRE_JOB_ID"),
        take_index=integer("TIMBRE_TAKE_INDEX"),
        recipe=recipe,
        mastering=json_object("TIMBRE_MASTERING"),
        loop=json_object("TIMBRE_LOOP"),
        stem=tags.get("TIMBRE_STEM"),
        separation=json_object("TIMBRE_SEPARATION"),
    )
