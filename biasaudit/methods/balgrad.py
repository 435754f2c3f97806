"""BalGrad (Kwon et al., NAACL 2025; methods.md section 7) as a backward for any PyTorch loop: in place of
`loss.backward()`, it fills `.grad` with the task gradient projected away from the (reweighted, growing) mutual-KL
gradient of the two branches, plus each branch's unimodal gradient.

With θ_v, θ_l the two branches' trainable parameters and θ_T the others (fusion, classifier):
    g_T  = ∇L_T;   g_kl = λ_t·[0 ; w_v ∇_{θ_v} KL_v ; w_l ∇_{θ_l} KL_l];   w_m = L_m / (L_v + L_l)
    if ⟨g_T, g_kl⟩ < 0:  g_T ← g_T − (⟨g_T, g_kl⟩ / ‖g_kl‖²)·g_kl        (globally, or per branch)
    θ_T.grad += g_T|θ_T;   θ_m.grad += g_T|θ_m + β ∇_{θ_m} L_m + g_kl|θ_m
L_m = CE(o_m, y) of the unimodal logits o_m (`heads.UnimodalHeads` gives them for a user's model); KL_v = KL(sg(p_l)
‖ p_v) and KL_l = KL(sg(p_v) ‖ p_l) (mutual), or one KL(p_v ‖ p_l) for both (undirected); λ_t rises linearly from
λ_0 to 1 over total_steps (or stays λ_0); w from this batch's losses or their running averages (momentum 0.9). Any
other parameter a unimodal loss reaches that the fused loss does not (the separate head mode's heads) gets ∇L_m.
The math is methods/_balgrad_math.py (its gradients: methods/_balgrad_gradients.py), shared with biasaudit's own
loop, so both write the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biasaudit._core.arguments import (
    at_least,
    check_argument,
    checked,
    checked_keywords,
    non_negative_finite,
    one_of,
    positive_finite,
)
from biasaudit.errors import InputError
from biasaudit.methods._balgrad_math import (
    KL_MODES,
    PROJECTIONS,
    SCHEDULES,
    BalGradStep,
    LambdaSchedule,
    RunningLosses,
    combine,
    kl_weights,
    mutual_kl,
)
from biasaudit.methods._balgrad_gradients import raw_gradients
from biasaudit.methods._branches import BranchParameters, branches_rule, check_per_branch, graph_leaves
from biasaudit.methods._distributed import agree, average, collective_device, world_size

WHERE = "BalGrad"
WEIGHT_MODES = ("batch", "running")
RUNNING_MOMENTUM = 0.9  # the spec leaves the running average's momentum open: about the last ten batches

__all__ = ["KL_MODES", "PROJECTIONS", "SCHEDULES", "WEIGHT_MODES", "BalGrad", "BalGradStep", "LambdaSchedule"]


def _two_branches(branches: Mapping[str, nn.Module]) -> str | None:
    problem = branches_rule(branches)
    if problem is None and len(branches) != 2:
        return (
            "exactly two branches (BalGrad pairs one modality with the other), e.g. {'image': model.vision, 'text': model.text}"
        )
    return problem


def _unit(value: float) -> str | None:
    return None if 0 <= value <= 1 else "a number between 0 and 1"


class BalGrad:
    """BalGrad's gradient step for any PyTorch loop, in place of `loss.backward()`.

    A plain loop::

        for x_img, x_txt, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_img, x_txt), y)
            loss.backward()
            optimizer.step()

    becomes (with the shared_zero unimodal heads of methods.md 7.1)::

        branches = {"image": model.vision, "text": model.text}
        heads = UnimodalHeads(model, branches)
        balgrad = BalGrad(branches, lambda_initial=0.1)
        total = epochs * len(loader)
        for step, (x_img, x_txt, y) in enumerate(batches):
            optimizer.zero_grad()
            with heads.capture():
                logits = model(x_img, x_txt)
            unimodal = heads.logits(lambda: model(x_img, x_txt))
            balgrad.backward(F.cross_entropy(logits, y), unimodal, y, step=step, total_steps=total)
            optimizer.step()

    branches: the two modules, one per modality, keyed by the names the audit uses (v = the first, l = the second);
    their trainable parameters are read at each call and must not overlap. lambda_initial: λ_0. schedule: linear
    (λ_0 at step 0 to 1 at total_steps − 1) or constant (λ_0). beta: β on the unimodal gradients. kl_mode: mutual or
    undirected. projection: global (one projection over all parameters) or per_modality (one per branch slice).
    weights: batch (this batch's losses) or running (their moving averages, state in state_dict()). model: when
    given, θ_T is every trainable parameter of the model outside the branches, in the model's order, and one the
    fused loss does not reach gets a zero gradient (biasaudit's own loop does this); by default θ_T is what the fused
    loss reaches, read from its autograd graph, and an unreached parameter keeps its `.grad`.

    backward() ADDS to `.grad` as `loss.backward()` does (None becomes the gradient); with gradient accumulation the
    projection is that of each micro-batch. The step's losses, weights, λ, cosines and conflict flag are in the
    returned BalGradStep, also kept as `balgrad.last`. It never calls optimizer.step() or zero_grad().

    Mixed precision: under torch.autocast nothing changes (cross-entropy runs in float32). With a GradScaler pass
    the scaled fused loss and its scale, `balgrad.backward(scaler.scale(loss), unimodal, y, ..., loss_scale=
    scaler.get_scale())`, then `scaler.step(optimizer)`: the unimodal and KL losses are scaled alike, the weights
    and the projection are scale-free, so the gradients are the scaled ones the scaler unscales (and skips on overflow).
    DDP: the gradients come from torch.autograd.grad, which DDP's reducer does not see, so this method averages every
    raw gradient and the three losses over the processes itself before weighting and projecting them, and a K-process
    step equals the one-process step on the global batch (for equal local batches). Run the fused forward under
    `with ddp_model.no_sync():` (or call `ddp_model.module` directly) so that DDP does not wait for a backward of its
    own; give UnimodalHeads the bare module; every rank must call backward() at every step. Local batches of unequal
    size (a global batch split without padding): pass the fused loss times s = K·n_local/n_global and loss_scale=s
    (times a GradScaler's scale), and the step is exactly the one-process step on the global batch.
    """

    @checked(
        WHERE,
        branches=_two_branches,
        lambda_initial=_unit,
        schedule=one_of(SCHEDULES),
        beta=non_negative_finite,
        kl_mode=one_of(KL_MODES),
        projection=one_of(PROJECTIONS),
        weights=one_of(WEIGHT_MODES),
    )
    def __init__(
        self,
        branches: Mapping[str, nn.Module],
        *,
        lambda_initial: float = 0.1,
        schedule: str = "linear",
        beta: float = 1.0,
        kl_mode: str = "mutual",
        projection: str = "global",
        weights: str = "batch",
        model: nn.Module | None = None,
    ) -> None:
        self.branches = dict(branches)
        self.lambda_initial, self.schedule, self.beta = float(lambda_initial), schedule, float(beta)
        self.kl_mode, self.projection, self.weights, self.model = kl_mode, projection, weights, model
        if model is not None:
            owned = {id(p) for p in model.parameters()}
            if not all(id(p) in owned for module in self.branches.values() for p in module.parameters()):
                raise InputError(
                    f"The 'branches' parameter of {WHERE} has a branch that is not part of 'model'; give the "
                    "model's own submodules, or leave 'model' out."
                )
        self.running = RunningLosses(momentum=RUNNING_MOMENTUM)
        self.last: BalGradStep | None = None
        self._branch_parameters = BranchParameters(self.branches)

    @checked_keywords(f"{WHERE}.backward")  # at every training step: the arguments are checked by _check, cheaply
    def backward(
        self,
        fused_loss: Tensor,
        unimodal_logits: Mapping[str, Tensor],
        labels: Tensor,
        *,
        step: int,
        total_steps: int,
        loss_scale: float = 1.0,
    ) -> BalGradStep:
        """Fill (add to) `.grad` of θ_T, θ_v, θ_l and of the other parameters the unimodal losses reach, as the module
        docstring says; returns the step's log. Everything is checked before any `.grad` changes."""
        where = f"{WHERE}.backward"
        self._check(fused_loss, unimodal_logits, labels, step=step, total_steps=total_steps, loss_scale=loss_scale)
        params = self._branch_parameters(where=where)
        branch_ids = {id(p) for group in params.values() for p in group}
        fused_leaves = graph_leaves(fused_loss)
        task: list[Tensor]
        if self.model is not None:
            task = [p for p in self.model.parameters() if p.requires_grad and id(p) not in branch_ids]
        else:
            task = [leaf for key, leaf in fused_leaves.items() if key not in branch_ids]
        unimodal_leaves = {m: graph_leaves(unimodal_logits[m]) for m in self.branches}
        missing_f = [float(not any(id(p) in fused_leaves for p in params[m])) for m in self.branches]
        missing_u = [float(not any(id(p) in unimodal_leaves[m] for p in params[m])) for m in self.branches]
        size = float(sum(p.numel() for p in task))
        flags = agree([*missing_f, *missing_u, size, -size], device=collective_device())
        for index, name in enumerate(self.branches):
            if flags[index]:
                raise InputError(
                    f"The 'fused_loss' parameter of {where} does not depend on branch {name!r}: its module "
                    f"took no part in the forward pass (on this process or another)."
                )
            if flags[2 + index]:
                raise InputError(
                    f"The 'unimodal_logits' parameter of {where} has {name!r} logits that do not depend on "
                    f"branch {name!r}: compute them from that branch's output (on every process)."
                )
        if flags[4] != -flags[5]:
            raise InputError(
                f"The 'fused_loss' parameter of {where} reaches different parameters on different processes; "
                "every rank must run the same forward graph."
            )

        ordered = {m: unimodal_logits[m] for m in self.branches}
        unimodal = {m: F.cross_entropy(o, labels) for m, o in ordered.items()}
        kl_terms = mutual_kl(ordered, mode=self.kl_mode)
        values = [fused_loss.detach(), *(loss.detach().to(fused_loss.device) for loss in unimodal.values())]
        losses = torch.stack(values).tolist()  # one synchronisation for the three
        losses[0] /= loss_scale
        if loss_scale != 1.0:  # the scaled fused loss's companions, scaled alike (class docstring)
            unimodal = {m: loss * loss_scale for m, loss in unimodal.items()}
            kl_terms = {m: loss * loss_scale for m, loss in kl_terms.items()}
        # Parameters only a unimodal loss reaches (separate heads) learn that loss: ∇L_m, no KL, no β.
        known = branch_ids | set(fused_leaves) | {id(p) for p in task}
        others = {m: [leaf for key, leaf in unimodal_leaves[m].items() if key not in known] for m in self.branches}
        other_grads = {
            m: list(torch.autograd.grad(unimodal[m], others[m], retain_graph=True)) if others[m] else [] for m in self.branches
        }
        # Three autograd passes instead of five when neither modality's logits reach the other's branch (exact).
        name_v, name_l = self.branches
        crossed = any(id(p) in unimodal_leaves[name_v] for p in params[name_l]) or any(
            id(p) in unimodal_leaves[name_l] for p in params[name_v]
        )
        flat, raw = raw_gradients(fused_loss, unimodal, kl_terms, task_params=task, branch_params=params, joint=not crossed)
        if world_size() > 1:
            # Each process's losses weighted by its loss_scale: with the scale K·n_local/n_global of unequal local
            # batches the average is the global batch's mean (class docstring); with equal scales, the plain mean.
            weighted = [value * loss_scale for value in losses] + [loss_scale]
            loss_tensor = torch.tensor(weighted, dtype=torch.float64, device=raw[0].device)
            raw, heads_flat, (loss_tensor,) = average([raw, [g for m in self.branches for g in other_grads[m]], [loss_tensor]])
            *losses, scale_mean = loss_tensor.tolist()
            losses = [value / scale_mean for value in losses]
            for m in self.branches:
                other_grads[m], heads_flat = heads_flat[: len(other_grads[m])], heads_flat[len(other_grads[m]) :]
        weights = kl_weights(*self.running.update(losses[1], losses[2])) if self.weights == "running" else None
        lam = LambdaSchedule(kind=self.schedule, initial=self.lambda_initial, total_steps=total_steps).at(step)
        final, record = combine(
            raw,
            (losses[0], losses[1], losses[2]),
            task_size=sum(p.numel() for p in task),
            lam=lam,
            beta=self.beta,
            projection=self.projection,
            weights=weights,
        )
        start = 0
        for parameter in flat:
            _accumulate(parameter, final[start : start + parameter.numel()].view_as(parameter))
            start += parameter.numel()
        for m in self.branches:
            for parameter, grad in zip(others[m], other_grads[m], strict=True):
                _accumulate(parameter, grad)
        self.last = record
        return record

    def _check(self, fused_loss: Any, unimodal_logits: Any, labels: Any, *, step: Any, total_steps: Any, loss_scale: Any) -> None:
        where = f"{WHERE}.backward"
        check_argument(fused_loss, Tensor, parameter="fused_loss", where=where, rule=_loss_rule)
        check_per_branch(unimodal_logits, self.branches, parameter="unimodal_logits", where=where)
        check_argument(labels, Tensor, parameter="labels", where=where, rule=_labels_rule)
        check_argument(step, int, parameter="step", where=where, rule=at_least(0))
        check_argument(total_steps, int, parameter="total_steps", where=where, rule=at_least(1))
        check_argument(loss_scale, float, parameter="loss_scale", where=where, rule=positive_finite)
        batch = labels.shape[0]
        low, high = torch.stack(torch.aminmax(labels)).tolist()  # one synchronisation for both
        widths = set()
        for name in self.branches:
            logits = unimodal_logits[name]
            widths.add(logits.shape[-1] if logits.dim() else None)
            if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] <= high or low < 0 or len(widths) > 1:
                raise InputError(
                    f"The 'unimodal_logits' parameter of {where} has {name!r} logits of shape "
                    f"{tuple(logits.shape)}; expected [batch, classes] = [{batch}, C] like 'labels' (whose class "
                    f"indices run from {low} to {high}), the same C for every branch."
                )

    @checked(f"{WHERE}.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """The running averages of (L_v, L_l) of the `running` weights (None before the first step or with `batch`)."""
        values = self.running.values
        return {"weights": self.weights, "running": None if values is None else [float(values[0]), float(values[1])]}

    @checked(f"{WHERE}.load_state_dict")
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def rule(value: Mapping[str, Any]) -> str | None:
            running = value.get("running")
            ok = value.get("weights") == self.weights and (
                running is None
                or (len(running) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in running))
            )
            return None if ok else f"a state of BalGrad.state_dict() with weights={self.weights!r}"

        check_argument(state, Mapping[str, Any], parameter="state", where=f"{WHERE}.load_state_dict", rule=rule)
        running = state["running"]
        self.running.values = None if running is None else (float(running[0]), float(running[1]))


def _loss_rule(loss: Tensor) -> str | None:
    if loss.numel() == 1 and loss.dim() == 0 and loss.grad_fn is not None:
        return None
    return "a scalar loss tensor computed from the model (with a grad_fn, e.g. F.cross_entropy(...))"


def _labels_rule(labels: Tensor) -> str | None:
    if (
        labels.dim() == 1
        and labels.shape[0] > 0
        and not labels.is_floating_point()
        and not labels.is_complex()
        and labels.dtype != torch.bool
    ):
        return None
    return "a non-empty 1-D tensor of integer class indices [batch]"


def _accumulate(parameter: Tensor, grad: Tensor) -> None:
    """As loss.backward(): the first gradient becomes .grad (a copy of its own), later ones are added to it."""
    if parameter.grad is None:
        parameter.grad = grad.to(parameter.dtype).clone()
    else:
        parameter.grad.add_(grad)
