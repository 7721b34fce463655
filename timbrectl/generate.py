"""``timbrectl generate``: submit, follow progress on stderr, print the written paths.

The subscription to ``job.*`` is made *before* submitting, so no progress or state event of the
new job can be missed. Ctrl-C asks whether to cancel the job or leave it running (without a
terminal to ask on, it cancels).

``--stream`` asks the daemon for a streaming preview and writes the first take to stdout as a
16-bit WAV while it is being generated, for a player reading a pipe (``| ffplay -nodisp -``,
``| aplay``, ``| play -``); the written paths then go to stderr. The WAV header's sizes say
"unknown" (0xFFFFFFFF, as streaming WAV writers do), so players read to the end of the pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import struct
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread

from timbrectl import render
from timbrectl.client import Client, connect
from timbrectl.ranges import ranged, text_file
from timbred.hosted.keys import client_credentials

_SUBMIT = "generate.submit"
TERMINAL = {"done", "failed", "cancelled", "interrupted"}
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def model_name(name: str | None) -> str | None:
    """A model name stays a name; an existing directory becomes an absolute path."""
    if name is None:
        return None
    candidate = Path(name).expanduser()
    return str(candidate.absolute()) if candidate.is_dir() and (
        "/" in name or name.startswith(".")) else name


def submit_params(args: argparse.Namespace) -> dict[str, Any]:
    """The generate.submit params for the parsed command line (unset options left out)."""
    params: dict[str, Any] = {
        "prompt": args.prompt, "duration": args.duration, "seed": args.seed,
        "model": model_name(args.model), "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "guidance": args.guidance, "steps": args.steps,
        "negative": args.negative, "sampler": args.sampler, "variations": args.variations,
        "lyrics": args.lyrics, "language": args.language, "shift": args.shift,
        "bpm": getattr(args, "bpm", None), "key": getattr(args, "key", None),
        "loop_bars": getattr(args, "loop", None),
        "task": getattr(args, "task", None), "track": getattr(args, "track", None),
        "melody": _absolute(getattr(args, "melody", None)),
        "continuation": _absolute(getattr(args, "continue_", None)),
        "init": _absolute(getattr(args, "init", None)),
        "strength": getattr(args, "strength", None), "repaint": getattr(args, "repaint", None),
        "output": _absolute(args.output), "priority": args.priority,
        "keep_alive": args.keep_alive, "preset": args.preset, "session": args.session,
        "format": args.format, "wav_subtype": args.wav_subtype,
        "mp3_bitrate_kbps": args.bitrate, "true_peak_ceiling_dbtp": args.ceiling,
        "loudness_target_lufs": False if args.no_normalise else args.loudness,
        "master": args.master,
        "preview": True if getattr(args, "stream", False) else None,
        "idempotency_key": getattr(args, "idempotency_key", None),
        "options": dict(args.param) if getattr(args, "param", None) else None,
    }
    return {k: v for k, v in params.items() if v is not None}


def with_credentials(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus ``credentials`` when the model is hosted and this process's environment
    has its provider's key (``$REPLICATE_API_TOKEN``): the daemon uses it for this job when its
    own environment and the keyring have none, and keeps it in memory only."""
    credentials = client_credentials(params.get("model"))
    return {**params, "credentials": credentials} if credentials else params


