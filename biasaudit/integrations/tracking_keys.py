"""What a biasaudit result becomes in an experiment tracker, read from the results' typed fields: flat metric keys
grouped by slashes, params, tags (the verdict among them) and tables, one row per condition, rule or method.
docs/trackers.md lists every key; they are kept stable. Pure: no tracker is imported here.

Keys. A condition's name becomes a key path by reading its ':' and '=' as '/' (missing:image -> missing/image,
ratio:text:0.5 -> ratio/text/0.5), and any character a tracker refuses becomes '_'. A figure with an interval adds two
keys whose measure name ends in `_ci_low` and `_ci_high` (biasaudit/full/accuracy_ci_low, biasaudit/bias/
worst_group_ci_low/full): never a key below another key, which MLflow's file store would have to hold as both a file
and a folder. Units are the documents': accuracies, Gaps and their changes in percent (points), rates as fractions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from biasaudit.results.audit import Audit
    from biasaudit.results.comparison import Change, Comparison
    from biasaudit.results.estimate import Estimate, Interval
    from biasaudit.results.fix_result import FixResult
    from biasaudit.results.gate_result import GateResult
    from biasaudit.results.leaderboard_result import LeaderboardResult

    Result: TypeAlias = Audit | FixResult | Comparison | GateResult | LeaderboardResult

PREFIX = "biasaudit"
CI = "{ci}"  # where a key takes _ci_low / _ci_high
_REFUSED = re.compile(r"[^\w.\-/]")  # MLflow's metric names: letters, digits, _ - . / (and a colon, but not on Windows)
Param = str | int | float | bool


def part(name: str) -> str:
    """A condition, modality, method or rule key as a key path (see the module docstring)."""
    text = _REFUSED.sub("_", str(name).replace(":", "/").replace("=", "/"))
    return "/".join(piece if piece not in ("", ".", "..") else "_" for piece in text.split("/"))


def rule_path(rule: str) -> str:
    """A gate verdict's name as a key path: max_gap[missing] -> max_gap/missing, min_accuracy[missing:image] ->
    min_accuracy/missing/image, max_jsd_drop -> max_jsd_drop."""
    name, _, key = rule.partition("[")
    return part(name) + (f"/{part(key.removesuffix(']'))}" if key else "")


@dataclass(frozen=True)
class Table:
    """Rows for a tracker's table (W&B: a wandb.Table named biasaudit/table/`name`)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Entry:
    """One result as a tracker takes it: `kind` (audit, fix, compare, gate, leaderboard), `metrics` (key -> number),
    `params` (settings: key -> a string, number or bool), `tags` (key -> text: the verdict, the kind, the carrier) and
    `tables`."""

    kind: str
    metrics: Mapping[str, float]
    params: Mapping[str, Param]
    tags: Mapping[str, str]
    tables: tuple[Table, ...]


class Figures(dict[str, float]):
    """Metric keys to numbers; a missing or non-finite figure is left out (trackers refuse NaN, and None is no figure)."""

    def put(self, key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self[key.replace(CI, "")] = float(value)

    def interval(self, key: str, value: Any, interval: Interval) -> None:
        """`key` holds CI: the value there, and the interval's ends with _ci_low and _ci_high."""
        self.put(key, value)
        if interval is not None:
            self.put(key.replace(CI, "_ci_low"), interval[0])
            self.put(key.replace(CI, "_ci_high"), interval[1])

    def estimate(self, key: str, estimate: Estimate | None) -> None:
        if estimate is not None:
            self.interval(key, estimate.value, estimate.interval)

    def change(self, key: str, change: Change | None, p: str, before_ci: Interval = None, after_ci: Interval = None) -> None:
        """A before/after figure: the change (after minus before, its paired interval) under p/change, the before
        value under p/before and the after value under p itself. `key` is the path below those, holding CI."""
        if change is not None:
            self.interval(f"{p}/change/{key}", change.delta, change.delta_ci)
            self.interval(f"{p}/before/{key}", change.before, before_ci)
            self.interval(f"{p}/{key}", change.after, after_ci)


def _param(value: Any) -> Param | None:
    """A setting as a param: scalars as they are, lists and tables as JSON, None left out."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        value = dict(value)
    elif isinstance(value, (list, tuple)):
        value = list(value)
    return json.dumps(value, default=str, sort_keys=True)


def _params(values: Mapping[str, Any]) -> dict[str, Param]:
    return {key: param for key, value in values.items() if (param := _param(value)) is not None}


# ---- an audit --------------------------------------------------------------------------------------------------------


def sees_the_bias(audit: Audit) -> bool:
    """Whether worst-group and bias-balanced accuracy can see the bias: not when the audit's groups say `blind` (no
    bias-conflicting sample in a counted group), where the gate's min_worst_group is ERROR and a comparison leaves both
    out. Logging 88.9 there would let a threshold on the key pass what the gate refuses."""
    return audit.groups is None or not audit.groups.blind


def audit_metrics(audit: Audit, p: str = PREFIX) -> Figures:
    """Every condition's accuracy and flip rate, the Gaps, the bias measures, the ceilings and calibration, under `p`."""
    figures = Figures()
    for condition in audit.conditions:
        path = part(condition.name)
        figures.interval(f"{p}/{path}/accuracy{CI}", condition.accuracy, condition.accuracy_ci)
        figures.put(f"{p}/{path}/flip_rate", condition.flip_rate)
    for group, summary in (("missing", audit.summary.missing), ("noisy", audit.summary.noisy)):
        if summary is not None:
            figures.interval(f"{p}/reliance/gap{CI}/{group}", summary.gap, summary.gap_ci)
            figures.interval(f"{p}/reliance/avg{CI}/{group}", summary.avg, summary.avg_ci)
    bias = audit.bias
    for modality, rate in bias.follow_rate.items():
        figures.estimate(f"{p}/bias/follow_rate{CI}/{part(modality)}", rate)
    for condition_name in bias.worst_group if sees_the_bias(audit) else ():
        # With the interval the report and the verdict give it (exact, where the bootstrap one collapses to a point).
        figures.estimate(f"{p}/bias/worst_group{CI}/{part(condition_name)}", bias._worst_group_as_reported(condition_name))
    for condition_name, balanced in bias.bias_balanced.items() if sees_the_bias(audit) else ():
        figures.estimate(f"{p}/bias/bias_balanced{CI}/{part(condition_name)}", balanced)
    figures.estimate(f"{p}/bias/ood_accuracy{CI}", bias.ood_accuracy)
    figures.put(f"{p}/bias/jsd_mean", bias.jsd_mean)
    figures.put(f"{p}/bias/jsd_weighted_mean", bias.jsd_weighted_mean)
    if audit.ceilings is not None:
        for modality, ceiling in audit.ceilings.modalities.items():
            figures.estimate(f"{p}/ceilings/ceiling{CI}/{part(modality)}", ceiling.ceiling)
            figures.estimate(f"{p}/ceilings/alone{CI}/{part(modality)}", ceiling.alone)
            figures.put(f"{p}/ceilings/utilisation/{part(modality)}", ceiling.utilisation)
    for condition_name, calibration in audit.calibration.items():
        figures.put(f"{p}/calibration/ece/{part(condition_name)}", calibration.ece)
    return figures


