"""Model families behind one registry (see :mod:`timbred.backends.registry`).

Torch-free: specs say what a family is; its inference code is imported in the worker only.
"""

from timbred.backends.spec import FEATURES, BackendCapabilities, BackendSpec

__all__ = ["FEATURES", "BackendCapabilities", "BackendSpec"]
