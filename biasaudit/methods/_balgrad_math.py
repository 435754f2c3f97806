"""BalGrad's math (methods.md section 7) as pure functions over explicit parameter lists: the one-sided projection,
the KL weights, the λ schedule, the running-average losses, the mutual KL and the gradient step. The component
for any loop is methods.balgrad.BalGrad; biasaudit's loop reaches it through training/method_balgrad.py.

One step, with θ_v = the first branch's trainable parameters, θ_l = the second's and θ_T every other trainable
parameter (fusion and classifier):

    g_T  = ∇L_T over θ_T, θ_v, θ_l
    g_kl = λ·[0 ; w_v ∇_{θ_v} KL_v ; w_l ∇_{θ_l} KL_l]
    g_T is projected against g_kl (one-sided; globally, or per modality slice), then
    θ_T.grad = g_T|θ_T   and   θ_m.grad = g_T|θ_m + β ∇_{θ_m} L_m + g_kl|θ_m.

Only two modalities: the mutual KL and the reweighting of the spec pair v with l; `mutual_kl` and `balgrad_step`
refuse anything else. Robust by construction: L_v and its KL term are differentiated w.r.t. θ_v only (likewise for
l), so θ_T never receives a unimodal or KL gradient even if a caller forgets to detach the head.

The step is two phases, so that a DDP caller can average the raw gradients over the processes between them:
`raw_gradients` (five autograd passes, or three when each modality's terms reach only its own branch) and `combine`
(weights, projection, sum, in the same arithmetic for every caller). `balgrad_step` runs both and *writes* `.grad`
(replacing what is there). The autograd side (`raw_gradients`, `balgrad_step` and their checks) is
_balgrad_gradients.py; this module is the arithmetic.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from biasaudit._core.arguments import checked_keywords
from biasaudit.errors import InputError

KL_MODES = ("mutual", "undirected")
PROJECTIONS = ("global", "per_modality")
SCHEDULES = ("linear", "constant")


def project_conflict(g_task: Tensor, g_kl: Tensor) -> tuple[Tensor, float, float, bool]:
    """One-sided projection of flat gradients: (projected g_T, cos before, cos after, conflicted).

    If <g_T, g_kl> < 0, g_T loses its component along g_kl; otherwise g_T is returned as is (the same
    tensor). A zero g_kl never conflicts. The cosines are nan where either vector is exactly zero.
    The scalars are computed in float64 so that the projected vector is orthogonal to g_kl up to the
    rounding of its own dtype.
    """
    if g_task.dim() != 1 or g_task.shape != g_kl.shape:
        raise InputError(
            f"project_conflict needs two flat vectors of equal length, got shapes {tuple(g_task.shape)} and {tuple(g_kl.shape)}."
        )
    task64, kl64 = g_task.double(), g_kl.double()
    # The figures each read once, the ones of one moment in one synchronisation.
    inner, task_norm, kl_norm = torch.stack([torch.dot(task64, kl64), task64.norm(), kl64.norm()]).tolist()
    cos_before = _cosine_of(inner, task_norm, kl_norm)
    if not inner < 0:
        return g_task, cos_before, cos_before, False
    coefficient = inner / float(torch.dot(kl64, kl64))  # ||g_kl|| > 0 because the inner product is not 0
    projected = (task64 - coefficient * kl64).to(g_task.dtype)
    back = projected.double()
    projected_norm, projected_inner = torch.stack([back.norm(), torch.dot(back, kl64)]).tolist()
    return projected, cos_before, _cosine_of(projected_inner, projected_norm, kl_norm), True


def kl_weights(loss_v: float, loss_l: float) -> tuple[float, float]:
    """(w_v, w_l) = (L_v, L_l)/(L_v + L_l): the lower-loss modality gets less of the KL gradient.

    Both losses zero (both modalities perfect): (0.5, 0.5).
    """
    for name, value in (("loss_v", loss_v), ("loss_l", loss_l)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(
                f"kl_weights got {name}={value!r}; expected a finite loss >= 0 (a diverged training step or a wrong loss)."
            )
    total = loss_v + loss_l
    if total == 0:
        return 0.5, 0.5
    return loss_v / total, loss_l / total


@dataclass(frozen=True, kw_only=True)
class LambdaSchedule:
    """The mutual-learning weight λ_t for steps 0 .. total_steps - 1.

    linear: λ_0 at step 0, rising linearly to 1 at step total_steps - 1 and staying 1 after it
    (a loop that runs a step too many gets 1, not more). With total_steps = 1, step 0 gets λ_0.
    constant: λ_0 at every step. Our reading of the spec's "switches: constant": the ablation of
    the *growth*, keeping the configured initial factor; pass initial=1.0 for a constant 1.
    """

    kind: str = "linear"
    initial: float = 0.1
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise InputError(f"Unknown λ schedule {self.kind!r}; expected one of {', '.join(SCHEDULES)}.")
        if not (math.isfinite(self.initial) and 0 <= self.initial <= 1):
            raise InputError(f"λ_0 = {self.initial!r} is not a number between 0 and 1.")
        if self.kind == "linear" and not (isinstance(self.total_steps, int) and self.total_steps >= 1):
            raise InputError(f"The linear λ schedule needs total_steps >= 1, got {self.total_steps!r}.")

    def at(self, step: int) -> float:
        step = operator.index(step)
        if step < 0:
            raise InputError(f"λ schedule asked for step {step}; steps start at 0.")
        if self.kind == "constant":
            return float(self.initial)
        assert self.total_steps is not None  # checked in __post_init__
        if self.total_steps == 1:
            return float(self.initial)
        fraction = min(step, self.total_steps - 1) / (self.total_steps - 1)
        return float(self.initial + (1.0 - self.initial) * fraction)


@dataclass(kw_only=True)
class RunningLosses:
    """Exponential moving averages of (L_v, L_l): the "running-average weights" switch of methods.md
    7.4, whose momentum the spec leaves open; 0.9 is our choice (about the last ten batches).

    The first update sets the averages to that batch's losses, so early weights are not biased toward
    whichever loss a zero start would favour. `values` is plain floats so a resumed run restores it
    bit for bit.
    """

    momentum: float = 0.9
    values: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise InputError(f"Running-average momentum {self.momentum!r} is not a number in [0, 1).")

    def update(self, loss_v: float, loss_l: float) -> tuple[float, float]:
        """Fold in one batch's losses; return the new (average L_v, average L_l)."""
        if self.values is None:
            self.values = (float(loss_v), float(loss_l))
        else:
            m = self.momentum
            self.values = (m * self.values[0] + (1 - m) * float(loss_v), m * self.values[1] + (1 - m) * float(loss_l))
        return self.values


