"""How the feature cache (feature_cache.py) answers for a cached module inside `serving`: a stand-in forward that
returns the stored outputs of the batch's samples when the call is one they were computed in (the same input shapes
and dtypes, feature_cache_fill.signature), and runs the module otherwise; and the check that the module has not
changed since its outputs were stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from biasaudit.errors import BiasAuditError
from biasaudit.training.feature_cache_fill import Entry, signature
from biasaudit.training.feature_cache_probe import tensors_in
from biasaudit.training.feature_cache_store import laid_out, rebuild, state_hash, state_version


def check_unchanged(entry: Entry) -> None:
    """A frozen module written in place since the fill (a resume's load) must still hold the same values."""
    version = state_version(entry.module)
    if version == entry.version:
        return
    if state_hash(entry.module) != entry.digest:
        raise BiasAuditError(
            f"Frozen module {entry.name!r} changed during training, so its cached outputs are stale; run with "
            "--feature-cache off."
        )
    entry.version = version


class Served:
    """The stand-in forward of a cached module for one training batch: its stored outputs of these rows when the
    call's signature is the one they were computed with, read once and handed out as new tensors on every call
    (BalGrad's unimodal passes run the model again on the same rows); else the module's own forward."""

    def __init__(self, entry: Entry, rows: Tensor, forward: Callable[..., Any], calls: dict[str, int]) -> None:
        self.entry, self.rows, self.forward, self.calls = entry, rows, forward, calls
        self.values: list[Tensor] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        known = self.entry.known.get(signature(args, kwargs))
        given = next((t.shape[0] for t in tensors_in((args, kwargs)) if t.dim()), None)
        # Rows computed in calls of another signature, or a call on other rows than the batch's: the module runs.
        if known is None or given != len(self.rows) or not bool((self.entry.signatures[self.rows] == known).all()):
            self.calls["ran"] += 1
            return self.forward(*args, **kwargs)
        self.calls["served"] += 1
        if self.values is None:
            self.values = self.entry.store.read(self.rows)
        leaves = [laid_out(v, leaf) for v, leaf in zip(self.values, self.entry.store.leaves, strict=True)]
        return rebuild(self.entry.spec, iter(leaves))
