"""Model selection for `fix`: a method's one gridded option given as "auto" (MMDB's scale, OGM-GE's α, MMPareto's γ,
Group DRO's η, JTT's up-weight; OPTION_GRIDS) is chosen by training one candidate per grid value from the same
starting weights and seed, and ranking them by bias-balanced accuracy on the `val` split or, without one, on a seeded
held-out part of train that the candidates never train on (methods.md sections 6 and 8). The (label, bias) groups use
the candidate method's own bias function when it has one, so discovered k-means bias values (no bias_key) group
validation samples as they did training; else the adapter's bias_key; with neither, plain accuracy ranks them (said
in the selection record). The winning candidate is kept, not trained again."""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels, int_column, take_rows
from biasaudit.errors import InputError
from biasaudit.training import mmdb
from biasaudit._core.progress import Progress
from biasaudit.training.driver import scored_as_trained
from biasaudit.training.epoch_batches import holdout_rows
from biasaudit.training.feature_cache import CacheSettings
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import METHODS, make_method, method_class

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


# The one option of each method that "auto" selects, and its grid, in the registry's order: each driver's own
# `option_grid` (where its values come from is said there), small (each value is a training), around the method's
# default, from its paper's reported range.
OPTION_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    name: grid for name in METHODS if (grid := getattr(method_class(name), "option_grid", None)) is not None
}
AUTO = "auto"
CRITERION = "bias-balanced accuracy (mean over (label, bias) groups with >= min_group samples)"
CRITERION_WITHOUT_BIAS = "accuracy (no bias value on the validation samples: neither the method's nor the adapter's bias_key)"


def auto_option(method: str, options: Mapping[str, Any]) -> str | None:
    """The option of `method` given as "auto" (to be chosen on validation data), or None. ("auto" for any other numeric
    option is refused by the method itself, naming the option; some string options have an "auto" of their own, e.g.
    MMDB's bias source.)"""
    gridded = OPTION_GRIDS.get(method, (None, ()))[0]
    value = options.get(gridded) if gridded is not None else None
    return gridded if isinstance(value, str) and value == AUTO else None


def placeholder_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options with the "auto" one removed (the method's default stands in until the grid has chosen), so that every
    other option is validated now."""
    option = auto_option(method, options)
    return {k: v for k, v in options.items() if k != option}


def check_grid(method: str, grid: Any) -> tuple[float, ...]:
    """A grid given for `method`'s auto option: one or more distinct positive, finite numbers (InputError otherwise)."""
    if method not in OPTION_GRIDS:
        raise InputError(f"Method {method!r} has no option chosen on validation data. Available: {', '.join(OPTION_GRIDS)}.")
    option = OPTION_GRIDS[method][0]
    try:
        values = tuple(float(v) for v in grid)
    except (TypeError, ValueError):
        values = ()
    if not values or len(set(values)) != len(values) or not all(0 < v < float("inf") for v in values):
        raise InputError(f"The grid of {method}'s {option} is {grid!r}; expected one or more distinct positive, finite numbers.")
    return values


def has_bias_values(method: Any, adapter: Adapter) -> bool:
    """Whether validation samples can be grouped: the method has its own bias function, or the adapter a bias_key."""
    groups = getattr(method, "groups", None)
    return (
        callable(getattr(method, "batch_bias", None)) or callable(getattr(groups, "values", None)) or adapter.bias_key is not None
    )


def bias_values(method: Any, batch: Mapping[str, Any], adapter: Adapter, *, device: torch.device) -> np.ndarray:
    """Every sample's bias value as the candidate grouped training samples (its own bias function), else the adapter's
    bias_key (has_bias_values first)."""
    if callable(getattr(method, "batch_bias", None)):
        return method.batch_bias(batch, adapter, split="val", device=device)
    group_values = getattr(getattr(method, "groups", None), "values", None)
    if callable(group_values):
        return np.asarray(group_values(batch, adapter, split="val", device=device), dtype=np.int64)
    if adapter.bias_key is None:
        raise InputError("Bias values were asked of the adapter's bias_key, and the adapter declares none.")
    return int_column(batch, adapter.bias_key, what="bias", split="val")


def bias_balanced_score(
    model: nn.Module, adapter: Adapter, method: Any, batches, *, device: torch.device, min_group: int
) -> float:
    """The candidate's bias-balanced accuracy (accuracy without bias values) on `batches`, scored as it was trained."""
    grouped = has_bias_values(method, adapter)
    predicted: list[np.ndarray] = []
    labelled: list[np.ndarray] = []
    bias: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), scored_as_trained(method, model, adapter):
        for batch in batches:
            predicted.append(adapter.forward(model, adapter.prepare(batch, device=device)).argmax(1).cpu().numpy())
            labelled.append(checked_labels(batch, adapter, split="val"))
            if grouped:
                bias.append(bias_values(method, batch, adapter, device=device))
    model.train(was_training)
    predictions, labels = np.concatenate(predicted), np.concatenate(labelled)
    if not grouped:
        return float(100.0 * np.mean(predictions == labels))
    return mmdb.bias_balanced_accuracy(predictions, labels, np.concatenate(bias), min_group=min_group)


