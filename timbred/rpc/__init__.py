"""The dispatch table: every method the daemon serves, one handler module per family.

``handlers()`` is the one exhaustive table; a test checks it against ``schemas/openrpc.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from timbred.protocol.jsonrpc import Handler
from timbred.rpc import (
    backends,
    daemon,
    events,
    generate,
    hosted,
    jobs,
    models,
    presets,
    takes,
    watch,
)

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


def handlers() -> dict[str, Handler[RequestContext]]:
    """Method name → handler."""
    return {
        "daemon.ping": daemon.ping,
        "daemon.status": daemon.status,
        "daemon.shutdown": daemon.shutdown,
        "events.subscribe": events.subscribe,
        "events.unsubscribe": events.unsubscribe,
        "generate.submit": generate.submit,
        "jobs.get": jobs.get,
        "jobs.list": jobs.list_,
        "jobs.cancel": jobs.cancel,
        "jobs.retry": jobs.retry,
        "jobs.wait": jobs.wait,
        "backends.list": backends.list_,
        "models.list": models.list_,
        "models.pull": models.pull,
        "models.remove": models.remove,
        "models.ps": models.ps,
        "models.load": models.load,
        "models.unload": models.unload,
        "history.search": takes.search,
        "takes.show": takes.show,
        "takes.export": takes.export,
        "takes.loop": takes.loop,
        "takes.stems": takes.stems,
        "takes.rate": takes.rate,
        "takes.tag": takes.tag,
        "takes.rm": takes.remove,
        "takes.replay": takes.replay,
        "presets.list": presets.list_,
        "presets.show": presets.show,
        "watch.add": watch.add,
        "watch.rm": watch.remove,
        "watch.list": watch.list_,
        "costs.summary": hosted.costs,
        "auth.status": hosted.auth_status,
    }
