"""MMPareto (Wei & Hu, ICML 2024; methods.md section 8): a backward that replaces `loss.backward()` and integrates,
per branch, the fused loss's gradient with its own unimodal loss's gradient so that neither is undone.

Per branch m, with g_f = ∇_θm L_fused and g_u = ∇_θm L_m:
    cos(g_f, g_u) > 0:  w = ½                                           (no conflict)
    otherwise:          w = clip(⟨g_u − g_f, g_u⟩ / ‖g_f − g_u‖², 0, 1) (the two-task min-norm weight)
    g' = 2(w·g_f + (1 − w)·g_u), rescaled to ‖g_f + g_u‖ when its norm is smaller, times γ.
Every other parameter the losses reach (head, fusion, shared layers) takes ∇(L_fused + Σ_m L_m).
A branch whose g_f or g_u is exactly zero has no defined cosine (reported nan) and takes γ·(g_f + g_u); so does the
degenerate conflict whose min-norm point is exactly zero.

Cost: one autograd pass of L_fused and one of Σ_m L_m over all the parameters they reach (≈ 2× a cross-entropy
backward), because each L_m normally reaches no other branch than its own (the `shared_zero`, `ogm_split` and
`separate` head modes are built that way), so ∇_θm Σ_j L_j = ∇_θm L_m. The parameters each loss reaches are read
from its autograd graph; when some L_j does reach another branch's parameters, the unimodal losses are
differentiated one by one instead (exact, M passes instead of one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from biasaudit._core.arguments import check_argument, checked, checked_keywords, positive_finite
from biasaudit.errors import InputError
from biasaudit.methods._branches import BranchParameters, branches_rule, check_per_branch, graph_leaves
from biasaudit.methods._distributed import agree, average, collective_device, world_size

WHERE = "MMPareto"


@dataclass(frozen=True)
class MMParetoStep:
    """What one backward call did, per branch. cosines: cos(g_f, g_u) (nan when either is zero); conflicts: the
    cosine was not positive; weights: w on g_f (1 − w on g_u); scales: the norm rescale applied (1.0 when none)."""

    cosines: dict[str, float]
    conflicts: dict[str, bool]
    weights: dict[str, float]
    scales: dict[str, float]


def combine(ff: float, uu: float, fu: float, gamma: float) -> tuple[float, float, float, float, float, bool]:
    """From ‖g_f‖², ‖g_u‖² and ⟨g_f, g_u⟩: (a, b) with γ·g' = a·g_f + b·g_u, then cos, w, the rescale and the conflict
    flag. The integrated gradient is a combination of g_f and g_u, so it never needs to be built as a flat vector."""
    if ff <= 0.0 or uu <= 0.0:
        return gamma, gamma, math.nan, 0.5, 1.0, False
    cosine = fu / math.sqrt(ff * uu)
    if cosine > 0:
        return gamma, gamma, cosine, 0.5, 1.0, False
    w = min(max((uu - fu) / (ff - 2.0 * fu + uu), 0.0), 1.0)  # ‖g_f − g_u‖² > 0: they are not parallel
    norm = 2.0 * math.sqrt(max(w * w * ff + 2.0 * w * (1.0 - w) * fu + (1.0 - w) ** 2 * uu, 0.0))
    target = math.sqrt(max(ff + 2.0 * fu + uu, 0.0))
    if norm == 0.0:  # exactly opposite gradients: the min-norm point carries no direction to rescale
        return gamma, gamma, cosine, w, 1.0, True
    scale = target / norm if norm < target else 1.0
    return gamma * scale * 2.0 * w, gamma * scale * 2.0 * (1.0 - w), cosine, w, scale, True


class MMPareto:
    """MMPareto's gradient integration for any PyTorch loop, in place of `loss.backward()`.

    A plain loop with unimodal auxiliary losses::

        for x, y in loader:
            optimizer.zero_grad()
            logits, unimodal = model(x)                  # unimodal: {"image": [B, C], "text": [B, C]}
            loss = F.cross_entropy(logits, y) + sum(F.cross_entropy(o, y) for o in unimodal.values())
            loss.backward()
            optimizer.step()

    becomes::

        mmp = MMPareto({"image": model.vision, "text": model.text}, gamma=1.5)
        for x, y in loader:
            optimizer.zero_grad()
            logits, unimodal = model(x)
            mmp.backward(F.cross_entropy(logits, y), {m: F.cross_entropy(o, y) for m, o in unimodal.items()})
            optimizer.step()

    branches: one module per modality, keyed by the names the audit uses; their trainable parameters (read at each
    call) must not overlap. gamma: γ, the factor on every branch's integrated gradient (1.5 in the paper).
    Each unimodal loss L_m should depend on its own branch only (plus head/shared parameters); see the module
    docstring for the cost when it does not.

    backward() ADDS to `.grad` as `loss.backward()` does (None becomes the gradient), so gradient accumulation over
    micro-batches works; note that the weights are then chosen per micro-batch, not for their sum. The step's
    per-branch cosine, conflict flag, weight and rescale are in the returned MMParetoStep, also kept as `mmp.last`.
    It keeps no state between steps (state_dict() is empty) and never calls optimizer.step() or zero_grad().

    Mixed precision: under torch.autocast nothing changes. With a GradScaler pass the scaled losses,
    `mmp.backward(scaler.scale(fused), {m: scaler.scale(l) for m, l in losses.items()})`, then
    `scaler.step(optimizer)`: the result is homogeneous of degree one in the scale (the cosine, w and the rescale
    factor are ratios of equally scaled quantities), so unscaling afterwards gives the unscaled result, and an
    overflow leaves non-finite gradients that the scaler detects and skips as usual.
    DDP: the gradients come from torch.autograd.grad, which DDP's reducer does not see, so this method averages
    g_f, g_u and the other parameters' gradients over the processes itself before combining them, and a K-process
    step equals the one-process step on the global batch (for losses that are means over equal local batches; for
    unequal ones, pass every loss times K·n_local/n_global).
    Run the forward under `with model.no_sync():` (or call the wrapped `model.module` directly) so that DDP does not
    wait for a backward of its own; every rank must call backward() at every step with the same graph structure.
    """

    @checked(WHERE, branches=branches_rule, gamma=positive_finite)
    def __init__(self, branches: Mapping[str, nn.Module], *, gamma: float = 1.5) -> None:
        self.branches = dict(branches)
        self.gamma = float(gamma)
        self.last: MMParetoStep | None = None
        self._branch_parameters = BranchParameters(self.branches)

    @checked_keywords(f"{WHERE}.backward")  # at every training step: its arguments are checked below, cheaply
    def backward(self, fused_loss: Tensor, unimodal_losses: Mapping[str, Tensor]) -> MMParetoStep:
        """Fill (add to) `.grad` of every parameter the losses reach, as described above; returns the step's figures.
        Everything is checked before any `.grad` changes."""
        where = f"{WHERE}.backward"
        check_argument(fused_loss, Tensor, parameter="fused_loss", where=where, rule=_loss_rule)
        check_per_branch(unimodal_losses, self.branches, parameter="unimodal_losses", where=where)
        for name in self.branches:
            if _loss_rule(unimodal_losses[name]) is not None:
                raise InputError(
                    f"The 'unimodal_losses' parameter of {where} has a {name!r} entry of shape "
                    f"{tuple(unimodal_losses[name].shape)}; expected {_loss_rule(unimodal_losses[name])}."
                )
        params = self._branch_parameters(where=where)
        owner = {id(p): name for name, ps in params.items() for p in ps}
        fused_leaves = graph_leaves(fused_loss)
        unimodal_leaves = {name: graph_leaves(unimodal_losses[name]) for name in self.branches}
        others: dict[int, Tensor] = {}
        for leaves in (fused_leaves, *unimodal_leaves.values()):
            others.update((key, leaf) for key, leaf in leaves.items() if key not in owner)
        other_list = list(others.values())
        missing_f = [float(not any(id(p) in fused_leaves for p in params[name])) for name in self.branches]
        missing_u = [float(not any(id(p) in unimodal_leaves[name] for p in params[name])) for name in self.branches]
        cross = float(any(owner.get(key, name) != name for name, leaves in unimodal_leaves.items() for key in leaves))
        size = float(sum(p.numel() for p in other_list))
        flags = agree([*missing_f, *missing_u, cross, size, -size], device=collective_device())
        count = len(self.branches)
        for index, name in enumerate(self.branches):
            if flags[index]:
                raise InputError(
                    f"The 'fused_loss' parameter of {where} does not depend on branch {name!r}: its "
                    f"module took no part in the forward pass (on this process or another)."
                )
            if flags[count + index]:
                raise InputError(
                    f"The 'unimodal_losses' parameter of {where} has a {name!r} loss that does not depend "
                    f"on branch {name!r}: compute it from that branch's output (on every process)."
                )
        if flags[2 * count + 1] != -flags[2 * count + 2]:
            raise InputError(
                f"The 'fused_loss' parameter of {where} reaches different shared parameters on different "
                f"processes; every rank must run the same forward graph."
            )

        flat = [p for name in self.branches for p in params[name]]
        inputs = flat + other_list
        g_f = _zeros_for_none(torch.autograd.grad(fused_loss, inputs, retain_graph=True, allow_unused=True), inputs)
        if flags[2 * count]:  # some L_j reaches another branch: one pass per unimodal loss, each over its own branch
            g_u = [torch.zeros_like(p) for p in inputs]
            position = {id(p): i for i, p in enumerate(inputs)}
            for index, name in enumerate(self.branches):
                own = params[name] + other_list
                grads = torch.autograd.grad(unimodal_losses[name], own, retain_graph=index < count - 1, allow_unused=True)
                for parameter, grad in zip(own, grads, strict=True):
                    if grad is not None:
                        g_u[position[id(parameter)]] += grad
        else:
            first, *rest = (unimodal_losses[name] for name in self.branches)
            total = sum(rest, first)  # not from 0: one graph node fewer, the same gradient
            g_u = _zeros_for_none(torch.autograd.grad(total, inputs, allow_unused=True), inputs)
        n = len(flat)
        g_f_branch, g_u_branch = g_f[:n], g_u[:n]
        g_other = list(torch._foreach_add(g_f[n:], g_u[n:])) if other_list else []
        if world_size() > 1:
            g_f_branch, g_u_branch, g_other = average([g_f_branch, g_u_branch, g_other])

        step = self._integrate(params, g_f_branch, g_u_branch)
        for parameter, grad in zip(other_list, g_other, strict=True):
            _accumulate(parameter, grad)
        self.last = step
        return step

    def _integrate(self, params: Mapping[str, list[nn.Parameter]], g_f: list[Tensor], g_u: list[Tensor]) -> MMParetoStep:
        spans, start = {}, 0
        for name in self.branches:
            spans[name] = (start, start + len(params[name]))
            start += len(params[name])
        sums = [_branch_sums(g_f[a:b], g_u[a:b]) for a, b in spans.values()]
        sums = torch.stack([s.to(sums[0].device) for s in sums]).tolist()  # one synchronisation for every branch
        cosines, conflicts, weights, scales = {}, {}, {}, {}
        for name, (ff, uu, fu) in zip(self.branches, sums, strict=True):
            a_coef, b_coef, cosines[name], weights[name], scales[name], conflicts[name] = combine(ff, uu, fu, self.gamma)
            first, last = spans[name]
            # Out of place (autograd may return expanded views), list-wide: f * a + u * b for every tensor.
            integrated = torch._foreach_mul(g_f[first:last], a_coef)
            torch._foreach_add_(integrated, torch._foreach_mul(g_u[first:last], b_coef))
            for parameter, grad in zip(params[name], integrated, strict=True):
                _accumulate(parameter, grad)
        return MMParetoStep(cosines=cosines, conflicts=conflicts, weights=weights, scales=scales)

    @checked(f"{WHERE}.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """Empty: MMPareto keeps nothing between steps (given for the same save/resume code as the other methods)."""
        return {}

    @checked(f"{WHERE}.load_state_dict")
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_argument(
            state,
            Mapping[str, Any],
            parameter="state",
            where=f"{WHERE}.load_state_dict",
            rule=lambda value: None if not value else "the empty state of MMPareto.state_dict()",
        )


def _loss_rule(loss: Tensor) -> str | None:
    if loss.numel() == 1 and loss.dim() <= 1 and loss.grad_fn is not None:
        return None
    return "a scalar loss tensor computed from the model (with a grad_fn, e.g. F.cross_entropy(...))"


def _zeros_for_none(grads: tuple[Tensor | None, ...], inputs: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, inputs, strict=True)]


def _branch_sums(g_f: list[Tensor], g_u: list[Tensor]) -> Tensor:
    """[‖g_f‖², ‖g_u‖², ⟨g_f, g_u⟩] of one branch, each a sum over its tensors of per-tensor dot products, in float64
    (the weights are ratios of these; float32 dot products of long vectors lose digits). On the first tensor's
    device: moving each product to the CPU would synchronise once per tensor."""
    if not g_f:
        return torch.zeros(3, dtype=torch.float64)
    device = g_f[0].device
    f64 = [g.reshape(-1).double() for g in g_f]  # converted once, read by two of the three products
    u64 = [g.reshape(-1).double() for g in g_u]
    return torch.stack([_dot_sum(f64, f64, device), _dot_sum(u64, u64, device), _dot_sum(f64, u64, device)])


def _dot_sum(a: list[Tensor], b: list[Tensor], device: torch.device) -> Tensor:
    return torch.stack([torch.dot(x, y).to(device) for x, y in zip(a, b, strict=True)]).sum()


def _accumulate(parameter: Tensor, grad: Tensor) -> None:
    """As loss.backward(): the first gradient becomes .grad, later ones are added to it."""
    if parameter.grad is None:
        parameter.grad = grad.to(parameter.dtype).contiguous()
    else:
        parameter.grad.add_(grad)
