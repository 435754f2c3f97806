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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords
from biasaudit._core.annotations import shown
from biasaudit.errors import ArgumentTypeError, InputError

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
        x = _features(features, name="features", where=where)
        if x.shape[1] != self.num_features:
            raise InputError(f"The 'features' parameter of {where} has {x.shape[1]} columns; expected {self.num_features}, "
                             "the features this DFR result was fitted on.")
        logits: np.ndarray = x @ self.weight.T + self.bias
        return logits

    @checked("DFRResult.write_into")
    def write_into(self, classifier: nn.Linear) -> None:
        """Copy the weights into `classifier` in place (under no_grad, keeping its dtype and device). The shape is
        checked before anything is written."""
        where = "DFRResult.write_into"
        if classifier.out_features != self.num_classes or classifier.in_features != self.num_features:
            raise InputError(f"The 'classifier' parameter of {where} is nn.Linear({classifier.in_features}, "
                             f"{classifier.out_features}); expected nn.Linear({self.num_features}, {self.num_classes}), the "
                             "features and classes of this DFR result (fit on that layer's inputs and pass "
                             "num_classes=classifier.out_features).")
        if classifier.bias is None:
            raise InputError(f"The 'classifier' parameter of {where} has no bias; expected an nn.Linear with one, to fold "
                             "the feature standardisation into.")
        with torch.no_grad():
            classifier.weight.copy_(torch.as_tensor(self.weight).to(classifier.weight))
            classifier.bias.copy_(torch.as_tensor(self.bias).to(classifier.bias))

    @checked("DFRResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, without the weights."""
        return {
            "c": self.c, "c_grid": list(self.c_grid), "tuning_worst_group": list(self.tuning_worst_group),
            "tuning_mean_group": list(self.tuning_mean_group), "group_ids": list(self.group_ids),
            "group_sizes": list(self.group_sizes), "per_group": self.per_group, "subset_size": self.subset_size,
            "subsets": self.subsets, "num_classes": self.num_classes, "num_features": self.num_features,
            "split": self.split, "seed": self.seed, "note": self.note,
        }


class DFR:
    """Deep Feature Reweighting as a post-hoc refit (module docstring: protocol, speed, randomness).

    `c_grid`: candidate C's (inverse L2 strength of scikit-learn's LogisticRegression); `subsets`: balanced subsets
    averaged in the final fit; `tune_subsets`: those averaged per C while tuning (default min(3, subsets));
    `seed`: the only source of randomness; `max_iter`: lbfgs iterations per fit."""

    @checked("DFR", subsets=at_least(1), tune_subsets=lambda value: None if value is None else at_least(1)(value),
             seed=at_least(0), max_iter=at_least(1))
    def __init__(self, *, c_grid: Iterable[float] = C_GRID, subsets: int = SUBSETS, tune_subsets: int | None = None,
                 seed: int = 0, max_iter: int = MAX_ITER) -> None:
        grid = list(c_grid)  # read once here, not by a value rule: an iterator would be spent by the rule
        check_argument(grid, list, parameter="c_grid", where="DFR",
                       rule=lambda value: None if value and all(_is_number(c) and math.isfinite(c) and c > 0 for c in value)
                       else "at least one positive, finite number")
        self.c_grid = tuple(sorted({float(c) for c in grid}))
        self.subsets = int(subsets)
        self.tune_subsets = min(TUNE_SUBSETS, self.subsets) if tune_subsets is None else int(tune_subsets)
        self.seed = int(seed)
        self.max_iter = int(max_iter)

    @checked("DFR.fit", num_classes=lambda value: None if value is None else at_least(2)(value))
    def fit(self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
            groups: np.ndarray | torch.Tensor, *, num_classes: int | None = None, split: str = "val") -> DFRResult:
        """Fit on held-out classifier inputs [N, D], labels [N] and group ids [N] (section 9's (label, bias value)
        ids, e.g. label * num_bias + bias). `num_classes` defaults to max(label) + 1; every class must occur. `split`
        names the data's source in the result (e.g. "20% of train (seed 0)")."""
        where = "DFR.fit"
        x = _features(features, name="features", where=where)
        y = _integers(labels, name="labels", length=len(x), where=where)
        g = _integers(groups, name="groups", length=len(x), where=where)
        classes = _num_classes(y, num_classes, where=where)
        group_ids, group_of, sizes = _check_groups(y, g, classes, where=where)
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(3)]
        # One BLAS/OpenMP thread: these fits are small, and a second thread that spins on a shared or busy CPU made
        # them 10-50x slower in measurement (scanning.py limits BLAS the same way).
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
            warnings.simplefilter("always", ConvergenceWarning)
            worst, mean = self._tune(x, y, group_of, classes, halves=streams[0], subsets_rng=streams[1])
            c = self.c_grid[max(range(len(self.c_grid)), key=lambda i: (worst[i], mean[i], -i))]
            mu, scale = _standardisation(x)
            w_s, b_s, per_group, distinct = _balanced_fit(
                (x - mu) / scale, y, group_of, classes, c=c, subsets=self.subsets, rng=streams[2], max_iter=self.max_iter)
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        weight = w_s / scale
        bias = b_s - w_s @ (mu / scale)
        note = _note(split, c, worst, self.c_grid, per_group, len(group_ids), self.subsets, distinct, unconverged, self.seed)
        return DFRResult(
            weight=weight, bias=bias, c=c, c_grid=self.c_grid, tuning_worst_group=tuple(worst),
            tuning_mean_group=tuple(mean), group_ids=tuple(int(i) for i in group_ids),
            group_sizes=tuple(int(n) for n in sizes), per_group=per_group, subset_size=per_group * len(group_ids),
            subsets=self.subsets, mean=mu, scale=scale, standardised_weight=w_s, standardised_bias=b_s,
            split=split, seed=self.seed, note=note)

    def _tune(self, x: np.ndarray, y: np.ndarray, group_of: np.ndarray, classes: int, *, halves: np.random.Generator,
              subsets_rng: np.random.Generator) -> tuple[list[float], list[float]]:
        """Worst-group and mean group accuracy on one half per C, fitted on the other half. Every C sees the same
        halves and the same balanced subsets, so the C's differ only in C."""
        fit_rows, eval_rows = _halves(group_of, halves)
        mu, scale = _standardisation(x[fit_rows])
        x_fit, x_eval = (x[fit_rows] - mu) / scale, (x[eval_rows] - mu) / scale
        draws = _subset_rows(group_of[fit_rows], self.tune_subsets, subsets_rng)
        model = LogisticRegression(max_iter=self.max_iter, warm_start=True)  # reused: each C starts where the last ended
        worst, mean = [], []
        for c in self.c_grid:
            w, b = _average_fits(x_fit, y[fit_rows], draws, classes, model=model.set_params(C=c))
            correct = (x_eval @ w.T + b).argmax(axis=1) == y[eval_rows]
            accuracy = np.bincount(group_of[eval_rows], weights=correct) / np.bincount(group_of[eval_rows])
            worst.append(float(accuracy.min()))
            mean.append(float(accuracy.mean()))
        return worst, mean


