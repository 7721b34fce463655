"""``python -m timbrectl``."""

from timbrectl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
