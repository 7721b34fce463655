"""``python -m timbred`` runs the daemon, exactly like the ``timbred`` command."""

from timbred.daemon.cli import main

# Guarded: the inference worker is started with multiprocessing's "spawn", which re-imports
# the parent's __main__ module in the child; unguarded, the child would start a daemon too.
if __name__ == "__main__":
    raise SystemExit(main())
