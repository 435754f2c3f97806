"""Worst-group and bias-balanced accuracy as a scan diagnostic (biasaudit/diagnostics/protocol.py): the group counts of
biasaudit/diagnostics/groups.py (its section: groups_section.py) over every condition of the pass, grouped by (label,
bias value) or by (label, alignment) as ScanConfig.group_by and the split's group sizes decide. It needs bias values and
the priors that tell aligned from conflicting groups; without them its section says why."""

from __future__ import annotations

from typing import ClassVar
from biasaudit.diagnostics.favoured import aligned_share, favoured_classes, favoured_section
from biasaudit.diagnostics.groups import GroupAccumulator, choose_grouping
from biasaudit.diagnostics.groups_section import groups_section
from biasaudit.diagnostics.protocol import BatchOutcome, FinishContext, PassFacts, Section, own_draws, unavailable
from biasaudit.errors import InputError

_NO_PRIORS = (
    "The train split's label-under-bias priors are unavailable (see the JSD note), so groups cannot be told bias-aligned "
    "from bias-conflicting."
)


class GroupsDiagnostic:
    part_classes: ClassVar[tuple[type, ...]] = (GroupAccumulator,)

    def __init__(self, facts: PassFacts) -> None:
        self.accumulator = (
            None
            if facts.prior is None
            else GroupAccumulator(
                facts.conditions,
                num_classes=facts.num_classes,
                num_bias=facts.prior.num_bias,
                replicates=facts.config.bootstrap_replicates,
            )
        )

    def update(self, outcome: BatchOutcome) -> None:
        if self.accumulator is not None and outcome.bias is not None:
            self.accumulator.update(outcome.predictions, outcome.labels, outcome.bias, outcome.weights)

    def merge(self, other: GroupsDiagnostic) -> None:
        if (self.accumulator is None) != (other.accumulator is None):
            raise InputError("Cannot merge shards of which only some measured groups; expected parts of one scan.")
        if self.accumulator is not None and other.accumulator is not None:
            self.accumulator.merge(other.accumulator)

    def compute(self, context: FinishContext) -> Section:
        prior_counts, config = context.prior_counts, context.config
        if self.accumulator is None or prior_counts is None:
            return Section(unavailable(context.bias_note or _NO_PRIORS))
        draws = own_draws(context, self.accumulator.condition_names)
        groups = self.accumulator
        if draws:
            if context.multiplicities is None:
                raise RuntimeError("A pass with random draws has no draw multiplicities; expected them in its FinishContext.")
            groups = groups.combined_draws(draws, context.multiplicities)
        table = [name for name, group in context.condition_groups.items() if group in ("full", "missing")]
        favoured = favoured_classes(prior_counts, fraction=config.favoured_fraction)
        bias_names = context.bias_names if context.bias_source == "bias_key" else None
        alignment = (
            choose_grouping(groups, min_group=config.min_group, grouping=config.group_by, favoured=favoured) == "alignment"
        )
        # (label, aligned, conflicting or neutral) groups are unions of (label, bias value) groups: summed from them, exactly.
        section, found = groups_section(
            groups.by_alignment(favoured) if alignment else groups,
            favoured=favoured,
            min_group=config.min_group,
            class_names=context.class_names,
            bias_names=bias_names,
            bias_source=context.bias_source,
            table_conditions=table,
            train_aligned_share=aligned_share(prior_counts, favoured),
            alignment=alignment,
            asked=config.group_by == "alignment",
        )
        section["favoured"] = favoured_section(
            prior_counts, favoured, fraction=config.favoured_fraction, class_names=context.class_names, bias_names=bias_names
        )
        section["note"] = " ".join(filter(None, [context.bias_note, section["note"], section["favoured"]["note"]])) or None
        return Section(section, derived={k: v for k, v in found.items() if k.split(":", 1)[1] in table})

    def reset(self) -> None:
        if self.accumulator is not None:
            a = self.accumulator
            self.accumulator = GroupAccumulator(
                a.condition_names, num_classes=a.num_classes, num_bias=a.num_bias, replicates=a.weighted().shape[1]
            )
