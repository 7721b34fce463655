"""timbred: Timbre's per-user daemon (JSON-RPC 2.0 over a Unix socket).

Importing this package is cheap on purpose: clients import the protocol core from here, and
nothing heavy (torch, transformers) is imported until the inference worker starts.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Bumped when a method, parameter, result or event changes incompatibly.
PROTOCOL_VERSION = 1