@dataclass(frozen=True)
class OptionChoice:
    """An auto option's result: the selection record (option, chosen value, grid, scores, where validated) and the
    winning candidate itself (its trained model, its method object, its step log), which fix keeps instead of training
    the chosen value again."""

    selection: dict[str, Any]
    model: nn.Module
    method: Any
    steps: list[dict[str, Any]]


def option_default(method: str) -> float:
    """The default value of `method`'s gridded option (its paper's), as the method's signature gives it."""
    return float(inspect.signature(method_class(method)).parameters[OPTION_GRIDS[method][0]].default)


def candidate_state_dir(state_dir: str | os.PathLike, option: str, value: float) -> Path:
    """Where the candidate of one grid value keeps its training state (each candidate resumes on its own)."""
    return Path(state_dir) / f"{option}-{value:g}"


def choose_option(
    model: nn.Module,
    adapter: Adapter,
    *,
    method: str,
    options: Mapping[str, Any],
    config: TrainConfig,
    grid: Sequence[float] | None = None,
    min_group: int = DEFAULT_MIN_GROUP,
    progress: Progress | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    distributed: bool = False,
    cache: CacheSettings | None = None,
    cache_report: Callable[[dict[str, Any]], None] | None = None,
) -> OptionChoice:
    """Train one candidate per value of `method`'s gridded option from the same starting weights; keep the best on
    validation data. Ties go to the method's default (its paper's value) when it is among the best, else to the smaller
    value: where validation cannot tell candidates apart (e.g. MMPareto's γ under Adam, which divides out a constant
    factor on a gradient), the published default stands.

    Every candidate starts from the same weights and seed, so with discovered bias each refits the same clusters; the
    first candidate's prepare() raises, before any training, when no bias value can be had. Only the best candidate so
    far is held in memory (two copies of the model at most). With `state_dir`, each candidate saves its training state
    in its own folder (candidate_state_dir); `resume` continues each from its state when it has one, so an interrupted
    auto run resumes the candidate it was training and re-scores the finished ones. `distributed`: each candidate
    trains data-parallel over the process group (loop.py), and every process scores it alike. `cache`,
    `cache_report`: the frozen-encoder feature cache of each candidate's training (loop.py)."""
    option, default_grid = OPTION_GRIDS[method]
    grid = check_grid(method, grid if grid is not None else default_grid)
    default = option_default(method)
    candidate_config, source = selection_plan(adapter, config)
    device = torch.device(config.device)
    scores: dict[float, float] = {}
    best: tuple[tuple[float, bool, float], nn.Module, Any, list[dict[str, Any]]] | None = None
    for value in grid:
        candidate = copy.deepcopy(model)
        fixer = make_method(method, **{**options, option: value})
        directory = candidate_state_dir(state_dir, option, value) if state_dir is not None else None
        resumed = resume and directory is not None and (directory / "last.pt").is_file()
        steps = train(
            candidate,
            adapter,
            fixer,
            config=candidate_config,
            progress=progress,
            stage=f"{option} {value:g}",
            state_dir=directory,
            resume=resumed,
            distributed=distributed,
            cache=cache,
            cache_report=cache_report,
        )
        batches = validation_batches(adapter, candidate_config, source)
        scores[value] = bias_balanced_score(candidate, adapter, fixer, batches, device=device, min_group=min_group)
        rank = (scores[value], value == default, -value)
        if best is None or rank > best[0]:
            best = (rank, candidate, fixer, steps)
    assert best is not None, "a checked grid is never empty"
    _, winner, fixer, steps = best
    grouped = has_bias_values(fixer, adapter)
    chosen = -best[0][2]
    tied = [value for value, score in scores.items() if score == scores[chosen]]
    selection = {
        "option": option,
        "chosen": chosen,
        "grid": list(scores),
        "scores": scores,
        "validated_on": source,
        "default": default,
        "tied": tied if len(tied) > 1 else [],
        "min_group": min_group,
        "criterion": CRITERION if grouped else CRITERION_WITHOUT_BIAS,
        "bias_source": getattr(fixer, "bias_label", None)
        or (getattr(getattr(fixer, "groups", None), "label", None))
        or (f"adapter bias_key {adapter.bias_key!r}" if grouped and adapter.bias_key is not None else None),
        "kept": "the chosen candidate itself, not trained again"
        + ("; it trained on train without the held-out part it was validated on" if source != "val" else ""),
    }
    return OptionChoice(selection=selection, model=winner, method=fixer, steps=steps)