def mutual_kl(unimodal: Mapping[str, Tensor], *, mode: str = "mutual") -> dict[str, Tensor]:
    """The KL term each branch is differentiated by: {v: KL_v, l: KL_l}, batch means, temperature 1.

    mutual (deep mutual learning): KL_v = KL(sg(p_l) || p_v), KL_l = KL(sg(p_v) || p_l).
    undirected: one KL(p_v || p_l), returned for both modalities (differentiated w.r.t. both).
    """
    name_v, name_l = two_names(unimodal, what="mutual_kl")
    if mode not in KL_MODES:
        raise InputError(f"Unknown KL mode {mode!r}; expected one of {', '.join(KL_MODES)}.")
    # In float32 whatever autocast gives: CPU autocast leaves log_softmax in float16, whose backward overflows to NaN
    # under a GradScaler's scale (CUDA autocast computes it in float32 already).
    log_v = torch.log_softmax(unimodal[name_v].float(), dim=1)
    log_l = torch.log_softmax(unimodal[name_l].float(), dim=1)
    if mode == "mutual":
        return {name_v: _kl(log_l.detach(), log_v), name_l: _kl(log_v.detach(), log_l)}
    undirected = _kl(log_v, log_l)
    return {name_v: undirected, name_l: undirected}


@dataclass(frozen=True)
class BalGradStep:
    """methods.md section 7.7. cos_* are those of the whole flat vectors (nan where undefined);
    `conflicted` says whether a projection was applied (any modality's, in per-modality mode)."""

    loss_task: float
    loss_v: float
    loss_l: float
    weight_v: float
    weight_l: float
    lam: float
    cos_before: float
    cos_after: float
    conflicted: bool

    @checked_keywords("BalGradStep.to_dict")  # biasaudit's loop logs it at every step: checked's cost is kept off
    def to_dict(self) -> dict[str, float | bool | None]:
        out: dict[str, float | bool | None] = asdict(self)
        for key in ("cos_before", "cos_after"):
            if math.isnan(getattr(self, key)):
                out[key] = None  # JSON has no nan
        return out