def backend_param(text: str) -> tuple[str, Any]:
    """``--param KEY=VALUE``: VALUE is read as JSON (``100``, ``true``, ``"x"``), else kept as
    text, so ``--param negative_prompt=drums`` needs no quoting; the daemon checks it
    against the model's backend (``timbrectl backends`` lists what each takes)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


#: A WAV data or RIFF size of "unknown": the stream ends when the pipe does.
_UNKNOWN_SIZE = 0xFFFFFFFF


class PreviewStream:
    """Writes a job's preview chunks (first variation) to ``out`` as one streaming WAV.

    Chunks are placed at their ``start_sample``: a gap (a chunk that could not be read) is
    written as silence, so what follows stays in time. A reader that goes away (the player
    was closed) ends the stream, not the job.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.frames = 0  # frames written
        self.closed = False
        self._format: tuple[int, int] | None = None  # (sample rate, channels)

    def _header(self, rate: int, channels: int) -> bytes:
        block = channels * 2
        return (b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block,
                                        block, 16)
                + b"data" + struct.pack("<I", _UNKNOWN_SIZE))

    def _read(self, path: str, frames: int, channels: int) -> bytes:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != channels:
                raise wave.Error(f"{w.getsampwidth() * 8}-bit, {w.getnchannels()} channel(s)")
            data = w.readframes(frames)
        if len(data) != frames * channels * 2:
            raise EOFError(f"{len(data) // (channels * 2)} of {frames} frames")
        return data

    def write(self, chunk: dict[str, Any]) -> None:
        """Append one ``job.preview`` event's chunk."""
        if self.closed:
            return
        rate, channels = int(chunk["sample_rate"]), int(chunk["channels"])
        frames, start = int(chunk["frames"]), int(chunk["start_sample"])
        parts: list[bytes] = []
        if self._format is None:
            self._format = (rate, channels)
            parts.append(self._header(rate, channels))
        if start > self.frames:
            parts.append(bytes((start - self.frames) * channels * 2))
        try:
            parts.append(self._read(chunk["paths"][0], frames, channels))
        except (OSError, EOFError, wave.Error) as exc:
            print(f"timbrectl: preview chunk {chunk['index']} unreadable ({exc}); "
                  "streaming silence in its place", file=sys.stderr)
            parts.append(bytes(frames * channels * 2))
        try:
            self.out.write(b"".join(parts))
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the player went away
            self.closed = True
            print("timbrectl: the stream's reader closed; the take is still being made",
                  file=sys.stderr)
            return
        self.frames = max(self.frames, start) + frames


class Progress:
    """A progress line on stderr, drawn only when stderr is a terminal.

    While a question is asked on the terminal (:meth:`paused`), updates are kept, not drawn:
    a redraw would wipe the question's line and make the question look ignored.
    """

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.drawn = False
        self.held = False
        self.last = ""

    def show(self, text: str) -> None:
        self.last = text
        if self.enabled and not self.held:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
            self.drawn = True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Clear the line and draw nothing until the block ends; then redraw the latest."""
        self.done()
        self.held = True
        try:
            yield
        finally:
            self.held = False
            if self.last:
                self.show(self.last)

    def done(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.drawn = False


async def _ask_cancel(job_id: str) -> bool:
    """Ask on the terminal; without one, the answer is: cancel."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return True

    def ask() -> bool:
        sys.stderr.write(f"\nCancel job {job_id}? [Y/n] (n leaves it running) ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        return answer in ("", "y", "yes")

    return await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)


async def follow(client: Client, job_id: str, progress: Progress,
                 stream: PreviewStream | None = None, *,
                 doing: str = "generating") -> dict[str, Any]:
    """Follow ``job_id``'s events until it reaches a final state; return the job record.

    With ``stream``, the job's preview chunks are written to it as they come; ``doing``
    names what its progress bar measures.
    """
    job: dict[str, Any] = await client.call("jobs.get", {"job_id": job_id})
    while job["state"] not in TERMINAL:
        event = await client.next_event()
        if event["method"] == "events.dropped":  # we fell behind: re-sync from the source
            await client.subscribe(["job.*"], after_seq=event["last_seq"])
            job = await client.call("jobs.get", {"job_id": job_id})
            continue
        data = event["data"]
        if event["type"] == "job.progress" and data["job_id"] == job_id:
            progress.show(f"{job_id} {doing} "
                          + render.progress_bar(data["step"], data["total"], data["eta_s"]))
        elif event["type"] == "job.preview" and data["job_id"] == job_id \
                and stream is not None:
            await anyio.to_thread.run_sync(stream.write, data)
        elif event["type"] == "job.state" and data["job"]["id"] == job_id:
            job = data["job"]
            if job["state"] not in TERMINAL:
                progress.show(f"{job_id} {job['state']}…")
    return job


async def run(args: argparse.Namespace) -> int:
    """The generate command."""
    stream: PreviewStream | None = None
    if args.stream:
        if args.no_wait or args.json:
            print("timbrectl: --stream writes audio to stdout, so it cannot be combined with "
                  "--no-wait or --json", file=sys.stderr)
            return 2
        if sys.stdout.isatty():
            print("timbrectl: --stream writes WAV audio to stdout; pipe it into a player, "
                  "e.g. timbrectl generate \"...\" --stream | ffplay -nodisp -", file=sys.stderr)
            return 2
        stream = PreviewStream(sys.stdout.buffer)
    return await submit_and_follow(args, "generate.submit",
                                   with_credentials(submit_params(args)), stream=stream)


