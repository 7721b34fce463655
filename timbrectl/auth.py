"""``timbrectl auth``: the hosted providers' API keys in the OS keyring, without a daemon.

``auth set PROVIDER`` reads a key from a hidden prompt when stdin is a terminal, else one line
of stdin (``--stdin`` reads stdin even from a terminal, with echo off), and stores it with
:mod:`keyring` (service ``timbre``, the provider's name as the user), where timbred finds it.
``auth list`` says where each provider's key is found: its environment variable (which wins),
the keyring, or nowhere. ``auth rm PROVIDER`` deletes the stored key.

A key is never printed, logged or written anywhere but into the keyring; nothing about it
(not its length, not its first characters) appears in the output.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import anyio.to_thread

from timbrectl import render
from timbred.hosted import keys
from timbred.hosted.names import PROVIDERS

EXIT_OK = 0

#: How much of stdin one key may take before it is refused as too long (see keys.check_key).
_READ_LIMIT = 64 * 1024


@contextlib.contextmanager
def _echo_off(stream: TextIO) -> Iterator[None]:
    """Turn the terminal's echo off while reading ``stream`` (a terminal), as getpass does."""
    import termios

    fd = stream.fileno()
    old = termios.tcgetattr(fd)
    new = [*old]
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)
        print(file=sys.stderr)  # the Enter that was not echoed


def read_key(provider: str, *, force_stdin: bool) -> str:
    """The key, from a hidden prompt on the terminal or from one line of stdin."""
    stdin = sys.stdin
    if stdin is None:
        return ""
    tty = stdin.isatty()
    title = PROVIDERS[provider].title
    try:
        if tty and not force_stdin:
            return getpass.getpass(f"{title} API key (input hidden): ")
        if tty:
            with _echo_off(stdin):  # off before the prompt: nothing typed after it shows
                print(f"{title} API key (input hidden):", end=" ", file=sys.stderr,
                      flush=True)
                return stdin.readline(_READ_LIMIT).rstrip("\r\n")
        return stdin.readline(_READ_LIMIT).rstrip("\r\n")
    except EOFError:
        return ""


def _env_var_set(provider: str) -> bool:
    return bool(os.environ.get(PROVIDERS[provider].env_var, "").strip())


async def cmd_auth(args: argparse.Namespace) -> int:
    """auth set|list|rm: keys in the OS keyring; the daemon is not involved."""
    action = args.auth_command
    if action == "list":
        rows = await anyio.to_thread.run_sync(keys.sources)
        backend = await anyio.to_thread.run_sync(keys.backend_name)
        available = await anyio.to_thread.run_sync(keys.keyring_available)
        result: dict[str, Any] = {"providers": rows,
                                  "keyring": {"backend": backend, "available": available}}
        args.out.result(result, render.auth_rows(rows, backend, available))
        return EXIT_OK
    provider: str = args.provider
    env_var = PROVIDERS[provider].env_var
    if action == "set":
        key = keys.check_key(await anyio.to_thread.run_sync(
            lambda: read_key(provider, force_stdin=args.stdin)))
        backend = await anyio.to_thread.run_sync(keys.store, provider, key)
        args.out.result({"provider": provider, "stored": "keyring", "backend": backend},
                        f"stored the {provider} key in the OS keyring ({backend})")
        if _env_var_set(provider):
            print(f"timbrectl: note: ${env_var} is set here, and wins over the keyring",
                  file=sys.stderr)
        return EXIT_OK
    removed = await anyio.to_thread.run_sync(keys.remove, provider)
    args.out.result({"provider": provider, "removed": removed},
                    f"removed the {provider} key from the OS keyring" if removed
                    else f"no {provider} key in the OS keyring; nothing removed")
    if _env_var_set(provider):
        print(f"timbrectl: note: ${env_var} is still set here (unset it too)",
              file=sys.stderr)
    return EXIT_OK


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``auth`` on the CLI's subparsers."""
    names = list(PROVIDERS)
    env_vars = ", ".join(f"${p.env_var}" for p in PROVIDERS.values())
    auth = sub.add_parser(
        "auth", parents=[common], help="API keys of hosted providers (in the OS keyring)",
        description="Store, list and remove the API keys of hosted providers "
        f"({', '.join(names)}) in the OS keyring, where timbred finds them. The environment "
        f"variables ({env_vars}) win over the keyring. No daemon is needed.",
    ).add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    st = auth.add_parser("set", parents=[common], help="store a provider's key",
                         description="Read the key from a hidden prompt (or, when stdin is "
                         "not a terminal, one line of stdin) and store it in the OS keyring. "
                         "It is never shown.")
    st.add_argument("provider", metavar="PROVIDER", choices=names,
                    help=" | ".join(names))
    st.add_argument("--stdin", action="store_true",
                    help="read the key from stdin even when it is a terminal (echo off)")
    st.set_defaults(func=cmd_auth)
    auth.add_parser("list", parents=[common],
                    help="where each provider's key is found: env, keyring or none"
                    ).set_defaults(func=cmd_auth)
    rm = auth.add_parser("rm", parents=[common], help="delete a provider's key from the "
                         "keyring")
    rm.add_argument("provider", metavar="PROVIDER", choices=names, help=" | ".join(names))
    rm.set_defaults(func=cmd_auth)
