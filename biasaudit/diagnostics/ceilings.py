"""Unimodal ceilings: how much each modality *can* tell on its own, so that a Gap is read against it
(methods.md section 9, issue 9).

A caption that can only narrow a label down to two classes caps what the text alone can score; a model
that learns to use the informative image better then *widens* the missing-modality Gap while becoming
less biased. The ceiling of modality m is the accuracy of a linear probe on m's branch output (the
adapter's `branches` hook), fitted on a seeded sample (DEFAULT_PER_CLASS per class) of the val split when the adapter
has one and it is not the scanned split, else of the train split, and evaluated on the scanned split during the main
pass, or the accuracy of a user-supplied unimodal checkpoint with every other modality muted.
Utilisation = accuracy of the model with every other modality muted / the ceiling. A ceiling whose interval lies below
chance or below that accuracy is no bound: it is caveated and no implied Gap rests on it.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import SplitLabels, checked_labels, indexed_batches, take_rows
from biasaudit.diagnostics.accuracy import ConditionScores
from biasaudit._core.randomness import hash64

# Ceilings this far apart, with disjoint intervals, make a large missing-modality Gap expected.
LARGE_CEILING_DIFFERENCE = 10.0
# Samples per class the probes are fitted on. A multinomial logistic regression on a branch's output is
# close to its asymptote with 50 samples per class for the feature widths of fusion models, and a fixed
# number per class keeps the probe's forwards proportional to the task, not to the size of train (the demo:
# 500 train forwards for a 323-sample split).
DEFAULT_PER_CLASS = 50
# Float sums of the same counts along two paths may differ in the last bit: a ceiling equal to chance or to the
# accuracy alone is not below it.
_TOLERANCE = 1e-9
_PROBE = "linear probe"


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
        return {
            name: branch_feature(value, batch.get(mask) if (mask := self.masks.get(name)) else None)
            for name, value in self.values.items()
        }

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def token_masks(adapter: Adapter) -> dict[str, str | None]:
    return {m.name: m.mask_key for m in adapter.modalities}


def probe_split(splits: Sequence[str], scanned: str) -> str | None:
    """The split the probes are fitted on: val when the adapter has one and it is not the scanned split, else train;
    None without either. A probe fitted where a shortcut holds (train, where the model learned it) learns the shortcut
    too and fails where it does not, understating what the modality can tell; val is the split users draw bias-balanced
    (the demo's is), and a probe scored on the samples it was fitted on would flatter itself."""
    if "val" in splits and scanned != "val":
        return "val"
    return "train" if "train" in splits else None


def probe_source(modality: str, split: str | None, scanned: str) -> str:
    """The `source` of a probe's ceiling, naming the split it was fitted on."""
    fitted = "" if split is None else f", fitted on {split}"
    if split == "train" and scanned == "val":
        fitted += " (val is the audited split)"
    return f"{_PROBE} on the {modality} branch output{fitted}"


def probe_rows(sample: SplitLabels, *, seed: int, per_class: int) -> set[int]:
    """The samples of the probe split the probes are fitted on: per class the `per_class` with the smallest hash of
    (seed, index). From the split's labels (read once per scan; train's beside the JSD priors); the probe's cost then
    grows with the classes, not with the split."""
    if not sample.indices.size:
        return set()
    keys = hash64(seed, "ceiling-sample", sample.indices)
    chosen: set[int] = set()
    for y in np.unique(sample.labels):
        members = np.flatnonzero(sample.labels == y)
        chosen.update(int(i) for i in sample.indices[members[np.argsort(keys[members], kind="stable")[:per_class]]])
    return chosen


def fit_probes(
    model: nn.Module,
    adapter: Adapter,
    branches: Mapping[str, nn.Module],
    *,
    device: torch.device,
    batch_size: int,
    labels: SplitLabels,
    seed: int,
    split: str = "train",
    per_class: int = DEFAULT_PER_CLASS,
) -> tuple[dict[str, Any], int]:
    """A standardised multinomial logistic regression per modality on its branch output, fitted on a seeded sample
    of `per_class` samples per class of `split`, whose labels are `labels` (the same samples for every modality).
    Returns the probes and the number of forwarded samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    chosen = probe_rows(labels, seed=seed, per_class=per_class)
    features: dict[str, list[np.ndarray]] = {m: [] for m in branches}
    targets: list[np.ndarray] = []
    tap = BranchTap(branches, token_masks(adapter))
    forwarded = 0
    try:
        with torch.no_grad():
            for indices, batch in indexed_batches(adapter, split, batch_size=batch_size):
                rows = np.flatnonzero([int(i) in chosen for i in indices])
                if not rows.size:
                    continue
                subset = take_rows(batch, rows)
                tap.active = True
                tap.values.clear()
                adapter.forward(model, adapter.prepare(subset, device=device))
                tap.active = False
                forwarded += len(rows)
                targets.append(checked_labels(subset, adapter, split=split))
                for m, value in tap.features(subset).items():
                    features[m].append(value.cpu().numpy())
    finally:
        tap.close()
    probes = {}
    y = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    for m, parts in features.items():
        if len(parts) != len(targets) or len(np.unique(y)) < 2:
            continue  # the branch did not run in every forward, or the split holds one class: no probe
        probes[m] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(np.concatenate(parts), y)
    return probes, forwarded


def _cause(modality: str, fitted_on: str | None, *, below_alone: bool) -> str:
    """Why a ceiling fell below what it should bound. fitted_on: the probe's split; None for a unimodal checkpoint.
    below_alone: the model itself does better with only this modality (else the ceiling is only below chance)."""
    if fitted_on is None:
        return (
            f"so the unimodal checkpoint uses {modality} less well than the model does"
            if below_alone
            else "so the unimodal checkpoint does worse than chance on this split"
        )
    if fitted_on == "train":
        return "likely because its probe was fitted on train, where a shortcut that fails on this split can hold"
    return f"likely because its probe, fitted on {fitted_on}, had too few samples or learned a shortcut that holds there too"


def ceiling_caveat(
    modality: str,
    ceiling: float,
    alone: float | None,
    *,
    chance: float | None,
    fitted_on: str | None,
    ceiling_ci: Sequence[float] | None = None,
) -> str | None:
    """One sentence when the ceiling bounds nothing (its whole interval is below chance, or below the model's own accuracy
    with every other modality muted), with its likely cause; None otherwise. The interval, not the point: a modality that
    tells nothing has a ceiling at chance, which lands below it half the time by sampling alone (the demo's caption on
    ood: 9.6% [6.4, 12.7] with 10 classes) and is still a bound."""
    highest = ceiling_ci[1] if ceiling_ci else ceiling
    below = []
    if chance is not None and highest < chance - _TOLERANCE:
        below.append(f"chance ({chance:.1f}%)")
    if alone is not None and highest < alone - _TOLERANCE:
        below.append(f"the model's own accuracy with only {modality} intact ({alone:.1f}%)")
    if not below:
        return None
    return (
        f"The {modality} ceiling ({ceiling:.1f}%) is not a bound on what {modality} can tell: it is below "
        f"{' and '.join(below)}, {_cause(modality, fitted_on, below_alone=alone is not None and highest < alone - _TOLERANCE)}."
    )


def _implied_gap(bounds: Sequence[Mapping[str, Any]]) -> tuple[float | None, bool]:
    """The Gap the ceilings imply (the spread of those that are bounds; None for fewer than two) and whether it is large:
    at least LARGE_CEILING_DIFFERENCE points with disjoint intervals."""
    if len(bounds) < 2:
        return None, False
    high = max(bounds, key=lambda r: r["ceiling"])
    low = min(bounds, key=lambda r: r["ceiling"])
    implied = high["ceiling"] - low["ceiling"]
    disjoint = bool(high["ceiling_ci"] and low["ceiling_ci"] and low["ceiling_ci"][1] < high["ceiling_ci"][0])
    return implied, bool(implied >= LARGE_CEILING_DIFFERENCE and disjoint)


def ceilings_section(
    modalities: Sequence[str],
    scores: Mapping[str, ConditionScores],
    sources: Mapping[str, str],
    *,
    observed_gap: float | None,
    note: str | None,
    num_classes: int | None = None,
    probe_split: str | None = None,
) -> dict[str, Any]:
    """scores: `ceiling:m` and `alone:m` rows scored on the scanned split. num_classes sets chance (100 / C);
    probe_split: the split the probes were fitted on (recorded when some ceiling is a probe's). A ceiling that bounds
    nothing gets a caveat (in its row and in the note), and the implied Gap is read from the other ceilings only."""
    chance = 100.0 / num_classes if num_classes else None
    rows: dict[str, dict[str, Any]] = {}  # the section's JSON rows
    for m in modalities:
        if f"ceiling:{m}" not in scores:
            continue
        ceiling, alone = scores[f"ceiling:{m}"], scores.get(f"alone:{m}")
        probed = sources[m].startswith(_PROBE)
        rows[m] = {
            "ceiling": ceiling.accuracy,
            "ceiling_ci": ceiling.accuracy_ci,
            "source": sources[m],
            "alone": alone.accuracy if alone else None,
            "alone_ci": alone.accuracy_ci if alone else None,
            "utilisation": alone.accuracy / ceiling.accuracy if alone and ceiling.accuracy > 0 else None,
            "caveat": ceiling_caveat(
                m,
                ceiling.accuracy,
                alone.accuracy if alone else None,
                chance=chance,
                fitted_on=probe_split if probed else None,
                ceiling_ci=ceiling.accuracy_ci,
            ),
        }
    for row in rows.values():
        if row["caveat"]:  # alone / a figure that bounds nothing is no utilisation (a 1% ceiling read 9,467%)
            row["utilisation"] = None
    if not rows:
        return {"available": False, "note": note or "No ceiling could be measured."}
    implied, large = _implied_gap([r for r in rows.values() if r["caveat"] is None])
    caveats = [r["caveat"] for r in rows.values() if r["caveat"]]
    fitted_on = probe_split if any(r["source"].startswith(_PROBE) for r in rows.values()) else None
    return {
        "available": True,
        "note": " ".join(filter(None, [note, *caveats])) or None,
        "probe_split": fitted_on,
        "modalities": rows,
        "implied_gap": implied,
        "observed_gap": observed_gap,
        "large_gap_expected": large,
    }
