"""``python -m timbre_tui``: the same as the ``timbre`` command."""

from __future__ import annotations

import sys

from timbre_tui.app import main

sys.exit(main())
