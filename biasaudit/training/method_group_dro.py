"""`groupdro`: Group DRO (methods.md section 8) in fix's loop, calling biasaudit.methods.GroupDRO exactly as a
user's loop does: per-sample cross-entropy, then `gdro.loss(per_sample, groups)` in place of the mean.

Groups are (label, bias value) with the bias value from the adapter's bias_key or discovered by k-means as MMDB
does (bias_groups.py). q starts uniform over the groups seen in train (without held-out rows) and is saved with
the training state after every epoch, so --resume continues with the q the interrupted run had."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit._core.arguments import non_negative_finite
from biasaudit.errors import CheckpointError, InputError
from biasaudit.methods.group_dro import GroupDRO as GroupDROLoss, group_ids
from biasaudit.training.bias_groups import BiasGroups
from biasaudit.training.method_ce import train_labels


class GroupDRO:
    name = "groupdro"
    # "auto" chooses η on validation data from this grid (selection.py): a decade either side of 0.01, the range
    # Sagawa et al. and DomainBed search.
    option_grid = ("eta", (0.001, 0.01, 0.1))
    discovers_bias = True  # fix passes the audit's k-means k and dominant modality, as for MMDB

    def __init__(
        self, *, eta: float = 0.01, bias: str = "auto", kmeans_k: int | None = None, dominant: str | None = None
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or non_negative_finite(eta) is not None:
            raise InputError(f"eta is {eta!r}; expected a finite number of at least 0 (Group DRO's step size for q).")
        self.eta = float(eta)
        self.groups = BiasGroups("Group DRO", bias=bias, kmeans_k=kmeans_k, dominant=dominant)
        self.gdro: GroupDROLoss | None = None

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        self.groups.check(model, adapter)

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        labels, bias = self.groups.fit(model, adapter, device=device)
        num_groups = adapter.num_classes * self.groups.num_bias
        self.gdro = GroupDROLoss.from_train_groups(
            group_ids(labels, bias, num_bias=self.groups.num_bias), num_groups=num_groups, eta=self.eta
        )
        self._train_sizes = torch.bincount(torch.as_tensor(labels * self.groups.num_bias + bias), minlength=num_groups)

    def _prepared(self) -> GroupDROLoss:
        """The loss prepare() made (the loop prepares a method before any step or resume)."""
        if self.gdro is None:
            raise RuntimeError("Group DRO was used before prepare(model, adapter, device=...).")
        return self.gdro

    def batch_groups(self, batch, adapter: Adapter, labels: torch.Tensor, *, device: torch.device) -> torch.Tensor:
        bias = torch.as_tensor(self.groups.values(batch, adapter, split="train", device=device))
        return group_ids(labels, bias.to(labels.device), num_bias=self.groups.num_bias)

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        labels = train_labels(batch, adapter, device)
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        gdro = self._prepared()
        loss = gdro.loss(per_sample, self.batch_groups(batch, adapter, labels, device=device))
        # No share: the component normalises over the processes itself. loss_scale: fp16's scale (precision.py).
        (loss * loss_scale).backward()
        if gdro.last is None:  # loss() records the step it computed
            raise RuntimeError("Group DRO's loss recorded no step.")
        q = gdro.last.q
        top = int(q.argmax())
        # A summary of q per step (the whole vector is in the training state): its largest weight and that group.
        return {
            "loss": float(loss.detach()),
            "q_max": float(q[top]),
            "q_max_group": top,
            "q_max_label": top // self.groups.num_bias,
            "q_max_bias": top % self.groups.num_bias,
        }

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eta": self.eta, **self.groups.settings()}
        if self.gdro is not None:
            out["groups"] = {
                "num_groups": self.gdro.num_groups,
                "seen_in_train": int((self._train_sizes > 0).sum()),
                "smallest_seen": int(self._train_sizes[self._train_sizes > 0].min()),
                "q_start": "uniform over the groups seen in train",
            }
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"group_dro": self._prepared().state_dict(), **self.groups.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "group_dro" not in state:
            raise CheckpointError(
                "The training state to resume holds no Group DRO weights q; resume with the method that wrote it."
            )
        self.groups.adopt_state(state)
        self._prepared().load_state_dict(state["group_dro"])
