"""Unimodal ceilings: how much each modality *can* tell on its own, so that a Gap is read against it
(methods.md section 9, issue 9).

A caption that can only narrow a label down to two classes caps what the text alone can score; a model
that learns to use the informative image better then *widens* the missing-modality Gap while becoming
less biased. The ceiling of modality m is the accuracy of a linear probe on m's branch output (the
adapter's `branches` hook), fitted on a seeded sample of the train split (DEFAULT_PER_CLASS per class) and
evaluated on the scanned split during the main pass, or the accuracy of a user-supplied unimodal checkpoint with every other modality muted.
Utilisation = accuracy of the model with every other modality muted / the ceiling.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit.adapter import Adapter
from biasaudit.batches import SplitLabels, checked_labels, indexed_batches, take_rows
from biasaudit.metrics.accuracy import ConditionScores
from biasaudit.randomness import hash64

# Ceilings this far apart, with disjoint intervals, make a large missing-modality Gap expected.
LARGE_CEILING_DIFFERENCE = 10.0
# Train samples per class the probes are fitted on. A multinomial logistic regression on a branch's output is
# close to its asymptote with 50 samples per class for the feature widths of fusion models, and a fixed
# number per class keeps the probe's forwards proportional to the task, not to the size of train (the demo:
# 500 train forwards for a 323-sample split).
DEFAULT_PER_CLASS = 50


def branch_output(output: Any) -> torch.Tensor:
    """The tensor a branch module returns; for a tuple or a model output its first tensor, and for a Hugging
    Face encoder's last_hidden_state [B, L, D] its first token (CLS)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    values = output.values() if isinstance(output, Mapping) else output
    first = next((v for v in values if isinstance(v, torch.Tensor)), None)
    if first is None:
        raise TypeError(f"a branch returned {type(output).__name__} with no tensor in it")
    return (first[:, 0] if first.ndim == 3 else first).detach()


def branch_feature(output: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """One float vector per sample: a sequence [B, L, D] is averaged over its positions (over the attention mask's
    positions when the modality has one of shape [B, L], so padding and the batch's width do not enter), a
    feature map [B, C, H, W] over space; the width then does not depend on padding or image size."""
    output = output.float()
    if output.ndim == 3:
        if isinstance(mask, torch.Tensor) and mask.shape == output.shape[:2]:
            weights = (mask != 0).to(output.device, output.dtype)[..., None]
            return (output * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return output.mean(dim=1)
    if output.ndim >= 4:
        return output.flatten(2).mean(dim=2)
    return output.flatten(1)


class BranchTap:
    """Forward hooks on the branch modules that keep the last output of each while `active`; `features(batch)`
    turns them into one vector per sample, using the batch's attention mask of token modalities."""

    def __init__(self, branches: Mapping[str, nn.Module], masks: Mapping[str, str | None] | None = None) -> None:
        self.active = False
        self.values: dict[str, torch.Tensor] = {}
        self.masks = dict(masks or {})
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in branches.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.active:
                self.values[name] = branch_output(output)
        return hook

    def features(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {name: branch_feature(value, batch.get(self.masks.get(name)) if self.masks.get(name) else None)
                for name, value in self.values.items()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def token_masks(adapter: Adapter) -> dict[str, str | None]:
    return {m.name: m.mask_key for m in adapter.modalities}


def probe_rows(train: SplitLabels, *, seed: int, per_class: int) -> set[int]:
    """The train samples the probes are fitted on: per class the `per_class` with the smallest hash of (seed, index).
    From train's labels (read once per scan, beside the JSD priors); the probe's cost then grows with the classes, not
    with the train split."""
    if not train.indices.size:
        return set()
    keys = hash64(seed, "ceiling-sample", train.indices)
    chosen: set[int] = set()
    for y in np.unique(train.labels):
        members = np.flatnonzero(train.labels == y)
        chosen.update(int(i) for i in train.indices[members[np.argsort(keys[members], kind="stable")[:per_class]]])
    return chosen


def fit_probes(model: nn.Module, adapter: Adapter, branches: Mapping[str, nn.Module], *, device: torch.device, batch_size: int,
               train: SplitLabels, seed: int, per_class: int = DEFAULT_PER_CLASS) -> tuple[dict[str, Any], int]:
    """A standardised multinomial logistic regression per modality on its branch output, fitted on a seeded sample
    of `per_class` train samples per class (the same samples for every modality). Returns the probes and the
    number of forwarded training samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    chosen = probe_rows(train, seed=seed, per_class=per_class)
    features: dict[str, list[np.ndarray]] = {m: [] for m in branches}
    labels: list[np.ndarray] = []
    tap = BranchTap(branches, token_masks(adapter))
    forwarded = 0
    try:
        with torch.no_grad():
            for indices, batch in indexed_batches(adapter, "train", batch_size=batch_size):
                rows = np.flatnonzero([int(i) in chosen for i in indices])
                if not rows.size:
                    continue
                subset = take_rows(batch, rows)
                tap.active = True
                tap.values.clear()
                adapter.forward(model, adapter.prepare(subset, device=device))
                tap.active = False
                forwarded += len(rows)
                labels.append(checked_labels(subset, adapter, split="train"))
                for m, value in tap.features(subset).items():
                    features[m].append(value.cpu().numpy())
    finally:
        tap.close()
    probes = {}
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    for m, parts in features.items():
        if len(parts) != len(labels) or len(np.unique(y)) < 2:
            continue  # the branch did not run in every forward, or train holds one class: no probe
        probes[m] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(np.concatenate(parts), y)
    return probes, forwarded


def ceilings_section(modalities: Sequence[str], scores: Mapping[str, ConditionScores], sources: Mapping[str, str], *,
                     observed_gap: float | None, note: str | None) -> dict[str, Any]:
    """scores: `ceiling:m` and `alone:m` rows scored on the scanned split."""
    rows = {}
    for m in modalities:
        if f"ceiling:{m}" not in scores:
            continue
        ceiling, alone = scores[f"ceiling:{m}"], scores.get(f"alone:{m}")
        rows[m] = {"ceiling": ceiling.accuracy, "ceiling_ci": ceiling.accuracy_ci, "source": sources[m],
                   "alone": alone.accuracy if alone else None, "alone_ci": alone.accuracy_ci if alone else None,
                   "utilisation": alone.accuracy / ceiling.accuracy if alone and ceiling.accuracy > 0 else None}
    if not rows:
        return {"available": False, "note": note or "No ceiling could be measured."}
    implied = max(r["ceiling"] for r in rows.values()) - min(r["ceiling"] for r in rows.values()) if len(rows) > 1 else None
    high = max(rows.values(), key=lambda r: r["ceiling"])
    low = min(rows.values(), key=lambda r: r["ceiling"])
    disjoint = bool(high["ceiling_ci"] and low["ceiling_ci"] and low["ceiling_ci"][1] < high["ceiling_ci"][0])
    return {"available": True, "note": note, "modalities": rows, "implied_gap": implied, "observed_gap": observed_gap,
            "large_gap_expected": bool(implied is not None and implied >= LARGE_CEILING_DIFFERENCE and disjoint)}
