"""Stable Audio on this CPU, side by side with Timbre's MusicGen int8 path: FOR TIMING ONLY.

One command::

    .venv/bin/python -m bench.stable_audio [--measure-steps 2] [--durations 10 47]
        [--only sao sao-int8 sa3 musicgen] [--out PATH]

Every model is built in a fresh child process from configs with random weights (timing does
not depend on the weights' values; the audio is noise, and no such model is ever offered to
anyone):

* ``stable-audio-open-1.0``: its exact architecture, as diffusers' defaults and its published
  configs give it: the 1.06B-parameter DiT (24 layers, 24 heads of 64, 12 key/value heads,
  1024 latent frames of 64 channels), the Oobleck autoencoder (128 channels, hop 2048, 44.1
  kHz stereo), the T5-base text encoder and the seconds projection, with its cosine
  DPM-Solver scheduler, at its defaults: 100 steps, guidance 7 (two transformer rows per
  step). It always denoises its whole 47.55 s window, so 10 s and 47 s cost the same: it is
  measured once. Its 100 steps take tens of minutes here, so ``--measure-steps`` steps are
  timed and the take is PROJECTED: the time to the first step (text encoding, setup) + 100 x
  the median step + the autoencoder's decode of the whole window (timed on its own).
  ``sao-int8`` is the same with the DiT's linear layers quantized as ``models.precision =
  "int8"`` does, and the error of one transformer pass against fp32.
* ``stable-audio-3 (medium shapes)``: the DiT and the SAME autoencoder at diffusers' defaults
  for ``StableAudio3DiTModel`` and ``AutoencoderSAME`` (Stable Audio 3 Medium's, per their
  docstrings: 1536 wide, 24 layers, 256 latent channels, hop 4096), with its distilled
  defaults, 8 stochastic steps without guidance; its latent length follows the duration,
  so each duration is run, in full. Its text encoder here is a small T5Gemma with the DiT's
  768-wide conditioning (T5Gemma b-b's exact configuration is not in diffusers): one
  encoder pass per take, a small part of the time.
* ``musicgen-small int8``: :mod:`bench.musicgen_small_random` (musicgen-small's exact
  shapes) through :class:`timbred.worker.musicgen.MusicgenBackend` with ``precision="int8"``
  (guidance 3, top-k 250), run in full at each duration (past 30 s in windows).

For each it reports seconds, the real-time factor (seconds per second of audio; < 1 is faster
than real time) and the child's peak RSS (VmHWM, loading included). It writes a Markdown
fragment (``bench/RESULTS-stable-audio.md`` by default) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.precision import _status_kib, _threads, default_model_dir, machine

PROMPT = "warm rhodes piano, soft brushed drums"
CHILD_TIMEOUT_S = 3600.0
MODELS = ("sao", "sao-int8", "sa3", "musicgen")


class _Enough(Exception):
    """Raised from the step callback once the measured steps are done."""


def _stamper(stamps: list[float], stop_after: int | None) -> Any:
    def record(*_: Any) -> Any:
        stamps.append(time.perf_counter())
        if stop_after is not None and len(stamps) >= stop_after:
            raise _Enough()
        return _[-1] if len(_) == 4 else None  # callback_on_step_end returns its tensors

    return record


def child_sao(measure_steps: int, int8: bool = False) -> dict[str, Any]:
    """Stable Audio Open 1.0's architecture: ``measure_steps`` steps timed, 100 projected.

    ``int8``: the DiT's linear layers dynamically quantized first, as the backend does
    (:func:`timbred.worker.precision.quantize_linears`), and the error of one transformer
    pass against fp32 measured on the same inputs (relative L2 of the predicted noise)."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel

    from timbred.testing.checkpoint import t5_tokenizer
    from timbred.worker.diffusion import quiet

    threads = _threads()
    t0 = time.perf_counter()
    with quiet():
        torch.manual_seed(0)
        d: Any = diffusers  # untyped: its classes are called through Any
        text_encoder: Any = T5EncoderModel(T5Config(
            vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
            dropout_rate=0.0))
        pipe = d.StableAudioPipeline(
            vae=d.AutoencoderOobleck(), text_encoder=text_encoder.eval(),
            projection_model=d.StableAudioProjectionModel(
                text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512),
            tokenizer=t5_tokenizer(PROMPT.replace(",", "").split()),
            transformer=d.StableAudioDiTModel(),
            scheduler=d.CosineDPMSolverMultistepScheduler(
                sigma_min=0.3, sigma_max=500.0, sigma_data=1.0,
                sigma_schedule="exponential", solver_order=2,
                prediction_type="v_prediction"))
        pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for m in (pipe.transformer, pipe.vae, pipe.text_encoder,
                                     pipe.projection_model) for p in m.parameters())
    error = None
    if int8:
        error = _quantize_and_compare(pipe)
    stamps: list[float] = []
    t1 = time.perf_counter()
    with quiet(), torch.inference_mode():
        with contextlib.suppress(_Enough):
            pipe(PROMPT, negative_prompt="drums", audio_end_in_s=10.0, num_inference_steps=100,
                 guidance_scale=7.0, generator=torch.Generator().manual_seed(0),
                 callback=_stamper(stamps, measure_steps + 1), callback_steps=1)
        latents = torch.randn(1, 64, int(pipe.transformer.config.sample_size))
        t2 = time.perf_counter()
        audio = pipe.vae.decode(latents).sample
        decode_s = time.perf_counter() - t2
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    step_s = statistics.median(gaps)
    first_s = stamps[0] - t1 - step_s  # text encoding and setup before the first step
    gc.collect()
    return {"model": "sao-int8" if int8 else "sao", "threads": threads, "build_s": build_s,
            "params": params, "int8_rel_error": error,
            "measured_steps": len(gaps), "step_s": step_s, "first_s": max(first_s, 0.0),
            "decode_s": decode_s, "steps": 100, "window_s": audio.shape[-1] / 44100,
            "vmhwm_mib": _status_kib("VmHWM") / 1024}


