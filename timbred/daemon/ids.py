"""Short, sortable, readable ids: a prefix and 9 characters of Crockford base32.

Lower-case Crockford base32 sorts in ASCII order, so fixed-width ids sort like the numbers they
encode (milliseconds, in practice: good until the year 3085), and it leaves out i, l, o and u
so an id read aloud or retyped comes back unambiguous. Jobs are ``j-…``, takes ``t-…``.
"""

from __future__ import annotations

from typing import Final

_B32: Final = "0123456789abcdefghjkmnpqrstvwxyz"
WIDTH: Final = 9  # 45 bits


def encode(prefix: str, n: int) -> str:
    """``prefix`` and ``n`` (0 <= n < 32**9) in fixed-width base32."""
    chars = []
    for _ in range(WIDTH):
        n, r = divmod(n, 32)
        chars.append(_B32[r])
    return prefix + "".join(reversed(chars))


def decode(prefix: str, value: str) -> int | None:
    """The number in an id made by :func:`encode`, or None when ``value`` is not one."""
    body = value.removeprefix(prefix)
    if len(body) != WIDTH or not value.startswith(prefix):
        return None
    n = 0
    for ch in body:
        digit = _B32.find(ch)
        if digit < 0:
            return None
        n = n * 32 + digit
    return n
