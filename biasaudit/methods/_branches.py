"""Branch parameters for the methods that act per modality (OGM-GE, MMPareto, D&R): which trainable tensors belong
to which modality, checked the same way by every method.

A branch is the module that only one modality's input passes through (an encoder, a projection). The methods read
its trainable parameters (requires_grad) at every call, so freezing or unfreezing a layer between steps is honoured.
Two branches must not share a parameter: a gradient method treats each branch's gradient as that modality's own,
and a shared layer is neither's (it belongs with the head and fusion, which every method leaves to the plain sum).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from biasaudit.arguments import shown
from biasaudit.errors import InputError


def branches_rule(branches: Mapping[str, nn.Module], *, least: int = 2) -> str | None:
    """The value rule of a `branches` argument: at least `least` named modules, none sharing a trainable parameter."""
    if len(branches) < least:
        return (f"at least {'two branches' if least == 2 else 'one branch'}, one module per modality "
                "(e.g. {'image': model.vision, 'text': model.text})")
    if not all(name.strip() for name in branches):
        return "a non-empty name for every branch"
    owner: dict[int, str] = {}
    for name, module in branches.items():
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            return f"trainable parameters in every branch, but {name!r} has none (requires_grad is False everywhere)"
        for parameter in trainable:
            if id(parameter) in owner:
                return (f"branches that share no parameter, but {owner[id(parameter)]!r} and {name!r} share one "
                        f"(a shared layer belongs to the head, not to a branch)")
            owner[id(parameter)] = name
    return None


def branch_parameters(branches: Mapping[str, nn.Module], *, where: str) -> dict[str, list[nn.Parameter]]:
    """Each branch's trainable parameters now, in module order; re-checks the rule (a layer may have been unfrozen
    into two branches since construction)."""
    problem = branches_rule(branches)
    if problem is not None:
        raise InputError(f"The 'branches' parameter of {where} is {shown(branches)}; expected {problem}.")
    return {name: [p for p in module.parameters() if p.requires_grad] for name, module in branches.items()}


def keys_rule(branches: Mapping[str, Any]):
    """A value rule: a mapping keyed exactly by the branch names."""
    def rule(value: Mapping[str, Any]) -> str | None:
        if set(value) == set(branches):
            return None
        return "one entry per branch, keyed " + ", ".join(repr(name) for name in branches)
    return rule


def graph_leaves(root: Tensor) -> dict[int, Tensor]:
    """The tensors whose .grad a backward of `root` would fill (keyed by id), in a deterministic (graph) order: what
    a loss reaches, read from its autograd graph without differentiating it."""
    found: dict[int, Tensor] = {}
    seen: set[Any] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf that requires grad
        if variable is not None:
            found.setdefault(id(variable), variable)
        stack.extend(child for child, _ in reversed(node.next_functions))
    return found
