"""`dfr`: Deep Feature Reweighting (methods.md section 8), post hoc: `fix --method dfr` runs no training loop. It
calls the component exactly as a user would:

    feats  = classifier_inputs(model, adapter.classifier(model), held_out_batches, forward=adapter's forward)
    result = DFR(c_grid=..., seed=run seed).fit(feats, labels, groups, num_classes=..., split=...)
    result.write_into(adapter.classifier(model))

Held-out data: the adapter's "val" split, else a seeded 20% of train (biasaudit.methods.holdout_indices, seed = the
run seed; the result's note and the train log say so). Groups are (label, bias value), the bias value from the
adapter's bias_key or discovered by k-means as MMDB does (bias_groups.py). DFR fits each group on at least 2
samples (one per tuning half); groups with fewer held-out samples are left out of the fit and counted in the log.

The training options (--epochs, --lr, --batch-size, --optimizer, ...) do not apply and are ignored (the train log
says so); --resume is refused: there is no training to resume."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import adapter_batches, checked_labels, take_rows
from biasaudit.errors import AdapterError, InputError
from biasaudit.methods.dfr import C_GRID, DFR as DFRFit, DFRResult
from biasaudit.methods.dfr_data import classifier_inputs, holdout_indices
from biasaudit.training import rng_states
from biasaudit.training.bias_groups import BiasGroups
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.training_view import training_view

HOLDOUT_FRACTION = 0.2
MIN_GROUP = 2  # DFR's tuning splits every group in two halves
BATCH_SIZE = 256


def final_linear(model: nn.Module, adapter: Adapter, *, who: str) -> nn.Linear:
    linear = optional_hook(adapter, "classifier", model)
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise AdapterError(
            f"{who} refits the model's final linear layer, but the adapter's classifier(model) hook "
            f"{'is missing' if linear is None else 'does not return an nn.Linear with a bias'}; add one returning it."
        )
    return linear


def train_rows(adapter: Adapter, split: str, rows: np.ndarray) -> Iterator[Mapping[str, Any]]:
    """The rows (global indices, sorted) of a split, in the adapter's order."""
    offset = 0
    for batch in adapter_batches(adapter, split, batch_size=BATCH_SIZE):
        n = len(checked_labels(batch, adapter, split=split))
        chosen = rows[(rows >= offset) & (rows < offset + n)] - offset
        offset += n
        if chosen.size:
            yield take_rows(batch, chosen)


class DFR:
    name = "dfr"
    post_hoc = True  # fix calls refit() instead of training
    discovers_bias = True  # fix passes the audit's k-means k and dominant modality, as for MMDB

    def __init__(
        self,
        *,
        c_grid: Iterable[float] = C_GRID,
        subsets: int | None = None,
        bias: str = "auto",
        kmeans_k: int | None = None,
        dominant: str | None = None,
    ) -> None:
        # The options as the component takes them (subsets left out when not given: the component's default).
        self.c_grid: Iterable[float] = tuple(c_grid) if isinstance(c_grid, (list, tuple)) else c_grid
        self.subsets = subsets
        self.component = self.make_component()  # the component's own checks, now (the run seed is given at refit)
        self.groups = BiasGroups("DFR", bias=bias, kmeans_k=kmeans_k, dominant=dominant)
        self.result: DFRResult | None = None
        self.dropped: dict[str, int] = {}

    def make_component(self, *, seed: int = 0) -> DFRFit:
        if self.subsets is None:
            return DFRFit(c_grid=self.c_grid, seed=seed)
        return DFRFit(c_grid=self.c_grid, subsets=self.subsets, seed=seed)

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        final_linear(model, adapter, who="DFR")
        self.groups.check(model, adapter)

    def refit(self, model: nn.Module, adapter: Adapter, *, config: TrainConfig) -> DFRResult:
        """Refit the model's final nn.Linear in place on held-out classifier inputs; seeded by the run seed."""
        from biasaudit.scanning.config import resolve_device

        device = resolve_device(config.device)
        model.to(device)
        linear = final_linear(model, adapter, who="DFR")
        with rng_states.seeded_run(config.seed):  # k-means bias discovery draws its seed from the run's, as in training
            self.groups.fit(model, training_view(adapter, config), device=device)
        if "val" in adapter.splits:
            batches, split = adapter_batches(adapter, "val", batch_size=BATCH_SIZE), "val"
        else:
            total = sum(
                len(checked_labels(b, adapter, split=config.split))
                for b in adapter_batches(adapter, config.split, batch_size=BATCH_SIZE)
            )
            rows = holdout_indices(total, fraction=HOLDOUT_FRACTION, seed=config.seed)
            batches, split = (
                train_rows(adapter, config.split, rows),
                f"{HOLDOUT_FRACTION:.0%} of {config.split} (seed {config.seed})",
            )
        labels: list[np.ndarray] = []
        bias: list[np.ndarray] = []

        def noting(source: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
            for batch in source:
                labels.append(checked_labels(batch, adapter, split=split))
                bias.append(np.asarray(self.groups.values(batch, adapter, split="val", device=device), dtype=np.int64))
                yield batch

        features = classifier_inputs(
            model, linear, noting(batches), forward=lambda m, b: adapter.forward(m, adapter.prepare(b, device=device))
        )
        y, g = dfr_groups(np.concatenate(labels), np.concatenate(bias), num_bias=self.groups.num_bias)
        keep = np.bincount(g)[g] >= MIN_GROUP
        self.dropped = {"groups": len(np.unique(g[~keep])), "samples": int((~keep).sum())}
        missing = sorted(set(range(adapter.num_classes)) - set(y[keep].tolist()))
        if missing:
            raise InputError(
                f"DFR needs every class in a (label, bias value) group of at least {MIN_GROUP} held-out samples, but "
                f"class(es) {missing} have none in {split}; use a larger val split."
            )
        self.result = self.make_component(seed=config.seed).fit(
            features[keep], y[keep], g[keep], num_classes=adapter.num_classes, split=split
        )
        self.result.write_into(linear)
        return self.result

    # The training protocol's remaining parts: DFR trains nothing.
    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        raise InputError("DFR refits post hoc and has no training loop; use fix (or DFR.refit), not train.")

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "c_grid": list(self.component.c_grid),
            "subsets": self.component.subsets,
            "min_group": MIN_GROUP,
            **self.groups.settings(),
        }
        if self.result is not None:
            r = self.result
            out.update(
                {
                    "fitted_on": r.split,
                    "chosen_c": r.c,
                    "tuning_worst_group": {f"{c:g}": w for c, w in zip(r.c_grid, r.tuning_worst_group, strict=True)},
                    "groups_fitted": len(r.group_ids),
                    "groups_left_out": self.dropped,
                    "per_group": r.per_group,
                    "note": r.note,
                }
            )
        return out


def dfr_groups(labels: np.ndarray, bias: np.ndarray, *, num_bias: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (label, bias value) group ids, label * num_bias + bias (bias values beyond train's range widen it)."""
    width = max(num_bias, int(bias.max()) + 1 if bias.size else 1)
    return labels.astype(np.int64), labels.astype(np.int64) * width + bias
