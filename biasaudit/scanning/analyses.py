"""The diagnostics that read the Full condition: JSD (section 3), embeddings (section 4) and the
gradient-conflict sample (section 5). Each one that cannot run says why in a note, never crashes."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import SplitLabels, bias_range, bias_values, checked_labels, labels_and_bias
from biasaudit.errors import DataError
from biasaudit.diagnostics.embeddings import EmbeddingSample, angular_spread, project_2d
from biasaudit.diagnostics.gradients import SeededSample, gradient_conflict
from biasaudit.diagnostics.jsd import BiasPrior, JSDAccumulator, discover_bias_clusters


def _unavailable(note: str) -> dict[str, Any]:
    return {"available": False, "note": note}


class FullConditionDiagnostics:
    """Streaming state fed by the Full condition of every batch of the main pass."""

    def __init__(self, adapter: Adapter, *, config: Any, prior_counts: np.ndarray | None | str = "read",
                 split_bias_max: int | None = None, train: Callable[[], SplitLabels] | None = None) -> None:
        """prior_counts: the train split's label-under-bias counts when they are known already (a merge of shards, which
        has no data to read), None when there are none; by default they are read from the adapter's train split.
        split_bias_max: the largest bias value of the evaluated split, and train: the train split's labels (read once
        and shared with the rest of the scan); both needed when the priors are read."""
        self.adapter = adapter
        self._split_bias_max = split_bias_max
        self._train = train
        self.config = config
        self.notes: list[str] = []
        self.embeddings = EmbeddingSample(capacity=config.embedding_points, seed=config.seed)
        self.has_features = False
        self.bias_counts = np.zeros(0, dtype=np.int64)
        self.prior: BiasPrior | None = None
        self.jsd: JSDAccumulator | None = None
        self.jsd_note: str | None = None
        self.discovered_bias: np.ndarray | None = None  # k-means cluster of every evaluated sample, by global index
        self.discovery_forwards = 0  # samples forwarded to discover them (train and the evaluated split)
        if adapter.bias_key is None:
            self.jsd_note = "no bias attribute"  # replaced by the k-means discovery in finish()
        elif "train" not in adapter.splits:
            self.jsd_note = "The JSD diagnostic needs the label-under-bias priors of the train split, which the adapter does not offer."
        elif isinstance(prior_counts, str):
            self.prior, num_bias = self._train_prior()
            self.jsd = JSDAccumulator(num_classes=adapter.num_classes, num_bias=num_bias)
        elif prior_counts is not None:
            self.prior = BiasPrior.from_counts(prior_counts)
            self.jsd = JSDAccumulator(num_classes=adapter.num_classes, num_bias=self.prior.num_bias)

    # ---- priors ---------------------------------------------------------------------------------
    def _train_prior(self) -> tuple[BiasPrior, int]:
        if self._train is None or self._split_bias_max is None:
            raise ValueError("reading the JSD priors needs train= and split_bias_max=, read by the scan's pass setup")
        label_array, bias_array = labels_and_bias(self.adapter, "train", batch_size=self.config.batch_size, purpose="the JSD priors",
                                                  read=self._train())
        # Bias values that occur only in the evaluated split (new on an OOD split) are legitimate: they get
        # no prior and no JSD (methods.md section 3 needs a train prior), so size for both splits.
        num_bias = bias_range(self.adapter, bias_array, np.array([self._split_bias_max]))
        prior = BiasPrior(num_classes=self.adapter.num_classes, num_bias=num_bias)
        prior.update(label_array, bias_array)
        return prior, num_bias

    # ---- main pass ------------------------------------------------------------------------------
    def update(self, logits: torch.Tensor, features: torch.Tensor | None, batch: Mapping[str, Any], labels: np.ndarray, *, indices: np.ndarray,
               bias: np.ndarray | None = None) -> None:
        """`bias`: the batch's bias values when the caller has read them already."""
        if self.adapter.bias_key is not None:
            bias = bias_values(batch, self.adapter, split=self.config.split) if bias is None else bias
            if self.jsd is not None and bias.size and bias.max() >= self.jsd.num_bias:
                # The range was counted over this very split before the pass, so only changing data gets here.
                raise DataError(f"Split {self.config.split!r} yielded bias value {int(bias.max())}, beyond the {self.jsd.num_bias} values counted "
                                "before the scan; the adapter's data() must yield the same samples on every pass.")
            self.bias_counts = _add_counts(self.bias_counts, bias)
        if self.jsd is not None:
            self.jsd.update(torch.softmax(logits.float(), dim=1).cpu().numpy(), labels, bias)
        if features is not None:
            self.has_features = True
            self.embeddings.update(features.flatten(1).float().cpu().numpy(), labels, bias, indices=indices)

    # ---- after the pass -------------------------------------------------------------------------
    def gradient_conflict(self, model: nn.Module, *, device: torch.device, progress, sample: SeededSample) -> dict[str, Any]:
        """On `sample`, the seeded batches the pass kept as it read the split."""
        progress("gradients", 0, self.config.gradient_batches)
        conflict = gradient_conflict(model, self.adapter, sample.chosen(), device=device, seed=self.config.seed).to_dict()
        progress("gradients", self.config.gradient_batches, self.config.gradient_batches)
        return conflict

    def finish(self, model: nn.Module | None, *, dominant: str | None, device: torch.device, conflict: dict[str, Any]) -> dict[str, Any]:
        """The JSD, embedding and gradient-conflict sections. `model` is needed only to discover bias values (data without
        a bias key); a merge of shards has none and never needs to."""
        bias_source = "bias_key"
        if self.adapter.bias_key is None:
            bias_source = "kmeans"
            self._discover_bias(model, dominant=dominant, device=device)
        jsd = self._jsd_section(bias_source)
        embeddings = self._embedding_section()
        for section in (jsd, embeddings, conflict):
            if not section.get("available", True) and section.get("note"):
                self.notes.append(section["note"])
        return {"jsd": jsd, "embeddings": embeddings, "gradient_conflict": conflict, "notes": self.notes}

    def _jsd_section(self, bias_source: str) -> dict[str, Any]:
        if self.jsd is None:
            return _unavailable(self.jsd_note or "The JSD diagnostic is unavailable.")
        names = self.adapter.bias_names if bias_source == "bias_key" else None
        result = self.jsd.result(self.prior, min_wrong=self.config.min_wrong, bias_names=names).to_dict()
        note = self.jsd_note if bias_source == "kmeans" else None
        wrong = sum(row["n_wrong"] for row in result["per_bias"].values())
        if wrong == 0:
            # Nothing to measure is a finding, not a failure: say it instead of showing an empty chart.
            note = " ".join(filter(None, [note, f"The model makes no mistakes on split {self.config.split!r}, so the JSD of its "
                                                "mistakes against the bias priors has nothing to measure."]))
            self.notes.append(note)
        result.update(available=True, bias_source=bias_source, note=note, n_wrong=wrong)
        return result

    def _discover_bias(self, model: nn.Module, *, dominant: str | None, device: torch.device) -> None:
        """methods.md section 3: k-means on the dominant modality's embeddings, fitted on train."""
        branches = optional_hook(self.adapter, "branches", model) or {}
        if dominant is None or dominant not in branches:
            self.jsd_note = ("The data has no bias attribute and the adapter has no branches() hook for the dominant modality, "
                             "so no bias values could be discovered; the JSD diagnostic is skipped.")
            return
        if "train" not in self.adapter.splits:
            self.jsd_note = "The data has no bias attribute and the adapter offers no train split to discover one on; the JSD diagnostic is skipped."
            return
        train = _branch_outputs(model, self.adapter, branches[dominant], "train", device=device, batch_size=self.config.batch_size)
        k = self.config.kmeans_k
        clusters = discover_bias_clusters(train["embedding"], k=k, seed=self.config.seed)
        num_bias = int(clusters.n_clusters)
        self.prior = BiasPrior(num_classes=self.adapter.num_classes, num_bias=num_bias)
        self.prior.update(train["label"], clusters.predict(train["embedding"]))
        self.jsd = JSDAccumulator(num_classes=self.adapter.num_classes, num_bias=num_bias)
        evaluation = _branch_outputs(model, self.adapter, branches[dominant], self.config.split, device=device, batch_size=self.config.batch_size)
        self.discovered_bias = clusters.predict(evaluation["embedding"]).astype(np.int64)
        self.discovery_forwards = len(train["label"]) + len(evaluation["label"])
        self.jsd.update(evaluation["probabilities"], evaluation["label"], self.discovered_bias)
        self.jsd_note = (f"The data has no bias attribute: bias values are {num_bias} k-means clusters of the dominant "
                         f"modality's ({dominant}) branch embeddings, fitted on the train split (methods.md section 3).")
        self.notes.append(self.jsd_note)

    def _embedding_section(self) -> dict[str, Any]:
        if not self.has_features:
            return _unavailable("The adapter has no classifier() hook, so the fused feature is unknown and the embedding plots are skipped.")
        features, labels, bias, _ = self.embeddings.result()
        bias_value, bias_name = None, None
        if bias is not None and self.bias_counts.size:
            bias_value = int(np.argmax(self.bias_counts))  # default: the most frequent bias value
            keep = bias == bias_value
            features, labels = features[keep], labels[keep]
            names = self.adapter.bias_names
            bias_name = names[bias_value] if names and bias_value < len(names) else str(bias_value)
        if len(labels) < 3:
            return _unavailable(f"Only {len(labels)} sampled points carry the chosen bias value; too few to plot.")
        projection = project_2d(features, method=self.config.projection, seed=self.config.seed)
        spread = angular_spread(features, labels, num_classes=self.adapter.num_classes)
        if self.prior is not None and bias_value is not None:
            train_counts = self.prior.counts[bias_value]
            for row in spread:
                row["train_count_under_bias"] = int(train_counts[row["class"]])
        note = projection.note
        if bias_value is None:
            note = " ".join(filter(None, [note, "No bias value is available, so all sampled points are shown."]))
        return {"available": True, "note": note, "method": projection.method_used, "bias_value": bias_value,
                "bias_name": bias_name, "n_points": int(len(labels)), "euclidean": projection.euclidean.tolist(),
                "cosine": projection.cosine.tolist(), "labels": labels.tolist(), "angular_spread": spread}


def _add_counts(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    new = np.bincount(values, minlength=max(len(counts), int(values.max()) + 1 if values.size else 0))
    new[: len(counts)] += counts
    return new


def _branch_outputs(model: nn.Module, adapter: Adapter, branch: nn.Module, split: str, *, device: torch.device, batch_size: int) -> dict[str, np.ndarray]:
    captured: list[np.ndarray] = []
    handle = branch.register_forward_hook(lambda module, args, output: captured.append(output.detach().flatten(1).double().cpu().numpy()))
    labels, probabilities = [], []
    try:
        with torch.no_grad():
            for batch in adapter.data(split, batch_size=batch_size):
                logits = adapter.forward(model, adapter.prepare(batch, device=device))
                labels.append(checked_labels(batch, adapter, split=split))
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    finally:
        handle.remove()
    return {"embedding": np.concatenate(captured), "label": np.concatenate(labels), "probabilities": np.concatenate(probabilities)}
