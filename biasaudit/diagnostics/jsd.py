"""The JSD diagnostic of modality bias (methods.md section 3).

For each bias value k: P_k = the label distribution of the *training* samples with bias k (the
bias-conditioned prior); W_k = the evaluation samples with bias k that the model gets wrong under the
`full` condition; Q_k = the model's outputs on W_k, either the mean softmax (`soft`, the default) or
the histogram of predicted labels (`argmax`). JSD_k in bits lies in [0, 1]; a low value means the
model's mistakes copy the bias prior, i.e. the model follows the shortcut.

Choices (recorded in every result):
- `mean` is the unweighted mean of soft JSD_k over bias values with |W_k| >= min_wrong (default 30),
  because a Q_k estimated from a handful of mistakes is noise; None when no value qualifies.
- `weighted_mean` weights every k with |W_k| > 0 by |W_k| (no threshold: the weights already make
  rare values count little). `argmax_*` are the same two means for the argmax variant.
- `most_frequent` is the bias value with the most evaluation samples (smallest k on ties).
- A bias value with no training sample has no prior, so its JSD is None and it enters no mean.
- Soft sums are accumulated in fixed point (units of 2**-32) in integers, so a result does not depend
  on batch size or order by even one bit; the rounding (< 1.2e-10 per probability) is far below any
  reported digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar
from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from sklearn.cluster import KMeans

from biasaudit.diagnostics.protocol import BatchOutcome, FinishContext, PassFacts, Section, unavailable
from biasaudit.errors import DataError, InputError

_FIXED_POINT = float(2**32)


def jsd_base2(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1], with 0 log 0 = 0; p and q are normalised first."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    for name, v in (("p", p), ("q", q)):
        if v.ndim != 1 or v.shape != p.shape or not np.all(np.isfinite(v)) or np.any(v < 0) or v.sum() <= 0:
            raise InputError(
                f"Distribution {name} = {v.tolist()} is not usable; expected two 1-D non-negative "
                f"arrays of the same length with a positive sum."
            )
    # scipy returns the square root of the divergence; its sum can round a hair below 0 for p == q.
    with np.errstate(invalid="ignore"):
        value = float(jensenshannon(p, q, base=2) ** 2)
    return min(max(value, 0.0), 1.0) if np.isfinite(value) else 0.0


def _check_codes(values: np.ndarray, *, what: str, size: int, length: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(f"{what} has shape {array.shape} and dtype {array.dtype}; expected a 1-D integer array.")
    if length is not None and array.shape[0] != length:
        raise DataError(f"{what} has {array.shape[0]} rows; expected {length}, one per sample.")
    if array.size and (array.min() < 0 or array.max() >= size):
        raise DataError(f"{what} holds values from {array.min()} to {array.max()}; expected ids in [0, {size - 1}].")
    return array.astype(np.int64)


class BiasPrior:
    """Counts n_i^k of label i among training samples with bias value k (also what MMDB's margins need)."""

    def __init__(self, *, num_classes: int, num_bias: int) -> None:
        if num_classes < 1 or num_bias < 1:
            raise InputError(f"num_classes={num_classes}, num_bias={num_bias}; expected both at least 1.")
        self.num_classes, self.num_bias = int(num_classes), int(num_bias)
        self._counts = np.zeros((num_bias, num_classes), dtype=np.int64)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> BiasPrior:
        """From a [num_bias, num_classes] array of non-negative integer counts."""
        array = np.asarray(counts)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or np.any(array < 0):
            raise InputError(
                f"Prior counts have shape {array.shape} and dtype {array.dtype}; expected a 2-D "
                f"[num_bias, num_classes] array of non-negative integers."
            )
        prior = cls(num_classes=array.shape[1], num_bias=array.shape[0])
        prior._counts += array
        return prior

    @property
    def counts(self) -> np.ndarray:
        return self._counts.copy()

    def update(self, labels: np.ndarray, bias: np.ndarray) -> None:
        y = _check_codes(labels, what="labels", size=self.num_classes)
        k = _check_codes(bias, what="bias values", size=self.num_bias, length=y.shape[0])
        cells = np.bincount(k * self.num_classes + y, minlength=self._counts.size)
        self._counts += cells.reshape(self._counts.shape)

    def merge(self, other: BiasPrior) -> None:
        if self._counts.shape != other._counts.shape:
            raise InputError(
                f"Cannot merge a prior of shape {other._counts.shape} into one of shape "
                f"{self._counts.shape}; expected the same bias values and classes."
            )
        self._counts += other._counts

    def is_empty(self, k: int) -> bool:
        return bool(self._counts[k].sum() == 0)

    def distribution(self, k: int) -> np.ndarray:
        """P_k as probabilities; raises DataError when no training sample has bias value k."""
        if self.is_empty(k):
            raise DataError(f"No training sample has bias value {k}; its label prior is undefined.")
        return self._counts[k] / self._counts[k].sum()


@dataclass(frozen=True)
class JSDResult:
    per_bias: dict[str, dict]
    mean: float | None
    weighted_mean: float | None
    argmax_mean: float | None
    argmax_weighted_mean: float | None
    most_frequent: dict
    min_wrong: int
    variant: str = "soft"

    def to_dict(self) -> dict:
        return {
            "per_bias": {name: dict(row) for name, row in self.per_bias.items()},
            "mean": self.mean,
            "weighted_mean": self.weighted_mean,
            "argmax_mean": self.argmax_mean,
            "argmax_weighted_mean": self.argmax_weighted_mean,
            "most_frequent": dict(self.most_frequent),
            "min_wrong": self.min_wrong,
            "variant": self.variant,
        }


def _means(rows: list[dict], key: str, min_wrong: int) -> tuple[float | None, float | None]:
    scored = [r for r in rows if r[key] is not None]
    qualifying = [r[key] for r in scored if r["n_wrong"] >= min_wrong]
    mean = float(np.mean(qualifying)) if qualifying else None
    weights = [r["n_wrong"] for r in scored]
    weighted = float(np.average([r[key] for r in scored], weights=weights)) if scored else None
    return mean, weighted


class JSDAccumulator:
    """Streams the `full` condition's softmax outputs; per bias value keeps counts and wrong-sample sums."""

    def __init__(self, *, num_classes: int, num_bias: int) -> None:
        if num_classes < 1 or num_bias < 1:
            raise InputError(f"num_classes={num_classes}, num_bias={num_bias}; expected both at least 1.")
        self.num_classes, self.num_bias = int(num_classes), int(num_bias)
        self.n_eval = np.zeros(num_bias, dtype=np.int64)
        self.n_wrong = np.zeros(num_bias, dtype=np.int64)
        self.soft_sum = np.zeros((num_bias, num_classes), dtype=np.int64)  # fixed point, units of 2**-32
        self.argmax_hist = np.zeros((num_bias, num_classes), dtype=np.int64)

    def update(self, probabilities: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> None:
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise DataError(f"Probabilities have shape {probs.shape}; expected [batch, {self.num_classes}].")
        if probs.size and (not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(axis=1) - 1.0).max() > 1e-3):
            raise DataError(
                "Probabilities are not softmax outputs (non-negative rows summing to 1); expected softmax(logits), not logits."
            )
        y = _check_codes(labels, what="labels", size=self.num_classes, length=probs.shape[0])
        k = _check_codes(bias, what="bias values", size=self.num_bias, length=probs.shape[0])
        predicted = probs.argmax(axis=1) if probs.size else np.zeros(0, dtype=np.int64)
        wrong = predicted != y
        self.n_eval += np.bincount(k, minlength=self.num_bias)
        self.n_wrong += np.bincount(k[wrong], minlength=self.num_bias)
        np.add.at(self.soft_sum, k[wrong], np.rint(probs[wrong] * _FIXED_POINT).astype(np.int64))
        cells = np.bincount(k[wrong] * self.num_classes + predicted[wrong], minlength=self.argmax_hist.size)
        self.argmax_hist += cells.reshape(self.argmax_hist.shape)

    def merge(self, other: JSDAccumulator) -> None:
        if (self.num_classes, self.num_bias) != (other.num_classes, other.num_bias):
            raise InputError(
                f"Cannot merge a JSD accumulator of (classes, bias values) "
                f"{(other.num_classes, other.num_bias)} into one of {(self.num_classes, self.num_bias)}."
            )
        for name in ("n_eval", "n_wrong", "soft_sum", "argmax_hist"):
            getattr(self, name).__iadd__(getattr(other, name))

    def result(self, prior: BiasPrior, *, min_wrong: int = 30, bias_names: Sequence[str] | None = None) -> JSDResult:
        if (prior.num_classes, prior.num_bias) != (self.num_classes, self.num_bias):
            raise InputError(
                f"The prior covers (classes, bias values) {(prior.num_classes, prior.num_bias)}; "
                f"expected {(self.num_classes, self.num_bias)} like the evaluation data."
            )
        if min_wrong < 1:
            raise InputError(f"min_wrong is {min_wrong}; expected at least 1 wrong sample per bias value.")
        names = [str(k) for k in range(self.num_bias)] if bias_names is None else [str(n) for n in bias_names]
        if len(names) != self.num_bias or len(set(names)) != len(names):
            raise InputError(f"bias_names {names} must be {self.num_bias} unique names, one per bias value.")
        if self.n_eval.sum() == 0:
            raise DataError("The JSD diagnostic saw no evaluation samples; expected at least one batch.")
        rows: list[dict[str, Any]] = []  # the section's JSON rows
        for k in range(self.num_bias):
            n_wrong = int(self.n_wrong[k])
            p = None if prior.is_empty(k) else prior.distribution(k)
            q_soft = self.soft_sum[k] / _FIXED_POINT / n_wrong if n_wrong else None
            q_argmax = self.argmax_hist[k] / n_wrong if n_wrong else None
            rows.append(
                {
                    "bias": k,
                    "n_eval": int(self.n_eval[k]),
                    "n_wrong": n_wrong,
                    # q_soft and q_argmax exist exactly when the bias value has mistakes (n_wrong > 0)
                    "soft": jsd_base2(p, q_soft) if p is not None and q_soft is not None else None,
                    "argmax": jsd_base2(p, q_argmax) if p is not None and q_argmax is not None else None,
                    "prior": p.tolist() if p is not None else None,
                    "q_soft": q_soft.tolist() if q_soft is not None else None,
                    "q_argmax": q_argmax.tolist() if q_argmax is not None else None,
                }
            )
        mean, weighted = _means(rows, "soft", min_wrong)
        argmax_mean, argmax_weighted = _means(rows, "argmax", min_wrong)
        top = rows[int(np.argmax(self.n_eval))]
        return JSDResult(
            per_bias=dict(zip(names, rows, strict=True)),
            mean=mean,
            weighted_mean=weighted,
            argmax_mean=argmax_mean,
            argmax_weighted_mean=argmax_weighted,
            most_frequent={"bias": top["bias"], "name": names[top["bias"]], "soft": top["soft"], "argmax": top["argmax"]},
            min_wrong=int(min_wrong),
        )


def discover_bias_clusters(train_embeddings: np.ndarray, *, k: int = 16, seed: int = 0) -> KMeans:
    """k-means bias values for data without a bias attribute, fitted on training-split embeddings.

    k is clipped to the number of distinct points, so a tiny or degenerate split still gets a valid
    clustering; `predict` on evaluation embeddings then gives their bias values.
    """
    x = np.asarray(train_embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise DataError(
            f"Training embeddings have shape {x.shape}; expected a finite [samples, features] array with at least one sample."
        )
    if k < 1:
        raise InputError(f"k is {k}; expected at least 1 cluster.")
    clusters = min(int(k), len(np.unique(x, axis=0)))
    return KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(x)


class JSDDiagnostic:
    """The JSD as a scan diagnostic (biasaudit/diagnostics/protocol.py): the Full condition's mistakes per bias value,
    against the train split's priors. Without priors it says why in its section. When the data has no bias key, the
    scan discovers bias values after its pass and feeds a JSDDiagnostic of the discovered priors itself (`add`)."""

    part_classes: ClassVar[tuple[type, ...]] = (JSDAccumulator,)

    def __init__(self, facts: PassFacts) -> None:
        self.split = facts.config.split
        self.accumulator = (
            JSDAccumulator(num_classes=facts.num_classes, num_bias=facts.prior.num_bias) if facts.prior is not None else None
        )

    def update(self, outcome: BatchOutcome) -> None:
        if self.accumulator is None or outcome.bias is None:
            return
        if outcome.bias.size and outcome.bias.max() >= self.accumulator.num_bias:
            # The range was counted over this very split before the pass, so only changing data gets here.
            raise DataError(
                f"Split {self.split!r} yielded bias value {int(outcome.bias.max())}, "
                f"beyond the {self.accumulator.num_bias} values counted before the scan; "
                "the adapter's data() must yield the same samples on every pass."
            )
        self.add(torch.softmax(outcome.full_logits.float(), dim=1).cpu().numpy(), outcome.labels, outcome.bias)

    def add(self, probabilities: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> None:
        if self.accumulator is None:
            raise RuntimeError("This JSD diagnostic has no priors to measure against; it cannot take samples.")
        self.accumulator.update(probabilities, labels, bias)

    def merge(self, other: JSDDiagnostic) -> None:
        if (self.accumulator is None) != (other.accumulator is None):
            raise InputError("Cannot merge shards of which only some measured the JSD; expected parts of one scan.")
        if self.accumulator is not None and other.accumulator is not None:
            self.accumulator.merge(other.accumulator)

    def compute(self, context: FinishContext) -> Section:
        if self.accumulator is None:
            why = context.prior_note or "The JSD diagnostic is unavailable."
            return Section(unavailable(why), notes=(why,))
        if context.prior_counts is None:
            raise RuntimeError("The JSD diagnostic has priors but the scan finished without its prior counts.")
        kmeans = context.bias_source == "kmeans"
        result = self.accumulator.result(
            BiasPrior.from_counts(context.prior_counts),
            min_wrong=context.config.min_wrong,
            bias_names=None if kmeans else context.bias_names,
        ).to_dict()
        note: str | None = context.prior_note if kmeans else None
        wrong = sum(row["n_wrong"] for row in result["per_bias"].values())
        notes: tuple[str, ...] = ()
        if wrong == 0:
            # Nothing to measure is a finding, not a failure: say it instead of showing an empty chart.
            note = " ".join(
                filter(
                    None,
                    [
                        note,
                        f"The model makes no mistakes on split {context.config.split!r}, so the JSD of its "
                        "mistakes against the bias priors has nothing to measure.",
                    ],
                )
            )
            notes = (note,)
        result.update(available=True, bias_source=context.bias_source, note=note, n_wrong=wrong)
        return Section(result, notes=notes)

    def reset(self) -> None:
        if self.accumulator is not None:
            self.accumulator = JSDAccumulator(num_classes=self.accumulator.num_classes, num_bias=self.accumulator.num_bias)
