"""One audit of a fixed model: every condition on every batch in a single pass over the data.

Data flow: adapter.data(split) -> for each batch, for each condition: impair the raw inputs ->
adapter.prepare -> adapter.forward -> streaming accumulators. Only the bounded embedding sample
keeps per-sample data; everything else is counts, so memory does not grow with the dataset.
Extra passes are made only for what cannot share the main one: the label-under-bias priors (train
split, and the evaluated split's bias values so new ones can be sized; no forward), the
gradient-conflict sample (needs gradients) and, when the data has no bias value, the k-means bias
discovery.
"""

from __future__ import annotations

import time
import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from biasaudit.adapter import Adapter, optional_hook
from biasaudit.conditions import parse_conditions
from biasaudit.batches import bias_values, checked_labels, indexed_batches
from biasaudit.errors import DataError, InputError
from biasaudit.fingerprint import SampleFingerprint
from biasaudit.impairments import impair_batch, muted_subset, muting_impairment, resolve_impairment
from biasaudit.metrics.accuracy import ConditionAccumulator
from biasaudit.progress import Progress, silent
from biasaudit.summary import condition_rows, group_summary, ratio_sweep, reliance
from biasaudit import analyses

PROJECTIONS = ("umap", "pca")


def with_mute_overrides(adapter: Adapter, mute: tuple[tuple[str, str], ...]) -> Adapter:
    """A shallow copy of the adapter whose modalities use the requested muting impairments."""
    if not mute:
        return adapter
    names = {m.name for m in adapter.modalities}
    overrides = dict(mute)
    for name in overrides:
        if name not in names:
            raise InputError(f"--mute names modality {name!r}. Available: {', '.join(names)}.")
    copied = copy.copy(adapter)
    copied.modalities = [replace(m, missing=overrides.get(m.name, m.missing)) for m in adapter.modalities]
    for modality in copied.modalities:
        muting_impairment(modality)  # an impairment that does not mute is refused here, before any work
    return copied