@checked_keywords("classifier_inputs")  # the types below, by check_argument (the classifier's sentence is its own)
def classifier_inputs(model: nn.Module, classifier: nn.Linear, batches: Iterable[Any], *,
                      forward: Callable[[nn.Module, Any], Any] | None = None) -> torch.Tensor:
    """The inputs of `classifier` (an nn.Linear inside `model`) over `batches`, float32 [N, D] on the CPU.

    The model runs in eval mode under no_grad; each module's own train/eval flag is restored afterwards. Each batch
    is run as `forward(model, batch)` when given (e.g. `lambda m, b: m(b["image"].cuda(), b["text"].cuda())` for a
    loader that also yields labels), else a tuple or list as `model(*batch)`, a dict as `model(**batch)` and anything
    else as `model(batch)`. `classifier` must run exactly once per batch."""
    where = "classifier_inputs"
    check_argument(model, nn.Module, parameter="model", where=where)
    # Worded by hand, not by check_argument: "classifier must be an nn.Linear" and "classifier is not a submodule of
    # model" are the phrases tests/test_method_dfr.py looks for.
    if not isinstance(classifier, nn.Linear):
        raise ArgumentTypeError(f"The 'classifier' parameter of {where} is {shown(classifier)}, but the classifier must be an "
                                "nn.Linear: the model's own final linear layer (e.g. model.classifier).")
    if not any(module is classifier for module in model.modules()):
        raise InputError(f"The 'classifier' parameter of {where} is {shown(classifier)}, but this classifier is not a submodule "
                         "of model; expected the model's own final nn.Linear (e.g. model.classifier).")
    check_argument(batches, Iterable[Any], parameter="batches", where=where)
    check_argument(forward, Callable[[nn.Module, Any], Any] | None, parameter="forward", where=where)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    modes = [(module, module.training) for module in model.modules()]
    handle = classifier.register_forward_pre_hook(keep)
    chunks: list[torch.Tensor] = []
    try:
        model.eval()
        with torch.no_grad():
            for index, batch in enumerate(batches):
                captured.clear()
                _run(model, batch, forward)
                if len(captured) != 1:
                    raise InputError(f"The {'forward' if forward is not None else 'model'!r} parameter of {where} ran so "
                                     f"that the classifier ran {len(captured)} times on batch {index}; expected exactly one run "
                                     "of 'classifier' per forward of 'model'.")
                if captured[0].ndim != 2 or captured[0].shape[1] != classifier.in_features:
                    raise InputError(f"The 'classifier' parameter of {where} got an input of shape {tuple(captured[0].shape)} "
                                     f"on batch {index}; expected [batch, {classifier.in_features}], its in_features.")
                chunks.append(captured[0])
    finally:
        handle.remove()
        for module, training in modes:
            module.training = training
    if not chunks:
        raise InputError(f"The 'batches' parameter of {where} is {shown(batches)}, whose batches yielded no batch; expected "
                         "the held-out inputs (e.g. a DataLoader over val).")
    return torch.cat(chunks)


