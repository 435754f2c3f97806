"""Model selection for `fix`: MMDB's `--scale auto` (methods.md section 6) ranks candidate scales by
bias-balanced validation accuracy, on the `val` split or, without one, on a seeded held-out part of
train that the candidates never train on. The (label, bias) groups use the candidate method's own bias
function, so discovered k-means bias values (no bias_key) group validation samples as they did training."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from biasaudit.adapter import Adapter
from biasaudit.batches import checked_labels, take_rows
from biasaudit.training import mmdb
from biasaudit.progress import Progress
from biasaudit.training.loop import TrainConfig, holdout_rows, train
from biasaudit.training.method_mmdb import MMDB

HOLDOUT_FRACTION = 0.2
# Every (label, bias) group counts by default: a small validation set has only a few samples per
# bias-conflicting group, and a larger min_group drops exactly those, the groups the score exists for.
# (On an iid 180-sample val split of the demo, min_group=5 kept only the bias-aligned groups and picked
# s=1, the most biased candidate: val 95.6, OOD 24.1%.) The demo's val split is bias-balanced
# (datasets/digits_captions.py), about 1.8 samples per group. Raise it on large validation sets, where
# tiny groups are noise rather than the whole signal.
DEFAULT_MIN_GROUP = 1


def selection_plan(adapter: Adapter, config: TrainConfig) -> tuple[TrainConfig, str]:
    """The training config the candidates use, and where they are validated."""
    if "val" in adapter.splits:
        return config, "val"
    return replace(config, holdout=HOLDOUT_FRACTION), f"held-out {HOLDOUT_FRACTION:.0%} of train"


def validation_batches(adapter: Adapter, config: TrainConfig, source: str) -> Iterator[Mapping[str, Any]]:
    if source == "val":
        yield from adapter.data("val", batch_size=256)
        return
    offset = 0
    for batch in adapter.data(config.split, batch_size=256):
        n = len(checked_labels(batch, adapter, split=config.split))
        rows = np.flatnonzero(holdout_rows(np.arange(offset, offset + n), config=config))
        offset += n
        if rows.size:
            yield take_rows(batch, rows)


def bias_balanced_score(model: nn.Module, adapter: Adapter, method: MMDB, batches, *, device: torch.device, min_group: int) -> float:
    predictions, labels, bias = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            predictions.append(method.cosines(model, adapter, batch, device=device).argmax(1).cpu().numpy())
            labels.append(checked_labels(batch, adapter, split="val"))
            bias.append(method.batch_bias(batch, adapter, split="val", device=device))
    return mmdb.bias_balanced_accuracy(np.concatenate(predictions), np.concatenate(labels), np.concatenate(bias), min_group=min_group)


@dataclass(frozen=True)
class ScaleChoice:
    """--scale auto's result: the selection record (chosen scale, grid, scores, where validated) and the winning
    candidate itself (its trained model, its method object, its step log), which fix keeps instead of training the
    chosen scale again."""

    selection: dict[str, Any]
    model: nn.Module
    method: MMDB
    steps: list[dict[str, Any]]


def candidate_state_dir(state_dir: str | os.PathLike, scale: float) -> Path:
    """Where the candidate of one scale keeps its training state (each candidate resumes on its own)."""
    return Path(state_dir) / f"scale-{scale:g}"


def choose_mmdb_scale(model: nn.Module, adapter: Adapter, *, options: Mapping[str, Any], config: TrainConfig,
                      grid=mmdb.SCALE_GRID, min_group: int = DEFAULT_MIN_GROUP, progress: Progress | None = None,
                      state_dir: str | os.PathLike | None = None, resume: bool = False) -> ScaleChoice:
    """Train one candidate per scale from the same starting weights; keep the best by bias-balanced accuracy.

    Every candidate starts from the same weights and seed, so with discovered bias each refits the same
    clusters; the first candidate's prepare() raises, before any training, when no bias value can be had. Only the
    best candidate so far is held in memory (two copies of the model at most). With `state_dir`, each candidate saves
    its training state in its own folder (candidate_state_dir); `resume` continues each from its state when it has
    one, so an interrupted auto run resumes the candidate it was training and re-scores the finished ones."""
    candidate_config, source = selection_plan(adapter, config)
    device = torch.device(config.device)
    scores: dict[float, float] = {}
    best: tuple[tuple[float, float], nn.Module, MMDB, list[dict[str, Any]]] | None = None
    for scale in grid:
        candidate = copy.deepcopy(model)
        method = MMDB(**{**options, "scale": float(scale)})
        directory = candidate_state_dir(state_dir, scale) if state_dir is not None else None
        resumed = resume and directory is not None and (directory / "last.pt").is_file()
        steps = train(candidate, adapter, method, config=candidate_config, progress=progress, stage=f"scale {scale:g}",
                      state_dir=directory, resume=resumed)
        scores[float(scale)] = bias_balanced_score(candidate, adapter, method,
                                                   validation_batches(adapter, candidate_config, source), device=device, min_group=min_group)
        rank = (scores[float(scale)], -float(scale))  # ties go to the smaller scale
        if best is None or rank > best[0]:
            best = (rank, candidate, method, steps)
    assert best is not None, "the scale grid is never empty"
    _, winner, method, steps = best
    chosen = -best[0][1]
    selection = {"chosen": chosen, "grid": list(scores), "scores": scores, "validated_on": source, "min_group": min_group,
                 "criterion": "bias-balanced accuracy (mean over (label, bias) groups with >= min_group samples)",
                 "bias_source": method.bias_label,
                 "kept": "the chosen candidate itself, not trained again" + (
                     "; it trained on train without the held-out part it was validated on" if source != "val" else "")}
    return ScaleChoice(selection=selection, model=winner, method=method, steps=steps)
