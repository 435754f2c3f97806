"""Whether two audits pair up replicate by replicate: the same generator, seed, replicate count, draws, samples and
weights (Pairing, pair_replicates), and the per-replicate figures a paired interval is taken over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

import numpy as np

from biasaudit.errors import DataError
from biasaudit.data.fingerprint import fingerprint_difference
from biasaudit.diagnostics.accuracy import BootstrapCounts, percentile_interval


@dataclass(frozen=True, eq=False)
class Pairing:
    """The replicate counts of both audits when they pair up replicate by replicate; else why not."""

    before: BootstrapCounts | None
    after: BootstrapCounts | None
    reason: str | None  # None exactly when paired

    @property
    def paired(self) -> bool:
        return self.reason is None

    @property
    def counts(self) -> tuple[BootstrapCounts, BootstrapCounts] | None:
        """(before, after) replicate counts when paired; None when unpaired."""
        if not self.paired or self.before is None or self.after is None:
            return None
        return self.before, self.after

    def delta_interval(self, condition: str) -> tuple[float, float] | None:
        """95% interval of accuracy_after - accuracy_before of one condition, in points; None when unpaired."""
        if self.counts is None:
            return None
        before, after = self.counts
        return percentile_interval(after.accuracy(condition) - before.accuracy(condition))


def _lacking(before: Mapping[str, Any], after: Mapping[str, Any], key: str, what: str) -> str | None:
    missing = [name for name, audit in (("before", before), ("after", after)) if key not in audit]
    if not missing:
        return None
    who = "neither audit keeps" if len(missing) == 2 else f"the {missing[0]} audit keeps no"
    return f"{who} {what} (written by an older biasaudit)"


def generator_of(audit: Mapping[str, Any]) -> Mapping[str, Any]:
    """The random generator an audit drew with; audits that do not name one are version 1 (numpy per sample)."""
    return audit["manifest"].get("randomness") or {"name": "numpy-default_rng-per-sample", "version": 1}


def pair_replicates(before: Mapping[str, Any], after: Mapping[str, Any]) -> Pairing:
    """Pair the bootstrap replicates of two audits only when they drew the same weights for the same samples."""

    def unpaired(reason: str) -> Pairing:
        return Pairing(before=None, after=None, reason=reason)

    for key, what in (("bootstrap", "bootstrap replicates"), ("samples", "sample fingerprints")):
        lacking = _lacking(before, after, key, what)
        if lacking is not None:
            return unpaired(lacking)
    generators = [generator_of(audit) for audit in (before, after)]
    if generators[0] != generators[1]:
        return unpaired(
            "the audits drew their random numbers with different generators "
            f"({generators[0]['name']} v{generators[0]['version']} vs {generators[1]['name']} v{generators[1]['version']})"
        )
    b, a = (
        BootstrapCounts.from_dict(audit["bootstrap"], conditions=[row["name"] for row in audit["conditions"]])
        for audit in (before, after)
    )
    if b.seed != a.seed:
        return unpaired(f"different bootstrap seeds ({b.seed} vs {a.seed})")
    if b.replicates != a.replicates:
        return unpaired(f"different replicate counts ({b.replicates} vs {a.replicates})")
    if dict(b.draws) != dict(a.draws):
        # Replicates of R draws weigh R draws picked with replacement: they pair only with replicates that did the same.
        return unpaired(
            f"different draws of the random conditions ({max(b.draws.values(), default=1)} vs {max(a.draws.values(), default=1)})"
        )
    different = fingerprint_difference(before["samples"], after["samples"])
    if different is not None:
        return unpaired(different)
    if not np.array_equal(b.total_weight, a.total_weight):
        # Same seed, replicate count and samples imply the same weights; only another weighting scheme
        # (another biasaudit version) or an edited file gets here.
        return unpaired("different replicate weights (the totals differ although seed, replicate count and samples match)")
    return Pairing(before=b, after=a, reason=None)


def group_replicates(audit: Mapping[str, Any], counts: BootstrapCounts, group: str) -> np.ndarray:
    """[modalities, replicates] accuracies of a group's conditions, in the order of its summary scores."""
    by_modality = {c["modality"]: c["name"] for c in audit["conditions"] if c["group"] == group}
    return np.stack([counts.accuracy(by_modality[m]) for m in audit["summary"][group]["scores"]])


def derived_replicates(audit: Mapping[str, Any], key: str, replicates: int, who: str) -> np.ndarray | None:
    """One derived measure per bootstrap replicate (null = NaN); None when the audit did not keep it."""
    values = ((audit.get("bootstrap") or {}).get("derived") or {}).get(key)
    if values is None:
        return None
    if (
        not isinstance(values, list)
        or len(values) != replicates
        or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
    ):
        raise DataError(
            f"The {who} audit's bootstrap.derived[{key!r}] is not a list of {replicates} numbers or nulls, "
            "one per replicate; it is damaged."
        )
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
