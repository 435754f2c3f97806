"""DFR's fits (biasaudit.methods.dfr): the tuning halves, the group-balanced subsets, the averaged warm-started
logistic regressions and the standardisation that is folded into the layer. Numbers in, numbers out; the caller
makes the LogisticRegression models."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from biasaudit.errors import InputError


def tuning_halves(group_of: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split every group at random: floor(n/2) rows to fit on, the rest to evaluate (both non-empty for n >= 2)."""
    fit, evaluate = [], []
    for group in range(int(group_of.max()) + 1):
        rows = rng.permutation(np.flatnonzero(group_of == group))
        fit.append(rows[: len(rows) // 2])
        evaluate.append(rows[len(rows) // 2 :])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(evaluate))


def subset_rows(group_of: np.ndarray, subsets: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`subsets` group-balanced row sets (each group subsampled to the smallest group's size, without replacement);
    one set, all rows, when the groups are already balanced (every draw would be the same rows)."""
    sizes = np.bincount(group_of)
    per_group = int(sizes.min())
    if (sizes == per_group).all():
        return [np.arange(len(group_of))]
    members = [np.flatnonzero(group_of == group) for group in range(len(sizes))]
    return [
        np.sort(np.concatenate([rng.choice(rows, size=per_group, replace=False) for rows in members])) for _ in range(subsets)
    ]


def average_fits(
    x: np.ndarray, y: np.ndarray, draws: list[np.ndarray], classes: int, *, model: LogisticRegression
) -> tuple[np.ndarray, np.ndarray]:
    """Mean weights [K, D] and intercepts [K] over fits of `model` (warm_start=True) on each row set of `draws`: each
    fit starts from the previous solution (a fresh model's first fit from zero, as scikit-learn's own)."""
    weights, biases = [], []
    for rows in draws:
        model.fit(x[rows], y[rows])
        if not np.array_equal(model.classes_, np.arange(classes)):  # ruled out by checked_groups; never silently wrong
            raise InputError(f"A balanced subset holds classes {model.classes_.tolist()}, not all {classes}.")
        w, b = model.coef_, model.intercept_
        if classes == 2:  # scikit-learn fits one logit difference z: softmax([-z/2, z/2]) = sigmoid(z)
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        weights.append(w)
        biases.append(b)
    return np.mean(weights, axis=0), np.mean(biases, axis=0)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
