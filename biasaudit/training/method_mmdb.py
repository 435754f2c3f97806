"""`mmdb`: the adaptive-margin cosine loss (methods.md section 6) in biasaudit's loop, the adapter-bound wrapper over
the component biasaudit.methods.mmdb.MMDB (so `fix` and a user's own loop compute the same loss). Margins come from
train counts of label under bias value; cosine logits are taken against the model's own final nn.Linear (its input
is captured by a hook), so no module is swapped and the export is an in-place normalisation of that layer.

The bias value is the adapter's bias_key or, without one, the k-means discovery of methods.md section 3
(discovered_bias.py): option `bias` = "key", "kmeans" or "auto" (key when the adapter has one)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import bias_range, int_column, labels_and_bias
from biasaudit.errors import AdapterError, CheckpointError, InputError
from biasaudit.methods.mmdb import MMDB as MMDBLoss
from biasaudit.methods.mmdb import export_cosine_classifier
from biasaudit.scanning.config import ScanConfig
from biasaudit.training import mmdb
from biasaudit.training.discovered_bias import DiscoveredBias, dominant_branch, require_branches
from biasaudit.training.method_ce import train_labels

BIAS_SOURCES = ("auto", "key", "kmeans")
DEFAULT_KMEANS_K = ScanConfig.kmeans_k  # the scan's default, so `kmeans_k=None` clusters like a default scan


def resolved_bias_source(adapter: Adapter, *, bias: str) -> str:
    """ "key" or "kmeans": where this run's bias values come from (AdapterError for "key" without a bias_key)."""
    if bias == "auto":
        return "key" if adapter.bias_key is not None else "kmeans"
    if bias == "key" and adapter.bias_key is None:
        raise AdapterError(
            "MMDB with bias='key' needs a bias value per sample (the adapter's bias_key); this adapter "
            "declares none, so declare bias_key or use bias='auto' or 'kmeans' to discover bias values."
        )
    return bias


