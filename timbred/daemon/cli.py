"""The ``timbred`` command: parse flags, load the configuration, run the daemon in the foreground.

Exit statuses (also in README.md; the systemd unit's RestartPreventExitStatus uses 3-5):
0 stopped cleanly; 1 unexpected error; 2 bad command line; 3 another timbred is already
running; 4 bad configuration; 5 unsafe or unusable socket directory or path; 6 the database
is corrupt, foreign or from a newer Timbre.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from timbred import PROTOCOL_VERSION, __version__
from timbred import config as config_mod
from timbred.errors import AlreadyRunning, ConfigError, RuntimeDirError, StoreError
from timbred.stdio import quiet_on_broken_pipe

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RUNNING, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2, 3, 4, 5
EXIT_STORE = 6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="timbred",
        description="Timbre's per-user daemon. Runs in the foreground and logs to stderr; "
        "use the systemd user unit or launchd agent to keep it in the background.",
        epilog="Exit status: 0 clean stop, 1 unexpected error, 2 usage, 3 already running, "
        "4 bad configuration, 5 unsafe socket directory, 6 unusable database.",
    )
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration file (default: $TIMBRE_CONFIG or "
                   f"{config_mod.default_config_path()})")
    p.add_argument("--socket", metavar="PATH", help="socket path (overrides daemon.socket)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--print-config", action="store_true",
                   help="print every configuration key with its default and exit")
    p.add_argument("--check-config", action="store_true",
                   help="load and validate the configuration, print the effective values, exit")
    p.add_argument("--version", action="version",
                   version=f"timbred {__version__} (protocol {PROTOCOL_VERSION})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the daemon (or print the configuration); ``| head`` on its output ends it quietly."""
    return quiet_on_broken_pipe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_config:
        sys.stdout.write(config_mod.documented_defaults())
        return EXIT_OK
    try:
        settings = config_mod.load(args.config, daemon__socket=args.socket,
                                   daemon__log_level=args.log_level)
    except ConfigError as exc:
        print(f"timbred: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"# config file: {settings.config_path or '(none; defaults)'}")
        for key, value in settings.values.items():
            print(f"{key} = {value!r}")
        return EXIT_OK

    from timbred.daemon import app, logs  # deferred: --help and --version stay instant

    logs.setup(settings["daemon.log_level"], logs.log_file_path(settings["daemon.log_file"]))
    # The worker and anything else we spawn must not talk to systemd in our name.
    notify_env = dict(os.environ)
    os.environ.pop("NOTIFY_SOCKET", None)
    from timbred.daemon.notify import Notifier

    try:
        import anyio

        anyio.run(lambda: app.serve(settings, handle_signals=True,
                                    notifier=Notifier(notify_env)), backend="asyncio")
    except AlreadyRunning as exc:
        print(f"timbred: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    except RuntimeDirError as exc:
        print(f"timbred: unsafe or unusable socket location: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except StoreError as exc:
        print(f"timbred: cannot use the database: {exc}", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        logging.getLogger("timbred").exception("unexpected error")
        return EXIT_ERROR
    return EXIT_OK
