"""ACE-Step 1.5 turbo on this CPU, through diffusers' ``AceStepPipeline``: FOR TIMING ONLY.

One command::

    .venv/bin/python -m bench.ace_step [--measure-steps 2] [--durations 30 120]
        [--dtypes fp32 bf16] [--vae-tiling] [--out PATH]

Each take is built in a fresh child process from configs with random weights (timing does not
depend on the weights' values; the audio is noise, and no such model is ever offered to
anyone), in ACE-Step 1.5's exact architecture: ``acestep-v15-turbo``, the default DiT that
ACE-Step's own downloader fetches (``acestep/model_downloader.py`` in
github.com/ace-step/ACE-Step-1.5), with the VAE and text encoder shipped beside it:

* DiT, ``AceStepTransformer1DModel``: 2048 wide, 24 layers, 16 heads of 128, 8 key/value
  heads, SwiGLU 6144, patch 2, in_channels 192 (64 noisy latent + 128 context channels),
  64 acoustic channels, sliding window 128 on alternate layers (sliding, full, ...), RoPE
  theta 1e6, RMSNorm eps 1e-6, ``is_turbo`` / ``model_version="turbo"``. Every one of these
  is diffusers 0.42.1's class default; the published turbo config says the same
  (https://huggingface.co/ACE-Step/Ace-Step1.5/blob/main/config.json, whose architectures
  entry is the turbo model; vllm-project/vllm-omni's
  tests/diffusion/models/ace_step/test_ace_step_transformer.py pins these defaults against
  .../acestep-v15-turbo/config.json). :func:`build_pipeline` checks them at run time.
* Condition encoder, ``AceStepConditionEncoder``: the same 2048 / 6144 / 16 x 128 / 8 kv
  geometry, 8 lyric-encoder layers, 4 timbre-encoder layers, text_hidden_dim 1024,
  timbre_hidden_dim 64, sliding window 128: again all diffusers' defaults, and the values
  the diffusers converter (huggingface/diffusers scripts/convert_ace_step_to_diffusers.py)
  copies out of the turbo config (same pinned test; converted copies such as
  huggingface.co/Runware/acestep-v15-sft-diffusers condition_encoder/config.json agree).
* Text encoder, Qwen3-Embedding-0.6B as ``Qwen3Model`` (what the converter's ``AutoModel``
  resolves to): vocab 151669, hidden 1024, 28 layers, 16 heads, 8 key/value heads, head_dim
  128, intermediate 3072, RoPE theta 1e6, tied embeddings
  (https://huggingface.co/Qwen/Qwen3-Embedding-0.6B, config.json). Cross-check: built so,
  it has 595,776,512 parameters, the count keras-hub's qwen3_embedding_0.6b_en preset
  publishes (keras-team/keras-hub PR 2455); vocab 151936 would not give it. These are NOT
  transformers' ``Qwen3Config`` defaults, so they are spelled out below.
* VAE, ``AutoencoderOobleck``: 48 kHz stereo, downsampling [2, 4, 4, 6, 10] (hop 1920, 25
  latent frames a second), channel multiples [1, 2, 4, 8, 16], encoder 128 / decoder 128
  channels, 64 latent channels
  (https://huggingface.co/ACE-Step/Ace-Step1.5/resolve/main/vae/config.json). Of these only
  the ratios and the sampling rate differ from diffusers' defaults (Stable Audio's
  [2, 4, 4, 8, 8] at 44.1 kHz).
* The audio tokenizer / detokenizer (5 Hz codes for cover conditioning) are not used by
  text-to-music; their parameters are counted (at diffusers' defaults) but not built.

"The smallest language-model variant": ACE-Step 1.5's 5 Hz planner LMs
(acestep-5Hz-lm-0.6B / 1.7B / 4B, ACE-Step-1.5 README "Model Zoo") are not part of
diffusers' pipeline, which has no LM at all. This benchmark times the pipeline diffusers
ships, text encoder + condition encoder + DiT + VAE, and reports each one's parameters.

The take is the turbo default: 8 steps, no guidance (turbo is guidance-distilled), shift 3,
text-to-music with the no-reference timbre path (the timbre encoder reads 30 s of silence
latent). There is no download and no real tokenizer: a throwaway word-level tokenizer is
built in code, and the caption and lyrics are padded so that the pipeline's own templates
come to exactly 128 prompt tokens and 512 lyric tokens (a full song's lyrics).

Like ``bench/stable_audio.py`` the real ``__call__`` is timed, with ``callback_on_step_end``
stamping each step. With ``--measure-steps N`` < 7 only N steps are timed and the take is
PROJECTED: the time to the first step (text encoder, condition encoder, setup) + 8 x the
median step + the autoencoder's decode of the whole take, timed on its own; with 7 or more
all 8 steps run. Forward hooks time the text and condition encoders on their own.

Peak RSS: the three transformers take ~12 GiB in fp32 and an untiled Oobleck decode at 48 kHz
needs ~4 GiB more for 30 s and ~17 GiB for 120 s (seen here), more than this machine has, so
the child frees everything but the VAE before decoding, resets VmHWM
(``/proc/self/clear_refs``) and measures the decode's own working set. The reported peak is
max(VmHWM while generating, RSS with every model resident + the decode's working set): what
one process running the pipeline as diffusers ships it (no tiling) would reach.
``--vae-tiling`` decodes in diffusers' 512-frame tiles instead. bf16 is offered
(``--dtypes fp32 bf16``); without AVX-512 BF16 / AMX it is expected to be slower than fp32
on CPU.

It writes a Markdown fragment (``bench/RESULTS-ace-step.md`` by default) whose table has the
columns of ``bench/stable_audio.py``'s, and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.precision import _status_kib, _threads, machine
from bench.stable_audio import CHILD_TIMEOUT_S, PROMPT, _Enough, _stamper

STEPS = 8
SHIFT = 3.0
TEXT_TOKENS = 128
LYRIC_TOKENS = 512
DTYPES = ("fp32", "bf16")
EOT = "<|endoftext|>"
GENERATED = "bench.ace_step: generated: "

# https://huggingface.co/Qwen/Qwen3-Embedding-0.6B config.json (transformers' names).
QWEN3_EMBEDDING_0_6B: dict[str, Any] = {
    "vocab_size": 151669, "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True, "attention_bias": False}
# https://huggingface.co/ACE-Step/Ace-Step1.5/resolve/main/vae/config.json
VAE_48K: dict[str, Any] = {
    "encoder_hidden_size": 128, "downsampling_ratios": [2, 4, 4, 6, 10],
    "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 128,
    "decoder_input_channels": 64, "audio_channels": 2, "sampling_rate": 48000}
# acestep-v15-turbo's published values; diffusers' defaults, checked at build time.
TURBO_DIT: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "in_channels": 192,
    "audio_acoustic_hidden_dim": 64, "patch_size": 2, "rope_theta": 1000000.0,
    "sliding_window": 128, "rms_norm_eps": 1e-6}
TURBO_CONDITION: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 6144, "text_hidden_dim": 1024,
    "timbre_hidden_dim": 64, "num_lyric_encoder_hidden_layers": 8,
    "num_timbre_encoder_hidden_layers": 4, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "sliding_window": 128}
CAPTION_WORDS = ("bright", "analog", "synth", "pads", "deep", "bass", "female", "vocals",
                 "uplifting", "chorus", "steady", "groove", "warm", "tape", "saturation")
LYRIC_WORDS = ("we", "run", "through", "the", "city", "lights", "tonight", "and", "never",
               "look", "back", "at", "what", "we", "left", "behind")


def _check(config: Any, expected: dict[str, Any], what: str) -> None:
    wrong = {k: (config[k], v) for k, v in expected.items() if config[k] != v}
    if wrong:
        raise RuntimeError(f"{what} no longer matches ACE-Step 1.5 turbo: {wrong}")


def _materialise(module: Any) -> None:
    """Give a module built on the meta device real memory and a cheap, sane fill: uniform in
    +-1/sqrt(fan-in) for matrices and kernels (a tiled block of noise), ones for norm scales,
    zeros for biases and buffers (as diffusers initialises ``silence_latent``). Much faster
    than each layer's own initialiser over ~3B parameters, and no NaN or denormal slows a
    kernel down."""
    import torch

    module.to_empty(device="cpu")
    # One block of uniform noise, tiled: drawing ~3B numbers one by one takes half a minute.
    noise = torch.rand(1 << 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                flat = p.view(-1)
                for i in range(0, flat.numel(), noise.numel()):
                    chunk = flat[i:i + noise.numel()]
                    chunk.copy_(noise[:chunk.numel()])
                flat.mul_(1.0 / math.sqrt(max(p[0].numel(), 1)))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for b in module.buffers():
            b.zero_()


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def build_pipeline(dtype_name: str) -> tuple[Any, dict[str, int]]:
    """ACE-Step 1.5 turbo's pipeline with random weights; its tokenizer is set later
    (:func:`song_texts`). Returns it and each component's parameter count."""
    import diffusers
    import torch
    from diffusers.pipelines import ace_step
    from transformers import Qwen3Config, Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    d: Any = diffusers  # untyped: its classes are called through Any
    a: Any = ace_step
    config = Qwen3Config(**QWEN3_EMBEDDING_0_6B)
    with torch.device("meta"):
        transformer: Any = d.AceStepTransformer1DModel(is_turbo=True, model_version="turbo")
        condition: Any = a.AceStepConditionEncoder()
        text_encoder: Any = Qwen3Model(config)
        vae: Any = d.AutoencoderOobleck(**VAE_48K)
        unused = {"audio_tokenizer (not run)": _params(a.AceStepAudioTokenizer()),
                  "audio_token_detokenizer (not run)": _params(a.AceStepAudioTokenDetokenizer())}
    _check(transformer.config, TURBO_DIT, "AceStepTransformer1DModel's defaults")
    _check(condition.config, TURBO_CONDITION, "AceStepConditionEncoder's defaults")
    for module in (transformer, condition, text_encoder, vae):
        _materialise(module.to(dtype))
        module.eval()
    # Its inverse frequencies are computed at construction, never loaded: rebuild them.
    text_encoder.rotary_emb = Qwen3RotaryEmbedding(config=config)
    pipe = d.AceStepPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=None, transformer=transformer,
        condition_encoder=condition,
        # As the pipeline's docstring asks: it feeds its own shifted sigmas in [0, 1].
        scheduler=d.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    params = {"text_encoder": _params(text_encoder),
              "condition_encoder": _params(condition),
              "  lyric_encoder": _params(condition.lyric_encoder),
              "  timbre_encoder": _params(condition.timbre_encoder),
              "transformer": _params(transformer), "vae": _params(vae),
              "  vae decoder": _params(vae.decoder), **unused}
    return pipe, params