def key_bias_values(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> np.ndarray:
    """Every sample's bias value (int64 [B]) from the adapter's bias_key, the source a method resolved to "key"."""
    if adapter.bias_key is None:
        raise AdapterError("Bias values were asked of the adapter's bias_key, and the adapter declares none.")
    return int_column(batch, adapter.bias_key, what="bias", split=split)


@dataclass
class MMDB:
    scale: float = 4.0
    min_count: int = 0
    entropy_gate: float | None = None
    bias: str = "auto"  # "key" (adapter.bias_key), "kmeans" (discovered) or "auto" (key when there is one)
    kmeans_k: int | None = None  # None: DEFAULT_KMEANS_K, the scan's default
    dominant: str | None = None  # the modality k-means clusters: the before audit's dominant one (missing group)
    name: str = "mmdb"
    # "auto" chooses the scale s on validation data from this grid (methods.md section 6; selection.py).
    option_grid: ClassVar[tuple[str, tuple[float, ...]]] = ("scale", tuple(float(s) for s in mmdb.SCALE_GRID))
    table: mmdb.MarginTable | None = field(default=None, repr=False)
    warning: str | None = None
    source: str | None = None  # "key" or "kmeans" once prepared
    bias_label: str | None = None  # where the bias values came from, in words, for the manifests
    discovered: DiscoveredBias | None = field(default=None, repr=False)
    _loss: MMDBLoss | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.bias not in BIAS_SOURCES:
            raise InputError(f"MMDB bias source {self.bias!r} is unknown. Available: {', '.join(BIAS_SOURCES)}.")
        if self.kmeans_k is not None and (not isinstance(self.kmeans_k, int) or self.kmeans_k < 2):
            raise InputError(f"kmeans_k is {self.kmeans_k!r}; expected an integer of at least 2 clusters.")
        # Checked here, with the options' names, rather than when the margins are computed after the before-audit.
        if not isinstance(self.min_count, int) or isinstance(self.min_count, bool) or self.min_count < 0:
            raise InputError(f"min_count is {self.min_count!r}; expected an integer of at least 0.")
        if self.entropy_gate is not None and not 0 < self.entropy_gate < float("inf"):
            raise InputError(f"entropy_gate is {self.entropy_gate!r}; expected a positive, finite number of bits.")

    def _classifier(self, model: nn.Module, adapter: Adapter) -> nn.Linear:
        linear = optional_hook(adapter, "classifier", model)
        if not isinstance(linear, nn.Linear):
            raise AdapterError("MMDB needs the adapter's classifier(model) hook to return the model's final nn.Linear.")
        return linear

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        """Fail before any long work without the classifier hook or when no bias value can be had (the dominant
        modality is checked in prepare)."""
        self._classifier(model, adapter)
        if resolved_bias_source(adapter, bias=self.bias) == "kmeans":
            require_branches(model, adapter)
            if self.dominant is not None:  # named by the user: check it now; the audit's choice is checked in prepare
                dominant_branch(model, adapter, dominant=self.dominant)

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        self.source = resolved_bias_source(adapter, bias=self.bias)
        if self.source == "key":
            labels_all, bias_all = labels_and_bias(adapter, "train", batch_size=1024, purpose="MMDB's margins")
            num_bias = bias_range(adapter, bias_all)
            self.bias_label, self.discovered = f"adapter bias_key {adapter.bias_key!r}", None
        else:
            # Seeded by the run: the loop calls torch.manual_seed(config.seed) just before prepare (k-means takes 32 bits).
            self.discovered = DiscoveredBias(
                model,
                adapter,
                dominant=self.dominant,
                k=self.kmeans_k or DEFAULT_KMEANS_K,
                seed=torch.initial_seed() % 2**32,
                device=device,
            )
            labels_all, bias_all, num_bias = self.discovered.train_labels, self.discovered.train_bias, self.discovered.k
            self.bias_label = self.discovered.describe()
        self.table = mmdb.bias_margins(
            labels_all,
            bias_all,
            num_classes=adapter.num_classes,
            num_bias=num_bias,
            min_count=self.min_count,
            entropy_gate=self.entropy_gate,
        )
        self.warning = mmdb.check_scale(self.scale, self.table)
        self._loss = MMDBLoss(self._classifier(model, adapter), self.table, scale=self.scale)

    def batch_bias(self, batch: Mapping[str, Any], adapter: Adapter, *, split: str, device: torch.device) -> np.ndarray:
        """Every sample's bias value (int64 [B]), the same function on train and on validation batches."""
        if self.discovered is not None:
            return self.discovered.values(batch, adapter, device=device)
        return key_bias_values(batch, adapter, split=split)

    def _prepared(self) -> MMDBLoss:
        """The loss prepare() made (the loop prepares a method before any step)."""
        if self._loss is None:
            raise RuntimeError("MMDB was used before prepare(model, adapter, device=...).")
        return self._loss

    def _features(self, model: nn.Module, adapter: Adapter, batch: Mapping[str, Any], *, device: torch.device) -> torch.Tensor:
        loss = self._prepared()
        with loss.capture():
            adapter.forward(model, adapter.prepare(batch, device=device))
        return loss.features

    def cosines(self, model: nn.Module, adapter: Adapter, batch: Mapping[str, Any], *, device: torch.device) -> torch.Tensor:
        return self._prepared().cosines(self._features(model, adapter, batch, device=device))

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        features = self._features(model, adapter, batch, device=device)
        bias = torch.as_tensor(self.batch_bias(batch, adapter, split="train", device=device)).to(device)
        loss = self._prepared().loss(features, train_labels(batch, adapter, device), bias)
        (loss * (share * loss_scale)).backward()  # share: data_parallel.py; loss_scale: fp16's (precision.py)
        return {"loss": float(loss.detach())}

    @contextmanager
    def as_trained(self, model: nn.Module, adapter: Adapter) -> Iterator[str]:
        """While open, the exported model's logits are the trained model's s·cos θ (inference, no margin), so an
        audit scores what MMDB trained; yields the sentence the after-audit records. The exported nn.Linear alone
        gives ‖x‖·cos θ: the same labels, another softmax (methods.md section 6, export)."""
        linear, scale = self._classifier(model, adapter), float(self.scale)

        def cosine_logits(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
            features = F.normalize(args[0].flatten(1), dim=1, eps=mmdb.NORM_EPS)
            return mmdb.inference_logits(features @ F.normalize(module.weight, dim=1, eps=mmdb.NORM_EPS).T, scale=scale)

        handle = linear.register_forward_hook(cosine_logits)
        try:
            yield (
                f"This audit scores MMDB's cosine classifier s·cos θ (s = {scale:g}), the model as trained. model.pt holds it as "
                "your nn.Linear with normalised rows and zero bias: it predicts the same labels, so a scan of model.pt gives the "
                "same accuracies, flips, groups, carrier and argmax JSD, but its logits are ‖x‖·cos θ, so its soft JSD and "
                "calibration differ from these."
            )
        finally:
            handle.remove()

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        """Normalised rows, zero bias: the original architecture predicts argmax cos θ (methods.md section 6)."""
        export_cosine_classifier(self._classifier(model, adapter))

    # A resumed run refits the clusters from the same starting checkpoint, then adopts the saved centroids (they must agree).
    def extra_state(self) -> dict[str, Any]:
        return self.discovered.state() if self.discovered is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.discovered is not None:
            self.discovered.adopt_state(state)
        elif state:
            raise CheckpointError(
                "The training state to resume was written with k-means bias clusters, but this run takes its bias "
                "values from the adapter's bias_key; resume with the same bias option or run without --resume."
            )

    def settings(self) -> dict[str, Any]:
        discovered = self.discovered
        return {
            "scale": self.scale,
            "min_count": self.min_count,
            "entropy_gate": self.entropy_gate,
            "scale_warning": self.warning,
            "bias": self.bias,
            "bias_source": self.bias_label,
            "kmeans_k": (self.kmeans_k or DEFAULT_KMEANS_K) if discovered else None,
            "k": discovered.k if discovered else None,
            "cluster_sizes": discovered.cluster_sizes() if discovered else None,
            "dominant_modality": discovered.modality if discovered else None,
            "kmeans_seed": discovered.seed if discovered else None,
            "margins": self.table.to_dict() if self.table else None,
        }