@dataclass(frozen=True)
class ScanConfig:
    split: str = "test"
    conditions: str = "default"
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    bootstrap_replicates: int = 1000
    embedding_points: int = 5000
    projection: str = "umap"
    min_wrong: int = 30
    gradient_batches: int = 8
    kmeans_k: int = 16
    mute: tuple[tuple[str, str], ...] = ()  # (modality, muting impairment) overrides of what "missing" means

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise InputError(f"Projection {self.projection!r} is unknown. Available: {', '.join(PROJECTIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"Device {name!r} is not a torch device name; expected e.g. cpu, cuda or cuda:0.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {name!r} was requested but CUDA is not available on this machine; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    return device


def _batch_count(adapter: Adapter, split: str, batch_size: int) -> int | None:
    try:
        return len(adapter.data(split, batch_size=batch_size))  # type: ignore[arg-type]
    except TypeError:
        return None


class _FeatureTap:
    """Captures the input of the final classifier: the fused feature (methods.md section 4)."""

    def __init__(self, classifier: nn.Module | None) -> None:
        self.value: torch.Tensor | None = None
        self._handle = classifier.register_forward_pre_hook(self._hook) if classifier is not None else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0].detach()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def scan_model(model: nn.Module, adapter: Adapter, *, config: ScanConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate every condition and every diagnostic; return the audit's sections (no manifest)."""
    progress = progress or silent
    device = resolve_device(config.device)
    adapter = with_mute_overrides(adapter, config.mute)
    conditions = parse_conditions(config.conditions, adapter.modalities)
    modalities = {m.name: m for m in adapter.modalities}
    impairments = {c.name: resolve_impairment(modalities[c.modality].kind, c.impairment) for c in conditions if c.modality}
    model.to(device).eval()

    accuracy = ConditionAccumulator([c.name for c in conditions], num_classes=adapter.num_classes,
                                    replicates=config.bootstrap_replicates, seed=config.seed)
    fingerprint = SampleFingerprint(with_bias=adapter.bias_key is not None, input_keys=[m.key for m in adapter.modalities])
    diagnostics = analyses.FullConditionDiagnostics(adapter, config=config)
    tap = _FeatureTap(optional_hook(adapter, "classifier", model))
    muted_counts = {c.name: 0 for c in conditions if c.group == "ratio"}
    total = _batch_count(adapter, config.split, config.batch_size)
    seen = 0
    try:
        with torch.no_grad():
            for step, (indices, batch) in enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)):
                labels = checked_labels(batch, adapter, split=config.split)
                predictions = {}
                for condition in conditions:
                    impaired = batch if condition.modality is None else impair_batch(
                        batch, modalities[condition.modality], impairments[condition.name], condition.severity,
                        indices=indices, seed=config.seed, tag=condition.name)
                    logits = adapter.forward(model, adapter.prepare(impaired, device=device))
                    _check_logits(logits, batch_size=len(labels), num_classes=adapter.num_classes, condition=condition.name)
                    if condition.name in muted_counts:
                        muted_counts[condition.name] += int(muted_subset(indices, seed=config.seed, fraction=condition.severity).sum())
                    predictions[condition.name] = logits.argmax(dim=1).cpu().numpy()
                    if condition.group == "full":
                        diagnostics.update(logits, tap.value, batch, labels, indices=indices)
                accuracy.update(predictions, labels, indices=indices)
                fingerprint.update(labels, bias_values(batch, adapter, split=config.split) if adapter.bias_key is not None else None,
                                   inputs=batch)
                seen += len(labels)
                progress("conditions", step + 1, total)
    finally:
        tap.close()
    if seen == 0:
        raise DataError(f"Split {config.split!r} is empty; the adapter's data() yielded no samples.")
    if total is None:  # the batch count is known only now: let the bar finish instead of ticking on
        progress("conditions", step + 1, step + 1)

    scores = accuracy.result()
    class_names = list(adapter.class_names or [str(i) for i in range(adapter.num_classes)])
    summary = {"full": {k: v for k, v in scores["full"].to_dict().items() if k in ("accuracy", "accuracy_ci", "macro_f1", "n")}}
    for group in ("missing", "noisy"):
        section = group_summary(group, conditions, scores)
        if section is not None:
            summary[group] = section
    dominant = summary.get("missing", {}).get("dominant")
    sections = diagnostics.finish(model, dominant=dominant, device=device, progress=progress)
    return {
        "dataset": {"split": config.split, "n": seen, "num_classes": adapter.num_classes,
                    "modalities": [{"name": m.name, "kind": m.kind} for m in adapter.modalities],
                    "class_names": adapter.class_names and list(adapter.class_names),
                    "bias_names": adapter.bias_names and list(adapter.bias_names)},
        "summary": summary,
        "conditions": condition_rows(conditions, scores),
        "ratio_sweep": ratio_sweep(conditions, scores, muted_fractions={k: v / seen for k, v in muted_counts.items()}),
        "reliance": reliance(conditions, scores, class_names=class_names),
        **sections,
        # Kept in the file so that two audits of the same samples and seed (before/after a fix) get *paired*
        # intervals for their differences, whether compared in memory or read back (biasaudit/compare.py).
        "samples": fingerprint.to_dict(),
        "bootstrap": accuracy.bootstrap_counts().to_dict(),
    }


def _check_logits(logits: Any, *, batch_size: int, num_classes: int, condition: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.shape != (batch_size, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(f"The adapter's forward() returned {shape}; expected logits of shape ({batch_size}, {num_classes}).")
    if not torch.isfinite(logits).all():
        # argmax would silently score NaN as class 0; a muted input the model cannot handle must be seen.
        raise DataError(f"The model returned NaN or infinite logits under condition {condition!r}; check how the model handles that input.")


def timed_scan(model: nn.Module, adapter: Adapter, *, config: ScanConfig, progress: Progress | None = None) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    sections = scan_model(model, adapter, config=config, progress=progress)
    return sections, time.perf_counter() - start
