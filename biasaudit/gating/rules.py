"""GateRules: the limits a gate judges by, from Python (`ba.GateRules(max_gap=5)`), the command line or a config file,
all checked by the rules' registry entries (biasaudit.gating.registry) before any audit is read."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from collections.abc import Mapping

from biasaudit._core.annotations import register_remedy

from biasaudit._core.arguments import check_fields, refuse_unknown_fields
from biasaudit.gating.limits import parse_statistic
from biasaudit.gating.registry import RULES

# GateRules fields that are no rule: the JSD statistic max_jsd_drop reads, and how a baseline rule's change is judged.
SETTINGS = ("jsd", "significant")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class GateRules:
    """Limits per key (impairment group, condition or modality); a plain number is accepted and means the
    option's default target (ALL, or `full` for max_worst_group_drop). `labels` names each option in errors
    (the command-line flag, or the config file and key); an option without a label was given from Python: its
    type is checked strictly (a number or a mapping of numbers, never the command line's strings) and its errors
    name the keyword. One field per rule of biasaudit.gating.registry.RULES, which parses and checks it."""

    max_gap: Mapping[str, float] | float | None = None
    max_gap_increase: Mapping[str, float] | float | None = None
    min_accuracy: Mapping[str, float] = field(default_factory=dict)
    min_worst_group: Mapping[str, float] = field(default_factory=dict)
    max_worst_group_drop: Mapping[str, float] | float | None = None
    max_bias_follow_increase: Mapping[str, float] | float | None = None
    max_jsd_drop: float | None = None
    jsd: str = "weighted"
    significant: bool = False
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __new__(cls, *args: Any, **kwargs: Any) -> GateRules:
        refuse_unknown_fields(cls, args, kwargs, where="ba.GateRules")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_fields(self, where="ba.GateRules", skip=self.labels if isinstance(self.labels, Mapping) else ())
        for each in fields(self):  # in field order, so the first bad value is the one reported, as before
            rule = RULES.get(each.name)
            if rule is not None:
                parsed = rule.parse(getattr(self, each.name), label=self._label(each.name))
                # An unset rule holds its field's default: {} for a minimum per condition, else None.
                empty = each.default_factory() if each.default_factory is not MISSING else each.default
                object.__setattr__(self, each.name, parsed if parsed is not None else empty)
        object.__setattr__(self, "jsd", parse_statistic(self.jsd, label=self._label("jsd")))

    def _label(self, name: str) -> str:
        return self.labels.get(name, name)

    @property
    def comparing(self) -> list[str]:
        """The rules given that compare against a baseline audit, as their labels name them."""
        return [self._label(name) for name, rule in RULES.items()
                if rule.needs_baseline and rule.given(getattr(self, name, None))]

    @property
    def is_empty(self) -> bool:
        return not any(rule.given(getattr(self, name, None)) for name, rule in RULES.items())


def gate_rules(values: Mapping[str, Any], *, sources: Mapping[str, str] | None = None) -> GateRules:
    """GateRules from resolved settings (command-line strings or config-file numbers and tables: one validation
    path for both); an error names the flag, or the file and key the bad value came from."""
    sources = sources or {}
    labels = {name: _flag(name) if sources.get(name, "default").startswith(("command line", "default"))
              else f"{sources[name]} {name}" for name in values}
    given = {name: values[name] for name in (*RULES, *SETTINGS) if name in values and values[name] is not None}
    return GateRules(**given, labels=labels)


def _rules_remedy(value: Any, wanted: set[Any]) -> str:
    return " Give the rules to judge by, e.g. ba.GateRules(max_gap=5)." if GateRules in wanted and value is None else ""


register_remedy(_rules_remedy)
