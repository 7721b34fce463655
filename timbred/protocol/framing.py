"""Line framing for the socket: one JSON text per line, UTF-8, terminated by ``\\n``.

This module never touches a socket. :class:`LineDecoder` is fed whatever bytes arrive and hands
back complete lines; it enforces the maximum message size *while reading*, so a client can never
make the daemon buffer more than ``max_size`` bytes of one message.
"""

from __future__ import annotations

import re

from timbred.errors import MessageTooLarge

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class LineDecoder:
    """Splits a byte stream into newline-terminated messages of bounded size.

    ``feed()`` returns the complete messages (without the newline and an optional ``\\r``);
    blank lines are dropped, so a client may send them as keep-alives. When the unterminated
    part grows past ``max_size``, ``feed()`` still returns the messages completed before it and
    sets :attr:`overflowed`; the caller answers those, then reports the overflow and closes.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_size < 2:
            raise ValueError("max_size must be at least 2 bytes")
        self.max_size = max_size
        self.overflowed = False
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a started, unterminated message (0 when between messages)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return the messages it completes (none once overflowed)."""
        out: list[bytes] = []
        if self.overflowed:
            return out
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            piece = data[start:nl]
            start = nl + 1
            if len(self._buffer) + len(piece) > self.max_size:
                self.overflowed = True
                return out
            line = bytes(self._buffer + piece) if self._buffer else piece
            self._buffer.clear()
            line = line.removesuffix(b"\r")
            if line.strip():
                out.append(line)
        rest = data[start:]
        if len(self._buffer) + len(rest) > self.max_size:
            self.overflowed = True
            return out
        self._buffer += rest
        return out

    def error(self) -> MessageTooLarge:
        """The error to send once :attr:`overflowed` is set."""
        return MessageTooLarge(self.max_size)


#: A UTF-16 surrogate code point. JSON can spell one alone (``"\\ud800"``) and ``json.loads``
#: keeps it (a valid pair is joined into one character, so any left is alone); such a string is
#: not Unicode and cannot be written as UTF-8. File names read with ``surrogateescape`` hold
#: them too.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, i.e. is not valid Unicode."""
    return _SURROGATE.search(text) is not None


def encode(text: str) -> bytes:
    """Frame one serialised JSON text for the wire."""
    return text.encode("utf-8") + b"\n"
