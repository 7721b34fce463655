"""``backends.list``: the model families the daemon can drive, and what each takes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timbred.backends import registry

if TYPE_CHECKING:
    from timbred.daemon.app import RequestContext


async def list_(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Every registered family with its capabilities, parameter schema and needs."""
    return {"backends": [spec.to_dict() for spec in registry.specs()]}