async def submit_and_follow(args: argparse.Namespace, method: str, params: dict[str, Any], *,
                            stream: PreviewStream | None = None,
                            doing: str = "generating") -> int:
    """Submit a job with ``method`` and follow it to its end, showing progress on stderr;
    Ctrl-C asks whether to cancel it. Prints the files it wrote (``--json``: the job)."""
    progress = Progress()
    async with connect(args.socket, timeout=args.timeout) as client:
        await client.subscribe(["job.*"])
        submitted = await client.call(method, params)
        job_id: str = submitted["job_id"]
        if args.no_wait:
            args.out.result(submitted["job"], job_id)
            return EXIT_OK
        progress.show(f"{job_id} queued…")
        outcome: dict[str, Any] = {}
        interrupted = False

        async def watch_sigint(scope: anyio.CancelScope) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    with progress.paused():
                        cancel = await _ask_cancel(job_id)
                    if cancel:
                        await client.call("jobs.cancel", {"job_id": job_id})
                        interrupted = True  # keep following: the job reports `cancelled`
                    else:
                        progress.done()
                        print(f"left running: {job_id} (timbrectl jobs wait {job_id})",
                              file=sys.stderr)
                        scope.cancel()
                        return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_sigint, tg.cancel_scope)
            outcome = await follow(client, job_id, progress, stream, doing=doing)
            tg.cancel_scope.cancel()
    progress.done()
    if not outcome:  # left running
        return EXIT_OK
    if args.json:
        print(json.dumps(outcome, ensure_ascii=False, indent=2))
    if outcome["state"] == "done":
        if not args.json:
            for path in outcome["outputs"]:
                print(path, file=sys.stderr if stream is not None else sys.stdout)
        return EXIT_OK
    reason = (outcome.get("error") or {}).get("message", outcome["state"])
    print(f"timbrectl: job {job_id} {outcome['state']}: {reason}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted and outcome["state"] == "cancelled" else EXIT_FAILED


def add_export_arguments(p: argparse.ArgumentParser, *, fallback: str = "wav",
                         method: str = "generate.submit") -> None:
    """The encoding options shared by ``generate`` and ``takes export``.

    ``fallback`` names the format used when neither -o nor a preset picks one.
    """
    p.add_argument("-f", "--format", choices=["wav", "flac", "mp3", "ogg"],
                   help=f"file format (default: the -o extension, the preset, or {fallback})")
    p.add_argument("--wav-subtype", choices=["PCM_16", "PCM_24", "FLOAT"])
    p.add_argument("--bitrate", type=ranged(method, "mp3_bitrate_kbps"), metavar="KBPS",
                   help="MP3 bit rate (default 320)")
    p.add_argument("--loudness", type=ranged(method, "loudness_target_lufs"), metavar="LUFS",
                   help="integrated loudness target (default -14)")
    p.add_argument("--no-normalise", action="store_true", help="keep the model's level")
    p.add_argument("--ceiling", type=ranged(method, "true_peak_ceiling_dbtp"), metavar="DBTP",
                   help="true-peak ceiling (default -1)")
    p.add_argument("--master", metavar="CHAIN",
                   help="mastering chain: streaming (-14 LUFS), club (-9 LUFS), tape, none, or "
                        "one of yours in <config dir>/mastering; its loudness target and "
                        "ceiling replace --loudness and --ceiling")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``generate`` on the CLI's subparsers."""
    g = sub.add_parser("generate", parents=[common], help="turn a prompt into a take",
                       description="Queue a generation and wait for it, showing progress on "
                       "stderr; the written file paths are printed on stdout, one per line.")
    g.add_argument("prompt")
    add_generation_arguments(g)
    g.add_argument("--melody", metavar="FILE", help="follow this audio file's melody")
    g.add_argument("--continue", dest="continue_", metavar="FILE",
                   help="continue this audio file (the take includes it)")
    g.add_argument("--init", metavar="FILE",
                   help="make a variation of this audio file or take (stable-audio 3; "
                   "ace-step covers it); its length is the default duration")
    g.add_argument("--strength", type=ranged(_SUBMIT, "strength"), metavar="X",
                   help="with --init: how far to move from it, 0 to 1 (default 0.6; 1 keeps "
                   "nothing)")
    g.set_defaults(func=run)


def add_generation_arguments(g: argparse.ArgumentParser) -> None:
    """What ``generate`` and ``takes repaint`` both take: the model, its parameters, the
    export and how to wait."""
    g.add_argument("-d", "--duration", type=ranged(_SUBMIT, "duration"), metavar="SECONDS",
                   help="length in seconds (default 10; up to 600 by windowed continuation)")
    g.add_argument("--seed", type=ranged(_SUBMIT, "seed"),
                   help="random seed (default: random, always recorded)")
    g.add_argument("-m", "--model", metavar="NAME|DIR",
                   help="catalogue name, Hugging Face repo, or local directory")
    g.add_argument("-n", "--variations", type=ranged(_SUBMIT, "variations"), metavar="N",
                   help="N takes of the prompt in one batched pass")
    g.add_argument("-o", "--output", metavar="PATH",
                   help="write here (.wav; variations add -1, -2, ...); never overwrites")
    g.add_argument("--temperature", type=ranged(_SUBMIT, "temperature"), metavar="X")
    g.add_argument("--top-k", type=ranged(_SUBMIT, "top_k"), metavar="N")
    g.add_argument("--top-p", type=ranged(_SUBMIT, "top_p"), metavar="X")
    g.add_argument("--guidance", type=ranged(_SUBMIT, "guidance"), metavar="X",
                   help="classifier-free guidance scale (musicgen, stable-audio, ace-step "
                   "base models)")
    g.add_argument("--steps", type=ranged(_SUBMIT, "steps"), metavar="N",
                   help="denoising steps (stable-audio, ace-step; default: the model's own)")
    g.add_argument("--negative", metavar="TEXT",
                   help="what the take should not have (stable-audio, with guidance > 1)")
    g.add_argument("--sampler", choices=["dpm-sde", "ping-pong", "euler"],
                   help="how the denoising steps sample (stable-audio; default: the model's "
                   "own)")
    g.add_argument("--lyrics", type=text_file(_SUBMIT, "lyrics"), metavar="FILE",
                   help="sing the words in FILE (- reads standard input; [verse], [chorus] "
                   "... on their own lines; ace-step)")
    g.add_argument("--language", metavar="CODE",
                   help="the lyrics' language, an ISO 639 code such as en, ja, es (ace-step; "
                   "default en)")
    g.add_argument("--shift", type=ranged(_SUBMIT, "shift"), metavar="X",
                   help="timestep shift (ace-step; default 3)")
    g.add_argument("--bpm", type=ranged(_SUBMIT, "bpm"), metavar="N",
                   help="the tempo to aim for (ace-step takes it; other models get it in the "
                        "prompt); the take's analysis says how close it came")
    g.add_argument("--key", metavar="KEY",
                   help='the key to aim for: "A minor", Am, "F# major" (as --bpm)')
    g.add_argument("--loop", type=ranged("takes.loop", "bars"), metavar="BARS",
                   help="also write a loop of BARS whole bars of each take, cut on a downbeat "
                        "at its measured tempo, seam crossfaded")
    g.add_argument("--param", action="append", type=backend_param, metavar="KEY=VALUE",
                   help="a parameter of the model's backend (repeatable; see "
                        "`timbrectl backends`)")
    g.add_argument("--priority", type=ranged(_SUBMIT, "priority"), metavar="N",
                   help="higher runs first (default 0)")
    g.add_argument("--keep-alive", type=ranged(_SUBMIT, "keep_alive"), metavar="SECONDS",
                   help="keep the model loaded this long after the job (0: unload, -1: forever)")
    g.add_argument("--preset", metavar="NAME", help="parameters, export settings and prompt "
                   "words from a preset (timbrectl presets list); explicit options win")
    g.add_argument("--session", metavar="NAME",
                   help="history session (and folder) of the takes (default: today's date)")
    add_export_arguments(g)
    g.add_argument("--idempotency-key", metavar="KEY",
                   help="a key of your choosing ($(uuidgen), say) that makes a retry safe: the "
                   "same command with the same key gets the first run's job, never a second")
    g.add_argument("--no-wait", action="store_true", help="print the job id and return")
    g.add_argument("--stream", action="store_true",
                   help="write the first take to stdout as WAV while it is made, for a player "
                   "reading a pipe (| ffplay -nodisp -); the paths go to stderr")

