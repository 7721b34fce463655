"""Crash points for the crash-consistency tests, as in FoundationDB's or TiKV's fail points.

``TIMBRE_FAILPOINT=<name>`` in a daemon's environment makes :func:`hit` SIGKILL that daemon
the first time it reaches the point of that name, so a test can stop it at an exact job state
(``queued``, ``loading``, ``generating``, ``encoding``, ``take-recorded``, ``takes-written``)
and check what a restart makes of it. Unset (always, outside those tests) a hit costs one
comparison.
"""

from __future__ import annotations

import os
import signal

#: Read once: the tests set it in the spawned daemon's environment.
_ARMED = os.environ.get("TIMBRE_FAILPOINT") or None

POINTS = ("queued", "loading", "generating", "encoding", "take-recorded", "takes-written")


def hit(name: str) -> None:
    """Die here, as ``kill -9`` would, when the fail point ``name`` is armed."""
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
