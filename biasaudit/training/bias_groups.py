"""(label, bias value) groups for the loop-bound methods that weigh groups (Group DRO, DFR; methods.md sections 8
and 9). The bias value comes exactly as MMDB gets it (method_mmdb.py): the adapter's bias_key, or, without one, the
k-means discovery of methods.md section 3 (discovered_bias.py: nearest centroid of the dominant branch's embedding
under the frozen starting model). Option `bias` = "key", "kmeans" or "auto" (key when the adapter has one).

A group is label * num_bias + bias (biasaudit.methods.group_ids), num_bias = the bias values made room for
(bias_range) with a key, k with k-means."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import bias_range, labels_and_bias
from biasaudit.errors import AdapterError, CheckpointError, InputError
from biasaudit.training.discovered_bias import DiscoveredBias, dominant_branch
from biasaudit.training.method_mmdb import BIAS_SOURCES, DEFAULT_KMEANS_K, key_bias_values, resolved_bias_source


def check_bias_options(who: str, *, bias: str, kmeans_k: int | None) -> None:
    if bias not in BIAS_SOURCES:
        raise InputError(f"{who} bias source {bias!r} is unknown. Available: {', '.join(BIAS_SOURCES)}.")
    if kmeans_k is not None and (not isinstance(kmeans_k, int) or isinstance(kmeans_k, bool) or kmeans_k < 2):
        raise InputError(f"kmeans_k is {kmeans_k!r}; expected an integer of at least 2 clusters.")


class BiasGroups:
    """Where a method's bias values come from, fitted on train by `fit`, then a function of any batch."""

    def __init__(self, who: str, *, bias: str = "auto", kmeans_k: int | None = None, dominant: str | None = None) -> None:
        check_bias_options(who, bias=bias, kmeans_k=kmeans_k)
        self.who, self.bias, self.kmeans_k, self.dominant = who, bias, kmeans_k, dominant
        self.source: str | None = None  # "key" or "kmeans" once fitted
        self.label: str | None = None  # where the values came from, in words
        self.discovered: DiscoveredBias | None = None
        self.num_bias = 0

    def resolved(self, adapter: Adapter) -> str:
        if self.bias == "key" and adapter.bias_key is None:
            raise AdapterError(
                f"{self.who} with bias='key' needs a bias value per sample (the adapter's bias_key); this adapter "
                "declares none, so declare bias_key or use bias='auto' or 'kmeans' to discover bias values."
            )
        return resolved_bias_source(adapter, bias=self.bias)

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        """Refuse, in one sentence and before any audit, an adapter that can give no bias value."""
        if self.resolved(adapter) != "kmeans":
            return
        branches = optional_hook(adapter, "branches", model)
        why = "declares no bias_key" if adapter.bias_key is None else "was asked for k-means bias values (bias='kmeans')"
        if not branches:
            raise AdapterError(
                f"{self.who} needs a (label, bias value) group per sample, but the adapter {why} and has no "
                "branches(model) hook to discover bias values with; declare the adapter's bias_key (a batch key "
                "of integer bias values) or add a branches(model) hook returning {modality name: branch module}."
            )
        if self.dominant is not None and self.dominant not in branches:
            raise AdapterError(
                f"{self.who} clusters the {self.dominant!r} branch to discover bias values, but the adapter's "
                f"branches(model) hook has none (it has {', '.join(map(repr, branches))})."
            )

    def fit(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """Every training sample's label and bias value (the adapter as the loop shows it: without held-out rows)."""
        self.source = self.resolved(adapter)
        if self.source == "key":
            labels, bias = labels_and_bias(adapter, "train", batch_size=1024, purpose=f"{self.who}'s groups")
            self.num_bias, self.discovered = bias_range(adapter, bias), None
            self.label = f"adapter bias_key {adapter.bias_key!r}"
            return labels, bias
        dominant_branch(model, adapter, dominant=self.dominant)
        # Seeded by the run, as MMDB's: the loop calls torch.manual_seed(config.seed) just before prepare.
        self.discovered = DiscoveredBias(
            model,
            adapter,
            dominant=self.dominant,
            k=self.kmeans_k or DEFAULT_KMEANS_K,
            seed=torch.initial_seed() % 2**32,
            device=device,
        )
        self.num_bias, self.label = self.discovered.k, self.discovered.describe()
        return self.discovered.train_labels, self.discovered.train_bias

    def values(self, batch: Mapping[str, Any], adapter: Adapter, *, split: str, device: torch.device) -> np.ndarray:
        """Every sample's bias value (int64 [B]): the same function on train, val and held-out batches."""
        if self.discovered is not None:
            return self.discovered.values(batch, adapter, device=device)
        return key_bias_values(batch, adapter, split=split)

    def settings(self) -> dict[str, Any]:
        discovered = self.discovered
        return {
            "bias": self.bias,
            "bias_source": self.label,
            "num_bias": self.num_bias,
            "kmeans_k": (self.kmeans_k or DEFAULT_KMEANS_K) if discovered else None,
            "dominant_modality": discovered.modality if discovered else None,
            "kmeans_seed": discovered.seed if discovered else None,
        }

    def state(self) -> dict[str, Any]:
        return self.discovered.state() if self.discovered is not None else {}

    def adopt_state(self, state: Mapping[str, Any]) -> None:
        if self.discovered is not None:
            self.discovered.adopt_state(state)
        elif any(key in state for key in ("bias_centroids", "train_bias")):
            raise CheckpointError(
                "The training state to resume was written with k-means bias clusters, but this run takes its bias "
                "values from the adapter's bias_key; resume with the same bias option or run without --resume."
            )
