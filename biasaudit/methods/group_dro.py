"""Group DRO (Sagawa et al., ICLR 2020) as a loss for any PyTorch loop (methods.md section 8).

Groups are (label, bias value) pairs, numbered as the audit numbers them (section 9): group = label * num_bias +
bias (`group_ids`). Per step, with L_g the mean loss of the batch's samples of group g:

    q_g <- q_g * exp(eta * L_g)   for the groups present in the batch (L_g detached: q is not trained by backprop)
    q   <- q / sum(q)
    loss = sum over the groups present of q_g * L_g

A group absent from the batch has no L_g: its q_g is not multiplied (it only shrinks through the renormalisation)
and it adds nothing to the loss; the q of the present groups is not renormalised among themselves, so the loss of a
batch that holds few groups is smaller, as in the authors' code (where an absent group's loss is 0).

DDP. With W processes, rank r holding the samples B_r of the global batch B, the global-batch loss is
sum_g q_g S_g / C_g, where S_g = sum over r of the local loss sums S_g^r and C_g the global count. Its gradient is
sum_r sum_g q_g grad(S_g^r) / C_g. DDP averages the ranks' gradients (divides their sum by W), so rank r returns

    loss_r = W * sum_g q_g * S_g^r / C_g

and the averaged gradient is (1/W) * sum_r W * sum_g q_g grad(S_g^r) / C_g, the global one. The detached sums and
counts are all-reduced once per step (one collective of 2 x num_groups numbers), so L_g and hence q are the
global batch's and identical on every rank. The mean of loss_r over the ranks is the global loss (loss_r alone is
not; `last.loss` is). This assumes DDP's default gradient averaging over the default process group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords, non_negative_finite
from biasaudit.errors import InputError
from biasaudit.methods._distributed import world_size


def _integer_tensor(value: Any, *, parameter: str, where: str) -> torch.Tensor:
    """A 1-D tensor of integers (a numpy array is taken too) as a long tensor; refused with one sentence otherwise."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):  # the full check for its sentence only (a training step passes tensors)
        check_argument(value, torch.Tensor, parameter=parameter, where=where)
    tensor: torch.Tensor = value
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool or tensor.dim() != 1:
        raise InputError(
            f"The {parameter!r} parameter of {where} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}; "
            "expected a 1-D tensor of integers."
        )
    return tensor.long()


def _range_error(values: torch.Tensor, upper: int, *, parameter: str, where: str, what: str) -> None:
    """One sentence naming the first value outside [0, upper); one device sync for the whole batch."""
    low, high = torch.stack(list(torch.aminmax(values))).tolist()
    if low < 0 or high >= upper:
        bad = low if low < 0 else high
        raise InputError(f"The {parameter!r} parameter of {where} holds {bad}; expected {what} from 0 to {upper - 1}.")


@checked_keywords("biasaudit.methods.group_dro.group_ids")  # biasaudit's loop calls it at every step: checked's cost kept off
def group_ids(labels: torch.Tensor | np.ndarray, bias: torch.Tensor | np.ndarray, *, num_bias: int) -> torch.Tensor:
    """The group of each sample, label * num_bias + bias (methods.md section 9), as a long tensor; num_groups is then
    num_classes * num_bias. `labels` and `bias` are 1-D integer arrays or tensors of one length."""
    where = "biasaudit.methods.group_dro.group_ids"
    check_argument(num_bias, int, parameter="num_bias", where=where, rule=at_least(1))
    labels = _integer_tensor(labels, parameter="labels", where=where)
    bias = _integer_tensor(bias, parameter="bias", where=where)
    if labels.shape != bias.shape:
        raise InputError(
            f"The 'bias' parameter of {where} has {bias.numel()} values and 'labels' {labels.numel()}; "
            "expected one bias value per label."
        )
    if labels.numel():
        _range_error(bias, num_bias, parameter="bias", where=where, what="bias values")
        if int(labels.min()) < 0:
            raise InputError(f"The 'labels' parameter of {where} holds {int(labels.min())}; expected labels of at least 0.")
    return labels * num_bias + bias.to(labels.device)


