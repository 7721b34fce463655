"""Load-time self-check of the decoding fast paths: a library upgrade costs speed, never a take.

Imported only inside the worker process (it pulls in torch).

Why
---
Two of the worker's speed-ups reimplement transformers internals: the preallocated KV cache
(:mod:`timbred.worker.kvcache`) and the lean decoding step (:mod:`timbred.worker.decodestep`).
Both are bit-identical to transformers' own forward on the versions they were written against,
and tests hold that. But an upstream release can change those internals without notice
(transformers 5.24 renamed the cache keyword and output field they use, and the melody model
then failed every job). The lock keeps a tested version installed; this check covers a user who
upgrades anyway, or a change the tests could not see.

What
----
When a model loads, :func:`choose` runs a short probe (a few greedy decoding steps, given by
the backend) through transformers' stock path and again with the fast paths on, and compares
every step's logits bit for bit. A fast path that raises or disagrees is switched off for that
model; the reason names the library version, the daemon logs it once as a warning, and every
take's recipe records which paths ran. Generation then goes on through the stock path, whose
output the fast paths only ever reproduced: takes, and their replays, stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FastPaths", "Probe", "choose", "difference"]

#: ``probe(preallocate_kv, lean_steps)``: every decoding step's logits, in order.
Probe = Callable[[bool, bool], Sequence[torch.Tensor]]


@dataclass(frozen=True, slots=True)
class FastPaths:
    """Which fast paths a loaded model decodes with, and why any asked for is off."""

    preallocate_kv: bool
    lean_steps: bool
    fallback: str | None = None
    """Set when a path that was asked for failed its check: what failed, with the version."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (recorded in every take's recipe)."""
        return {"preallocate_kv": self.preallocate_kv, "lean_steps": self.lean_steps,
                "fallback": self.fallback}


def difference(want: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> str | None:
    """``None`` when ``got`` is bit-identical to ``want``, else where and how it differs."""
    if len(got) != len(want):
        return f"{len(got)} decoding steps instead of {len(want)}"
    for step, (w, g) in enumerate(zip(want, got, strict=True), start=1):
        if w.shape != g.shape or w.dtype != g.dtype:
            return (f"step {step}: logits of shape {tuple(g.shape)} {g.dtype} instead of "
                    f"{tuple(w.shape)} {w.dtype}")
        if not torch.equal(w, g):
            # nan_to_num: masked logits are -inf in both; inf - inf would hide the real gap.
            gap = (w.float().nan_to_num() - g.float().nan_to_num()).abs().max().item()
            return f"step {step}: logits differ (max |difference| {gap:.3g})"
    return None


def choose(probe: Probe, *, preallocate_kv: bool, lean_steps: bool, library: str) -> FastPaths:
    """The fast paths, among those asked for, that reproduce ``probe``'s stock output exactly.

    ``library`` names what the paths lean on, for the reason (e.g. ``"transformers 5.24.0"``).
    The stock run's own errors propagate: a model that cannot decode at all must not load.
    The happy path costs two probes; each failure costs at most two more.
    """
    if not (preallocate_kv or lean_steps):
        return FastPaths(False, False)
    reference = probe(False, False)

    def check(kv: bool, lean: bool) -> str | None:
        try:
            got = probe(kv, lean)
        except Exception as exc:  # whatever a changed internal raises: it is reported below
            return f"raised {type(exc).__name__}: {exc}"
        return difference(reference, got)

    if check(preallocate_kv, lean_steps) is None:
        return FastPaths(preallocate_kv, lean_steps)
    # Something is off: find which path, so the other can keep its speed.
    problems: dict[str, str] = {}
    kv_ok = lean_ok = False
    if preallocate_kv:
        why = check(True, False)
        kv_ok = why is None
        if why is not None:
            problems["preallocate_kv"] = why
    if lean_steps:
        why = check(False, True)
        lean_ok = why is None
        if why is not None:
            problems["lean_steps"] = why
    if kv_ok and lean_ok:
        # Each alone is exact, together they are not: keep the preallocated cache, the bigger
        # win on long takes (0.80x the time for 30 s; the lean step saves about 13% a step).
        lean_ok = False
        problems["lean_steps"] = "is exact alone but not together with preallocate_kv"
    reasons = "; ".join(f"{name} {why}" for name, why in problems.items())
    return FastPaths(kv_ok, lean_ok,
                     fallback=f"with {library}: {reasons}; switched off for this model, "
                              "decoding through the stock path (same takes, slower)")
