"""DFR, Deep Feature Reweighting (Kirichenko et al., ICLR 2023; methods.md section 8): a post-hoc refit of a
model's final nn.Linear on group-balanced held-out features. No training loop; it replaces none of a loop's lines.

    feats = classifier_inputs(model, model.classifier, val_inputs)   # [N, D], everything below frozen
    result = DFR(seed=0).fit(feats, val_labels, val_groups)          # groups: ids of (label, bias value)
    result.write_into(model.classifier)                              # the model now predicts with DFR's layer
    print(result.note)                                               # chosen C, subset size, where the data came from

Protocol. Groups are (label, bias value) pairs (section 9), every group at least 2 samples, every class present.
1. C is chosen from `c_grid` by worst-group accuracy on one half of the held-out set, with the fit on the other half
   (both halves split within each group, so both see every group). Ties go to the higher mean group accuracy, then
   to the smaller C (stronger regularisation).
2. Refit at that C on all of it. A fit: standardise the features (mean and std of the data being fitted), draw
   `subsets` group-balanced subsets (every group subsampled without replacement to the smallest group's size), fit
   L2-regularised multinomial logistic regression (scikit-learn, lbfgs) on each, average weights and intercepts.
3. Fold the standardisation into the layer: W = W_s / s, b = b_s - W_s (mu / s), so the nn.Linear takes raw features.

Speed. The fits of one stage run at one C in order, each warm-started from the previous subset's solution (the
subsets overlap and their optima are close), and the C's of the tuning run in ascending order, each warm-started from
the last fit of the smaller C. Tuning averages `tune_subsets` subsets (default 3) instead of `subsets`: it only ranks
the C's. When every group already has the smallest group's size, all subsets equal the whole set; it is fitted once.

Randomness. Only numpy Generators seeded from `seed` (independent child streams for the halves, the tuning subsets
and the final subsets); global generators are never touched. Same inputs and seed, same weights.

Without a `val` split, fit on a seeded 20% of train (`holdout_indices`) and pass `split=` so the result says so.
`classifier_inputs` and `holdout_indices` are dfr_data.py's; the fits themselves _dfr_fits.py's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn

from biasaudit._core.arguments import at_least, check_argument, checked
from biasaudit.errors import InputError
from biasaudit.methods._dfr_checks import checked_features, checked_groups, checked_integers, checked_num_classes, is_number
from biasaudit.methods._dfr_fits import average_fits, standardisation, subset_rows, tuning_halves

C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
SUBSETS = 10
TUNE_SUBSETS = 3
MAX_ITER = 1000


@dataclass(frozen=True, eq=False)
class DFRResult:
    """A refitted linear layer: `weight` [K, D] and `bias` [K] take the raw classifier inputs (standardisation folded
    in). The standardised-space fit and the tuning record are kept for inspection and reports."""

    weight: np.ndarray  # float64 [K, D], raw-feature space
    bias: np.ndarray  # float64 [K]
    c: float  # the chosen inverse regularisation strength
    c_grid: tuple[float, ...]  # the candidates, ascending
    tuning_worst_group: tuple[float, ...]  # worst-group accuracy on the tuning half, per C of c_grid
    tuning_mean_group: tuple[float, ...]  # mean group accuracy on the tuning half, per C (the tie-break)
    group_ids: tuple[int, ...]  # the group ids seen, ascending
    group_sizes: tuple[int, ...]  # their sample counts in the whole held-out set
    per_group: int  # samples per group in each balanced subset of the final fit (the smallest group's size)
    subset_size: int  # per_group * number of groups
    subsets: int  # balanced subsets averaged in the final fit
    mean: np.ndarray  # float64 [D], the standardisation of the final fit
    scale: np.ndarray  # float64 [D] (a constant feature has scale 1)
    standardised_weight: np.ndarray  # float64 [K, D], the averaged fit on standardised features
    standardised_bias: np.ndarray  # float64 [K]
    split: str  # where the features came from, as the caller named it
    seed: int
    note: str  # one paragraph for reports: chosen C, balancing, source split, convergence

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])

    @checked("DFRResult.logits")
    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """The refitted layer's logits [N, K] (float64) on raw features [N, D]."""
        where = "DFRResult.logits"
        x = checked_features(features, name="features", where=where)
        if x.shape[1] != self.num_features:
            raise InputError(
                f"The 'features' parameter of {where} has {x.shape[1]} columns; expected {self.num_features}, "
                "the features this DFR result was fitted on."
            )
        logits: np.ndarray = x @ self.weight.T + self.bias
        return logits

    @checked("DFRResult.write_into")
    def write_into(self, classifier: nn.Linear) -> None:
        """Copy the weights into `classifier` in place (under no_grad, keeping its dtype and device). The shape is
        checked before anything is written."""
        where = "DFRResult.write_into"
        if classifier.out_features != self.num_classes or classifier.in_features != self.num_features:
            raise InputError(
                f"The 'classifier' parameter of {where} is nn.Linear({classifier.in_features}, "
                f"{classifier.out_features}); expected nn.Linear({self.num_features}, {self.num_classes}), the "
                "features and classes of this DFR result (fit on that layer's inputs and pass "
                "num_classes=classifier.out_features)."
            )
        if classifier.bias is None:
            raise InputError(
                f"The 'classifier' parameter of {where} has no bias; expected an nn.Linear with one, to fold "
                "the feature standardisation into."
            )
        with torch.no_grad():
            classifier.weight.copy_(torch.as_tensor(self.weight).to(classifier.weight))
            classifier.bias.copy_(torch.as_tensor(self.bias).to(classifier.bias))

    @checked("DFRResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, without the weights."""
        return {
            "c": self.c,
            "c_grid": list(self.c_grid),
            "tuning_worst_group": list(self.tuning_worst_group),
            "tuning_mean_group": list(self.tuning_mean_group),
            "group_ids": list(self.group_ids),
            "group_sizes": list(self.group_sizes),
            "per_group": self.per_group,
            "subset_size": self.subset_size,
            "subsets": self.subsets,
            "num_classes": self.num_classes,
            "num_features": self.num_features,
            "split": self.split,
            "seed": self.seed,
            "note": self.note,
        }


class DFR:
    """Deep Feature Reweighting as a post-hoc refit (module docstring: protocol, speed, randomness).

    `c_grid`: candidate C's (inverse L2 strength of scikit-learn's LogisticRegression); `subsets`: balanced subsets
    averaged in the final fit; `tune_subsets`: those averaged per C while tuning (default min(3, subsets));
    `seed`: the only source of randomness; `max_iter`: lbfgs iterations per fit."""

    @checked(
        "DFR",
        subsets=at_least(1),
        tune_subsets=lambda value: None if value is None else at_least(1)(value),
        seed=at_least(0),
        max_iter=at_least(1),
    )
    def __init__(
        self,
        *,
        c_grid: Iterable[float] = C_GRID,
        subsets: int = SUBSETS,
        tune_subsets: int | None = None,
        seed: int = 0,
        max_iter: int = MAX_ITER,
    ) -> None:
        grid = list(c_grid)  # read once here, not by a value rule: an iterator would be spent by the rule
        check_argument(
            grid,
            list,
            parameter="c_grid",
            where="DFR",
            rule=lambda value: (
                None
                if value and all(is_number(c) and math.isfinite(c) and c > 0 for c in value)
                else "at least one positive, finite number"
            ),
        )
        self.c_grid = tuple(sorted({float(c) for c in grid}))
        self.subsets = int(subsets)
        self.tune_subsets = min(TUNE_SUBSETS, self.subsets) if tune_subsets is None else int(tune_subsets)
        self.seed = int(seed)
        self.max_iter = int(max_iter)

    @checked("DFR.fit", num_classes=lambda value: None if value is None else at_least(2)(value))
    def fit(
        self,
        features: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        groups: np.ndarray | torch.Tensor,
        *,
        num_classes: int | None = None,
        split: str = "val",
    ) -> DFRResult:
        """Fit on held-out classifier inputs [N, D], labels [N] and group ids [N] (section 9's (label, bias value)
        ids, e.g. label * num_bias + bias). `num_classes` defaults to max(label) + 1; every class must occur. `split`
        names the data's source in the result (e.g. "20% of train (seed 0)")."""
        where = "DFR.fit"
        x = checked_features(features, name="features", where=where)
        y = checked_integers(labels, name="labels", length=len(x), where=where)
        g = checked_integers(groups, name="groups", length=len(x), where=where)
        classes = checked_num_classes(y, num_classes, where=where)
        group_ids, group_of, sizes = checked_groups(y, g, classes, where=where)
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(3)]
        # One BLAS/OpenMP thread: these fits are small, and a second thread that spins on a shared or busy CPU made
        # them 10-50x slower in measurement (scanning.py limits BLAS the same way).
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
            warnings.simplefilter("always", ConvergenceWarning)
            worst, mean = self._tune(x, y, group_of, classes, halves=streams[0], subsets_rng=streams[1])
            c = self.c_grid[max(range(len(self.c_grid)), key=lambda i: (worst[i], mean[i], -i))]
            mu, scale = standardisation(x)
            w_s, b_s, per_group, distinct = _balanced_fit(
                (x - mu) / scale, y, group_of, classes, c=c, subsets=self.subsets, rng=streams[2], max_iter=self.max_iter
            )
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        weight = w_s / scale
        bias = b_s - w_s @ (mu / scale)
        note = _note(split, c, worst, self.c_grid, per_group, len(group_ids), self.subsets, distinct, unconverged, self.seed)
        return DFRResult(
            weight=weight,
            bias=bias,
            c=c,
            c_grid=self.c_grid,
            tuning_worst_group=tuple(worst),
            tuning_mean_group=tuple(mean),
            group_ids=tuple(int(i) for i in group_ids),
            group_sizes=tuple(int(n) for n in sizes),
            per_group=per_group,
            subset_size=per_group * len(group_ids),
            subsets=self.subsets,
            mean=mu,
            scale=scale,
            standardised_weight=w_s,
            standardised_bias=b_s,
            split=split,
            seed=self.seed,
            note=note,
        )

    def _tune(
        self,
        x: np.ndarray,
        y: np.ndarray,
        group_of: np.ndarray,
        classes: int,
        *,
        halves: np.random.Generator,
        subsets_rng: np.random.Generator,
    ) -> tuple[list[float], list[float]]:
        """Worst-group and mean group accuracy on one half per C, fitted on the other half. Every C sees the same
        halves and the same balanced subsets, so the C's differ only in C."""
        fit_rows, eval_rows = tuning_halves(group_of, halves)
        mu, scale = standardisation(x[fit_rows])
        x_fit, x_eval = (x[fit_rows] - mu) / scale, (x[eval_rows] - mu) / scale
        draws = subset_rows(group_of[fit_rows], self.tune_subsets, subsets_rng)
        model = LogisticRegression(max_iter=self.max_iter, warm_start=True)  # reused: each C starts where the last ended
        worst, mean = [], []
        for c in self.c_grid:
            w, b = average_fits(x_fit, y[fit_rows], draws, classes, model=model.set_params(C=c))
            correct = (x_eval @ w.T + b).argmax(axis=1) == y[eval_rows]
            accuracy = np.bincount(group_of[eval_rows], weights=correct) / np.bincount(group_of[eval_rows])
            worst.append(float(accuracy.min()))
            mean.append(float(accuracy.mean()))
        return worst, mean