@checked("holdout_indices", num_samples=at_least(1), seed=at_least(0),
         fraction=lambda value: None if 0 < value < 1 else "a number strictly between 0 and 1")
def holdout_indices(num_samples: int, *, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded `fraction` of `num_samples` (at least one): DFR's data when there is no val split.
    Say so with `DFR.fit(..., split=f"{fraction:.0%} of train (seed {seed})")`."""
    size = max(1, round(num_samples * float(fraction)))
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=size, replace=False))


def _run(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any] | None) -> None:
    if forward is not None:
        forward(model, batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    elif isinstance(batch, dict):
        model(**batch)
    else:
        model(batch)


def _halves(group_of: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split every group at random: floor(n/2) rows to fit on, the rest to evaluate (both non-empty for n >= 2)."""
    fit, evaluate = [], []
    for group in range(int(group_of.max()) + 1):
        rows = rng.permutation(np.flatnonzero(group_of == group))
        fit.append(rows[: len(rows) // 2])
        evaluate.append(rows[len(rows) // 2:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(evaluate))


def _subset_rows(group_of: np.ndarray, subsets: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`subsets` group-balanced row sets (each group subsampled to the smallest group's size, without replacement);
    one set, all rows, when the groups are already balanced (every draw would be the same rows)."""
    sizes = np.bincount(group_of)
    per_group = int(sizes.min())
    if (sizes == per_group).all():
        return [np.arange(len(group_of))]
    members = [np.flatnonzero(group_of == group) for group in range(len(sizes))]
    return [np.sort(np.concatenate([rng.choice(rows, size=per_group, replace=False) for rows in members]))
            for _ in range(subsets)]


def _balanced_fit(x: np.ndarray, y: np.ndarray, group_of: np.ndarray, classes: int, *, c: float, subsets: int,
                  rng: np.random.Generator, max_iter: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    draws = _subset_rows(group_of, subsets, rng)
    w, b = _average_fits(x, y, draws, classes, model=LogisticRegression(C=c, max_iter=max_iter, warm_start=True))
    return w, b, int(np.bincount(group_of).min()), len(draws)


def _average_fits(x: np.ndarray, y: np.ndarray, draws: list[np.ndarray], classes: int, *,
                  model: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """Mean weights [K, D] and intercepts [K] over fits of `model` (warm_start=True) on each row set of `draws`: each
    fit starts from the previous solution (a fresh model's first fit from zero, as scikit-learn's own)."""
    weights, biases = [], []
    for rows in draws:
        model.fit(x[rows], y[rows])
        if not np.array_equal(model.classes_, np.arange(classes)):  # ruled out by _check_groups; never silently wrong
            raise InputError(f"A balanced subset holds classes {model.classes_.tolist()}, not all {classes}.")
        w, b = model.coef_, model.intercept_
        if classes == 2:  # scikit-learn fits one logit difference z: softmax([-z/2, z/2]) = sigmoid(z)
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        weights.append(w)
        biases.append(b)
    return np.mean(weights, axis=0), np.mean(biases, axis=0)


def _standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


def _features(value: Any, *, name: str, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    check_argument(value, np.ndarray, parameter=name, where=where)
    if value.ndim != 2 or not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise InputError(f"The {name!r} parameter of {where} has dtype {value.dtype} and shape {value.shape}; expected a "
                         "2-D numeric array [samples, features].")
    x: np.ndarray = value.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"The {name!r} parameter of {where} holds NaN or infinite values; expected finite classifier inputs.")
    return x


def _integers(value: Any, *, name: str, length: int, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    check_argument(value, np.ndarray, parameter=name, where=where)
    if not np.issubdtype(value.dtype, np.integer):
        raise ArgumentTypeError(f"The {name!r} parameter of {where} must hold integers; got dtype {value.dtype}.")
    if value.ndim != 1 or len(value) != length:
        raise InputError(f"The {name!r} parameter of {where} has shape {value.shape}; expected one entry per row of "
                         f"'features' ({length}), 1-D.")
    if length and value.min() < 0:
        raise InputError(f"The {name!r} parameter of {where} holds {int(value.min())}; expected values of at least 0.")
    integers: np.ndarray = value.astype(np.int64)
    return integers


def _num_classes(y: np.ndarray, num_classes: int | None, *, where: str) -> int:
    if len(y) == 0:
        raise InputError(f"The 'features' parameter of {where} has no rows; expected held-out samples with labels and groups.")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if int(y.max()) >= classes:
        raise InputError(f"The 'labels' parameter of {where} holds class {int(y.max())}, but labels must lie in [0, {classes}) "
                         f"for num_classes={classes}.")
    if classes < 2:
        raise InputError(f"The 'labels' parameter of {where} holds a single class (num_classes={classes}); expected at least 2 "
                         "classes.")
    missing = np.flatnonzero(np.bincount(y, minlength=classes) == 0)
    if missing.size:
        raise InputError(f"The 'labels' parameter of {where} lacks class(es) {missing.tolist()} of {classes}; expected samples "
                         "of every class, since DFR refits every class of the layer.")
    return classes


def _check_groups(y: np.ndarray, g: np.ndarray, classes: int, *, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group ids, each row's dense group index and the group sizes; refuses small or mixed-label groups."""
    group_ids, group_of, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if sizes.min() < 2:
        raise InputError(f"The 'groups' parameter of {where} has group {int(group_ids[sizes.argmin()])} with "
                         f"{int(sizes.min())} sample; expected at least 2 per group (one per tuning half): merge or drop the "
                         "rare groups.")
    label_count = np.zeros((len(group_ids), classes), dtype=np.int64)
    np.add.at(label_count, (group_of, y), 1)
    mixed = np.flatnonzero((label_count > 0).sum(axis=1) > 1)
    if mixed.size:
        labels = np.flatnonzero(label_count[mixed[0]]).tolist()
        raise InputError(f"The 'groups' parameter of {where} has group {int(group_ids[mixed[0]])} holding labels {labels}; "
                         "expected one (label, bias value) pair per group, such as label * num_bias + bias.")
    return group_ids, group_of.reshape(-1), sizes


def _note(split: str, c: float, worst: list[float], grid: tuple[float, ...], per_group: int, groups: int,
          subsets: int, distinct: int, unconverged: int, seed: int) -> str:
    tuning = ", ".join(f"C={value:g}: {w:.1%}" for value, w in zip(grid, worst, strict=True))
    averaged = (f"averaged over {subsets} seeded group-balanced subsets" if distinct > 1 else
                "fitted once (the groups are already balanced, so every subset is the whole set)")
    text = (f"DFR refitted the final linear layer on {split}: {groups} groups, {per_group} samples each per subset, "
            f"{averaged} (seed {seed}); C={c:g} chosen by worst-group accuracy on half of {split} ({tuning}).")
    if unconverged:
        text += f" {unconverged} logistic-regression fit(s) stopped at max_iter before converging."
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
