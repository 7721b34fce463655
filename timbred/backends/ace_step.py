"""ACE-Step 1.5 through diffusers, as the registry sees it: torch-free.

A model is a diffusers pipeline directory whose ``model_index.json`` names
``AceStepPipeline``: a Qwen3 text encoder, a condition encoder (lyrics, timbre), a DiT and a
48 kHz stereo Oobleck autoencoder, and, for covers, the audio tokenizer pair. Its inference
lives in :mod:`timbred.worker.ace_step`.

It sings: ``lyrics`` (section tags such as ``[verse]`` on their own lines) in the language
``language`` names. Besides text to music it edits audio (``init``), each edit a new take
that records its source:

* a **cover** (``init``, ``strength``): the source's structure in the prompt's style;
* a **repaint** (``init``, ``repaint``): one span made anew, the rest kept;
* ``task = "extract"``: one track (``track``) pulled out of the source;
* ``task = "add"``: a track made to fit the source (ACE-Step's "lego"), over the whole
  take or over the ``repaint`` span;
* ``task = "complete"``: the source completed with ``track`` (or whatever fits).

The turbo checkpoints have guidance distilled in (8 steps, guidance off); the base and SFT
checkpoints take classifier-free guidance (APG) and more steps. Only the base checkpoints were
trained to extract, add and complete tracks (ACE-Step 1.5's model zoo); the others refuse
those tasks at submit.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from timbred.backends.files import diffusers_pipeline_missing, pipeline_class, read_json
from timbred.backends.spec import BackendCapabilities, BackendSpec
from timbred.errors import InvalidParams
from timbred.request import Request

__all__ = ["SPEC", "TASKS", "TRACKS", "variant"]

PIPELINE = "AceStepPipeline"

#: Timbre's ceiling on any take; ACE-Step 1.5 makes songs of 10 s to 10 minutes.
MAX_DURATION_S = 600.0

#: The tracks ACE-Step 1.5 was trained to extract and add (its ``TRACK_NAMES``).
TRACKS = ("vocals", "backing_vocals", "drums", "bass", "guitar", "keyboard", "percussion",
          "strings", "synth", "fx", "brass", "woodwinds")

#: What a request asks of the model besides text to music (a cover or a repaint is told by
#: ``init`` and ``repaint``, the fields every family shares).
TASKS = ("generate", "extract", "add", "complete")

#: Time signatures ACE-Step's metadata names (beats per bar); 0 lets the model choose.
TIME_SIGNATURES = (0, 2, 3, 4, 6)


def recognises(directory: Path) -> bool:
    return pipeline_class(directory) == PIPELINE


def variant(directory: Path) -> str:
    """``turbo``, ``sft``, ``base`` or ``""`` (not said), from the transformer's config (the
    pipeline reads the same two keys). A turbo model is guidance-distilled: 8 steps, no
    guidance."""
    config = read_json(directory / "transformer" / "config.json")
    if config.get("is_turbo"):
        return "turbo"
    version = str(config.get("model_version") or "").lower()
    return version if version in ("turbo", "sft", "base") else ""


# The registry asks these of its own family's directories only (spec_of), so none of them
# reads model_index.json again to check.


def max_duration(directory: Path) -> float | None:
    return MAX_DURATION_S


def model_features(directory: Path) -> frozenset[str]:
    features = {"seeded", "lyrics", "inpainting"}
    # A cover re-tokenizes the source; checkpoints converted without the tokenizer pair
    # cannot (the pipeline refuses mid-job, so the feature is told from the files).
    index = read_json(directory / "model_index.json")
    if all(_component(index.get(name)) for name in ("audio_tokenizer",
                                                    "audio_token_detokenizer")):
        features.add("variation")
    return frozenset(features)


def _component(entry: object) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(entry)


def model_defaults(directory: Path) -> dict[str, Any]:
    """Turbo: 8 steps, guidance off (distilled into it), shift 3. Base and SFT: guidance 7
    (APG) and 50 steps, since an undistilled flow model needs far more than 8."""
    if variant(directory) == "turbo":
        return {"steps": 8, "guidance": 1.0, "shift": 3.0}
    return {"steps": 50, "guidance": 7.0, "shift": 3.0}


def check_request(directory: Path, request: Request) -> None:
    """What only this family can refuse at submit: a task without what it works on, a
    track where none is taken, and guidance a turbo model would ignore."""
    task = request.options.get("task", "generate")
    track = request.options.get("track", "")
    kind = variant(directory)
    if task != "generate" and request.init is None:
        raise InvalidParams(f"task: {task} works on audio; give init (the take or file to "
                            f"{task} from)", param="init")
    if task in ("extract", "add") and not track:
        raise InvalidParams(f"track: {task} needs a track, one of {', '.join(TRACKS)}",
                            param="track", allowed={"enum": list(TRACKS)})
    if task == "generate" and track:
        raise InvalidParams("track: only extract, add and complete take a track; leave it "
                            "out", param="track")
    if task != "generate" and kind in ("turbo", "sft"):
        # ACE-Step 1.5 trained extract, lego and complete into its base models only; its
        # turbo and SFT models make text to music, covers and repaints.
        raise InvalidParams(
            f"task: this is an ACE-Step {kind} model, which was not trained to "
            f"{task} tracks; use a base model (acestep-v15-base or -xl-base in diffusers' "
            "format) with -m", param="task")
    if task in ("extract", "complete") and request.repaint is not None:
        raise InvalidParams(f"repaint: {task} works on the whole take; leave the span out",
                            param="repaint")
    if task != "generate" and request.strength is not None:
        raise InvalidParams(f"strength: {task} takes no strength (a cover does: leave task "
                            "out)", param="strength")
    if float(request.options.get("guidance", 1.0)) > 1 and kind == "turbo":
        raise InvalidParams(
            "guidance: this is a turbo model, its guidance distilled into it, so guidance "
            "would be ignored; leave it at 1, or use a base or SFT model for guidance",
            param="guidance", allowed={"maximum": 1})


SPEC = BackendSpec(
    name="ace-step",
    summary="ACE-Step 1.5 through diffusers: songs with sung lyrics, 48 kHz stereo, up to "
            "10 minutes, with cover, repaint, track extraction and added tracks",
    implementation="timbred.worker.ace_step:AceStepBackend",
    recognises=recognises,
    missing=diffusers_pipeline_missing,
    capabilities=BackendCapabilities(
        sample_rates=(48000,), channels=(2,), max_native_duration_s=MAX_DURATION_S,
        features=frozenset({"seeded", "lyrics", "inpainting", "variation"})),
    model_features=model_features,
    params=MappingProxyType({
        "steps": {"type": "integer", "minimum": 1, "maximum": 200, "default": 8,
                  "description": "Denoising steps (default: the model's own, 8 for turbo "
                                 "models, 50 for base and SFT)."},
        "guidance": {"type": "number", "minimum": 0, "maximum": 30, "default": 1.0,
                     "description": "Guidance scale (APG), <= 1 off (default: the model's, "
                                    "off for turbo models, 7 for base and SFT)."},
        "shift": {"type": "number", "minimum": 0.1, "maximum": 10, "default": 3.0,
                  "description": "Timestep shift: higher spends more steps on the noisy "
                                 "start (structure), lower on detail."},
        "language": {"type": "string", "pattern": "^[a-z]{2,3}$", "default": "en",
                     "description": "The lyrics' language as an ISO 639 code (en, zh, ja, "
                                    "es ...)."},
        "task": {"enum": list(TASKS), "default": "generate",
                 "description": "generate (text to music; with init a cover, with init and "
                                "repaint a repaint), extract (one track of init), add (a "
                                "track fitting init), complete (init completed)."},
        "track": {"enum": ["", *TRACKS], "default": "",
                  "description": "The track extract pulls out, add makes, complete adds."},
        "bpm": {"type": "integer", "minimum": 0, "maximum": 300, "default": 0,
                "description": "Tempo in beats per minute; 0 lets the model choose."},
        "key": {"type": "string", "maxLength": 20, "default": "",
                "pattern": "^$|^[A-G][#b]? (major|minor)$",
                "description": "Key and mode, such as \"A minor\" or \"F# major\"; empty "
                               "lets the model choose."},
        "time_signature": {"enum": list(TIME_SIGNATURES), "default": 0,
                           "description": "Beats per bar (4 for 4/4); 0 lets the model "
                                          "choose."},
    }),
    load_options=("precision",),
    max_duration=max_duration,
    model_defaults=model_defaults,
    check_request=check_request,
    edits_init=lambda options: options.get("task", "generate") == "generate",
    needs=("local_weights",),
    model_hint="a diffusers directory whose model_index.json names AceStepPipeline",
)
