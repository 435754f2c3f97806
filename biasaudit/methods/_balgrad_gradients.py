"""BalGrad's autograd side (methods.md section 7): `raw_gradients`, the five autograd passes of a step (three when each
modality's terms reach only its own branch), and `balgrad_step`, which checks its arguments, runs them, combines them
with _balgrad_math.combine and writes `.grad`. The formula is in _balgrad_math.py's docstring."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from biasaudit.errors import InputError
from biasaudit.methods._balgrad_math import PROJECTIONS, BalGradStep, two_names, combine


def balgrad_step(
    task_loss: Tensor,
    unimodal_losses: Mapping[str, Tensor],
    kl_terms: Mapping[str, Tensor],
    *,
    task_params: Sequence[nn.Parameter],
    branch_params: Mapping[str, Sequence[nn.Parameter]],
    lam: float,
    beta: float = 1.0,
    projection: str = "global",
    weights: tuple[float, float] | None = None,
) -> BalGradStep:
    """Write BalGrad's gradients into `.grad` (replacing what is there); the caller then steps.

    The three mappings are keyed by the same two modality names, v = first, l = second. (w_v, w_l) is
    `kl_weights` of this batch's detached L_v, L_l unless `weights` gives it (the running-average switch
    passes `kl_weights` of `RunningLosses`). See the module docstring for the formula.
    """
    check_step(
        unimodal_losses, kl_terms, task_params=task_params, branch_params=branch_params, lam=lam, beta=beta, projection=projection
    )
    params, raw = raw_gradients(task_loss, unimodal_losses, kl_terms, task_params=task_params, branch_params=branch_params)
    name_v, name_l = branch_params  # two names: check_step has refused any other count
    losses = (float(task_loss.detach()), float(unimodal_losses[name_v].detach()), float(unimodal_losses[name_l].detach()))
    final, step = combine(
        raw, losses, task_size=sum(p.numel() for p in task_params), lam=lam, beta=beta, projection=projection, weights=weights
    )
    for p, piece in zip(params, _parameter_slices(params), strict=True):
        p.grad = final[piece].view_as(p).clone()
    return step


def check_step(
    unimodal_losses: Mapping[str, Tensor],
    kl_terms: Mapping[str, Tensor],
    *,
    task_params: Sequence[nn.Parameter],
    branch_params: Mapping[str, Sequence[nn.Parameter]],
    lam: float,
    beta: float,
    projection: str,
) -> None:
    """balgrad_step's arguments, refused with one sentence before any gradient is computed."""
    name_v, name_l = two_names(branch_params, what="balgrad_step")
    for mapping, what in ((unimodal_losses, "unimodal_losses"), (kl_terms, "kl_terms")):
        if list(mapping) != [name_v, name_l]:
            raise InputError(f"balgrad_step: {what} is keyed {list(mapping)}; expected {[name_v, name_l]} like branch_params.")
    if projection not in PROJECTIONS:
        raise InputError(f"Unknown projection {projection!r}; expected one of {', '.join(PROJECTIONS)}.")
    for name, value in (("lam", lam), ("beta", beta)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"balgrad_step: {name}={value!r}; expected a finite number >= 0.")
    groups = [list(branch_params[name_v]), list(branch_params[name_l])]
    _check_parameters(list(task_params) + groups[0] + groups[1], groups)


def raw_gradients(
    task_loss: Tensor,
    unimodal_losses: Mapping[str, Tensor],
    kl_terms: Mapping[str, Tensor],
    *,
    task_params: Sequence[Tensor],
    branch_params: Mapping[str, Sequence[Tensor]],
    joint: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """(θ_T + θ_v + θ_l in that order, [g_T, ∇_{θ_v} KL_v, ∇_{θ_l} KL_l, ∇_{θ_v} L_v, ∇_{θ_l} L_l] as flat vectors):
    the five autograd passes of a step, before any weight, λ or projection.

    joint: three passes instead of five, the two KL terms in one and the two unimodal losses in another, for a caller
    that has checked that neither modality's terms reach the other's parameters (BalGrad reads it from the graph).
    The gradients are then the same tensors bit for bit: no node on a path to θ_v receives anything from l's term
    (it would then reach θ_v), so each parameter gets what its own term's pass gives it."""
    name_v, name_l = list(branch_params)
    task, groups = list(task_params), [list(branch_params[name_v]), list(branch_params[name_l])]
    params = task + groups[0] + groups[1]
    g_task = _flat(_grads(task_loss, params))
    if joint:
        kl_v, kl_l = _joint_grads(kl_terms[name_v], kl_terms[name_l], groups)
        uni_v, uni_l = _joint_grads(unimodal_losses[name_v], unimodal_losses[name_l], groups)
        return params, [g_task, _flat(kl_v), _flat(kl_l), _flat(uni_v), _flat(uni_l)]
    return params, [
        g_task,
        _flat(_grads(kl_terms[name_v], groups[0])),
        _flat(_grads(kl_terms[name_l], groups[1])),
        _flat(_grads(unimodal_losses[name_v], groups[0])),
        _flat(_grads(unimodal_losses[name_l], groups[1])),
    ]


def _joint_grads(output_v: Tensor, output_l: Tensor, groups: list[list[Tensor]]) -> list[list[Tensor]]:
    """[d output_v / d groups[0], d output_l / d groups[1]] in one autograd pass (raw_gradients' `joint`); the
    undirected KL is one tensor for both modalities and is differentiated once."""
    outputs = [output_v] if output_v is output_l else [output_v, output_l]
    if not all(output.dim() == 0 and output.requires_grad for output in outputs):  # _grads says what is wrong
        return [_grads(output_v, groups[0]), _grads(output_l, groups[1])]
    params = groups[0] + groups[1]
    found = torch.autograd.grad(outputs, params, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]
    return [grads[: len(groups[0])], grads[len(groups[0]) :]]


def _check_parameters(params: list[nn.Parameter], groups: list[list[nn.Parameter]]) -> None:
    if not all(groups):
        raise InputError("balgrad_step: a modality in branch_params has no parameters; each needs its own θ_m.")
    if len({id(p) for p in params}) != len(params):
        raise InputError(
            "balgrad_step: a parameter appears twice in task_params/branch_params; θ_T, θ_v and θ_l must be disjoint."
        )
    frozen = [tuple(p.shape) for p in params if not p.requires_grad]
    if frozen:
        raise InputError(
            f"balgrad_step got frozen parameters (requires_grad=False) of shapes {frozen}; "
            f"pass trainable ones only (split_parameters does)."
        )


def _grads(output: Tensor, params: list[Tensor]) -> list[Tensor]:
    """d output / d params; zeros where a parameter does not reach the output."""
    if output.dim() != 0:
        raise InputError(f"balgrad_step needs scalar losses, got shape {tuple(output.shape)}.")
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _parameter_slices(params: Sequence[Tensor]) -> list[slice]:
    out, start = [], 0
    for p in params:
        out.append(slice(start, start + p.numel()))
        start += p.numel()
    return out
