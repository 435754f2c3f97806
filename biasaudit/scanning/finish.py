"""A whole scan's (possibly merged) state made into the audit's sections: the conditions' scores and summary, every
registered diagnostic's `compute` (biasaudit/diagnostics/registry.py), then the engine-driven ones (gradient conflict,
mute checks, carrier, ceilings, Shapley, interaction), the bootstrap counts and the forwards it cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from biasaudit._core.progress import Progress
from biasaudit.data.adapter import Adapter
from biasaudit.diagnostics.ceilings import ceilings_section, probe_split
from biasaudit.diagnostics.gap import dominant_modality
from biasaudit.diagnostics.mutes import mute_findings, rms_z
from biasaudit.diagnostics.protocol import Diagnostic, FinishContext
from biasaudit.scanning.conditions import Condition
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.discovery import discover_bias, discovered_bias_pass
from biasaudit.scanning.draws import combined_counts, combined_pass, draw_groups, pass_multiplicities
from biasaudit.scanning.state import PassState, ScanContext, ScanState
from biasaudit.scanning.summary import condition_rows, group_summary, ratio_sweep, reliance

_NO_TRAIN_PRIORS = "The JSD diagnostic needs the label-under-bias priors of the train split, which the adapter does not offer."
_NOTHING_DISCOVERED = (
    "The data has no bias attribute and none could be discovered (see the JSD note), so there are no groups and no carrier test."
)


@dataclass(frozen=True)
class _BiasValues:
    """Where the bias values of groups and the carrier test come from, and the pass that measured them."""

    source: str  # bias_key or kmeans
    note: str | None  # what the sections on bias values say of them (groups, carrier)
    prior_counts: np.ndarray | None
    prior_note: str | None  # how the priors were found, or why there are none (the JSD's note)
    bias_pass: PassState  # the main pass, or the pass on the discovered values
    diagnostics: dict[str, Diagnostic]  # every registered diagnostic, those measured on discovered values replaced
    notes: tuple[str, ...] = ()
    forwards: Counter = field(default_factory=Counter)


def finish_scan(
    state: ScanState,
    context: ScanContext,
    *,
    adapter: Adapter,
    config: ScanConfig,
    model: nn.Module | None,
    device: torch.device | None,
    progress: Progress,
) -> dict[str, Any]:
    """The audit's sections from a whole scan's (possibly merged) state. `model` is used only where the data has no bias
    key (k-means bias discovery and its second pass); a merge of parts has no model and never needs one."""
    names = [m.name for m in adapter.modalities]
    conditions, wanted = context.conditions, context.wanted
    # Draws of the random conditions become their means under their own names, once every shard is merged in.
    picks = pass_multiplicities(state.main, seed=config.seed)
    main = combined_pass(state.main, picks=picks)
    seen = state.samples
    scores = main.accuracy.result()
    class_names = list(adapter.class_names or [str(i) for i in range(adapter.num_classes)])
    summary = {"full": {k: v for k, v in scores["full"].to_dict().items() if k in ("accuracy", "accuracy_ci", "macro_f1", "n")}}
    for group in ("missing", "noisy"):
        section = group_summary(group, conditions, scores)
        if section is not None:
            summary[group] = section
    dominant = summary.get("missing", {}).get("dominant")
    bias = _bias_values(
        main, context, adapter=adapter, config=config, model=model, device=device, dominant=dominant, progress=progress
    )
    finishing = FinishContext(
        config=config,
        num_classes=adapter.num_classes,
        class_names=class_names,
        bias_names=adapter.bias_names,
        condition_groups={c.name: c.group for c in conditions},
        prior_counts=bias.prior_counts,
        bias_source=bias.source,
        bias_note=bias.note,
        prior_note=bias.prior_note,
        draw_groups=draw_groups(state.main.accuracy.condition_names),
        multiplicities=picks,
        dominant=dominant,
    )
    measured = {name: diagnostic.compute(finishing) for name, diagnostic in bias.diagnostics.items()}
    sections: dict[str, Any] = {name: section.body for name, section in measured.items()}
    derived = {name: values for section in measured.values() for name, values in section.derived.items()}
    notes = [*bias.notes, *(note for section in measured.values() for note in section.notes)]
    conflict = state.gradient_conflict
    if conflict is None:  # a caller bug: shard 0, which every whole scan has, measures it
        raise ValueError("the scan's state has no gradient conflict section (shard 0's)")
    sections["gradient_conflict"] = conflict
    if not conflict.get("available", True) and conflict.get("note"):
        notes.append(conflict["note"])
    sections["notes"] = notes
    sections["mute_checks"] = _mute_checks(
        main, conditions, scores, summary, adapter, class_names, mute_compare=config.mute_compare
    )
    if sections["mute_checks"]["compare_note"]:
        notes.append(sections["mute_checks"]["compare_note"])
    notes.extend(f["message"] for f in sections["mute_checks"]["findings"])
    if "carrier" in wanted:
        sections["carrier"], found = _carrier_section(bias, config, dominant=dominant)
        derived.update(found)
        summary["carrier"] = sections["carrier"].get("carrier")
    if "ceilings" in wanted:
        # The probes' draws become their mean, as the conditions' do.
        ceilings = combined_counts(main.ceilings, seed=config.seed) if main.ceilings is not None else None
        sections["ceilings"] = ceilings_section(
            names,
            ceilings.result() if ceilings is not None else {},
            context.ceiling_sources,
            observed_gap=summary.get("missing", {}).get("gap"),
            note=context.ceiling_note,
            num_classes=adapter.num_classes,
            probe_split=probe_split(adapter.splits, config.split),
        )
    if "shapley" in wanted:
        sections["shapley"] = (
            main.shapley.section() if main.shapley is not None else {"available": False, "note": context.shapley_note}
        )
    if "interaction" in wanted:
        sections["interaction"], found = main.interaction.section()
        derived.update(found)  # the share's replicates, for compare to pair

    bootstrap = main.accuracy.bootstrap_counts().to_dict()
    bootstrap["derived"] = {name: values.tolist() for name, values in derived.items()}
    forwards = Counter(main.forwards) + Counter({"ceilings": context.train_forwards}) + bias.forwards
    cost = {
        stage: forwards.get(stage, 0) / seen
        for stage in ("conditions", "carrier", "ceilings", "shapley", "interaction", "bias_discovery")
    }
    cost["total"] = sum(cost.values())
    return {
        "dataset": {
            "split": config.split,
            "n": seen,
            "num_classes": adapter.num_classes,
            "modalities": [{"name": m.name, "kind": m.kind} for m in adapter.modalities],
            "class_names": adapter.class_names and list(adapter.class_names),
            "bias_names": adapter.bias_names and list(adapter.bias_names),
        },
        "diagnostics": ["groups", "calibration", *wanted],
        "summary": summary,
        "conditions": condition_rows(conditions, scores),
        "ratio_sweep": ratio_sweep(
            conditions,
            scores,
            muted_fractions={k: v / (seen * main.accuracy.draws.get(k, 1)) for k, v in main.muted_counts.items()},
        ),
        "reliance": reliance(conditions, scores, class_names=class_names),
        **sections,
        # Kept in the file so that two audits of the same samples and seed (before/after a fix) get *paired*
        # intervals for their differences, whether compared in memory or read back (biasaudit/comparing.py).
        "samples": state.fingerprint.to_dict(),
        "bootstrap": bootstrap,
        "_forwards_per_sample": cost,
    }


def _bias_values(
    main: PassState,
    context: ScanContext,
    *,
    adapter: Adapter,
    config: ScanConfig,
    model: nn.Module | None,
    device: torch.device | None,
    dominant: str | None,
    progress: Progress,
) -> _BiasValues:
    """The data's own bias values; without a bias key, the k-means clusters discovered now, and the pass on them."""
    if adapter.bias_key is not None:
        return _BiasValues(
            "bias_key",
            None,
            context.prior_counts,
            None if context.prior_counts is not None else _NO_TRAIN_PRIORS,
            main,
            dict(main.diagnostics),
        )
    if model is None or device is None:  # a caller bug: only a merge of parts has no model, and parts have a bias key
        raise ValueError("bias discovery needs the model and its device")
    discovery = discover_bias(model, adapter, config, dominant=dominant, device=device)
    found = discovery.found
    if found is None:
        return _BiasValues("kmeans", _NOTHING_DISCOVERED, None, discovery.note, main, dict(main.diagnostics))
    evaluator = discovered_bias_pass(model, adapter, config, found, context.wanted, device=device, progress=progress)
    bias_pass = PassState.of(evaluator)
    note = (
        f"Bias values are the {found.prior.num_bias} k-means clusters of the dominant modality's ({dominant}) "
        "branch embeddings (the data has no bias attribute); groups are measured under the full and missing conditions only."
    )
    return _BiasValues(
        "kmeans",
        note,
        found.prior.counts,
        discovery.note,
        bias_pass,
        {**main.diagnostics, "jsd": found.jsd, **bias_pass.diagnostics},
        notes=(discovery.note,),
        forwards=Counter({"bias_discovery": found.forwards}) + evaluator.forwards,
    )


