"""The condition grid: which modality is impaired how, for one scan.

A condition impairs at most one modality; `full` impairs none and is always evaluated, because
flip rates and negative transfer are measured against it. Spellings accepted by `--conditions`
(comma separated):

  default                      full, missing, noisy and ratio, plus the carrier and ceilings diagnostics
  full | missing | noisy | ratio   a whole group, for every modality
  missing:image  noisy:text    one group for one modality
  ratio:image                  the missing-ratio sweep for one modality
  image=gaussian:0.2           any registered impairment at any severity in [0, 1]
  text=missing_ratio:0.5       the modality's muting impairment on half the samples
  carrier | ceilings | shapley | interaction   a diagnostic that needs forwards of its own (methods.md
                               section 9); groups and calibration read the conditions above and always run
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

from biasaudit.data.modality import Modality
from biasaudit.errors import ConditionError

# biasaudit.data.impairments (numpy and torch) is imported by the functions that build conditions, not here: the command
# line reads GROUPS and DIAGNOSTICS for `scan --help`, which should not wait on torch.

RATIO_SWEEP = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
GROUPS = ("full", "missing", "noisy", "ratio")
# Diagnostics named in --conditions because they cost forwards, so that a CI scan can leave them out.
DIAGNOSTICS = ("carrier", "ceilings", "shapley", "interaction")
DEFAULT_DIAGNOSTICS = ("carrier", "ceilings")


@dataclass(frozen=True)
class Condition:
    name: str
    group: str  # full | missing | noisy | ratio | custom
    modality: str | None = None
    impairment: str | None = None
    severity: float = 0.0
    # Which independent draw of a random condition this is (biasaudit/scanning/draws.py); draw d reads the random streams of
    # seed + d. Only the scan's pass sees draws other than 0: the audit reports their mean under the base name.
    draw: int = 0

    @property
    def impaired_modality(self) -> str:
        """The modality an impaired condition acts on (every condition but Full names one)."""
        if self.modality is None:
            raise ValueError(f"condition {self.name!r} impairs no modality")
        return self.modality

    @property
    def impairment_name(self) -> str:
        """The impairment an impaired condition applies (every condition but Full names one)."""
        if self.impairment is None:
            raise ValueError(f"condition {self.name!r} applies no impairment")
        return self.impairment

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "group": self.group,
            "modality": self.modality,
            "impairment": self.impairment,
            "severity": self.severity,
        }


FULL = Condition(name="full", group="full")


def _missing(m: Modality) -> Condition:
    from biasaudit.data.impairments import muting_impairment

    return Condition(f"missing:{m.name}", "missing", m.name, muting_impairment(m).name, 1.0)


def _noisy(m: Modality) -> Condition:
    from biasaudit.data.impairments import noise_impairment

    impairment = noise_impairment(m)
    return Condition(f"noisy:{m.name}", "noisy", m.name, impairment.name, impairment.default_severity)


def _ratio(m: Modality) -> list[Condition]:
    from biasaudit.data.impairments import muting_impairment

    muting = muting_impairment(m).name
    return [Condition(f"ratio:{m.name}:{r:g}", "ratio", m.name, muting, r) for r in RATIO_SWEEP]


_GROUP_BUILDERS = {"missing": lambda m: [_missing(m)], "noisy": lambda m: [_noisy(m)], "ratio": _ratio}


def _custom(token: str, by_name: dict[str, Modality]) -> Condition:
    from biasaudit.data.impairments import check_severity, muting_impairment, resolve_impairment

    modality_name, _, rest = token.partition("=")
    modality = by_name.get(modality_name)
    if modality is None:
        raise ConditionError(f"Condition {token!r} names modality {modality_name!r}. Available: {', '.join(by_name)}.")
    name, _, severity_text = rest.partition(":")
    impairment = muting_impairment(modality) if name == "missing_ratio" else resolve_impairment(modality.kind, name)
    if severity_text:
        try:
            severity = float(severity_text)
        except ValueError:
            raise ConditionError(f"Condition {token!r} has severity {severity_text!r}; expected a number from 0 to 1.") from None
    else:
        severity = impairment.default_severity
    check_severity(severity, what=f"condition {token!r}")
    return Condition(f"{modality.name}={name}:{severity:g}", "custom", modality.name, impairment.name, severity)


def parse_conditions(spec: str | Sequence[str], modalities: Sequence[Modality]) -> list[Condition]:
    """Parse a condition spec into an ordered, de-duplicated list that always starts with `full`."""
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    by_name = {m.name: m for m in modalities}
    available = "default, " + ", ".join(GROUPS + DIAGNOSTICS) + ", GROUP:MODALITY, MODALITY=IMPAIRMENT[:SEVERITY]"
    if not tokens:  # e.g. an empty shell variable: running the defaults instead would hide the mistake
        raise ConditionError(f"Conditions {spec!r} name no condition. Available: {available}.")
    out: list[Condition] = [FULL]
    for token in tokens:
        if token == "default":
            groups, names = ["missing", "noisy", "ratio"], list(by_name)
        elif token == "full" or token in DIAGNOSTICS:
            continue
        elif token in _GROUP_BUILDERS:
            groups, names = [token], list(by_name)
        elif "=" in token:
            out.append(_custom(token, by_name))
            continue
        elif ":" in token and token.split(":", 1)[0] in _GROUP_BUILDERS:
            group, modality_name = token.split(":", 1)
            if modality_name not in by_name:
                raise ConditionError(f"Condition {token!r} names modality {modality_name!r}. Available: {', '.join(by_name)}.")
            groups, names = [group], [modality_name]
        else:
            raise ConditionError(f"Unknown condition {token!r}. Available: {available}.")
        for group in groups:
            for name in names:
                out.extend(_GROUP_BUILDERS[group](by_name[name]))
    seen: set[str] = set()
    unique = []
    for condition in out:
        if condition.name not in seen:
            seen.add(condition.name)
            unique.append(condition)
    return unique


def parse_diagnostics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The diagnostics a condition spec asks for, in DIAGNOSTICS order ("default" brings DEFAULT_DIAGNOSTICS)."""
    tokens = {t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()} or {"default"}
    wanted = set(tokens & set(DIAGNOSTICS)) | (set(DEFAULT_DIAGNOSTICS) if "default" in tokens else set())
    return tuple(d for d in DIAGNOSTICS if d in wanted)
