"""Diagnosing & Re-learning (Wei et al., ECCV 2024) as an epoch-end step for any PyTorch loop (methods.md section 8).

Diagnosis: a branch whose features separate the classes much better on train than on val has memorised train (or,
with the gap the other way, not learned it); the purity of a k-means clustering of its features measures both.
Per branch m, every `every` epochs and at most `max_times` times:

    purity(X, y) = fraction of samples whose label is the majority label of their cluster, for k-means with K = the
                   number of classes on the min-max-scaled (per feature column) rows of X
    d_m = |purity(train_m) - purity(val_m)|,   alpha_m = tanh(3 d_m)
    theta_m <- alpha_m * theta_m^init + (1 - alpha_m) * theta_m     (every parameter of the branch, in place)

theta^init is each branch's parameters when the DandR is made (kept on the CPU). Buffers (BatchNorm's running
statistics) and the optimizer's state are left as they are. Training between re-initialisations is plain CE.

k-means is scikit-learn's with `random_state` from `seed` and a fixed number of restarts (N_INIT), so the same
features give the same alpha in every process; the global random generators are never drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from biasaudit._core.arguments import at_least, checked
from biasaudit.errors import InputError
from biasaudit.methods._branches import branches_rule

N_INIT = 10  # k-means restarts; the best inertia wins (sklearn's classic default, fixed so that results do not move)
SHARPNESS = 3.0  # alpha = tanh(SHARPNESS * d)


def _seed_rule(value: int) -> str | None:
    return None if 0 <= value < 2**32 else "an integer from 0 to 2**32 - 1"


def _rows(features: Any, labels: Any, *, where: str, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] float features and N integer labels as numpy arrays; one sentence naming the argument (`names`: how the
    features and the labels are called) otherwise."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.dtype.is_floating_point:
        got = (
            f"a {features.dtype} tensor of shape {tuple(features.shape)}"
            if isinstance(features, torch.Tensor)
            else type(features).__name__
        )
        raise InputError(f"The {names[0]} of {where} is {got}; expected a 2-D float tensor [samples, feature size].")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
        or labels.numel() != features.shape[0]
    ):
        got = (
            f"a {labels.dtype} tensor of shape {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        raise InputError(
            f"The {names[1]} of {where} is {got}; expected {features.shape[0]} integer labels, one per row of the {names[0]}."
        )
    label_array = labels.detach().cpu().long().numpy()
    if label_array.size and label_array.min() < 0:
        raise InputError(f"The {names[1]} of {where} holds {int(label_array.min())}; expected labels of at least 0.")
    rows = features.detach().cpu().double().numpy()
    if not np.isfinite(rows).all():
        raise InputError(f"The {names[0]} of {where} holds NaN or infinite values; expected finite features.")
    return rows, label_array


def _purity(rows: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int) -> float:
    from sklearn.cluster import KMeans

    low, span = rows.min(axis=0), np.ptp(rows, axis=0)
    scaled = (rows - low) / np.where(span > 0, span, 1.0)  # a constant column becomes 0, not NaN
    clusters = KMeans(n_clusters=num_classes, n_init=N_INIT, random_state=seed).fit_predict(scaled)
    width = int(labels.max()) + 1
    table = np.bincount(clusters * width + labels, minlength=num_classes * width).reshape(num_classes, width)
    return float(table.max(axis=1).sum() / labels.size)


@checked("biasaudit.methods.dandr.purity", num_classes=at_least(1), seed=_seed_rule)
def purity(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int = 0) -> float:
    """The k-means purity of `features` [N, D] for `labels` [N]: min-max scale each column, cluster into
    `num_classes` clusters (k-means, `random_state=seed`), and return the fraction of samples whose label is the
    majority label of their cluster."""
    where = "biasaudit.methods.dandr.purity"
    rows, label_array = _rows(features, labels, where=where, names=("'features' parameter", "'labels' parameter"))
    if rows.shape[0] < num_classes:
        raise InputError(
            f"The 'features' parameter of {where} has {rows.shape[0]} rows; expected at least num_classes = "
            f"{num_classes} to make that many clusters."
        )
    return _purity(rows, label_array, num_classes=num_classes, seed=seed)


@checked("biasaudit.methods.dandr.reinit_strength")
def reinit_strength(purity_train: float, purity_val: float) -> float:
    """alpha = tanh(3 |purity_train - purity_val|): how far a branch moves back to its initial weights."""
    return math.tanh(SHARPNESS * abs(purity_train - purity_val))


@dataclass(frozen=True)
class Relearning:
    """One re-initialisation: per branch, the purities, their gap d and the alpha applied."""

    epoch: int
    purity_train: dict[str, float]
    purity_val: dict[str, float]
    gap: dict[str, float]
    alpha: dict[str, float]


class DandR:
    """D&R's epoch-end step: diagnose each branch by its train/val purity gap and pull it back towards its initial
    weights by alpha = tanh(3 d).

    Loop lines (a plain loop; make it when the weights are the ones to return to, after DDP wrapped the model)::

        dandr = DandR({"image": model.image_branch, "text": model.text_branch}, every=20, max_times=3)
        for epoch in range(epochs):
            train_one_epoch(model, optimizer)                          # plain CE, unchanged
            if dandr.due(epoch):                                       # only then pay for a feature pass
                tr, va = branch_features(model, train_loader), branch_features(model, val_loader)  # dicts of [N, D]
                dandr.epoch_end(epoch, tr, train_labels, va, val_labels)     # re-initialises in place; dandr.last

    `epoch` counts from 0; it is time after every `every`-th epoch (epoch + 1 a multiple of `every`), at most
    `max_times` times, once per epoch. Under DDP pass the full train and val feature sets on every rank (gather them):
    k-means is deterministic, so every rank computes the same alpha and the replicas stay equal.
    """

    @checked(
        "DandR", branches=lambda value: branches_rule(value, least=1), every=at_least(1), max_times=at_least(0), seed=_seed_rule
    )
    def __init__(self, branches: Mapping[str, nn.Module], *, every: int = 20, max_times: int = 3, seed: int = 0) -> None:
        self.branches = dict(branches)
        self.every, self.max_times, self.seed = every, max_times, seed
        self._init = {
            name: {key: p.detach().cpu().clone() for key, p in module.named_parameters()}
            for name, module in self.branches.items()
        }
        self.times = 0
        self._last_epoch = -1
        self.last: Relearning | None = None

    @checked("DandR.due", epoch=at_least(0))
    def due(self, epoch: int) -> bool:
        """Whether `epoch_end(epoch, ...)` re-initialises (and so needs the features)."""
        return (epoch + 1) % self.every == 0 and self.times < self.max_times and epoch > self._last_epoch

    @checked("DandR.epoch_end", epoch=at_least(0))
    def epoch_end(
        self,
        epoch: int,
        train_features: Mapping[str, torch.Tensor] | None = None,
        train_labels: torch.Tensor | None = None,
        val_features: Mapping[str, torch.Tensor] | None = None,
        val_labels: torch.Tensor | None = None,
    ) -> Relearning | None:
        """At a due epoch, diagnose and re-initialise every branch in place and return what was done (also `last`);
        otherwise None, and the features may be left out."""
        where = "DandR.epoch_end"
        if not self.due(epoch):
            return None
        data = {"train": (train_features, train_labels), "val": (val_features, val_labels)}
        rows: dict[str, dict[str, np.ndarray]] = {}
        labels: dict[str, np.ndarray] = {}
        for split, (features, split_labels) in data.items():
            if features is None or split_labels is None:
                raise InputError(
                    f"{where} is due at epoch {epoch} (see DandR.due) but got no {split} features or labels; "
                    f"expected {split}_features (a dict keyed like the branches) and {split}_labels."
                )
            if set(features) != set(self.branches):
                raise InputError(
                    f"The '{split}_features' parameter of {where} has keys {sorted(features)}; "
                    f"expected the branches' {sorted(self.branches)}."
                )
            for name in self.branches:
                names = (f"{name!r} entry of the '{split}_features' parameter", f"'{split}_labels' parameter")
                rows.setdefault(name, {})[split], labels[split] = _rows(features[name], split_labels, where=where, names=names)
        num_classes = max(int(labels[split].max()) for split in labels) + 1
        for split in labels:
            if labels[split].size < num_classes:
                raise InputError(
                    f"The '{split}_features' parameter of {where} has {labels[split].size} rows; "
                    f"expected at least one per class ({num_classes}) to make that many clusters."
                )
        found = {
            name: {split: _purity(rows[name][split], labels[split], num_classes=num_classes, seed=self.seed) for split in labels}
            for name in self.branches
        }
        step = Relearning(
            epoch=epoch,
            purity_train={n: f["train"] for n, f in found.items()},
            purity_val={n: f["val"] for n, f in found.items()},
            gap={n: abs(f["train"] - f["val"]) for n, f in found.items()},
            alpha={n: reinit_strength(f["train"], f["val"]) for n, f in found.items()},
        )
        with torch.no_grad():
            for name, module in self.branches.items():
                alpha = step.alpha[name]
                for key, parameter in module.named_parameters():
                    start = self._init[name][key].to(device=parameter.device, dtype=parameter.dtype)
                    parameter.mul_(1.0 - alpha).add_(start, alpha=alpha)
        self.times += 1
        self._last_epoch = epoch
        self.last = step
        return step

    @checked("DandR.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """theta^init of every branch (CPU tensors), how many re-initialisations were done and the last one's epoch."""
        return {
            "init": {name: {key: t.clone() for key, t in params.items()} for name, params in self._init.items()},
            "times": self.times,
            "last_epoch": self._last_epoch,
        }

    @checked("DandR.load_state_dict")
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        where = "DandR.load_state_dict"
        init, times, last_epoch = state_dict.get("init"), state_dict.get("times"), state_dict.get("last_epoch")
        if not isinstance(init, Mapping) or not isinstance(times, int) or not isinstance(last_epoch, int):
            raise InputError(
                f"The 'state_dict' parameter of {where} has keys {sorted(state_dict)}; expected the mapping "
                "DandR.state_dict() returns (init, times, last_epoch)."
            )
        for name, module in self.branches.items():
            saved = init.get(name)
            shapes = {key: tuple(p.shape) for key, p in module.named_parameters()}
            if not isinstance(saved, Mapping) or {k: tuple(t.shape) for k, t in saved.items()} != shapes:
                raise InputError(
                    f"The 'state_dict' parameter of {where} does not hold the initial weights of branch {name!r} "
                    "as this DandR's branches have them; expected a state from a DandR over the same branches."
                )
        self._init = {name: {key: t.detach().cpu().clone() for key, t in init[name].items()} for name in self.branches}
        self.times, self._last_epoch = times, last_epoch
