"""The dispatch table: every method the daemon serves, one handler module per family.

``handlers()`` is the one exhaustive table; a test checks it against ``schemas/openrpc.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from timbred.protocol.jsonrpc import Handler
from timbred.rpc import daemon, events

if TYPE_CHECKING:
    from timbred.app import RequestContext


def handlers() -> dict[str, Handler[RequestContext]]:
    """Method name → handler."""
    return {
        "daemon.ping": daemon.ping,
        "daemon.status": daemon.status,
        "daemon.shutdown": daemon.shutdown,
        "events.subscribe": events.subscribe,
        "events.unsubscribe": events.unsubscribe,
    }