def _quantize_and_compare(pipe: Any) -> float:
    """Quantize the DiT's linear layers in place, as the backend does at ``precision =
    "int8"``; return one pass's relative error."""
    import torch

    from timbred.worker.precision import quantize_linears

    dit = pipe.transformer
    config = dit.config
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, config.in_channels, config.sample_size, generator=gen)
    text = torch.randn(2, 130, config.cross_attention_dim, generator=gen)
    globals_ = torch.randn(2, 1, config.global_states_input_dim, generator=gen)
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rotary = get_1d_rotary_pos_embed(config.attention_head_dim // 2, config.sample_size + 1,
                                     use_real=True, repeat_interleave_real=False)
    t = torch.tensor([0.5])
    with torch.inference_mode():
        ref = dit(sample, t, encoder_hidden_states=text, global_hidden_states=globals_,
                  rotary_embedding=rotary, return_dict=False)[0]
        quantize_linears(dit)
        out = dit(sample, t, encoder_hidden_states=text,
                               global_hidden_states=globals_, rotary_embedding=rotary,
                               return_dict=False)[0]
    return float((out - ref).norm() / ref.norm())


def child_sa3(duration: float) -> dict[str, Any]:
    """Stable Audio 3 Medium's DiT and autoencoder shapes, 8 distilled steps, in full."""
    import diffusers
    import torch
    from diffusers.pipelines.stable_audio_3 import modeling_stable_audio_3
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    from timbred.testing.tiny_stable_audio import _gemma_tokenizer
    from timbred.worker.diffusion import quiet

    threads = _threads()
    t0 = time.perf_counter()
    with quiet():
        torch.manual_seed(0)
        tokenizer = _gemma_tokenizer()
        module: dict[str, Any] = {
            "vocab_size": len(tokenizer), "hidden_size": 768, "intermediate_size": 2048,
            "num_hidden_layers": 2, "num_attention_heads": 12, "num_key_value_heads": 12,
            "head_dim": 64, "query_pre_attn_scalar": 64}
        d: Any = diffusers  # untyped: its classes are called through Any
        embedders: Any = modeling_stable_audio_3
        text_encoder: Any = T5GemmaEncoderModel(T5GemmaConfig(
            encoder=T5GemmaModuleConfig(**module),
            decoder=T5GemmaModuleConfig(**module, is_decoder=True),
            vocab_size=len(tokenizer), is_encoder_decoder=False))
        pipe = d.StableAudio3Pipeline(
            vae=d.AutoencoderSAME(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
            duration_embedder=embedders.StableAudio3DurationEmbedder(),
            transformer=d.StableAudio3DiTModel(),
            scheduler=d.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True, shift=1.0))
        pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for m in (pipe.transformer, pipe.vae) for p in m.parameters())
    stamps: list[float] = []
    t1 = time.perf_counter()
    with quiet(), torch.inference_mode():
        audio = pipe(PROMPT, duration=duration, num_inference_steps=8,
                     generator=torch.Generator().manual_seed(0),
                     callback_on_step_end=_stamper(stamps, None)).audios
    wall = time.perf_counter() - t1
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"model": "sa3", "threads": threads, "build_s": build_s, "params_dit_vae": params,
            "duration": duration, "wall_s": wall, "step_s": statistics.median(gaps),
            "decode_s": wall - (stamps[-1] - t1), "audio_s": audio.shape[-1] / 44100,
            "vmhwm_mib": _status_kib("VmHWM") / 1024}