def word_tokenizer(texts: Sequence[str]) -> Any:
    """A throwaway word-level fast tokenizer knowing every word of ``texts`` (one token per
    word or run of punctuation, ``<|endoftext|>`` one special token, used for padding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t.replace(EOT, " "))})
    vocab = {"<unk>": 0, EOT: 1} | {w: i + 2 for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    fast: Any = PreTrainedTokenizerFast  # untyped
    return fast(tokenizer_object=backend, unk_token="<unk>", pad_token=EOT, eos_token=EOT)


def song_texts(pipe: Any, duration: float) -> tuple[str, str, int, int]:
    """Set the pipeline's tokenizer and return a caption and lyrics that its templates turn
    into exactly ``TEXT_TOKENS`` and ``LYRIC_TOKENS`` tokens (and those counts, as fed)."""
    def formatted(caption: str, lyrics: str) -> tuple[str, str]:
        text, lyric = pipe._format_prompt(prompt=caption, lyrics=lyrics, vocal_language="en",
                                          audio_duration=duration)
        return str(text), str(lyric)

    base = formatted(PROMPT, "")
    tokenizer = word_tokenizer([*base, " ".join(CAPTION_WORDS), " ".join(LYRIC_WORDS)])
    n_text, n_lyric = (len(tokenizer(t)["input_ids"]) for t in base)
    caption = " ".join([PROMPT, *itertools.islice(itertools.cycle(CAPTION_WORDS),
                                                  max(TEXT_TOKENS - n_text, 0))])
    words = list(itertools.islice(itertools.cycle(LYRIC_WORDS), max(LYRIC_TOKENS - n_lyric, 0)))
    lyrics = "\n".join(" ".join(words[i:i + 8]) for i in range(0, len(words), 8))
    pipe.register_modules(tokenizer=tokenizer)
    text, lyric = formatted(caption, lyrics)
    return caption, lyrics, len(tokenizer(text)["input_ids"]), len(tokenizer(lyric)["input_ids"])


def _time_calls(module: Any, into: list[float]) -> None:
    started: list[float] = []
    module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    module.register_forward_hook(lambda *_: into.append(time.perf_counter() - started.pop()))


def _reset_peak() -> bool:
    """VmHWM back to the current RSS (Linux's clear_refs "5"); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child_ace(duration: float, measure_steps: int, dtype_name: str,
              vae_tiling: bool) -> dict[str, Any]:
    import torch

    from timbred.worker.diffusion import quiet

    threads = _threads()
    t0 = time.perf_counter()
    with quiet():
        torch.manual_seed(0)
        pipe, params = build_pipeline(dtype_name)
        caption, lyrics, text_tokens, lyric_tokens = song_texts(pipe, duration)
    build_s = time.perf_counter() - t0
    text_s: list[float] = []
    condition_s: list[float] = []
    _time_calls(pipe.text_encoder, text_s)
    _time_calls(pipe.condition_encoder, condition_s)
    full = measure_steps + 1 >= STEPS
    stamps: list[float] = []
    latents: Any = None
    t1 = time.perf_counter()
    with quiet(), torch.inference_mode(), contextlib.suppress(_Enough):
        latents = pipe(
            prompt=caption, lyrics=lyrics, audio_duration=duration, vocal_language="en",
            num_inference_steps=STEPS, guidance_scale=1.0, shift=SHIFT,
            generator=torch.Generator().manual_seed(0), output_type="latent",
            callback_on_step_end=_stamper(stamps, None if full else measure_steps + 1),
        ).audios
    wall_s = time.perf_counter() - t1
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    step_s = statistics.median(gaps)
    frames = math.ceil(duration * pipe.latents_per_second)
    generated = {
        "model": "ace-step", "dtype": dtype_name, "duration": duration, "threads": threads,
        "build_s": build_s, "params": params, "text_tokens": text_tokens,
        "lyric_tokens": lyric_tokens, "latent_frames": frames,
        "dit_tokens": math.ceil(frames / 2), "full": full, "measured_steps": len(gaps),
        "step_s": step_s, "first_s": max(stamps[0] - t1 - step_s, 0.0), "wall_s": wall_s,
        "text_encoder_s": sum(text_s), "condition_encoder_s": sum(condition_s),
        "generating_peak_mib": _status_kib("VmHWM") / 1024,
        "models_rss_mib": _status_kib("VmRSS") / 1024}
    # Before the long decode, so that a take killed there still reports its other stages.
    print(f"{GENERATED}{json.dumps(generated)}", file=sys.stderr, flush=True)
    # Decode on its own, with only the VAE resident (see the module docstring).
    vae = pipe.vae
    if vae_tiling:
        vae.enable_tiling()
    dtype = pipe.transformer.dtype
    del pipe
    gc.collect()
    reset = _reset_peak()
    before_mib = _status_kib("VmRSS") / 1024
    with quiet(), torch.inference_mode():
        z = (latents.transpose(1, 2) if latents is not None
             else torch.randn(1, int(vae.config.decoder_input_channels), frames, dtype=dtype,
                              generator=torch.Generator().manual_seed(0)))
        t2 = time.perf_counter()
        audio = vae.decode(z).sample
        decode_s = time.perf_counter() - t2
    decode_ws_mib = _status_kib("VmHWM") / 1024 - before_mib if reset else None
    peak_mib = (max(generated["generating_peak_mib"],
                    generated["models_rss_mib"] + decode_ws_mib)
                if decode_ws_mib is not None else _status_kib("VmHWM") / 1024)
    return {**generated, "decode_s": decode_s, "vae_tiling": vae_tiling,
            "audio_s": audio.shape[-1] / 48000, "decode_working_set_mib": decode_ws_mib,
            "peak_mib": peak_mib}


