"""The work of one scan pass on one batch: every condition's forward, and the accumulators that read them.

Each batch draws its bootstrap weights once and every accumulator (accuracy, the registered diagnostics of
biasaudit/diagnostics/registry.py, carrier, ceilings, Shapley) uses them, so every figure of the audit gets paired
intervals. Logits of "only these modalities intact" are cached per batch: the missing conditions, the carrier's Full
reference, the ceilings' "alone" accuracy and the Shapley subsets share forwards instead of repeating them. The
forwards of the carrier, ceilings and interaction are in biasaudit/scanning/diagnostic_forwards.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter, Modality
from biasaudit.data.batches import take_rows
from biasaudit.scanning.conditions import Condition
from biasaudit.diagnostics.mutes import Moments
from biasaudit.diagnostics.protocol import BatchOutcome
from biasaudit.diagnostics.shapley import subsets
from biasaudit.errors import DataError
from biasaudit.scanning.diagnostic_forwards import carrier_swaps, ceiling_predictions, interaction_forwards, swap_pools
from biasaudit.scanning.draws import draw_seed
from biasaudit.scanning.setup import PassSetup
from biasaudit.data.impairments import Impairment, impair_batch, muted_subset_draws, muting_impairment
from biasaudit.diagnostics.accuracy import ConditionAccumulator, bootstrap_weights


def _not_finite(condition: str) -> DataError:
    # argmax would silently score NaN as class 0; a muted input the model cannot handle must be seen.
    return DataError(
        f"The model returned NaN or infinite logits under condition {condition!r}; check how the model handles that input."
    )


def check_logits(logits: Any, *, batch_size: int, num_classes: int, condition: str, finite: bool = True) -> None:
    """Shape and dtype always; finiteness unless `finite=False` (the caller then checks a whole batch's conditions at
    once, with one device-to-host copy instead of one per condition)."""
    if not isinstance(logits, torch.Tensor) or logits.shape != (batch_size, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(f"The adapter's forward() returned {shape}; expected logits of shape ({batch_size}, {num_classes}).")
    if not logits.is_floating_point():
        raise DataError(
            f"The adapter's forward() returned logits of dtype {logits.dtype}; expected floating-point logits "
            "(scores before softmax), not predicted labels or booleans."
        )
    if finite and not torch.isfinite(logits).all():
        raise _not_finite(condition)


def _evaluation_order(conditions: Sequence[Condition]) -> list[Condition]:
    """Full first (every other condition reads its logits), then the mutes of whole modalities (they record the
    muted branch embeddings, which a ratio condition of the same definition would otherwise take first)."""
    return sorted(conditions, key=lambda c: (c.group != "full", c.group != "missing"))


class BatchEvaluator:
    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        setup: PassSetup,
        *,
        device: torch.device,
        feature_tap: Any = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.model, self.adapter, self.setup, self.device = model, adapter, setup, device
        self.autocast = autocast  # bfloat16 / float16 forwards on CUDA (ScanConfig.precision), else None
        self.feature_tap = feature_tap  # the classifier's input, read right after the Full forward
        self.full_features: torch.Tensor | None = None
        self.modalities = {m.name: m for m in adapter.modalities}
        self.accuracy = ConditionAccumulator(
            [c.name for c in setup.conditions], num_classes=adapter.num_classes, replicates=setup.replicates, seed=setup.seed
        )
        self.muted_counts = {c.name: 0 for c in setup.conditions if c.group == "ratio"}
        # Per (modality, mute): the largest fraction any condition mutes, i.e. the rows its one forward per batch needs.
        self._mute_reach: dict[tuple[str, str], float] = {}
        for c in setup.conditions:
            muting = setup.impairments.get(c.name)
            if c.group != "full" and muting is not None and muting.mutes:
                key = (c.impaired_modality, muting.name)
                self._mute_reach[key] = max(self._mute_reach.get(key, 0.0), c.severity)
        # (draw, fraction) of every partial mute: draw d of a ratio rung mutes the rows of seed + d (biasaudit/scanning/draws.py).
        self._partial_fractions = sorted(
            {
                (c.draw, c.severity)
                for c in setup.conditions
                if c.group != "full"
                and c.severity < 1.0
                and setup.impairments.get(c.name) is not None
                and setup.impairments[c.name].mutes
            }
        )
        self._mute_draw_ids = sorted({draw for draw, _ in self._partial_fractions}) or [0]
        self.forwards: Counter[str] = Counter()  # forwarded samples per diagnostic
        self.swap_pools = swap_pools(setup)  # the carrier's, one per draw

    # ---- forwards -------------------------------------------------------------------------------
    def forward_logits(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        *,
        stage: str,
        condition: str,
        tap: bool = False,
        rows: int | None = None,
        finite: bool = True,
    ) -> torch.Tensor:
        if self.setup.tap is not None:
            self.setup.tap.active = tap
            self.setup.tap.values.clear()
        inputs = self.adapter.prepare(batch, device=self.device)
        if self.autocast is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast):
                logits = self.adapter.forward(model, inputs)
            logits = logits.float() if isinstance(logits, torch.Tensor) and logits.is_floating_point() else logits
        else:
            logits = self.adapter.forward(model, inputs)
        if self.setup.tap is not None:
            self.setup.tap.active = False
        rows = len(self._labels) if rows is None else rows
        check_logits(logits, batch_size=rows, num_classes=self.adapter.num_classes, condition=condition, finite=finite)
        self.forwards[stage] += rows
        return logits

    def muted_batch(self, batch: Mapping[str, Any], keep: frozenset[str]) -> dict[str, Any]:
        out = dict(batch)
        for name, modality in self.modalities.items():
            if name not in keep:
                out = impair_batch(
                    out,
                    modality,
                    muting_impairment(modality),
                    1.0,
                    indices=self._indices,
                    seed=self.setup.seed,
                    tag="mute-subset",
                )
        return out

    def subset_logits(self, keep: frozenset[str], *, stage: str) -> torch.Tensor:
        """Logits with only `keep` intact (every other modality muted), computed once per batch."""
        if keep not in self._subsets:
            self._subsets[keep] = self.forward_logits(
                self.model, self.muted_batch(self._batch, keep), stage=stage, condition="only " + ",".join(sorted(keep))
            )
        return self._subsets[keep]

    # ---- one batch ------------------------------------------------------------------------------
    def draw_weights(self, indices: np.ndarray) -> np.ndarray:
        """The batch's bootstrap weights, which every accumulator shares (a pure function of the indices)."""
        return bootstrap_weights(indices, replicates=self.setup.replicates, seed=self.setup.seed)

    def update(
        self,
        indices: np.ndarray,
        batch: Mapping[str, Any],
        labels: np.ndarray,
        bias: np.ndarray | None,
        *,
        weights: np.ndarray | None = None,
    ) -> None:
        """Evaluate one batch. `weights`: the batch's draw_weights, when the caller drew them ahead."""
        s = self.setup
        self._indices, self._batch, self._labels, self._subsets = indices, batch, labels, {}
        self._mute_draws: dict[int, np.ndarray] = {}
        self._masks_on_device: torch.Tensor | None = None
        self._whole_mutes: dict[tuple[str, str], dict[str, Any]] = {}
        self._mute_logit_cache: dict[tuple[str, str], torch.Tensor] = {}
        weights = self.draw_weights(indices) if weights is None else weights
        everything = frozenset(self.modalities)
        logits_of: dict[str, torch.Tensor] = {}
        by_definition: dict[tuple, torch.Tensor] = {}  # two conditions that impair alike are forwarded once
        for condition in _evaluation_order(s.conditions):
            if condition.group == "full":
                logits = self.forward_logits(self.model, batch, stage="conditions", condition="full", tap=True, finite=False)
                self._subsets[everything] = logits
                self._full_branch = s.tap.features(batch) if s.tap else {}
                self.full_features = self.feature_tap.value if self.feature_tap is not None else None
                self._record_moments("full", self._full_branch)
                logits_of[condition.name] = logits
                continue
            impairment = s.impairments[condition.name]
            definition = (condition.modality, impairment.name, condition.severity, condition.draw)
            if definition not in by_definition:
                by_definition[definition] = self._impaired_logits(condition, impairment, logits_of["full"])
            logits_of[condition.name] = by_definition[definition]
            if condition.name in self.muted_counts:
                self.muted_counts[condition.name] += int(self._muted_rows(condition.severity, condition.draw).sum())
        # Predictions stay on the device until every condition is done: one copy to the host per batch.
        names = [c.name for c in s.conditions]
        stacked = torch.stack([logits_of[name].float() for name in names])
        if not torch.isfinite(stacked).all():
            raise _not_finite(names[int(np.flatnonzero(~torch.isfinite(stacked).flatten(1).all(dim=1).cpu().numpy())[0])])
        # The largest softmax probability is exp(0) / sum_j exp(z_j - max z): one reduction, without the full softmax.
        top, predicted = stacked.max(dim=2)
        confidence = torch.exp(stacked - top[..., None]).sum(dim=2).reciprocal()
        predictions = dict(zip(names, predicted.cpu().numpy(), strict=True))
        self.accuracy.update(predictions, labels, indices=indices, weights=weights)
        outcome = BatchOutcome(
            indices=indices,
            labels=labels,
            bias=bias,
            weights=weights,
            predictions=predictions,
            confidences=dict(zip(names, confidence.cpu().numpy(), strict=True)),
            full_logits=logits_of["full"],
            features=self.full_features,
        )
        for diagnostic in s.diagnostics.values():
            diagnostic.update(outcome)
        full = predictions["full"]
        if s.carrier is not None and s.pool is not None and bias is not None:
            carrier_swaps(self, s.carrier, batch, indices, labels, bias, full, weights)
        if s.ceilings is not None:
            ceiling_predictions(self, s.ceilings, batch, self._full_branch, labels, full, indices, weights)
        if s.shapley is not None:
            correct_by_subset = {
                keep: self.subset_logits(keep, stage="shapley").argmax(dim=1).cpu().numpy() == labels
                for keep in subsets(list(self.modalities))
            }
            s.shapley.update(correct_by_subset, labels, weights)
        if s.interaction is not None and s.pool is not None:
            interaction_forwards(self, s.interaction, s.pool, batch, indices, labels, full, weights)

    def _impaired_logits(self, condition: Condition, impairment: Impairment, full_logits: torch.Tensor) -> torch.Tensor:
        """Logits of one impaired condition. missing_ratio:r applies the modality's mute to a fraction r of the samples
        (methods.md section 1), and a muted sample's logits do not depend on which fraction muted it: every ratio takes
        its muted rows from one forward of the mute per batch (the missing condition's, when the scan has it) and the
        Full logits for the rest (methods.md section 10)."""
        m = self.modalities[condition.impaired_modality]
        if impairment.mutes:
            is_mute = condition.group == "missing"
            muted = self._mute_logits(m, impairment, full_logits, condition=condition.name, tap=is_mute)
            if condition.severity < 1.0:
                rows = self._muted_masks(full_logits.device)[self._partial_fractions.index((condition.draw, condition.severity))]
                return torch.where(rows[:, None], muted.to(full_logits.dtype), full_logits)
            if is_mute:
                self._subsets[frozenset(self.modalities) - {m.name}] = muted
                if self.setup.tap is not None and m.name in self.setup.tap.values:
                    self._record_moments("muted", {m.name: self.setup.tap.features(self._whole_mute(m, impairment))[m.name]})
            return muted
        impaired = self._impaired(m, impairment, condition.severity, draw=condition.draw)
        return self.forward_logits(self.model, impaired, stage="conditions", condition=condition.name, finite=False)

    def _mute_logits(
        self, modality: Modality, impairment: Impairment, full_logits: torch.Tensor, *, condition: str, tap: bool
    ) -> torch.Tensor:
        """The batch's logits under this mute, forwarded once: for every row when a condition mutes the whole modality,
        else for the rows the largest ratio mutes (the others hold the Full logits). The mute itself is made for the
        whole batch (what it does can depend on the batch, e.g. the padding side read off its mask)."""
        key = (modality.name, impairment.name)
        if key not in self._mute_logit_cache:
            reach = self._mute_reach.get(key, 1.0)
            whole = self._whole_mute(modality, impairment)
            if reach >= 1.0:
                logits = self.forward_logits(self.model, whole, stage="conditions", condition=condition, tap=tap, finite=False)
            else:
                # Every draw's rows at the largest fraction: each draw's rungs take their muted rows from this one forward.
                rows = np.flatnonzero(np.logical_or.reduce([self._muted_rows(reach, d) for d in self._mute_draw_ids]))
                logits = full_logits.clone()
                if len(rows):
                    logits[torch.as_tensor(rows, device=logits.device)] = self.forward_logits(
                        self.model,
                        take_rows(whole, rows, size=len(self._indices)),
                        stage="conditions",
                        condition=condition,
                        rows=len(rows),
                        finite=False,
                    ).to(logits.dtype)
            self._mute_logit_cache[key] = logits
        return self._mute_logit_cache[key]

    def _impaired(self, modality: Modality, impairment: Impairment, severity: float, *, draw: int = 0) -> dict[str, Any]:
        tag = f"{modality.name}={impairment.name}:{severity!r}"  # the definition, not the name: alike conditions draw alike
        return impair_batch(
            self._batch, modality, impairment, severity, indices=self._indices, seed=draw_seed(self.setup.seed, draw), tag=tag
        )

    def _whole_mute(self, modality: Modality, impairment: Impairment) -> dict[str, Any]:
        key = (modality.name, impairment.name)
        if key not in self._whole_mutes:
            self._whole_mutes[key] = self._impaired(modality, impairment, 1.0)
        return self._whole_mutes[key]

    def _muted_masks(self, device: torch.device) -> torch.Tensor:
        """[fractions, B] on the device: the batch's muted rows at every partial fraction of the scan, copied to the device
        in one transfer per batch rather than one per condition."""
        if self._masks_on_device is None:
            self._masks_on_device = torch.as_tensor(
                np.stack([self._muted_rows(f, d) for d, f in self._partial_fractions]), device=device
            )
        return self._masks_on_device

    def _muted_rows(self, fraction: float, draw: int = 0) -> np.ndarray:
        """`muted_subset` of this batch, with its per-sample draws made once per batch (and draw) for every ratio condition."""
        if fraction >= 1.0:
            return np.ones(len(self._indices), dtype=bool)
        if draw not in self._mute_draws:
            self._mute_draws[draw] = muted_subset_draws(self._indices, seed=draw_seed(self.setup.seed, draw))
        return self._mute_draws[draw] < fraction

    def _record_moments(self, prefix: str, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.setup.moments.setdefault(f"{prefix}:{name}", Moments()).update(value.double().cpu().numpy())
