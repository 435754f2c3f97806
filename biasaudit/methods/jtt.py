"""Just Train Twice (Liu et al., ICML 2021) as parts for any PyTorch loop (methods.md section 8).

Stage 1 trains plain ERM for a fraction of the epochs (`stage_one_epochs`). The training samples that model then
misclassifies form the error set E (`record` per batch, `finish` once). Stage 2 trains again from the weights at the
start of stage 1, with each sample of E weighted by lambda (`upweight`, default 10) in the loss (`loss`, `weights`).

Samples are named by their global dataset index, which the loop must pass (a dataset that also returns the index).

Normalisation. The paper upsamples E lambda times and takes the plain mean of each batch drawn from the larger set,
whose expected loss is sum_i w_i l_i / sum_i w_i over the dataset (w_i = lambda on E, 1 elsewhere). `loss` returns the
batch's weighted mean sum(w l) / sum(w), the same ratio over the batch: it keeps cross-entropy's scale, so a learning
rate and a gradient clip tuned for ERM carry over, as they do for the paper's upsampled batches. The other choice,
mean(w l), equals that objective times sum_i w_i / N (2.8 for a 20% error set and lambda = 10) in expectation, a
silently larger step. The ratio of the batch differs from the dataset's by O(1/batch size); in expectation the two
objectives agree.

DDP. `record` is local to each rank; `finish` takes the union of every rank's E (all_gather; every rank must call
it), so the weights are the same everywhere. In `loss`, sum(w) is all-reduced (one scalar) and rank r returns
W * sum_{i in B_r} w_i l_i / sum_{i in B} w_i, so that DDP's averaging over the W ranks gives the gradient of the
global batch's weighted mean (see group_dro.py for the same derivation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords, positive_finite
from biasaudit.errors import InputError
from biasaudit.methods._distributed import world_size


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "a fraction of the epochs above 0 and at most 1"


def _indices(value: torch.Tensor, *, parameter: str, where: str, signs: bool = True) -> torch.Tensor:
    """Dataset indices: a 1-D tensor of integers of at least 0, as long. A training step skips the sign check (`signs`),
    which would wait for the device: an index that is not in E, a negative one included, weighs 1 there."""
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool or value.dim() != 1:
        raise InputError(
            f"The {parameter!r} parameter of {where} is a {value.dtype} tensor of shape {tuple(value.shape)}; "
            "expected a 1-D tensor of integer dataset indices, one per sample."
        )
    if signs and value.numel() and int(value.min()) < 0:
        raise InputError(
            f"The {parameter!r} parameter of {where} holds {int(value.min())}; expected dataset indices of at least 0."
        )
    return value.long()


@dataclass(frozen=True, eq=False)
class ErrorSet:
    """Stage 1's misclassified training samples (over every rank)."""

    indices: torch.Tensor  # sorted unique dataset indices of E (CPU, long)
    recorded: int  # distinct samples recorded
    upweight: float

    @property
    def error_rate(self) -> float:
        return self.indices.numel() / self.recorded if self.recorded else 0.0