def total_s(row: dict[str, Any]) -> float:
    """The take's seconds: measured (all 8 steps run) or projected."""
    if row["full"]:
        return float(row["wall_s"] + row["decode_s"])
    return float(row["first_s"] + STEPS * row["step_s"] + row["decode_s"])


class ChildFailed(RuntimeError):
    """A take's child died; ``generated`` holds what it measured before decoding, if it got
    that far."""

    def __init__(self, message: str, generated: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.generated = generated


def run_child(argv: list[str]) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.ace_step", *argv],
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise ChildFailed(f"timed out after {CHILD_TIMEOUT_S:.0f} s",
                          _generated(stderr)) from exc
    if proc.returncode != 0:
        raise ChildFailed(f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}",
                          _generated(proc.stderr))
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _generated(stderr: str) -> dict[str, Any] | None:
    for line in stderr.splitlines():
        if line.startswith(GENERATED):
            found: dict[str, Any] = json.loads(line[len(GENERATED):])
            return found
    return None


def markdown(rows: list[dict[str, Any]], failures: list[dict[str, Any]], info: dict[str, Any],
             elapsed_s: float) -> str:
    lines = [
        "| model (random weights, exact shapes) | take | seconds | real-time factor | "
        "peak RSS | how |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        seconds = total_s(row)
        how = ("measured" if row["full"] else
               f"projected: {row['measured_steps']} of {STEPS} steps timed")
        tiling = ", tiled" if row["vae_tiling"] else ""
        lines.append(
            f"| acestep-v15-turbo {row['dtype']}, {STEPS} steps, no guidance, shift "
            f"{SHIFT:g} | {row['duration']:g} s | {seconds:.0f} | "
            f"{seconds / row['duration']:.1f} | {row['peak_mib'] / 1024:.1f} GiB | {how} "
            f"(median step {row['step_s']:.1f} s; text encoder "
            f"{row['text_encoder_s']:.1f} s, condition encoder "
            f"{row['condition_encoder_s']:.1f} s, to first step {row['first_s']:.1f} s; "
            f"decode{tiling} {row['decode_s']:.1f} s) |")
    for f in failures:
        g = f["generated"]
        stages = ("nothing measured" if g is None else
                  f"killed while decoding; median step {g['step_s']:.1f} s, text encoder "
                  f"{g['text_encoder_s']:.1f} s, condition encoder "
                  f"{g['condition_encoder_s']:.1f} s, to first step {g['first_s']:.1f} s, "
                  f"generating peak {g['generating_peak_mib'] / 1024:.1f} GiB")
        lines.append(
            f"| acestep-v15-turbo {f['dtype']}, {STEPS} steps, no guidance, shift {SHIFT:g} | "
            f"{f['duration']:g} s | | | | failed ({f['why']}): {stages} |")
    flags = ", ".join(info["flags"]) or "none of note"
    lines += [
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores ({flags}), "
        f"{info['ram_gib']:.0f} GiB; Python {info['python']}, torch {info['torch']}, "
        f"transformers {info['transformers']}; load average at start "
        f"{', '.join(map(str, info['loadavg']))}. Whole run {elapsed_s / 60:.1f} min.",
    ]
    if rows:
        first = rows[0]
        params = first["params"]
        total = sum(v for k, v in params.items() if not k.startswith(" ") and "not run" not in k)
        listed = ", ".join(f"{k.strip()} {v / 1e6:,.1f}M" for k, v in params.items())
        lines += [
            f"Parameters: {listed}; run: {total / 1e9:.2f}B. No 5 Hz LM: diffusers' "
            "pipeline has none (ACE-Step's planner LMs, 0.6B to 4B, are not part of it).",
            f"Conditioning: {first['text_tokens']} prompt tokens through the text encoder, "
            f"{first['lyric_tokens']} lyric tokens through the lyric encoder, 30 s of "
            "silence latent through the timbre encoder; the DiT attends over "
            + ", ".join(sorted({f"{r['dit_tokens']} latent patches at {r['duration']:g} s"
                                for r in rows}))
            + " (25 frames a second, patch 2).",
            "Peak RSS: max(VmHWM while generating, RSS with every model resident + the "
            "autoencoder decode's own working set, measured with only the autoencoder "
            "resident). Per take: "
            + "; ".join(f"{r['duration']:g} s {r['dtype']}: generating "
                        f"{r['generating_peak_mib'] / 1024:.1f} GiB, models "
                        f"{r['models_rss_mib'] / 1024:.1f} GiB, decode working set "
                        + (f"{r['decode_working_set_mib'] / 1024:.1f} GiB"
                           if r["decode_working_set_mib"] is not None else "not measured")
                        for r in rows) + ".",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ace_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure-steps", type=int, default=2,
                   help=f"DiT steps timed (its {STEPS} are projected from them; "
                        f"{STEPS - 1} or more runs all {STEPS})")
    p.add_argument("--durations", type=float, nargs="+", default=[30.0, 120.0])
    p.add_argument("--dtypes", choices=DTYPES, nargs="+", default=["fp32"])
    p.add_argument("--vae-tiling", action="store_true",
                   help="decode in diffusers' 512-frame tiles (the pipeline does not tile)")
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-ace-step.md"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=30.0, help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child_ace(args.duration, args.measure_steps, args.dtype,
                                   args.vae_tiling)))
        return 0
    start = time.perf_counter()
    info = machine()
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for dtype in args.dtypes:
        for d in args.durations:
            print(f"bench.ace_step: acestep-v15-turbo {dtype}, {d:g} s ...", file=sys.stderr)
            argv_child = ["--child", "--duration", str(d), "--dtype", dtype,
                          "--measure-steps", str(args.measure_steps)]
            try:
                rows.append(run_child(argv_child + (["--vae-tiling"] if args.vae_tiling
                                                    else [])))
            except ChildFailed as exc:
                print(f"bench.ace_step: {exc}", file=sys.stderr)
                failures.append({"dtype": dtype, "duration": d,
                                 "why": str(exc).splitlines()[0].rstrip(":"),
                                 "generated": exc.generated})
            else:
                print(f"bench.ace_step: {json.dumps(rows[-1])}", file=sys.stderr)
    text = markdown(rows, failures, info, time.perf_counter() - start)
    args.out.write_text(text)
    print(text)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