def child_musicgen(model: Path, duration: float) -> dict[str, Any]:
    from timbred.request import Request
    from timbred.worker.musicgen import MusicgenBackend

    threads = _threads()
    t0 = time.perf_counter()
    backend = MusicgenBackend(precision="int8")
    backend.load(str(model), device="cpu", dtype="float32")
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = backend.generate(Request(prompt=PROMPT, duration=duration, seed=0,
                                   options={"temperature": 1.0, "top_k": 250, "top_p": 0.0,
                                            "guidance": 3.0}))
    wall = time.perf_counter() - t1
    return {"model": "musicgen", "threads": threads, "load_s": load_s, "duration": duration,
            "wall_s": wall, "audio_s": out.audio.shape[-1] / out.sample_rate,
            "vmhwm_mib": _status_kib("VmHWM") / 1024}


def run_child(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.stable_audio", *argv],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def markdown(sao: dict[str, Any], sao_int8: dict[str, Any], sa3: list[dict[str, Any]],
             mg: list[dict[str, Any]], durations: Sequence[float], info: dict[str, Any],
             total_s: float) -> str:
    lines = [
        "| model (random weights, exact shapes) | take | seconds | real-time factor | "
        "peak RSS | how |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for row, label in ((sao, "fp32"), (sao_int8, "int8 DiT")):
        projected = row["first_s"] + row["steps"] * row["step_s"] + row["decode_s"]
        for d in durations:
            lines.append(
                f"| stable-audio-open-1.0 {label}, 100 steps, guidance 7 | {d:g} s | "
                f"{projected:.0f} | {projected / d:.1f} | {row['vmhwm_mib'] / 1024:.1f} GiB | "
                f"projected: {row['measured_steps']} steps timed (median "
                f"{row['step_s']:.1f} s), whole {row['window_s']:.2f} s window decoded in "
                f"{row['decode_s']:.1f} s |")
    for row in sa3:
        lines.append(
            f"| stable-audio-3 (medium shapes), 8 steps | {row['duration']:g} s | "
            f"{row['wall_s']:.1f} | {row['wall_s'] / row['duration']:.2f} | "
            f"{row['vmhwm_mib'] / 1024:.1f} GiB | measured (median step {row['step_s']:.2f} s,"
            f" decode {row['decode_s']:.1f} s) |")
    for row in mg:
        lines.append(
            f"| musicgen-small int8, guidance 3 | {row['duration']:g} s | "
            f"{row['wall_s']:.1f} | {row['wall_s'] / row['duration']:.2f} | "
            f"{row['vmhwm_mib'] / 1024:.1f} GiB | measured |")
    flags = ", ".join(info["flags"]) or "none of note"
    lines += [
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores ({flags}), "
        f"{info['ram_gib']:.0f} GiB; Python {info['python']}, torch {info['torch']}, "
        f"transformers {info['transformers']}; load average at start "
        f"{', '.join(map(str, info['loadavg']))}. Stable Audio Open's model: "
        f"{sao['params'] / 1e9:.2f}B parameters; Stable Audio 3's DiT and autoencoder: "
        f"{sa3[0]['params_dit_vae'] / 1e9:.2f}B. Whole run {total_s / 60:.1f} min.",
        f"int8 DiT (linear layers dynamically quantized): relative L2 error of one "
        f"transformer pass against fp32 {sao_int8['int8_rel_error']:.3f}; step "
        f"{sao_int8['step_s']:.2f} s against fp32's {sao['step_s']:.2f} s "
        f"({sao['step_s'] / sao_int8['step_s']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.stable_audio", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure-steps", type=int, default=2,
                   help="Stable Audio Open steps timed (its 100 are projected from them)")
    p.add_argument("--durations", type=float, nargs="+", default=[10.0, 47.0])
    p.add_argument("--only", choices=MODELS, nargs="+", default=list(MODELS))
    p.add_argument("--model", type=Path, default=None,
                   help="the random-weight MusicGen checkpoint (built there if missing)")
    p.add_argument("--out", type=Path, default=Path("bench/RESULTS-stable-audio.md"))
    p.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=10.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model: Path = args.model or default_model_dir()
    if args.child in ("sao", "sao-int8"):
        print(json.dumps(child_sao(args.measure_steps, int8=args.child == "sao-int8")))
        return 0
    if args.child == "sa3":
        print(json.dumps(child_sa3(args.duration)))
        return 0
    if args.child == "musicgen":
        print(json.dumps(child_musicgen(model, args.duration)))
        return 0
    start = time.perf_counter()
    info = machine()
    sao: dict[str, Any] = {}
    sao_int8: dict[str, Any] = {}
    sa3: list[dict[str, Any]] = []
    mg: list[dict[str, Any]] = []
    if "sao" in args.only:
        print("bench.stable_audio: stable-audio-open-1.0 ...", file=sys.stderr)
        sao = run_child(["--child", "sao", "--measure-steps", str(args.measure_steps)])
    if "sao-int8" in args.only:
        print("bench.stable_audio: stable-audio-open-1.0, int8 DiT ...", file=sys.stderr)
        sao_int8 = run_child(["--child", "sao-int8", "--measure-steps",
                              str(args.measure_steps)])
    for d in args.durations:
        if "sa3" in args.only:
            print(f"bench.stable_audio: stable-audio-3, {d:g} s ...", file=sys.stderr)
            sa3.append(run_child(["--child", "sa3", "--duration", str(d)]))
        if "musicgen" in args.only:
            from bench.musicgen_small_random import build

            build(model, size="small")
            print(f"bench.stable_audio: musicgen int8, {d:g} s ...", file=sys.stderr)
            mg.append(run_child(["--child", "musicgen", "--duration", str(d), "--model",
                                 str(model)]))
    if not (sao and sao_int8 and sa3 and mg):
        print(json.dumps({"sao": sao, "sao-int8": sao_int8, "sa3": sa3, "musicgen": mg},
                         indent=2))
        return 0
    text = markdown(sao, sao_int8, sa3, mg, args.durations, info,
                    time.perf_counter() - start)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