class JTT:
    """JTT's stage-1 error set and stage-2 loss weights.

    Loop lines (a plain loop; each batch also yields its dataset indices `i`)::

        jtt, start = JTT(upweight=10.0), copy.deepcopy(model.state_dict())
        for epoch in range(jtt.stage_one_epochs(epochs)): ...          # stage 1: your usual ERM epochs
        with torch.no_grad():
            for i, x, y in train_loader: jtt.record(i, model(x), y)     # model.eval() first
        jtt.finish()                                                    # E, the union over every rank
        model.load_state_dict(start); optimizer = make_optimizer(model)  # stage 2 starts where stage 1 started
        for i, x, y in train_loader:                                    # stage 2, every epoch:
            loss = jtt.loss(F.cross_entropy(model(x), y, reduction="none"), i)   # was: F.cross_entropy(model(x), y)

    A sample recorded more than once is in E when any record of it was wrong. `weights(i)` gives the per-sample
    weights for a loss of one's own.
    """

    @checked("JTT", upweight=positive_finite, fraction=_fraction)
    def __init__(self, *, upweight: float = 10.0, fraction: float = 0.5) -> None:
        self.upweight = float(upweight)
        self.fraction = float(fraction)
        self._wrong: list[torch.Tensor] = []
        self._seen: list[torch.Tensor] = []
        self._errors: ErrorSet | None = None
        self._on: dict[torch.device, torch.Tensor] = {}  # the weight table on each device `weights` was asked on

    @checked("JTT.stage_one_epochs", epochs=at_least(1))
    def stage_one_epochs(self, epochs: int) -> int:
        """Stage 1's length for a run of `epochs` epochs: fraction * epochs, rounded half up, at least 1."""
        return max(1, min(epochs, math.floor(self.fraction * epochs + 0.5)))

    @checked("JTT.record")
    def record(self, indices: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Note which of a batch's samples (by dataset index) the stage-1 model gets wrong (argmax of `logits` [B, C])."""
        where = "JTT.record"
        if self._errors is not None:
            raise InputError(
                f"{where} was called after JTT.finish(); the error set is fixed (load_state_dict or a new JTT to start over)."
            )
        indices = _indices(indices, parameter="indices", where=where)
        if logits.dim() != 2 or not logits.dtype.is_floating_point or logits.shape[0] != indices.numel():
            raise InputError(
                f"The 'logits' parameter of {where} is a {logits.dtype} tensor of shape {tuple(logits.shape)}; "
                f"expected float logits of shape [{indices.numel()}, number of classes], one row per index."
            )
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.numel() != indices.numel():
            raise InputError(
                f"The 'labels' parameter of {where} is a {labels.dtype} tensor of shape {tuple(labels.shape)}; "
                f"expected {indices.numel()} integer labels, one per index."
            )
        if labels.numel():
            low, high = torch.stack(list(torch.aminmax(labels))).tolist()
            if low < 0 or high >= logits.shape[1]:
                raise InputError(
                    f"The 'labels' parameter of {where} holds class {low if low < 0 else high}; expected class "
                    f"indices from 0 to {logits.shape[1] - 1}, the columns of 'logits'."
                )
        wrong = logits.detach().argmax(dim=1) != labels.to(logits.device)
        self._seen.append(indices.cpu())
        self._wrong.append(indices.cpu()[wrong.cpu()])

    @checked("JTT.finish")
    def finish(self) -> ErrorSet:
        """Fix E as the union of what every rank recorded (a collective under DDP: every rank calls it once)."""
        if self._errors is not None:
            return self._errors
        wrong = torch.cat(self._wrong) if self._wrong else torch.zeros(0, dtype=torch.long)
        seen = torch.cat(self._seen) if self._seen else torch.zeros(0, dtype=torch.long)
        if world_size() > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world_size()
            dist.all_gather_object(gathered, (wrong.tolist(), seen.tolist()))
            wrong = torch.tensor([i for part in gathered for i in part[0]], dtype=torch.long)
            seen = torch.tensor([i for part in gathered for i in part[1]], dtype=torch.long)
        if not seen.numel():
            raise InputError(
                "JTT.finish was called before any JTT.record; record stage 1's predictions on the training split first."
            )
        errors = ErrorSet(indices=torch.unique(wrong), recorded=int(torch.unique(seen).numel()), upweight=self.upweight)
        self._set(errors)
        return errors

    def _set(self, errors: ErrorSet) -> None:
        self._errors, self._wrong, self._seen, self._on = errors, [], [], {}

    @property
    def error_set(self) -> ErrorSet | None:
        """E once `finish` (or `load_state_dict`) fixed it, else None."""
        return self._errors

    def _fixed(self, where: str) -> torch.Tensor:
        if self._errors is None:
            raise InputError(
                f"{where} needs the error set, which is not fixed yet; call JTT.record on stage 1's predictions, "
                "then JTT.finish(), first."
            )
        return self._errors.indices

    @checked("JTT.weights")
    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Each sample's loss weight: `upweight` for the samples of E, 1 for the others (float32, on `indices`' device)."""
        self._fixed("JTT.weights")
        return self._weights(_indices(indices, parameter="indices", where="JTT.weights", signs=False))

    def _weights(self, indices: torch.Tensor) -> torch.Tensor:
        # A lookup table, not torch.isin (which sorts E on every call, about 50x slower): entry i + 1 is sample i's
        # weight, and the first and last entries are 1, so that an index outside E's range, negative ones included,
        # clamps onto a 1.
        table = self._on.get(indices.device)
        if table is None:
            members = self._fixed("JTT.weights")
            size = int(members.max()) + 3 if members.numel() else 1
            table = torch.ones(size, dtype=torch.float32)
            table[members + 1] = self.upweight
            table = self._on[indices.device] = table.to(indices.device)
        return table[(indices + 1).clamp(0, table.numel() - 1)]

    @checked_keywords("JTT.loss")
    def loss(self, per_sample_losses: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Stage 2's loss: the weighted mean sum(w l) / sum(w) of the batch (module docstring), as a scalar."""
        where = "JTT.loss"
        # Checked argument by argument rather than by @checked, whose binding and annotation reading cost a training step
        # ~30 us (checked_keywords checks the call's keywords alone, ~1 us), and by check_argument only for its sentence:
        # a training step calls this with tensors.
        if not isinstance(per_sample_losses, torch.Tensor):
            check_argument(per_sample_losses, torch.Tensor, parameter="per_sample_losses", where=where)
        if not isinstance(indices, torch.Tensor):
            check_argument(indices, torch.Tensor, parameter="indices", where=where)
        losses = per_sample_losses
        self._fixed(where)
        if not losses.dtype.is_floating_point or losses.dim() != 1 or not losses.numel():
            raise InputError(
                f"The 'per_sample_losses' parameter of {where} is a {losses.dtype} tensor of shape "
                f"{tuple(losses.shape)}; expected a non-empty 1-D float tensor, one loss per sample "
                "(reduction='none')."
            )
        if torch.is_grad_enabled() and not losses.requires_grad:
            raise InputError(
                f"The 'per_sample_losses' parameter of {where} does not require grad, so training on it would "
                "change nothing; expected the losses computed from the model's output, not detached (or call it "
                "under torch.no_grad() to evaluate)."
            )
        indices = _indices(indices, parameter="indices", where=where, signs=False)
        if indices.numel() != losses.numel():
            raise InputError(
                f"The 'indices' parameter of {where} has {indices.numel()} values and 'per_sample_losses' "
                f"{losses.numel()}; expected one dataset index per sample."
            )
        weights = self._weights(indices).to(device=losses.device, dtype=losses.dtype)
        total = weights.sum()
        world = world_size() if torch.is_grad_enabled() else 1
        if world == 1:
            return (weights * losses).sum() / total
        import torch.distributed as dist

        total = total.detach().float()
        dist.all_reduce(total)
        return world * (weights * losses).sum() / total.to(losses.dtype)

    @checked("JTT.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """E (or, before `finish`, this rank's records so far) as CPU tensors."""
        if self._errors is not None:
            return {"finished": True, "wrong": self._errors.indices.clone(), "recorded": self._errors.recorded}
        wrong = torch.unique(torch.cat(self._wrong)) if self._wrong else torch.zeros(0, dtype=torch.long)
        seen = torch.unique(torch.cat(self._seen)) if self._seen else torch.zeros(0, dtype=torch.long)
        return {"finished": False, "wrong": wrong, "seen": seen}

    @checked("JTT.load_state_dict")
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        where = "JTT.load_state_dict"
        wrong, finished = state_dict.get("wrong"), state_dict.get("finished")
        if (
            not isinstance(wrong, torch.Tensor)
            or not isinstance(finished, bool)
            or (not finished and not isinstance(state_dict.get("seen"), torch.Tensor))
            or (finished and not isinstance(state_dict.get("recorded"), int))
        ):
            raise InputError(
                f"The 'state_dict' parameter of {where} has keys {sorted(state_dict)}; expected the mapping "
                "JTT.state_dict() returns."
            )
        wrong = _indices(wrong, parameter="state_dict", where=where)
        if finished:
            self._set(ErrorSet(indices=torch.unique(wrong.cpu()), recorded=state_dict["recorded"], upweight=self.upweight))
        else:
            self._errors, self._on = None, {}
            self._wrong, self._seen = [wrong.cpu()], [_indices(state_dict["seen"], parameter="state_dict", where=where).cpu()]
