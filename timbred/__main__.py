"""``python -m timbred`` runs the daemon, exactly like the ``timbred`` command."""

from timbred.cli import main

raise SystemExit(main())