def _carrier_section(
    bias: _BiasValues, config: ScanConfig, *, dominant: str | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The carrier test's section on the bias values in effect, and its per-replicate figures for bootstrap.derived."""
    carrier = bias.bias_pass.carrier
    if carrier is None:
        return {
            "available": False,
            "note": bias.note or "The carrier test needs bias values and the train split's label-under-bias priors.",
        }, {}
    return carrier.section(
        dominant=dominant,
        bias_source=bias.source,
        donor_pool=config.donor_pool,
        note=bias.note if bias.source == "kmeans" else None,
    )


def _mute_checks(
    main: PassState,
    conditions: list[Condition],
    scores: Mapping[str, Any],
    summary: dict[str, Any],
    adapter: Adapter,
    class_names: list[str],
    *,
    mute_compare: bool,
) -> dict[str, Any]:
    """Degenerate or far-outside mutes (biasaudit/diagnostics/mutes.py), and the --mute-compare table."""
    confusion = main.accuracy.confusion
    moments = main.moments
    distances = {
        m.name: rms_z(moments[f"full:{m.name}"], moments[f"muted:{m.name}"])
        for m in adapter.modalities
        if f"full:{m.name}" in moments and f"muted:{m.name}" in moments
    }
    rows = [
        {"name": c.name, "modality": c.modality, "impairment": c.impairment, "predicted": confusion[c.name].sum(axis=0)}
        for c in conditions
        if c.group == "missing"
    ]
    findings = mute_findings(
        rows,
        label_counts=confusion["full"].sum(axis=1),
        class_names=class_names,
        kinds={m.name: m.kind for m in adapter.modalities},
        distances=distances,
    )
    missing = summary.get("missing")
    caveats = [f["message"] for f in findings if missing and f["modality"] == missing.get("dominant")]
    if missing and caveats:  # a caveat names the dominant modality of the missing summary
        missing["dominant_caveat"] = caveats[0]
    compared: dict[str, dict[str, Any]] | None = None
    compare_note: str | None = None
    alternatives = [c for c in conditions if c.group == "mute_compare"]
    if mute_compare and not alternatives:
        compare_note = (
            "--mute-compare measured nothing: no modality's kind has a second muting impairment "
            "(an image has two: the black zero and the mid-grey mean)."
        )
    if alternatives and missing:
        compared = {}
        for c in alternatives:
            entry = compared.setdefault(c.impaired_modality, {"choices": {}, "dominant": {}})
            current = next(r for r in conditions if r.group == "missing" and r.modality == c.modality)
            for choice in (current, c):
                entry["choices"][choice.impairment] = {
                    "accuracy": scores[choice.name].accuracy,
                    "flip_rate": scores[choice.name].flip_rate,
                }
                flips = {**missing["flip_rates"], c.modality: scores[choice.name].flip_rate}
                entry["dominant"][choice.impairment] = dominant_modality(flips) if max(flips.values()) > 0 else None
    return {"findings": findings, "distances": distances, "compare": compared, "compare_note": compare_note}
