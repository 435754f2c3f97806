"""Every gate rule, in one explicit registry: RULES maps a rule's name to its Rule record (whether it needs a baseline,
its kind, a one-line description, how its limits are parsed, and the function that evaluates it). GateRules' checks,
`evaluate_gate`'s loop, the baseline rules, the command line's help and the "Available: ..." sentences are all read
from here, and so are the command line's flags and the config file's keys: a new rule is its evaluator (in bias.py or
reliance.py) plus its entry and its GateRules field below (docs/gating.md, "Adding a gate rule";
tests/test_gate_registry.py adds a toy rule that way).

The order of RULES is the order rules are evaluated and reported in (rules on the current audit alone first, then the
ones that compare against the baseline), and the order the command line lists them in its messages.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from collections.abc import Callable, Mapping

from biasaudit._core.annotations import register_remedy
from biasaudit._core.arguments import check_fields, refuse_unknown_fields
from biasaudit.errors import InputError
from biasaudit.gating import bias, reliance
from biasaudit.gating.limits import ALL, PERCENT, POINTS, DropLimit, LimitOption, gap_groups, parse_statistic
from biasaudit.gating.verdicts import RuleVerdict

KINDS = ("bias", "reliance")
KEYS = ("group", "condition", "modality")  # what a table limit's keys name

# evaluate(current, comparison, baseline, limits, significant, **settings) -> verdicts. For a rule that needs a baseline,
# `comparison` is biasaudit.comparing.compare_audits(baseline, current) and `baseline` the baseline audit; else both None.
Evaluator = Callable[..., list[RuleVerdict]]


@dataclass(frozen=True)
class Rule:
    name: str  # the GateRules field, config-file key and (with - for _) command-line flag
    kind: str  # "bias" (measures the shortcut; recommended first) or "reliance" (the Gaps, plain accuracy)
    needs_baseline: bool  # compares against a stored audit (--baseline)
    description: str  # one line, for --help: what FAILs the rule
    limits: LimitOption | DropLimit  # how its limits are parsed and validated (from Python, the command line or a file)
    evaluate: Evaluator
    key: str | None = None  # what a table limit's keys name (KEYS): checked against the audits before any verdict
    settings: tuple[str, ...] = ()  # other GateRules fields the evaluator reads, passed by keyword (max_jsd_drop: jsd)

    def __post_init__(self) -> None:
        # A contributor's mistake in an entry shows at import, not as a rule that silently never runs.
        if not self.name.isidentifier() or self.kind not in KINDS or not callable(self.evaluate):
            raise ValueError(
                f"Gate rule {self.name!r}: name must be an identifier, kind one of {', '.join(KINDS)}, evaluate a function."
            )
        if (self.key is None) != isinstance(self.limits, DropLimit) or (self.key is not None and self.key not in KEYS):
            raise ValueError(
                f"Gate rule {self.name!r}: a table limit (LimitOption) needs key, one of {', '.join(KEYS)}; "
                "a single number (DropLimit) takes none."
            )

    @property
    def target(self) -> str | None:
        """The key a plain number stands for: ALL (every group; the carrier), `full`, or None (a key is required)."""
        return self.limits.plain

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def config_types(self) -> tuple[type, ...]:
        """What its key in a config file's [gate] table may hold (a number, a table of them, or both)."""
        if isinstance(self.limits, DropLimit):
            return (int, float)
        return (dict,) if self.target is None else (int, float, dict)

    @staticmethod
    def given(value: Any) -> bool:
        """Whether a parsed limit sets the rule (an empty table does not; a 0 limit does)."""
        return value is not None and not (isinstance(value, Mapping) and not value)

    def parse(self, raw: Any, *, label: str | None = None) -> Any:
        return self.limits.parse(raw, label or self.flag)