def _balanced_fit(
    x: np.ndarray,
    y: np.ndarray,
    group_of: np.ndarray,
    classes: int,
    *,
    c: float,
    subsets: int,
    rng: np.random.Generator,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    draws = subset_rows(group_of, subsets, rng)
    w, b = average_fits(x, y, draws, classes, model=LogisticRegression(C=c, max_iter=max_iter, warm_start=True))
    return w, b, int(np.bincount(group_of).min()), len(draws)


def _note(
    split: str,
    c: float,
    worst: list[float],
    grid: tuple[float, ...],
    per_group: int,
    groups: int,
    subsets: int,
    distinct: int,
    unconverged: int,
    seed: int,
) -> str:
    tuning = ", ".join(f"C={value:g}: {w:.1%}" for value, w in zip(grid, worst, strict=True))
    averaged = (
        f"averaged over {subsets} seeded group-balanced subsets"
        if distinct > 1
        else "fitted once (the groups are already balanced, so every subset is the whole set)"
    )
    text = (
        f"DFR refitted the final linear layer on {split}: {groups} groups, {per_group} samples each per subset, "
        f"{averaged} (seed {seed}); C={c:g} chosen by worst-group accuracy on half of {split} ({tuning})."
    )
    if unconverged:
        text += f" {unconverged} logistic-regression fit(s) stopped at max_iter before converging."
    return text
