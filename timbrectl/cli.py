"""The ``timbrectl`` command: a stateless client for people and shell scripts.

Human output by default, ``--json`` for scripts (a result, or ``{"error": {...}}``, on stdout).
Exit statuses, also documented in README.md and ``timbrectl --help``:

0  success
1  the daemon answered with an error (or a job failed)
2  bad command line
3  no daemon answering on the socket (not running, or stale socket)
4  timed out
5  bad local configuration
130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from timbrectl import auth, generate, render, spawn
from timbrectl.client import Client, connect, resolve_socket_path
from timbrectl.generate import Progress
from timbrectl.query import BadQuery, Query, parse_query
from timbrectl.ranges import one_of, positive_seconds, ranged
from timbred import __version__
from timbred.errors import (
    ConfigError,
    DaemonUnavailable,
    InvalidParams,
    NoAnswer,
    RuntimeDirError,
    TakeNotFound,
    TimbreError,
)
from timbred.hosted.names import PROVIDERS
from timbred.stdio import quiet_on_broken_pipe

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_CONFIG = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

EPILOG = """exit status:
  0    success
  1    the daemon answered with an error (or a job failed)
  2    bad command line
  3    no daemon answering on the socket (start one with: timbrectl daemon start)
  4    timed out
  5    bad local configuration
  130  interrupted
"""

Command = Callable[[argparse.Namespace], Awaitable[int]]


class Output:
    """Prints results for people or, with ``--json``, for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def result(self, obj: Any, human: str) -> None:
        print(json.dumps(obj, ensure_ascii=False, indent=2) if self.as_json else human)

    def error(self, exc: TimbreError, advice: str = "") -> None:
        """One line on stderr, the way forward (``advice``) first; the object with --json."""
        self.failure(exc.message, code=getattr(exc, "remote_code", exc.code), data=exc.data,
                     advice=advice)

    def failure(self, message: str, *, code: int, data: dict[str, Any],
                advice: str = "") -> None:
        if self.as_json:
            print(json.dumps({"error": {"code": code, "message": message, "data": data}},
                             ensure_ascii=False))
        line = " ".join(message.split())  # a daemon's message may span lines
        print(f"timbrectl: {advice}; {line}" if advice else f"timbrectl: {line}",
              file=sys.stderr)


async def _call(args: argparse.Namespace, method: str,
                params: dict[str, Any] | None = None) -> Any:
    async with connect(args.socket, timeout=args.timeout) as client:
        return await client.call(method, params, timeout=args.timeout)


async def cmd_ping(args: argparse.Namespace) -> int:
    start = anyio.current_time()
    result = await _call(args, "daemon.ping")
    ms = (anyio.current_time() - start) * 1000
    args.out.result({**result, "round_trip_ms": round(ms, 3)}, f"pong ({ms:.1f} ms)")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    result = await _call(args, "daemon.status")
    args.out.result(result, render.status(result))
    return EXIT_OK


async def cmd_shutdown(args: argparse.Namespace) -> int:
    async with connect(args.socket, timeout=args.timeout) as client:
        result = await client.call("daemon.shutdown", {"reason": "timbrectl shutdown"})
        if not args.no_wait:
            await _wait_closed(client, args.timeout)
    args.out.result(result, "timbred stopped" if not args.no_wait else "timbred is stopping")
    return EXIT_OK


async def _wait_closed(client: Client, timeout: float) -> None:
    # The daemon closes every connection once its in-flight work is persisted.
    with anyio.fail_after(max(timeout, 30.0)):
        await client.closed.wait()