def combine(
    raw: Sequence[Tensor],
    losses: tuple[float, float, float],
    *,
    task_size: int,
    lam: float,
    beta: float,
    projection: str,
    weights: tuple[float, float] | None,
) -> tuple[Tensor, BalGradStep]:
    """(the final flat gradient over θ_T + θ_v + θ_l, the step's log) from `raw_gradients` and (L_T, L_v, L_l)."""
    g_task, kl_v, kl_l, uni_v, uni_l = raw
    loss_task, loss_v, loss_l = losses
    if weights is None:
        weights = kl_weights(loss_v, loss_l)
    elif len(weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise InputError(f"balgrad_step: weights={weights!r}; expected two finite numbers >= 0 (w_v, w_l).")
    zeros = g_task.new_zeros(task_size)  # g_kl and ∇L_m are zero on θ_T
    g_kl = torch.cat([zeros, (lam * weights[0]) * kl_v, (lam * weights[1]) * kl_l])
    unimodal = torch.cat([zeros, beta * uni_v, beta * uni_l])

    if projection == "global":
        projected, cos_before, cos_after, conflicted = project_conflict(g_task, g_kl)
    else:
        projected, conflicted = g_task.clone(), False
        start = task_size
        for size in (kl_v.numel(), kl_l.numel()):
            piece = slice(start, start + size)
            projected[piece], _, _, hit = project_conflict(g_task[piece], g_kl[piece])
            conflicted = conflicted or hit
            start += size
        cos_before, cos_after = _cosine(g_task.double(), g_kl.double()), _cosine(projected.double(), g_kl.double())

    final = projected + g_kl + unimodal
    return final, BalGradStep(
        loss_task=loss_task,
        loss_v=loss_v,
        loss_l=loss_l,
        weight_v=weights[0],
        weight_l=weights[1],
        lam=float(lam),
        cos_before=cos_before,
        cos_after=cos_after,
        conflicted=conflicted,
    )


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per sample, averaged over the batch."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def _cosine(a: Tensor, b: Tensor) -> float:
    inner, a_norm, b_norm = torch.stack([torch.dot(a, b), a.norm(), b.norm()]).tolist()
    return _cosine_of(inner, a_norm, b_norm)


def _cosine_of(inner: float, a_norm: float, b_norm: float) -> float:
    """cos from ⟨a, b⟩, ‖a‖ and ‖b‖; nan where either vector is exactly zero."""
    norms = a_norm * b_norm
    if norms == 0:
        return math.nan
    return max(-1.0, min(1.0, inner / norms))


def two_names(mapping: Mapping[str, Any], *, what: str) -> tuple[str, str]:
    names = list(mapping)
    if len(names) != 2:
        raise InputError(f"{what} works with exactly two modalities (v, l), got {names}.")
    return names[0], names[1]
