"""Cosine-space embeddings (methods.md section 4): a bounded sample of the fused feature, its 2-D
projection in Euclidean and in cosine space, and the per-class angular spread.

MMDB's claim is about angles: under a bias value k, frequent classes span a wide cone and rare ones
a narrow one. Euclidean plots mix that up with feature norms, so every projection is also made after
L2-normalising each row, which keeps only the direction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from biasaudit.diagnostics.protocol import BatchOutcome, FinishContext, PassFacts, Section, unavailable
from biasaudit.errors import InputError
from biasaudit._core.randomness import uniform

PROJECTION_METHODS = ("umap", "pca")
# Below this many points UMAP's neighbour graph is too thin to mean anything; PCA is used instead.
MIN_UMAP_POINTS = 20
# Below this many points the spectral initialisation of UMAP is fragile (tiny, often disconnected
# graphs), so a seeded random initialisation is used.
MIN_SPECTRAL_POINTS = 100
_SAMPLE_TAG = "embedding-sample"
# umap-learn warns that a fixed random_state forces one thread; determinism is our choice.
_UMAP_SEED_WARNING = r"n_jobs value .* overridden to 1 by setting random_state"
# Rows waiting to be pruned in: (keys, indices, features, labels, bias or None).
_Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


class EmbeddingSample:
    """A seeded bottom-k sample of (feature, label, bias) rows, fed batch by batch.

    Each sample gets a key u_i drawn from its own stream (seed, tag, index); the `capacity` rows
    with the smallest keys are kept (ties broken by index). So the kept set depends only on the set
    of indices seen, never on batch size or order, and memory stays bounded by twice the capacity
    plus one batch. Indices must be unique across updates (the global sample index of the split).
    """

    def __init__(self, *, capacity: int = 5000, seed: int = 0) -> None:
        if capacity < 1:
            raise InputError(f"Embedding sample capacity {capacity} is not positive; expected at least 1 point.")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self._keys = np.zeros(0)
        self._indices = np.zeros(0, dtype=np.int64)
        self._features: np.ndarray | None = None
        self._labels = np.zeros(0, dtype=np.int64)
        self._bias: np.ndarray | None = None
        self._has_bias: bool | None = None
        self._pending: list[_Rows] = []
        self._pending_rows = 0

    def update(self, features: np.ndarray, labels: np.ndarray, bias: np.ndarray | None, *, indices: np.ndarray) -> None:
        features = np.asarray(features)
        features = features.reshape(len(features), -1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not (len(features) == len(labels) == len(indices)) or (bias is not None and len(bias) != len(indices)):
            raise InputError(
                f"Embedding sample update has {len(features)} features, {len(labels)} labels and "
                f"{len(indices)} indices; expected one of each per sample."
            )
        if self._has_bias is None:
            self._has_bias = bias is not None
        elif self._has_bias != (bias is not None):
            raise InputError("Embedding sample updates mix batches with and without bias values; expected all or none.")
        if self._features is None:
            self._features = np.zeros((0, features.shape[1]), dtype=features.dtype)
            self._bias = np.zeros(0, dtype=np.int64) if self._has_bias else None
        keys = uniform(self.seed, _SAMPLE_TAG, indices)
        # Copied: the caller's arrays may be views of tensors that the model or the next batch overwrites.
        self._pending.append(
            (
                keys,
                indices.copy(),
                np.array(features, copy=True),
                labels.copy(),
                None if bias is None else np.array(bias, dtype=np.int64).reshape(-1),
            )
        )
        self._pending_rows += len(indices)
        if len(self._keys) + self._pending_rows > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        """Keep the `capacity` smallest keys of the kept and the waiting rows (pruning waits until twice the capacity
        is reached, so the sort runs every few batches; the kept set is the same)."""
        if not self._pending:
            return
        all_keys = np.concatenate([self._keys, *(p[0] for p in self._pending)])
        all_indices = np.concatenate([self._indices, *(p[1] for p in self._pending)])
        keep = np.lexsort((all_indices, all_keys))[: self.capacity]
        self._keys, self._indices = all_keys[keep], all_indices[keep]
        self._features = np.concatenate([self._features, *(p[2] for p in self._pending)])[keep]
        self._labels = np.concatenate([self._labels, *(p[3] for p in self._pending)])[keep]
        if self._bias is not None:
            self._bias = np.concatenate([self._bias, *(p[4] for p in self._pending)])[keep]
        self._pending, self._pending_rows = [], 0

    def merge(self, other: EmbeddingSample) -> None:
        """Add another shard's kept rows (disjoint indices): the bottom-k of the union is the bottom-k of both."""
        other._prune()
        if other._features is None:
            return
        if self._has_bias is None:
            self._has_bias = other._has_bias
            self._features = np.zeros((0, other._features.shape[1]), dtype=other._features.dtype)
            self._bias = np.zeros(0, dtype=np.int64) if self._has_bias else None
        self._pending.append((other._keys, other._indices, other._features, other._labels, other._bias))
        self._pending_rows += len(other._keys)
        self._prune()

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(features, labels, bias or None, indices) of the kept rows, sorted by index."""
        self._prune()
        order = np.argsort(self._indices, kind="stable")
        features = self._features if self._features is not None else np.zeros((0, 0))
        bias = self._bias[order] if self._bias is not None else None
        return features[order], self._labels[order], bias, self._indices[order]


def bias_subset(bias: np.ndarray, *, value: int | None = None) -> tuple[int, np.ndarray]:
    """The bias value to plot (default: the most frequent, smallest on ties) and the mask of its rows."""
    bias = np.asarray(bias, dtype=np.int64)
    values, counts = np.unique(bias, return_counts=True)
    if values.size == 0:
        raise InputError("No sampled point carries a bias value; expected at least one to choose from.")
    if value is None:
        value = int(values[np.argmax(counts)])
    elif value not in values:
        raise InputError(f"Bias value {value} does not occur in the sampled points. Available: {', '.join(map(str, values))}.")
    return int(value), bias == value


@dataclass(frozen=True)
class Projection:
    euclidean: np.ndarray  # (n, 2)
    cosine: np.ndarray  # (n, 2): the same method applied to the L2-normalised rows
    method_used: str  # "umap" or "pca"
    note: str | None = None


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row has no direction and stays zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def _pca(features: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = features.shape
    out = np.zeros((n, 2))
    k = min(2, n, d)
    if k >= 1 and n >= 2:
        # Two components of a wide embedding: the randomized solver (seeded, so deterministic) costs O(n d) instead of
        # the full SVD's O(n d^2), which for 5,000 points of a 2,048-wide feature took a third of a second per call.
        solver = "randomized" if d > 64 and n > 64 else "full"
        out[:, :k] = PCA(n_components=k, svd_solver=solver, random_state=0).fit_transform(features)
    return out


def _umap(features: np.ndarray, *, seed: int) -> np.ndarray:
    import umap  # type: ignore[import-untyped]  # umap-learn ships neither type hints nor a py.typed marker

    n = len(features)
    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(15, n - 1), random_state=seed, init="spectral" if n >= MIN_SPECTRAL_POINTS else "random"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UMAP_SEED_WARNING, category=UserWarning)
        return np.asarray(reducer.fit_transform(features), dtype=np.float64)


def project_2d(features: np.ndarray, *, method: str = "umap", seed: int = 0) -> Projection:
    """2-D projections of the rows, raw and L2-normalised, with UMAP or PCA.

    UMAP falls back to PCA below MIN_UMAP_POINTS points; the note says so.
    """
    if method not in PROJECTION_METHODS:
        raise InputError(f"Unknown projection method {method!r}. Available: {', '.join(PROJECTION_METHODS)}.")
    features = np.asarray(features, dtype=np.float64)
    features = features.reshape(len(features), -1)
    cosine_features = l2_normalise(features)
    if method == "umap" and len(features) >= MIN_UMAP_POINTS:
        return Projection(_umap(features, seed=seed), _umap(cosine_features, seed=seed), "umap")
    note = None
    if method == "umap":
        note = f"Only {len(features)} points (UMAP needs at least {MIN_UMAP_POINTS}), so PCA was used instead."
    return Projection(_pca(features), _pca(cosine_features), "pca", note)


def angular_spread(features: np.ndarray, labels: np.ndarray, *, num_classes: int) -> list[dict]:
    """Per class present: its count and the mean angle (degrees) of its samples to the class mean direction.

    The mean direction is the normalised mean of the normalised samples. When those cancel out
    (e.g. two opposite vectors) the direction is undefined and mean_angle_deg is None.
    """
    unit = l2_normalise(np.asarray(features).reshape(len(features), -1))
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    rows = []
    for cls in range(num_classes):
        members = unit[labels == cls]
        if len(members) == 0:
            continue
        mean = members.mean(axis=0)
        norm = np.linalg.norm(mean)
        angle = None
        if norm > 1e-12:
            cosines = np.clip(members @ (mean / norm), -1.0, 1.0)
            angle = float(np.degrees(np.arccos(cosines)).mean())
        rows.append({"class": cls, "n": len(members), "mean_angle_deg": angle})
    return rows


class EmbeddingsDiagnostic:
    """The embedding plots as a scan diagnostic (biasaudit/diagnostics/protocol.py): a bounded sample of the Full
    condition's fused feature, and how often each bias value occurs (the plot shows the most frequent one)."""

    part_classes: ClassVar[tuple[type, ...]] = (EmbeddingSample,)

    def __init__(self, facts: PassFacts) -> None:
        self.sample = EmbeddingSample(capacity=facts.config.embedding_points, seed=facts.config.seed)
        self.has_features = False
        self.bias_counts = np.zeros(0, dtype=np.int64)

    def update(self, outcome: BatchOutcome) -> None:
        if outcome.bias is not None:
            self.bias_counts = _added_counts(self.bias_counts, outcome.bias)
        if outcome.features is not None:
            self.has_features = True
            self.sample.update(
                outcome.features.flatten(1).float().cpu().numpy(), outcome.labels, outcome.bias, indices=outcome.indices
            )

    def merge(self, other: EmbeddingsDiagnostic) -> None:
        self.sample.merge(other.sample)
        self.has_features |= other.has_features
        longer = np.zeros(max(len(self.bias_counts), len(other.bias_counts)), dtype=np.int64)
        longer[: len(self.bias_counts)] += self.bias_counts
        longer[: len(other.bias_counts)] += other.bias_counts
        self.bias_counts = longer

    def compute(self, context: FinishContext) -> Section:
        if not self.has_features:
            why = "The adapter has no classifier() hook, so the fused feature is unknown and the embedding plots are skipped."
            return Section(unavailable(why), notes=(why,))
        features, labels, bias, _ = self.sample.result()
        bias_value, bias_name = None, None
        if bias is not None and self.bias_counts.size:
            bias_value = int(np.argmax(self.bias_counts))  # default: the most frequent bias value
            keep = bias == bias_value
            features, labels = features[keep], labels[keep]
            names = context.bias_names
            bias_name = names[bias_value] if names and bias_value < len(names) else str(bias_value)
        if len(labels) < 3:
            why = f"Only {len(labels)} sampled points carry the chosen bias value; too few to plot."
            return Section(unavailable(why), notes=(why,))
        projection = project_2d(features, method=context.config.projection, seed=context.config.seed)
        spread = angular_spread(features, labels, num_classes=context.num_classes)
        if context.prior_counts is not None and bias_value is not None:
            train_counts = context.prior_counts[bias_value]
            for row in spread:
                row["train_count_under_bias"] = int(train_counts[row["class"]])
        note = projection.note
        if bias_value is None:
            note = " ".join(filter(None, [note, "No bias value is available, so all sampled points are shown."]))
        return Section(
            {
                "available": True,
                "note": note,
                "method": projection.method_used,
                "bias_value": bias_value,
                "bias_name": bias_name,
                "n_points": len(labels),
                "euclidean": projection.euclidean.tolist(),
                "cosine": projection.cosine.tolist(),
                "labels": labels.tolist(),
                "angular_spread": spread,
            }
        )

    def reset(self) -> None:
        self.sample = EmbeddingSample(capacity=self.sample.capacity, seed=self.sample.seed)
        self.has_features = False
        self.bias_counts = np.zeros(0, dtype=np.int64)


def _added_counts(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    new = np.bincount(values, minlength=max(len(counts), int(values.max()) + 1 if values.size else 0))
    new[: len(counts)] += counts
    return new
