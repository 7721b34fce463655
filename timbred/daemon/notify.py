"""sd_notify: tell systemd (Type=notify) when the daemon is ready, what it does, when it stops.

The protocol is one datagram of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` (a path, or an
abstract name starting with ``@``). It is a dozen lines, so it is written here rather than
pulled in as a dependency; without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages when ``NOTIFY_SOCKET`` is set; otherwise does nothing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (e.g. ``READY=1``); True if the datagram went out."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(payload, self.address)
        except OSError as exc:
            # Never fatal: the daemon works the same without a supervisor listening. The
            # listener may have gone on purpose (`timbrectl daemon start` only waits for
            # READY=1), so stop trying rather than warn on every later message.
            log.debug("sd_notify to %r failed (%s); no more notifications", self.address, exc)
            self.address = None
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)