async def cmd_daemon_start(args: argparse.Namespace) -> int:
    try:
        result = await _call(args, "daemon.status")
    except DaemonUnavailable:
        pass
    else:
        args.out.result({"started": False, "pid": result["pid"], "socket": result["socket"]},
                        f"timbred is already running (pid {result['pid']}, {result['socket']})")
        return EXIT_OK
    socket_path = resolve_socket_path(args.socket) if args.socket else None
    try:
        started = await anyio.to_thread.run_sync(
            lambda: spawn.start(socket_path=socket_path, config=args.config,
                                timeout=args.start_timeout))
    except spawn.StartFailed as exc:
        if exc.exit_status == 3:  # lost a race with another starter: fine, one is running
            return await cmd_daemon_start(args)
        print(f"timbrectl: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT if exc.exit_status is None else EXIT_FAILED
    path = socket_path or resolve_socket_path(None)
    args.out.result({"started": True, "pid": started.pid, "socket": str(path),
                     "log": str(started.log_path)},
                    f"timbred started (pid {started.pid}, {path}); log: {started.log_path}")
    return EXIT_OK


async def cmd_jobs_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["states"] = args.state
    if args.model:
        params["model"] = args.model
    if args.text:
        params["text"] = args.text
    page = await _call(args, "jobs.list", params)
    args.out.result(page, "\n".join(render.job_line(j) for j in page["jobs"]) or "no jobs")
    return EXIT_OK


async def cmd_job(args: argparse.Namespace) -> int:
    """jobs show|cancel|retry|wait: one job in, its record out."""
    method = {"show": "jobs.get", "cancel": "jobs.cancel", "retry": "jobs.retry",
              "wait": "jobs.wait"}[args.jobs_command]
    params: dict[str, Any] = {"job_id": args.job_id}
    if args.jobs_command == "wait" and args.wait_timeout is not None:
        params["timeout"] = args.wait_timeout
    async with connect(args.socket, timeout=args.timeout) as client:
        job = await client.call(method, params,
                                timeout=None if args.jobs_command == "wait" else args.timeout)
    args.out.result(job, render.job_detail(job))
    if args.jobs_command == "wait" and job["state"] != "done":
        return EXIT_FAILED if job["state"] in ("failed", "cancelled", "interrupted") \
            else EXIT_TIMEOUT
    return EXIT_OK


async def cmd_backends(args: argparse.Namespace) -> int:
    """backends: the model families, what each can do and which parameters it takes."""
    result = await _call(args, "backends.list")
    args.out.result(result, render.backend_rows(result["backends"]))
    return EXIT_OK


async def cmd_models(args: argparse.Namespace) -> int:
    """models list|ps|load|unload|rm."""
    action = args.models_command
    if action == "list":
        result = await _call(args, "models.list")
        # A hosted model whose key the daemon lacks still runs when timbrectl sends the key
        # from its own environment (generate.submit's credentials).
        sent = frozenset(p.name for p in PROVIDERS.values()
                         if os.environ.get(p.env_var, "").strip())
        hosted = render.hosted_rows(result.get("hosted") or [], sent)
        args.out.result(result, render.model_rows(result["installed"], result["catalogue"])
                        + (f"\n\n{hosted}" if hosted else ""))
    elif action == "ps":
        result = await _call(args, "models.ps")
        args.out.result(result, render.ps_rows(result["models"], time.time()))
    elif action == "load":
        params: dict[str, Any] = {"model": args.model}
        if args.keep_alive is not None:
            params["keep_alive"] = args.keep_alive
        async with connect(args.socket, timeout=args.timeout) as client:
            result = await client.call("models.load", params, timeout=None)
        args.out.result(result, f"loaded {result['model']} on {result['device']} "
                        f"({result['dtype']}, {render.size(result['memory_bytes'])})")
    elif action == "unload":
        result = await _call(args, "models.unload", {"model": args.model})
        args.out.result(result, f"unloaded {args.model}" if result["unloaded"]
                        else f"{args.model} was not loaded")
    elif action == "rm":
        if not args.yes and not await _confirm(
                f"Delete {args.model} from the model cache? [y/N] "):
            return EXIT_USAGE if not sys.stdin.isatty() else EXIT_OK
        result = await _call(args, "models.remove", {"model": args.model})
        args.out.result(result, f"removed {result['name']}, freed "
                        f"{render.size(result['bytes_freed'])}")
    return EXIT_OK


async def cmd_costs(args: argparse.Namespace) -> int:
    """costs: what hosted jobs cost since --since (default: the daemon's 30 days), per
    provider, with this month's spend against each monthly budget."""
    params: dict[str, Any] = {} if args.since is None else {"since": args.since}
    result = await _call(args, "costs.summary", params)
    args.out.result(result, render.costs_table(result))
    return EXIT_OK


async def cmd_models_pull(args: argparse.Namespace) -> int:
    progress = Progress()
    async with connect(args.socket, timeout=args.timeout) as client:
        await client.subscribe(["model.pull"])
        async with anyio.create_task_group() as tg:

            async def show() -> None:
                async for event in client.events():
                    data = event.get("data", {})
                    if data.get("phase") == "downloading":
                        progress.show(f"{data['model']} "
                                      + render.progress_bar(data["bytes_done"],
                                                            max(1, data["bytes_total"]), None)
                                      + f"  {render.size(data['bytes_done'])}")

            tg.start_soon(show)
            params = {"model": args.model}
            result = await client.call("models.pull", params, timeout=None)
            tg.cancel_scope.cancel()
    progress.done()
    args.out.result(result, f"{result['name']} {result.get('revision') or ''} "
                    f"({render.size(result['size_bytes'])}) at {result['path']}")
    return EXIT_OK


def _export_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {"format": args.format, "wav_subtype": args.wav_subtype,
              "mp3_bitrate_kbps": args.bitrate, "true_peak_ceiling_dbtp": args.ceiling,
              "loudness_target_lufs": False if args.no_normalise else args.loudness,
              "master": args.master}
    return {k: v for k, v in params.items() if v is not None}


async def cmd_history(args: argparse.Namespace) -> int:
    query: Query = args.query  # parsed in _main: a bad filter word is a usage error
    params: dict[str, Any] = {"limit": args.limit, **query.params}
    for key in ("tag", "rating", "session"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.since is not None:
        params["since"] = args.since
    if args.until is not None:
        params["until"] = args.until
    if args.deleted:
        params["include_deleted"] = True
    page = await _call(args, "history.search", params)
    page["takes"] = [t for t in page["takes"] if all(g in t["tags"] for g in query.more_tags)]
    args.out.result(page, "\n".join(render.take_line(t) for t in page["takes"])
                    or "no takes match")
    return EXIT_OK


async def cmd_takes(args: argparse.Namespace) -> int:
    """takes show|export|rate|tag|rm."""
    action = args.takes_command
    take = _take_ref(args.take)
    if action == "show":
        result = await _call(args, "takes.show", {"take": take})
        args.out.result(result, render.take_detail(result))
    elif action == "export":
        params = {"take": take, **_export_params(args)}
        if args.preset:
            params["preset"] = args.preset
        await _write_from_take(args, "takes.export", params)
    elif action == "loop":
        params = {"take": take, "bars": args.bars, **_export_params(args)}
        if args.beats_per_bar is not None:
            params["beats_per_bar"] = args.beats_per_bar
        await _write_from_take(args, "takes.loop", params)
    elif action == "stems":
        params = {"take": take, "model": generate.model_name(args.model),
                  "shifts": args.shifts, "overlap": args.overlap, "seed": args.seed,
                  "format": args.format, "priority": args.priority,
                  "keep_alive": args.keep_alive}
        return await generate.submit_and_follow(
            args, "takes.stems", {k: v for k, v in params.items() if v is not None},
            doing="separating")
    elif action == "rate":
        params = {"take": take, "value": args.value}
        if args.note is not None:
            params["note"] = args.note
        result = await _call(args, "takes.rate", params)
        args.out.result(result, render.take_detail(result))
    elif action == "tag":
        add = [t[1:] if t.startswith("+") else t for t in args.tags if not t.startswith("-")]
        remove = [t[1:] for t in args.tags if t.startswith("-")]
        result = await _call(args, "takes.tag", {"take": take, "add": add, "remove": remove})
        args.out.result(result, render.take_detail(result))
    elif action == "rm":
        shown = await _call(args, "takes.show", {"take": take})
        if not args.yes and not await _confirm(
                f"Delete {shown['path']} and its sidecar? [y/N] "):
            return EXIT_USAGE if not sys.stdin.isatty() else EXIT_OK
        result = await _call(args, "takes.rm", {"take": take})
        args.out.result(result, f"deleted {shown['path']}")
    return EXIT_OK


async def _write_from_take(args: argparse.Namespace, method: str,
                           params: dict[str, Any]) -> None:
    """takes export / loop: a new file from a take (at ``-o``, else beside it), however
    long encoding takes; prints its path."""
    if args.output:
        params["output"] = _absolute(args.output)
    async with connect(args.socket, timeout=args.timeout) as client:
        result = await client.call(method, params, timeout=None)
    args.out.result(result, result["path"])


async def cmd_edit(args: argparse.Namespace) -> int:
    """takes repaint / cover / extract / add: a generation with the take's audio (or any
    audio file's) as init; the take's model unless -m names another."""
    try:
        shown = await _call(args, "takes.show", {"take": _take_ref(args.take)})
    except TakeNotFound:
        # Any audio file will do as a source; the daemon checks it is one.
        path = await anyio.Path(args.take).expanduser()
        if args.take.startswith("t-") or not await path.is_file():
            raise
        shown = {"path": str(await path.absolute())}
    args.init = shown["path"]
    edit = args.edit
    if edit in ("repaint", "add") and args.start is not None:
        if args.end is None:
            raise InvalidParams("--end: give the span's end with its start", param="repaint")
        args.repaint = [args.start, args.end]
    elif edit == "repaint" or (edit == "add" and args.end is not None):
        raise InvalidParams("--start: give the span's start and end", param="repaint")
    if edit in ("extract", "add"):
        args.task = edit
    if args.prompt is None:  # extract: the caption the source was made from, or the track
        args.prompt = shown.get("prompt") or args.track
    if args.model is None:
        args.model = (shown.get("recipe") or {}).get("model") or shown.get("model")
    return await generate.run(args)


async def _confirm(question: str) -> bool:
    """Ask on the terminal whether to delete; without one, refuse (``--yes`` skips asking).

    Every deleting command (``takes rm``, ``models rm``) asks the same way.
    """
    if not sys.stdin.isatty():
        print("timbrectl: pass --yes to delete without a terminal to ask on; nothing deleted",
              file=sys.stderr)
        return False
    answer = await anyio.to_thread.run_sync(input, question)
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("kept", file=sys.stderr)
    return False


def _take_ref(value: str) -> str:
    """A take id stays an id; anything else is a path, made absolute."""
    return value if value.startswith("t-") else _absolute(value)


def _absolute(path: str) -> str:
    """The daemon has another working directory: send it absolute paths."""
    return str(Path(path).expanduser().absolute())


async def cmd_replay(args: argparse.Namespace) -> int:
    """Re-render a take and say whether the audio is bit-identical."""
    async with connect(args.socket, timeout=args.timeout) as client:
        await client.subscribe(["job.*"])
        submitted = await client.call("takes.replay", {"take": _take_ref(args.take)})
        progress = Progress()
        job = await generate.follow(client, submitted["job_id"], progress)
        progress.done()
    if job["state"] != "done":
        reason = (job.get("error") or {}).get("message", job["state"])
        print(f"timbrectl: replay {job['id']} {job['state']}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    replay = job["recipe"]["replay"]
    same = "yes" if replay["bit_identical"] else "no"
    # A hosted provider that promises nothing for a seed says so beside the answer.
    note = f" ({replay['note']})" if replay.get("note") else ""
    args.out.result(job, f"{job['outputs'][0]}\nbit-identical: {same}{note}")
    return EXIT_OK if same else EXIT_FAILED


async def cmd_presets(args: argparse.Namespace) -> int:
    if args.presets_command == "list":
        result = await _call(args, "presets.list")
        args.out.result(result, "\n".join(
            f"{p['name']:<14} {p['source']:<8} {p.get('problem') or p['description']}"
            for p in result["presets"]))
    else:
        result = await _call(args, "presets.show", {"name": args.name})
        args.out.result(result, render.preset_detail(result))
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace) -> int:
    """watch add|rm|list."""
    if args.watch_command == "list":
        result = await _call(args, "watch.list")
        args.out.result(result, "\n".join(
            f"{f['path']}  {f['state']}  taken {f['taken']}, rejected {f['rejected']}, "
            f"waiting {f['pending']}" + (f"  ({f['problem']})" if f["problem"] else "")
            for f in result["folders"]) or "no folders watched")
        return EXIT_OK
    method = "watch.add" if args.watch_command == "add" else "watch.rm"
    result = await _call(args, method, {"path": _absolute(args.path)})
    args.out.result(result, f"{'watching' if method == 'watch.add' else 'stopped watching'} "
                    f"{result['path']}")
    return EXIT_OK


def _when(text: str) -> float:
    """``--since``/``--until``: a bad date is a bad command line (exit 2)."""
    try:
        return render.parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def global_options(*, defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name, with one meaning.

    The top-level parser gets them with their defaults; each subcommand gets a copy whose
    defaults are ``SUPPRESS``, so a subcommand that does not repeat an option leaves the value
    given before it (or the default) alone instead of overwriting it.
    """
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output")
    common.add_argument("--socket", metavar="PATH", default=default(None),
                        help="daemon socket (default: $TIMBRE_SOCKET, the config, or the "
                        "runtime directory)")
    common.add_argument("--timeout", type=positive_seconds, default=default(30.0),
                        metavar="SECONDS", help="how long to wait for the daemon (default 30)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = global_options(defaults=False)
    p = argparse.ArgumentParser(prog="timbrectl", description="Control timbred, Timbre's daemon.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[global_options(defaults=True)])
    p.add_argument("--version", action="version", version=f"timbrectl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("ping", parents=[common], help="check that the daemon answers"
                   ).set_defaults(func=cmd_ping)
    sub.add_parser("status", parents=[common], help="version, device, models, queue"
                   ).set_defaults(func=cmd_status)
    sp = sub.add_parser("shutdown", parents=[common], help="stop the daemon gracefully")
    sp.add_argument("--no-wait", action="store_true", help="do not wait for it to exit")
    sp.set_defaults(func=cmd_shutdown)

    generate.add_parser(sub, common)

    jobs = sub.add_parser("jobs", parents=[common],
                        help="list and control jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION")
    jl = jobs.add_parser("list", parents=[common], help="jobs, newest first")
    jl.add_argument("--state", action="append", choices=[
        "queued", "loading", "generating", "encoding", "done", "failed", "cancelled",
        "interrupted"], help="only jobs in this state (repeatable)")
    jl.add_argument("--model")
    jl.add_argument("--text", help="prompt contains this (case-insensitive)")
    jl.add_argument("--limit", type=ranged("jobs.list", "limit"), default=50)
    jl.set_defaults(func=cmd_jobs_list)
    for name, text in (("show", "one job"), ("cancel", "cancel a job"),
                       ("retry", "queue a failed/cancelled/interrupted job again"),
                       ("wait", "wait for a job to finish")):
        jp = jobs.add_parser(name, parents=[common], help=text)
        jp.add_argument("job_id", metavar="JOB")
        if name == "wait":
            jp.add_argument("--wait-timeout", type=ranged("jobs.wait", "timeout"),
                            metavar="SECONDS")
        jp.set_defaults(func=cmd_job)

    sub.add_parser("backends", parents=[common],
                   help="model families and the parameters each takes").set_defaults(
        func=cmd_backends)

    mods = sub.add_parser("models", parents=[common],
                        help="install, load and inspect models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    mods.add_parser("list", parents=[common],
                    help="installed models, the catalogue and hosted models").set_defaults(
        func=cmd_models)
    mods.add_parser("ps", parents=[common], help="loaded models").set_defaults(func=cmd_models)
    mp = mods.add_parser("pull", parents=[common], help="download a model (resumable)")
    mp.add_argument("model", metavar="NAME")
    mp.set_defaults(func=cmd_models_pull)
    for name, text in (("rm", "delete a model from the cache"), ("load", "load a model now"),
                       ("unload", "unload a model")):
        mx = mods.add_parser(name, parents=[common], help=text)
        mx.add_argument("model", metavar="NAME")
        if name == "load":
            mx.add_argument("--keep-alive", type=ranged("models.load", "keep_alive"),
                            metavar="SECONDS")
        if name == "rm":
            mx.add_argument("-y", "--yes", action="store_true", help="do not ask")
        mx.set_defaults(func=cmd_models)

    auth.add_parser(sub, common)
    costs = sub.add_parser("costs", parents=[common],
                           help="what hosted jobs cost, per provider, against the budgets")
    costs.add_argument("--since", type=_when, metavar="WHEN",
                       help="YYYY-MM-DD[THH:MM] or 12h/7d/30d ago (default 30d)")
    costs.set_defaults(func=cmd_costs)

    hist = sub.add_parser("history", parents=[common], help="search past takes")
    hist.add_argument("words", nargs="*", metavar="WORD",
                      help="words the prompt contains, and filters: bpm:120, bpm:118-122 "
                           "(measured tempo), key:Am, key:F#, tag:NAME, rating:up")
    hist.add_argument("--tag")
    hist.add_argument("--rating", choices=["up", "down", "unrated"])
    hist.add_argument("--session")
    hist.add_argument("--since", type=_when, metavar="WHEN",
                      help="YYYY-MM-DD[THH:MM] or 2h/3d/1w ago")
    hist.add_argument("--until", type=_when, metavar="WHEN")
    hist.add_argument("--deleted", action="store_true", help="include deleted takes")
    hist.add_argument("--limit", type=ranged("history.search", "limit"), default=50)
    hist.set_defaults(func=cmd_history)

    tk = sub.add_parser("takes", parents=[common],
                      help="show, export, rate, tag or delete a take").add_subparsers(
        dest="takes_command", required=True, metavar="ACTION")
    for name, text in (("show", "one take"), ("export", "re-encode to another format"),
                       ("rate", "thumbs up or down, with a note"), ("tag", "add/remove tags"),
                       ("rm", "delete the take's files (asks first)"),
                       ("loop", "a loop of whole bars cut from a take, seam crossfaded"),
                       ("stems", "separate a take into drums, bass, other and vocals")):
        tp = tk.add_parser(name, parents=[common], help=text)
        tp.add_argument("take", metavar="TAKE", help="take id (t-...) or path")
        if name == "export":
            generate.add_export_arguments(tp, fallback="the take's format",
                                          method="takes.export")
            tp.add_argument("--preset", metavar="NAME", help="export settings from a preset "
                            "(timbrectl presets list) over the take's own; its parameters and "
                            "prompt words do not apply; explicit options win")
            tp.add_argument("-o", "--output", metavar="PATH")
        elif name == "rate":
            tp.add_argument("value", choices=["up", "down", "none"])
            tp.add_argument("--note")
        elif name == "tag":
            tp.add_argument("tags", nargs="*", metavar="[+|-]TAG",
                            help="+TAG (or TAG) adds a tag, -TAG removes one")
        elif name == "rm":
            tp.add_argument("-y", "--yes", action="store_true", help="do not ask")
        elif name == "loop":
            tp.add_argument("--bars", type=ranged("takes.loop", "bars"), required=True,
                            metavar="N", help="how many bars (at the take's measured tempo)")
            tp.add_argument("--beats-per-bar", type=ranged("takes.loop", "beats_per_bar"),
                            metavar="N", help="beats in a bar (default 4)")
            generate.add_export_arguments(tp, fallback="the take's format",
                                          method="takes.loop")
            tp.add_argument("-o", "--output", metavar="PATH")
        elif name == "stems":
            tp.description = (
                "Queue the separation of TAKE into stems with a Demucs model and wait for it, "
                "showing progress; each stem is written beside the take as NAME-STEM.EXT, "
                "at the take's sample rate and length, not normalised (together they add up "
                "to about the take). Get the model first: timbrectl models pull htdemucs")
            tp.add_argument("-m", "--model", metavar="MODEL",
                            help="the separator: htdemucs (default) or htdemucs_ft (four "
                                 "fine-tuned models: better, four times slower)")
            tp.add_argument("--shifts", type=ranged("takes.stems", "shifts"), metavar="N",
                            help="shifted passes averaged (default 1; more: better, slower)")
            tp.add_argument("--overlap", type=ranged("takes.stems", "overlap"), metavar="X",
                            help="overlap of consecutive segments (default 0.25)")
            tp.add_argument("--seed", type=ranged("takes.stems", "seed"), metavar="N",
                            help="decides the shifts' offsets (default 0): the same seed "
                                 "gives the same stems")
            tp.add_argument("-f", "--format", choices=["wav", "flac", "mp3", "ogg"],
                            help="the stems' format (default: the take's)")
            tp.add_argument("--priority", type=ranged("takes.stems", "priority"), default=0)
            tp.add_argument("--keep-alive", type=ranged("takes.stems", "keep_alive"),
                            metavar="S", help="keep the separator loaded this long after")
            tp.add_argument("--no-wait", action="store_true",
                            help="print the job id and return")
        tp.set_defaults(func=cmd_takes)

    edits = {
        "repaint": ("a new take with one span of a take made anew (stable-audio 3, ace-step)",
                    "Make a new take from TAKE in which only START..END seconds are generated "
                    "again from PROMPT; the rest is the take's own audio."),
        "cover": ("a new take covering a take in PROMPT's style (ace-step)",
                  "Make a new take that keeps TAKE's structure (melody, rhythm, words) in the "
                  "style PROMPT describes; --strength says how far it may move (default 0.6)."),
        "extract": ("a new take holding one track of a take (ace-step)",
                    "Make a new take holding only TRACK of TAKE (its vocals, say)."),
        "add": ("a new take with a track added to a take (ace-step)",
                "Make a new take of TAKE with TRACK added as PROMPT describes, over the "
                "whole take or START..END."),
    }
    for edit, (summary, what) in edits.items():
        ep = tk.add_parser(edit, parents=[common], help=summary,
                           description=f"{what} TAKE is a take id (t-...), a take's path or any "
                           "audio file. Uses the take's model unless -m names another.")
        ep.add_argument("take", metavar="TAKE", help="take id (t-...), or path of a take or "
                        "any audio file")
        if edit in ("extract", "add"):
            ep.add_argument("--track", required=True, metavar="TRACK",
                            type=one_of("generate.submit", "track"),
                            help=("the track to pull out" if edit == "extract"
                                  else "the track to add") + ": vocals, backing_vocals, "
                            "drums, bass, guitar, keyboard, percussion, strings, synth, fx, "
                            "brass or woodwinds")
        if edit in ("repaint", "add"):
            ep.add_argument("--start", type=float, required=edit == "repaint", metavar="S",
                            help="where the new span starts, in seconds")
            ep.add_argument("--end", type=float, required=edit == "repaint", metavar="E",
                            help="where it ends, in seconds")
        if edit == "cover":
            ep.add_argument("--strength", type=ranged("generate.submit", "strength"),
                            metavar="X", help="how far from the take, 0 to 1 (default 0.6; "
                            "1 keeps nothing)")
        ep.add_argument("prompt", nargs="?" if edit == "extract" else None,
                        help="what the span should become" if edit == "repaint"
                        else "the take's new style" if edit == "cover"
                        else "a caption (default: the take's prompt)" if edit == "extract"
                        else "what the added track should play")
        generate.add_generation_arguments(ep)
        ep.set_defaults(func=cmd_edit, edit=edit)

    rp = sub.add_parser("replay", parents=[common],
                        help="re-render a take from its recipe; says if it is bit-identical")
    rp.add_argument("take", metavar="TAKE")
    rp.set_defaults(func=cmd_replay)

    pr = sub.add_parser("presets", parents=[common],
                      help="list and show presets").add_subparsers(
        dest="presets_command", required=True, metavar="ACTION")
    pr.add_parser("list", parents=[common]).set_defaults(func=cmd_presets)
    ps = pr.add_parser("show", parents=[common])
    ps.add_argument("name")
    ps.set_defaults(func=cmd_presets)

    wt = sub.add_parser("watch", parents=[common],
                      help="folders watched for prompt files").add_subparsers(
        dest="watch_command", required=True, metavar="ACTION")
    wt.add_parser("list", parents=[common], help="watched folders").set_defaults(func=cmd_watch)
    for name, text in (("add", "watch a folder"), ("rm", "stop watching a folder")):
        wp = wt.add_parser(name, parents=[common], help=text)
        wp.add_argument("path", metavar="FOLDER")
        wp.set_defaults(func=cmd_watch)

    daemon = sub.add_parser("daemon", parents=[common],
                          help="start or stop the daemon").add_subparsers(
        dest="daemon_command", required=True, metavar="ACTION")
    ds = daemon.add_parser("start", parents=[common],
                           help="start timbred in the background and wait until it answers")
    ds.add_argument("--config", type=Path, metavar="FILE", help="configuration file for timbred")
    ds.add_argument("--start-timeout", type=positive_seconds, default=30.0, metavar="SECONDS")
    ds.set_defaults(func=cmd_daemon_start)
    dstop = daemon.add_parser("stop", parents=[common], help="same as `timbrectl shutdown`")
    dstop.add_argument("--no-wait", action="store_true")
    dstop.set_defaults(func=cmd_shutdown)
    daemon.add_parser("status", parents=[common], help="same as `timbrectl status`"
                      ).set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader of stdout that goes away (``| head``) ends it quietly."""
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_command", None) == "tag":
        # `takes tag TAKE +pads -draft`: argparse takes "-draft" for an unknown option, so
        # the leftovers are the tags it did not claim (a "--long" one is still a mistake).
        args.tags = [*args.tags, *extra]
        extra = [t for t in extra if t.startswith("--")]
        if not args.tags:
            parser.error("takes tag: name at least one tag: +TAG adds, -TAG removes")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is cmd_history:
        try:
            args.query = parse_query(args.words)
        except BadQuery as exc:
            parser.error(f"history: {exc}")
    args.out = Output(args.json)
    try:
        code: int = anyio.run(args.func, args, backend="asyncio")
        return code
    except BaseException as exc:  # every outcome becomes one line and an exit status
        return _failure(args, _single(exc))


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) task-group wrappers, so it is reported as itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _failure(args: argparse.Namespace, exc: BaseException) -> int:
    """Report ``exc`` as one ``timbrectl: ...`` line (and the error object with --json)."""
    if isinstance(exc, DaemonUnavailable):
        args.out.error(exc, advice="start timbred with `timbrectl daemon start` "
                       "(or its service)")
        return EXIT_UNAVAILABLE
    if isinstance(exc, ConfigError | RuntimeDirError):
        args.out.error(exc)
        return EXIT_CONFIG
    if isinstance(exc, TimbreError):
        args.out.error(exc)
        return EXIT_FAILED
    if isinstance(exc, TimeoutError):
        args.out.error(NoAnswer(args.timeout), advice="raise --timeout, or see the daemon's log")
        return EXIT_TIMEOUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError | SystemExit):
        raise exc
    if isinstance(exc, BaseExceptionGroup):  # several at once: the first says enough
        return _failure(args, _single(exc.exceptions[0]))
    if isinstance(exc, Exception):  # a bug of ours: still one line, never a traceback
        args.out.failure(f"unexpected error: {type(exc).__name__}: {exc}", code=-32603,
                         data={"kind": "internal_error"}, advice="please report this")
        return EXIT_FAILED
    raise exc
