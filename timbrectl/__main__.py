"""``python -m timbrectl``."""

from timbrectl.cli import main

raise SystemExit(main())
