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
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from timbrectl import render, spawn
from timbrectl.client import Client, connect, resolve_socket_path
from timbred import __version__
from timbred.errors import ConfigError, DaemonUnavailable, RuntimeDirError, TimbreError

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

    def error(self, exc: TimbreError) -> None:
        if self.as_json:
            print(json.dumps({"error": {"code": getattr(exc, "remote_code", exc.code),
                                        "message": exc.message, "data": exc.data}},
                             ensure_ascii=False))
        print(f"timbrectl: {exc.message}", file=sys.stderr)


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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--socket", metavar="PATH",
                        help="daemon socket (default: $TIMBRE_SOCKET, the config, or the "
                        "runtime directory)")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the daemon (default 30)")

    p = argparse.ArgumentParser(prog="timbrectl", description="Control timbred, Timbre's daemon.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common])
    p.add_argument("--version", action="version", version=f"timbrectl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("ping", parents=[common], help="check that the daemon answers"
                   ).set_defaults(func=cmd_ping)
    sub.add_parser("status", parents=[common], help="version, device, models, queue"
                   ).set_defaults(func=cmd_status)
    sp = sub.add_parser("shutdown", parents=[common], help="stop the daemon gracefully")
    sp.add_argument("--no-wait", action="store_true", help="do not wait for it to exit")
    sp.set_defaults(func=cmd_shutdown)

    daemon = sub.add_parser("daemon", help="start or stop the daemon").add_subparsers(
        dest="daemon_command", required=True, metavar="ACTION")
    ds = daemon.add_parser("start", parents=[common],
                           help="start timbred in the background and wait until it answers")
    ds.add_argument("--config", type=Path, metavar="FILE", help="configuration file for timbred")
    ds.add_argument("--start-timeout", type=float, default=30.0, metavar="SECONDS")
    ds.set_defaults(func=cmd_daemon_start)
    dstop = daemon.add_parser("stop", parents=[common], help="same as `timbrectl shutdown`")
    dstop.add_argument("--no-wait", action="store_true")
    dstop.set_defaults(func=cmd_shutdown)
    daemon.add_parser("status", parents=[common], help="same as `timbrectl status`"
                      ).set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = Output(args.json)
    try:
        code: int = anyio.run(args.func, args, backend="asyncio")
        return code
    except DaemonUnavailable as exc:
        args.out.error(exc)
        if not args.json:
            print("timbrectl: start it with `timbrectl daemon start` (or the timbred service)",
                  file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ConfigError, RuntimeDirError) as exc:
        args.out.error(exc)
        return EXIT_CONFIG
    except TimbreError as exc:
        args.out.error(exc)
        return EXIT_FAILED
    except TimeoutError:
        print(f"timbrectl: no answer within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