def audit_params(audit: Audit) -> dict[str, Param]:
    """The settings the audit depends on (its manifest): seed, split, every scan setting, the model and adapter."""
    manifest, dataset = audit.manifest, audit.dataset
    checkpoint, adapter = manifest.checkpoint or {}, manifest.adapter or {}
    values = {
        f"{PREFIX}/version": manifest.version,
        f"{PREFIX}/seed": manifest.seed,
        f"{PREFIX}/split": dataset.split,
        f"{PREFIX}/n": dataset.n,
        f"{PREFIX}/modalities": ",".join(modality.name for modality in dataset.modalities),
        f"{PREFIX}/device": manifest.device,
        f"{PREFIX}/checkpoint": checkpoint.get("path"),
        f"{PREFIX}/checkpoint_sha256": checkpoint.get("sha256"),
        f"{PREFIX}/adapter": adapter.get("spec"),
        f"{PREFIX}/adapter_sha256": adapter.get("sha256"),
        **{f"{PREFIX}/config/{part(key)}": value for key, value in manifest.config.items()},
    }
    return _params(values)


def _audit_tags(audit: Audit, kind: str) -> dict[str, str]:
    return {
        f"{PREFIX}/kind": kind,
        f"{PREFIX}/verdict": audit.verdict.headline if audit.verdict is not None else "",
        f"{PREFIX}/carrier": audit.bias.carrier or "none",
        f"{PREFIX}/dominant": audit.bias.dominant or "none",
    }


def _ends(interval: Interval) -> tuple[float | None, float | None]:
    return interval if interval is not None else (None, None)


def _estimate_row(estimate: Estimate | None) -> tuple[float | None, float | None, float | None]:
    return (estimate.value, estimate.low, estimate.high) if estimate is not None else (None, None, None)


def _with_ci(name: str) -> tuple[str, str, str]:
    return name, f"{name}_ci_low", f"{name}_ci_high"


def audit_tables(audit: Audit) -> tuple[Table, ...]:
    conditions = Table(
        "conditions",
        ("condition", "group", "modality", "impairment", "severity", *_with_ci("accuracy"), "flip_rate", "n"),
        tuple(
            (c.name, c.group, c.modality, c.impairment, c.severity, c.accuracy, *_ends(c.accuracy_ci), c.flip_rate, c.n)
            for c in audit.conditions
        ),
    )
    bias = audit.bias
    groups = Table(
        "bias",
        ("condition", *_with_ci("worst_group"), "worst_group_label", *_with_ci("bias_balanced")),
        tuple(
            (name, *_estimate_row(bias._worst_group_as_reported(name)), g.worst_group_label, *_estimate_row(g.bias_balanced))
            for name, g in (bias.groups.items() if sees_the_bias(audit) else ())
        ),
    )
    carrier = Table(
        "carrier",
        ("modality", *_with_ci("follow_rate"), "carrier"),
        tuple((name, *_estimate_row(rate), name == bias.carrier) for name, rate in bias.follow_rate.items()),
    )
    return conditions, groups, carrier


def audit_entry(audit: Audit) -> Entry:
    return Entry("audit", audit_metrics(audit), audit_params(audit), _audit_tags(audit, "audit"), audit_tables(audit))