@dataclass(frozen=True, eq=False)
class GroupDROStep:
    """The global batch's statistics of the last training step (detached tensors on the loss's device), computed when
    read, so that a step that nobody logs pays nothing for them."""

    _sums: torch.Tensor
    _counts: torch.Tensor
    q: torch.Tensor  # [num_groups] the weights after this step's update

    @property
    def counts(self) -> torch.Tensor:
        """[num_groups] samples of each group in the global batch."""
        return self._counts.long()

    @property
    def group_losses(self) -> torch.Tensor:
        """[num_groups] L_g; NaN for the groups absent from the batch."""
        return torch.where(self._counts > 0, self._sums / self._counts.clamp(min=1), torch.full_like(self._sums, float("nan")))

    @property
    def loss(self) -> torch.Tensor:
        """The global-batch loss sum_g q_g L_g (every rank's returned loss averages to it)."""
        return (self.q * self._sums / self._counts.clamp(min=1)).sum()


class GroupDRO:
    """Group DRO's loss: replaces the mean cross-entropy of a training step; q is state to save and resume.

    Loop lines (a plain loop; the optimizer, AMP's scaler and DDP stay the user's)::

        gdro = GroupDRO.from_train_groups(group_ids(train_labels, train_bias, num_bias=K), num_groups=C * K)
        for x, y, g in loader:                                   # g: each sample's group (group_ids)
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            loss = gdro.loss(per_sample, g)                      # was: loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        torch.save({"model": model.state_dict(), "gdro": gdro.state_dict()}, path)

    q starts uniform over all groups, or over the groups marked in `present` (`from_train_groups`: the groups seen in
    train); a group outside `present` keeps q = 0 and a training batch that holds it is refused. q moves only in a
    call made with gradients enabled; under `torch.no_grad()` (evaluation) `loss` weighs the batch's group losses by
    the current q, moves nothing and, under DDP, returns this rank's value without any collective. Each training call
    is one step: with gradient accumulation q moves once per micro-batch. Under DDP see the module docstring.
    """

    @checked("GroupDRO", num_groups=at_least(1), eta=non_negative_finite)
    def __init__(self, num_groups: int, *, eta: float = 0.01, present: torch.Tensor | Sequence[bool] | None = None) -> None:
        if present is None:
            mask = torch.ones(num_groups, dtype=torch.bool)
        else:
            mask = torch.as_tensor(present)
            if mask.dtype != torch.bool or mask.shape != (num_groups,) or not bool(mask.any()):
                raise InputError(
                    f"The 'present' parameter of GroupDRO is a {mask.dtype} tensor of shape {tuple(mask.shape)}; "
                    f"expected {num_groups} True/False values (one per group), at least one True."
                )
        self.num_groups = num_groups
        self.eta = float(eta)
        self._present = mask.clone()
        self._all_present = bool(mask.all())
        self._q = mask.float() / mask.sum()
        self.last: GroupDROStep | None = None

    @classmethod
    @checked("GroupDRO.from_train_groups", num_groups=at_least(1), eta=non_negative_finite)
    def from_train_groups(cls, train_groups: torch.Tensor | np.ndarray, *, num_groups: int, eta: float = 0.01) -> GroupDRO:
        """A GroupDRO whose q starts uniform over the groups that occur in `train_groups` (every training sample's group)."""
        where = "GroupDRO.from_train_groups"
        groups = _integer_tensor(train_groups, parameter="train_groups", where=where)
        if not groups.numel():
            raise InputError(f"The 'train_groups' parameter of {where} is empty; expected the group of every training sample.")
        _range_error(groups, num_groups, parameter="train_groups", where=where, what="groups")
        return cls(num_groups, eta=eta, present=torch.bincount(groups.cpu(), minlength=num_groups) > 0)

    @property
    def q(self) -> torch.Tensor:
        """The current group weights (a copy)."""
        return self._q.detach().clone()

    @checked_keywords("GroupDRO.loss")
    def loss(self, per_sample_losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The scalar Group DRO loss of a batch (see the class docstring); `per_sample_losses` is the 1-D float loss of
        each sample (e.g. `F.cross_entropy(..., reduction="none")`), `groups` the 1-D integer group of each sample."""
        where = "GroupDRO.loss"
        # Checked argument by argument rather than by @checked, whose binding and annotation reading cost a training step
        # ~30 us (checked_keywords checks the call's keywords alone, ~1 us), and by check_argument only for its sentence:
        # a training step calls this with tensors.
        if not isinstance(per_sample_losses, torch.Tensor):
            check_argument(per_sample_losses, torch.Tensor, parameter="per_sample_losses", where=where)
        if not isinstance(groups, torch.Tensor):
            check_argument(groups, torch.Tensor, parameter="groups", where=where)
        losses = per_sample_losses
        training = torch.is_grad_enabled()
        if not losses.dtype.is_floating_point or losses.dim() != 1 or not losses.numel():
            raise InputError(
                f"The 'per_sample_losses' parameter of {where} is a {losses.dtype} tensor of shape "
                f"{tuple(losses.shape)}; expected a non-empty 1-D float tensor, one loss per sample "
                "(reduction='none')."
            )
        if training and not losses.requires_grad:
            raise InputError(
                f"The 'per_sample_losses' parameter of {where} does not require grad, so training on it would "
                "change nothing; expected the losses computed from the model's output, not detached (or call it "
                "under torch.no_grad() to evaluate)."
            )
        groups = _integer_tensor(groups, parameter="groups", where=where)
        if groups.numel() != losses.numel():
            raise InputError(
                f"The 'groups' parameter of {where} has {groups.numel()} values and 'per_sample_losses' "
                f"{losses.numel()}; expected one group per sample."
            )
        groups = groups.to(losses.device)
        try:
            counts = torch.bincount(groups, minlength=self.num_groups)  # needed anyway; its length shows a group too large
        except RuntimeError:  # a negative group
            counts = None
        if counts is None or counts.numel() != self.num_groups:
            _range_error(groups, self.num_groups, parameter="groups", where=where, what="groups")
        assert counts is not None  # bincount refuses only a negative group, and _range_error has just refused that
        if training and not self._all_present and not bool((present := self._present.to(losses.device))[groups].all()):
            unseen = int(groups[~present[groups]][0])
            raise InputError(
                f"The 'groups' parameter of {where} holds group {unseen}, which was not seen in train (its q is 0, "
                "so its samples would not be trained on); expected the groups of the training split."
            )

        sums = torch.zeros(self.num_groups, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
        q = self._q.to(losses.device)
        if not training:
            return (q.to(losses.dtype) * sums / counts.clamp(min=1).to(losses.dtype)).sum()

        world = world_size()
        global_sums, global_counts = sums.detach().float(), counts.float()
        if world > 1:
            import torch.distributed as dist

            stats = torch.stack([global_sums, global_counts])
            dist.all_reduce(stats)  # global sums and counts: q moves alike on every rank
            global_sums, global_counts = stats
        sizes = global_counts.clamp(min=1)
        group_losses = global_sums / sizes  # 0 for an absent group, so exp(eta * 0) = 1 leaves its q as it was
        q = q * torch.exp(self.eta * group_losses)
        q = q / q.sum()
        self._q = q
        self.last = GroupDROStep(_sums=global_sums, _counts=global_counts, q=q)
        loss = ((q / sizes).to(losses.dtype) * sums).sum()
        # world * local share of each global group mean: DDP's averaging over ranks then gives the global gradient.
        return world * loss if world > 1 else loss

    @checked("GroupDRO.state_dict")
    def state_dict(self) -> dict[str, torch.Tensor]:
        """q and the mask of groups it covers, as CPU tensors (save them with the training state to resume)."""
        return {"q": self._q.detach().cpu().clone(), "present": self._present.clone()}

    @checked("GroupDRO.load_state_dict")
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        where = "GroupDRO.load_state_dict"
        q, present = state_dict.get("q"), state_dict.get("present")
        if not isinstance(q, torch.Tensor) or not isinstance(present, torch.Tensor):
            raise InputError(
                f"The 'state_dict' parameter of {where} has keys {sorted(state_dict)}; expected 'q' and 'present' "
                "tensors from GroupDRO.state_dict()."
            )
        if q.shape != (self.num_groups,) or present.shape != (self.num_groups,) or present.dtype != torch.bool:
            raise InputError(
                f"The 'state_dict' parameter of {where} holds q for {q.numel()} groups; expected {self.num_groups} "
                "(the num_groups this GroupDRO was made with)."
            )
        if not q.dtype.is_floating_point or not bool(torch.isfinite(q).all()) or bool((q < 0).any()) or not float(q.sum()) > 0:
            raise InputError(
                f"The 'state_dict' parameter of {where} holds a q that is not a probability vector; expected "
                "finite non-negative weights with a positive sum."
            )
        self._q = q.float().clone()  # as saved, not renormalised: a resumed run continues bit for bit
        self._present = present.clone()
        self._all_present = bool(present.all())
