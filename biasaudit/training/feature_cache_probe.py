"""Which frozen modules the feature cache (feature_cache.py) can stand in for, found by one probe forward.

A frozen module's cached output must be exactly what it would return inside a training batch, and leaving it out
must cut nothing. So the probe runs the first batch of the cache's pass once as training runs it: the loop's modes
(model_modes.set_training_modes: frozen parts in eval mode, the rest training) and gradient enabled, with no backward.
Hooks record, per frozen module, how often it runs, whether any of its inputs requires grad (trainable parameters
upstream: caching would cut their gradient), and its output. The batch's rows are rolled by one, and the fill pass
(eval mode) compares its own outputs of the first batch, rolled the same way, with the probe's: a difference means
that the module's input differs between training and evaluation (dropout or batch statistics upstream) or that its
numerics depend on a row's position, and then a cached output would not be the same bits.

Nothing of the probe stays: every module's training flag, every buffer (BatchNorm statistics upstream move in
training mode) and every global random generator (dropout draws) are put back as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import take_rows
from biasaudit.training import rng_states
from biasaudit.training.feature_cache_store import Leaf, Unsupported, flatten, leaf_of, rebuild, same_structure
from biasaudit.training.model_modes import set_training_modes

RECEIVES_GRADIENT = "receives gradient from trainable parameters upstream"
NOT_RUN = "does not run in the model's forward"  # nothing to gain: never a reason to refuse the cache


@dataclass
class Candidate:
    """One frozen module and what the probe found: its output's structure and leaves, or why it cannot be cached."""

    name: str
    module: nn.Module
    calls: int = 0
    gradient: bool = False
    output: list[Tensor] = field(default_factory=list)  # the probe's leaves (rolled rows), until the fill compares
    spec: Any = None
    leaves: list[Leaf] = field(default_factory=list)
    problem: str | None = None


def tensors_in(value: Any) -> list[Tensor]:
    """Every tensor in nested tuples, lists and dicts (a module's arguments)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def rolled(rows: int) -> np.ndarray:
    """The probe's order of the first batch's rows: each moved down by one (the identity for one row)."""
    return np.roll(np.arange(rows), 1)


@dataclass
class _Tap:
    candidate: Candidate
    rows: int

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.candidate.gradient |= any(t.requires_grad for t in tensors_in((args, kwargs)))

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.candidate.calls += 1
        if self.candidate.calls > 1:
            return
        try:
            leaves, self.candidate.spec = flatten(output)
            if not leaves:
                raise Unsupported("returns no tensor")
            self.candidate.leaves = [leaf_of(leaf, self.rows) for leaf in leaves]
            rebuild(self.candidate.spec, iter(leaves))  # a structure that cannot be rebuilt cannot be served
        except Unsupported as exc:
            self.candidate.problem = str(exc)
            return
        except Exception as exc:  # the output's own class refused to be rebuilt from its parts
            self.candidate.problem = f"returns a {type(output).__name__} that cannot be rebuilt from its tensors ({exc})"
            return
        self.candidate.output = [leaf.detach().clone() for leaf in leaves]  # a later in-place op must not change it


def probe(
    model: nn.Module,
    adapter: Adapter,
    batch: Mapping[str, Any],
    candidates: Sequence[Candidate],
    *,
    rows: int,
    device: torch.device,
) -> None:
    """Run the probe forward (module docstring) on `batch` (`rows` samples, without the SAMPLE_INDEX column) and set
    each candidate's findings; its `problem` says why it cannot be cached, if it cannot."""
    flags = {module: module.training for module in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    generators = rng_states.capture()
    taps = [_Tap(c, rows) for c in candidates]
    handles = [
        h
        for tap in taps
        for h in (
            tap.candidate.module.register_forward_pre_hook(tap.before, with_kwargs=True),
            tap.candidate.module.register_forward_hook(tap.after),
        )
    ]
    try:
        set_training_modes(model)
        with torch.enable_grad():
            adapter.forward(model, adapter.prepare(take_rows(batch, rolled(rows), size=rows), device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        rng_states.restore(generators)
    for c in candidates:
        if c.calls == 0:
            c.problem = NOT_RUN
        elif c.calls > 1:
            c.problem = f"runs {c.calls} times in one forward (one cached output per sample could not stand for every call)"
        elif c.gradient:
            c.problem = RECEIVES_GRADIENT  # first: whatever else holds, caching would cut a gradient
        if c.problem is not None:
            c.output = []


def fill_problem(candidate: Candidate, output: Any, *, rows: int, first: bool) -> tuple[list[Tensor], str | None]:
    """(the leaves of one fill batch's output, or why the module cannot be cached after all): the same structure,
    per-sample shapes and dtypes as the probe's; on the first batch, the probe's very bits (module docstring)."""
    try:
        leaves, spec = flatten(output)
    except Unsupported as exc:
        return [], str(exc)
    if not same_structure(spec, candidate.spec) or len(leaves) != len(candidate.leaves):
        return [], "returns outputs of another structure on another batch"
    for leaf, known in zip(leaves, candidate.leaves, strict=True):
        if leaf.dim() == 0 or leaf.shape[0] != rows or not known.matches(leaf):
            shape = tuple(leaf.shape)
            return [], f"returns a tensor of shape {shape} and dtype {leaf.dtype} on another batch (per sample it changes)"
    if first:
        order = torch.as_tensor(rolled(rows), device=leaves[0].device)
        if not all(
            torch.equal(p, leaf.index_select(0, order.to(leaf.device))) for p, leaf in zip(candidate.output, leaves, strict=True)
        ):
            return [], (
                "gives other outputs in training than in evaluation mode, or for rows in another order "
                "(dropout or batch statistics upstream, or row-dependent numerics), so cached outputs would not "
                "be exact"
            )
        candidate.output = []
    return leaves, None
