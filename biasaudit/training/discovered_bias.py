"""Bias values for MMDB when the data has none: the scan's k-means discovery (methods.md section 3) made
into a per-sample function that training can call on shuffled batches (methods.md section 6).

Shuffled training batches carry no sample index, so a bias value cannot be looked up by position. It is
computed instead: the nearest k-means centroid of the sample's dominant-branch embedding under a frozen
copy of the starting model (eval mode, no gradient). That depends on the sample alone, not on its batch
or on how far training has moved the live model, so the margins (counted on train), every training step
and the validation groups of `--scale auto` all see the same bias value for the same sample. The fit is
the scan's own (same branch, `discover_bias_clusters`, train split, k and seed), so with the audit's k
and seed the clusters are the ones the before-audit's JSD section reported.
"""

from __future__ import annotations

import copy
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.metrics import pairwise_distances_argmin
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.diagnostics.branch_outputs import branch_outputs
from biasaudit.errors import AdapterError, CheckpointError, DataError
from biasaudit.diagnostics.jsd import discover_bias_clusters
from biasaudit.scanning.config import ScanConfig

# The scan embeds with its config's batch size; batching like a default scan keeps the fitted clusters
# those of the before-audit, not merely equal up to float summation order.
EMBEDDING_BATCH_SIZE = ScanConfig.batch_size


def _missing_branch_error(adapter: Adapter, reason: str) -> AdapterError:
    why = "the adapter declares no bias_key" if adapter.bias_key is None else "bias='kmeans' was asked for"
    return AdapterError(
        f"MMDB needs a bias value per sample, but {why} and {reason}; declare the adapter's bias_key "
        "(a batch key of integer bias values) or add a branches(model) hook returning "
        "{modality name: branch module} that includes the dominant modality, so k-means can discover bias values."
    )


def require_branches(model: nn.Module, adapter: Adapter) -> Mapping[str, nn.Module]:
    """The adapter's branches(model) modules; AdapterError when there is no such hook."""
    branches = optional_hook(adapter, "branches", model)
    if not branches:
        raise _missing_branch_error(adapter, "it has no branches(model) hook to cluster a modality's embeddings with")
    return branches


def dominant_branch(model: nn.Module, adapter: Adapter, *, dominant: str | None) -> nn.Module:
    """The branch module of the dominant modality; AdapterError when it is unknown or not among the branches."""
    branches = require_branches(model, adapter)
    if dominant is None:
        raise _missing_branch_error(
            adapter, "the before audit found no dominant modality to cluster (no prediction changed when a modality went missing)"
        )
    if dominant not in branches:
        raise _missing_branch_error(
            adapter,
            f"its branches(model) hook has no entry for the dominant modality {dominant!r} "
            f"(it has {', '.join(map(repr, branches))})",
        )
    return branches[dominant]


class DiscoveredBias:
    """Nearest-centroid bias values of the dominant branch's embedding under the frozen starting model."""

    def __init__(
        self, model: nn.Module, adapter: Adapter, *, dominant: str | None, k: int, seed: int, device: torch.device
    ) -> None:
        dominant_branch(model, adapter, dominant=dominant)  # the adapter's errors before copying the model
        if "train" not in adapter.splits:
            raise DataError(f"Split 'train' is not offered by the adapter. Available: {', '.join(adapter.splits)}.")
        if next(iter(adapter.data("train", batch_size=EMBEDDING_BATCH_SIZE)), None) is None:
            raise DataError("Split 'train' is empty; MMDB's k-means bias discovery and margins need its samples.")
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.branch = dominant_branch(self.frozen, adapter, dominant=dominant)
        self.modality, self.requested_k, self.seed = dominant, int(k), int(seed)
        train = branch_outputs(self.frozen, adapter, self.branch, "train", device=device, batch_size=EMBEDDING_BATCH_SIZE)
        self.centroids = discover_bias_clusters(train["embedding"], k=k, seed=seed).cluster_centers_.astype(np.float64)
        self.train_labels = train["label"]
        self.train_bias = self._nearest(train["embedding"])

    @property
    def k(self) -> int:
        """Clusters actually used: the requested k, clipped to the number of distinct training embeddings."""
        return int(self.centroids.shape[0])

    def cluster_sizes(self) -> list[int]:
        return np.bincount(self.train_bias, minlength=self.k).tolist()

    def _nearest(self, embeddings: np.ndarray) -> np.ndarray:
        return pairwise_distances_argmin(embeddings, self.centroids).astype(np.int64)

    def values(self, batch: Mapping[str, Any], adapter: Adapter, *, device: torch.device) -> np.ndarray:
        """The bias value of every sample of a batch (int64 [B])."""
        captured: list[torch.Tensor] = []
        handle = self.branch.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            with torch.no_grad():
                adapter.forward(self.frozen, adapter.prepare(batch, device=device))
        finally:
            handle.remove()
        return self._nearest(captured[-1].detach().flatten(1).double().cpu().numpy())

    def describe(self) -> str:
        return (
            f"k-means clusters (k={self.k}) of the {self.modality} branch's embeddings under the starting model, "
            "fitted on train (methods.md section 3); each sample's bias value is its nearest centroid"
        )

    def state(self) -> dict[str, torch.Tensor]:
        return {"bias_centroids": torch.from_numpy(self.centroids.copy()), "train_bias": torch.from_numpy(self.train_bias.copy())}

    def adopt_state(self, state: Mapping[str, Any]) -> None:
        """Continue with the clusters the interrupted run used. Refitted from the same checkpoint and seed
        they agree up to the summation-order noise of k-means threads (the tolerance), and every training
        sample must fall in the same cluster (the margins were counted from those assignments); the saved
        centroids are then adopted, so every batch gets the bias value it got before the interruption."""
        saved, assigned = state.get("bias_centroids"), state.get("train_bias")
        if (
            saved is None
            or assigned is None
            or tuple(saved.shape) != self.centroids.shape
            or not np.allclose(saved.numpy(), self.centroids, rtol=1e-6, atol=1e-9)
            or not np.array_equal(assigned.numpy(), self.train_bias)
        ):
            raise CheckpointError(
                "The training state to resume was written with other k-means bias clusters (another checkpoint, "
                "k, seed or bias option); resume with the same inputs or run without --resume."
            )
        self.centroids = saved.numpy().astype(np.float64)