_GAP: dict[str, Any] = dict(form="POINTS or GROUP=POINTS", plain=ALL, keys=gap_groups)

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "max_gap",
            "reliance",
            False,
            "FAIL when a Gap of the current audit exceeds the limit (plain: every group it has, missing and noisy).",
            LimitOption(example="30 or missing=30", low=0.0, range_words="a gap in points >= 0", **_GAP),
            reliance.max_gap,
            key="group",
        ),
        Rule(
            "min_accuracy",
            "reliance",
            False,
            "FAIL when that condition's accuracy in the current audit is lower.",
            LimitOption("CONDITION=PERCENT", "full=90 or missing:image=40", None, **PERCENT),
            reliance.min_accuracy,
            key="condition",
        ),
        Rule(
            "min_worst_group",
            "bias",
            False,
            "FAIL when that condition's worst-group accuracy in the current audit is lower (ERROR when it cannot see the bias).",
            LimitOption("CONDITION=PERCENT", "full=60 or missing:image=20", None, **PERCENT),
            bias.min_worst_group,
            key="condition",
        ),
        Rule(
            "max_worst_group_drop",
            "bias",
            True,
            "FAIL when the worst-group accuracy (plain: of full) fell by more than this many points against the baseline.",
            LimitOption("POINTS or CONDITION=POINTS", "2 or full=2", "full", **POINTS),
            bias.max_worst_group_drop,
            key="condition",
        ),
        Rule(
            "max_bias_follow_increase",
            "bias",
            True,
            "FAIL when the excess bias-follow rate rose by more than this many percentage "
            "points against the baseline (plain: the baseline's carrier modality).",
            LimitOption("POINTS or MODALITY=POINTS", "5 or text=5", ALL, **POINTS),
            bias.max_bias_follow_increase,
            key="modality",
        ),
        Rule(
            "max_gap_increase",
            "reliance",
            True,
            "FAIL when a Gap grew by more than this many points against the baseline (plain: every group): the Gap ratchet.",
            LimitOption(example="2 or missing=2", **_GAP, **POINTS),
            reliance.max_gap_increase,
            key="group",
        ),
        Rule(
            "max_jsd_drop",
            "bias",
            True,
            "FAIL when the JSD (see --jsd) fell by more than this against the baseline (its mistakes copy the bias more).",
            DropLimit(),
            bias.max_jsd_drop,
            settings=("jsd",),
        ),
    )
}

BASELINE_RULES = tuple(name for name, rule in RULES.items() if rule.needs_baseline)
# The table limits by rule, as biasaudit.cli.config_file merges a command-line key into a file's table.
OPTIONS: dict[str, LimitOption] = {name: rule.limits for name, rule in RULES.items() if isinstance(rule.limits, LimitOption)}


# GateRules fields that are no rule: the JSD statistic max_jsd_drop reads, and how a baseline rule's change is judged.
SETTINGS = ("jsd", "significant")


@dataclass(frozen=True)
class GateRules:
    """Limits per key (impairment group, condition or modality); a plain number is accepted and means the
    option's default target (ALL, or `full` for max_worst_group_drop). `labels` names each option in errors
    (the command-line flag, or the config file and key); an option without a label was given from Python: its
    type is checked strictly (a number or a mapping of numbers, never the command line's strings) and its errors
    name the keyword. One field per rule of RULES above, which parses and checks it; a field sits here, beside the
    registry, so that a new rule is its evaluator plus these two lines, and IDEs and type checkers see every keyword."""

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
        return [
            self._label(name) for name, rule in RULES.items() if rule.needs_baseline and rule.given(getattr(self, name, None))
        ]

    @property
    def is_empty(self) -> bool:
        return not any(rule.given(getattr(self, name, None)) for name, rule in RULES.items())


def _rules_remedy(value: Any, wanted: set[Any]) -> str:
    return " Give the rules to judge by, e.g. ba.GateRules(max_gap=5)." if GateRules in wanted and value is None else ""


register_remedy(_rules_remedy)


def rule_named(name: str) -> Rule:
    """The registry's entry; a name it lacks is the caller's mistake, answered with the names it has."""
    rule = RULES.get(name)
    if rule is None:
        raise InputError(f"There is no gate rule {name!r}. Available: {', '.join(RULES)}.")
    return rule


def parse_limits(name: str, raw: Any, *, label: str | None = None) -> Any:
    """The limits of rule `name` from a number, a 'KEY=X' or 'X' string, a list of those, or a table (a single number for
    a rule without keys); None when nothing is set. Errors name `label` (default: the command-line flag)."""
    return rule_named(name).parse(raw, label=label)


def flags(rules: list[Rule] | None = None, *, last: str = "or") -> str:
    """'--a, --b or --c': rules (default: all) as the command line names them."""
    names = [rule.flag for rule in (RULES.values() if rules is None else rules)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"
