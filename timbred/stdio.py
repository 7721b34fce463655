"""Standard output as Unix tools treat it: a reader that goes away ends the program quietly.

``timbrectl jobs list | head -1`` closes the pipe after one line; the next write raises
``BrokenPipeError`` (Python ignores SIGPIPE). Every entry point runs its ``main`` through
:func:`quiet_on_broken_pipe`, which does what the Python documentation recommends ("Note on
SIGPIPE" in the ``signal`` module): point stdout at ``/dev/null`` so the interpreter's final
flush cannot raise again, and exit 1 without a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: The exit status after the reader went away (the Python docs' choice; shells ignore it
#: in a pipeline unless ``pipefail`` is set).
EXIT_BROKEN_PIPE = 1


def quiet_on_broken_pipe(main: Callable[[], int]) -> int:
    """Run ``main`` and flush stdout; a closed pipe on stdout ends it quietly."""
    try:
        code = main()
        sys.stdout.flush()  # inside the try: buffered output is written (and may fail) here
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except BaseExceptionGroup as group:  # raised from inside a task group
        if group.subgroup(BrokenPipeError) is None or group.split(BrokenPipeError)[1]:
            raise
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (replaced in tests): nothing to flush
        pass
