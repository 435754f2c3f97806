"""Branch parameters for the methods that act per modality (OGM-GE, MMPareto, D&R): which trainable tensors belong
to which modality, checked the same way by every method.

A branch is the module that only one modality's input passes through (an encoder, a projection). The methods read
its trainable parameters (requires_grad) at every call, so freezing or unfreezing a layer between steps is honoured.
Two branches must not share a parameter: a gradient method treats each branch's gradient as that modality's own,
and a shared layer is neither's (it belongs with the head and fusion, which every method leaves to the plain sum).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from biasaudit._core.arguments import ValueRule, check_argument
from biasaudit._core.annotations import shown
from biasaudit.errors import InputError


def branches_rule(branches: Mapping[str, nn.Module], *, least: int = 2) -> str | None:
    """The value rule of a `branches` argument: at least `least` named modules, none sharing a trainable parameter."""
    if len(branches) < least:
        return (
            f"at least {'two branches' if least == 2 else 'one branch'}, one module per modality "
            "(e.g. {'image': model.vision, 'text': model.text})"
        )
    if not all(name.strip() for name in branches):
        return "a non-empty name for every branch"
    return _sharing_rule(_trainable(branches))


def _trainable(branches: Mapping[str, nn.Module]) -> dict[str, list[nn.Parameter]]:
    return {name: _trainable_parameters(module) for name, module in branches.items()}


def _trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """[p for p in module.parameters() if p.requires_grad], the same tensors in the same order, read from each
    submodule's own parameters: module.parameters() builds every parameter's dotted name, which costs the methods that
    read the branches at every step several times this walk."""
    found: dict[int, nn.Parameter] = {}
    for submodule in module.modules():
        for parameter in submodule._parameters.values():
            if parameter is not None and parameter.requires_grad:
                found.setdefault(id(parameter), parameter)
    return list(found.values())


def _sharing_rule(trainable: Mapping[str, list[nn.Parameter]]) -> str | None:
    """The part of branches_rule that reads the parameters: every branch has some, no two share one."""
    owner: dict[int, str] = {}
    for name, parameters in trainable.items():
        if not parameters:
            return f"trainable parameters in every branch, but {name!r} has none (requires_grad is False everywhere)"
        for parameter in parameters:
            if id(parameter) in owner:
                return (
                    f"branches that share no parameter, but {owner[id(parameter)]!r} and {name!r} share one "
                    f"(a shared layer belongs to the head, not to a branch)"
                )
            owner[id(parameter)] = name
    return None


def branch_parameters(branches: Mapping[str, nn.Module], *, where: str) -> dict[str, list[nn.Parameter]]:
    """Each branch's trainable parameters now, in module order; re-checks the rule (a layer may have been unfrozen
    into two branches since construction)."""
    return BranchParameters(branches)(where=where)


class BranchParameters:
    """branch_parameters for a method that asks at every step: the parameters are read afresh at each call (a layer
    frozen or unfrozen between steps, or a module swapped in, is seen at once), and the sharing rule, a function of
    those tensors alone, is re-checked only when they are not the very tensors of the last call that passed. Those
    are held here, so their ids cannot be reused by new tensors while they are compared."""

    def __init__(self, branches: Mapping[str, nn.Module]) -> None:
        self.branches = branches
        self._passed: dict[str, list[nn.Parameter]] | None = None

    def __call__(self, *, where: str) -> dict[str, list[nn.Parameter]]:
        current = _trainable(self.branches)
        if not _same(current, self._passed):
            problem = branches_rule(self.branches)
            if problem is not None:
                raise InputError(f"The 'branches' parameter of {where} is {shown(self.branches)}; expected {problem}.")
            self._passed = current
        return current


def _same(current: Mapping[str, Sequence[Tensor]], passed: Mapping[str, Sequence[Tensor]] | None) -> bool:
    return passed is not None and all(
        len(tensors) == len(passed[name]) and all(a is b for a, b in zip(tensors, passed[name], strict=True))
        for name, tensors in current.items()
    )


def keys_rule(branches: Mapping[str, Any]) -> ValueRule:
    """A value rule: a mapping keyed exactly by the branch names."""

    def rule(value: Mapping[str, Any]) -> str | None:
        if set(value) == set(branches):
            return None
        return "one entry per branch, keyed " + ", ".join(repr(name) for name in branches)

    return rule


def check_per_branch(value: Any, branches: Mapping[str, Any], *, parameter: str, where: str) -> None:
    """A mapping of one tensor per branch (the unimodal logits or losses of a step), checked at every call: the full
    check (annotation and keys_rule, with their sentence) runs only when the quick test of the usual case fails."""
    if not (
        isinstance(value, Mapping)
        and len(value) == len(branches)
        and all(name in value and isinstance(value[name], Tensor) for name in branches)
    ):
        check_argument(value, Mapping[str, Tensor], parameter=parameter, where=where, rule=keys_rule(branches))


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
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf that requires grad, no children
        if variable is not None:
            found.setdefault(id(variable), variable)
        else:  # a list, not a generator: this loop is the walk's cost, once per node
            stack.extend([child for child, _ in reversed(node.next_functions)])
    return found
