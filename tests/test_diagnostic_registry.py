"""The diagnostics registry (issue 23): every registered diagnostic follows one protocol (update / merge / compute /
reset), streams to the digit (two halves merged equal one pass over everything), and a diagnostic added as one class and
one registry entry appears as its own section of a real scan's audit, sharded scans merged from part files included.
If any of this broke, a shard merge would drift from the single-process audit, or a new diagnostic would need edits
across the scan's engine, its part files and its finishing step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import biasaudit as ba
from biasaudit._core.sharding import Shard
from biasaudit.data.adapter import load_adapter
from biasaudit.diagnostics import registry
from biasaudit.diagnostics.accuracy import bootstrap_weights
from biasaudit.diagnostics.jsd import BiasPrior
from biasaudit.diagnostics.protocol import BatchOutcome, Diagnostic, FinishContext, PassFacts, Section
from biasaudit.errors import InputError
from biasaudit.results import to_jsonable
from biasaudit.scanning.audit import audit_model
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.engine import scan_shard
from biasaudit.scanning.parts import merge_parts, part_name, write_part

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_adapter.py'}:adapter"
CONDITIONS = ("full", "missing:a", "noisy:a")
CLASSES, BIAS, SAMPLES, REPLICATES = 3, 2, 90, 20
CONFIG = ScanConfig(bootstrap_replicates=REPLICATES, embedding_points=25, projection="pca", min_wrong=1, min_group=1)
PRIOR = np.array([[9, 3, 1], [2, 2, 8]])


def facts() -> PassFacts:
    return PassFacts(conditions=CONDITIONS, num_classes=CLASSES, prior=BiasPrior.from_counts(PRIOR), config=CONFIG)


def finishing() -> FinishContext:
    return FinishContext(config=CONFIG, num_classes=CLASSES, class_names=["zero", "one", "two"], bias_names=("x", "y"),
                         condition_groups={"full": "full", "missing:a": "missing", "noisy:a": "noisy"}, prior_counts=PRIOR,
                         bias_source="bias_key", bias_note=None, prior_note=None, draw_groups={}, multiplicities=None, dominant="a")


def outcome(rows: slice) -> BatchOutcome:
    """A fixed synthetic pass of SAMPLES samples (seeded), cut to `rows`."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, CLASSES, SAMPLES)
    indices = np.arange(SAMPLES)
    # Full right on two thirds, the impaired conditions less often: every diagnostic has mistakes and hits to count.
    predictions = {c: np.where(rng.random(SAMPLES) < keep, labels, rng.integers(0, CLASSES, SAMPLES))
                   for c, keep in zip(CONDITIONS, (0.67, 0.4, 0.55))}
    logits = torch.from_numpy(rng.normal(size=(SAMPLES, CLASSES))).float()
    whole = BatchOutcome(indices=indices, labels=labels, bias=rng.integers(0, BIAS, SAMPLES),
                         weights=bootstrap_weights(indices, replicates=REPLICATES, seed=0), predictions=predictions,
                         confidences={c: rng.uniform(1 / CLASSES, 1, SAMPLES) for c in CONDITIONS}, full_logits=logits,
                         features=torch.from_numpy(rng.normal(size=(SAMPLES, 6))).float())
    return BatchOutcome(indices=whole.indices[rows], labels=whole.labels[rows], bias=whole.bias[rows], weights=whole.weights[rows],
                        predictions={c: p[rows] for c, p in whole.predictions.items()},
                        confidences={c: p[rows] for c, p in whole.confidences.items()}, full_logits=whole.full_logits[rows],
                        features=whole.features[rows])


def as_text(section: Section) -> str:
    """The section as the audit writes it (NaN of a replicate with no sample as null), for equality to the digit."""
    return json.dumps(to_jsonable({"body": section.body, "derived": {k: v.tolist() for k, v in section.derived.items()},
                                   "notes": list(section.notes)}), sort_keys=True)


def fed(diagnostic: Diagnostic, *batches: slice) -> Diagnostic:
    for rows in batches:
        diagnostic.update(outcome(rows))
    return diagnostic


# Three batches. A shard is a set of whole batches (biasaudit/_core/sharding.py), so streaming is exact over batches: float
# sums inside one batch (calibration's confidence bins) are taken in sample order, and batches' sums add exactly.
BATCHES = (slice(0, 30), slice(30, 60), slice(60, SAMPLES))
ALL = slice(0, SAMPLES)


@pytest.mark.parametrize("name", list(registry.DIAGNOSTICS))
def test_every_registered_diagnostic_follows_the_protocol_and_streams_to_the_digit(name):
    cls = registry.diagnostic_class(name)
    one_pass = fed(cls(facts()), *BATCHES)
    assert isinstance(one_pass, Diagnostic)
    assert all(isinstance(c, type) for c in cls.part_classes)
    # Two shards, as a sharded scan deals them out (batches 0 and 2, then batch 1), merged.
    shard, other = fed(cls(facts()), BATCHES[0], BATCHES[2]), fed(cls(facts()), BATCHES[1])
    shard.merge(other)
    assert as_text(shard.compute(finishing())) == as_text(one_pass.compute(finishing()))


@pytest.mark.parametrize("name", list(registry.DIAGNOSTICS))
def test_reset_empties_a_diagnostic_to_its_just_created_state(name):
    cls = registry.diagnostic_class(name)
    used = fed(cls(facts()), *BATCHES)
    used.reset()
    assert as_text(fed(used, BATCHES[1]).compute(finishing())) == as_text(fed(cls(facts()), BATCHES[1]).compute(finishing()))


def test_the_registered_sections_count_what_the_synthetic_pass_holds():
    computed = {name: fed(cls(facts()), ALL).compute(finishing()).body for name, cls in registry.DIAGNOSTICS.items()}
    assert all(body["available"] for body in computed.values())
    whole = outcome(ALL)
    # The JSD reads the Full logits' mistakes, per bias value.
    wrong = whole.full_logits.argmax(dim=1).numpy() != whole.labels
    assert [row["n_wrong"] for row in computed["jsd"]["per_bias"].values()] == [int(wrong[whole.bias == k].sum()) for k in range(BIAS)]
    # Calibration bins every sample of every condition once; groups hold every sample in one (label, bias value) group.
    assert all(sum(b["count"] for b in row["reliability"]) == SAMPLES for row in computed["calibration"]["conditions"].values())
    assert sum(row["n"] for row in computed["groups"]["groups"]) == SAMPLES
    # The embedding plot shows the sampled points of the most frequent bias value.
    assert computed["embeddings"]["bias_value"] == int(np.bincount(whole.bias).argmax())
    assert 3 <= computed["embeddings"]["n_points"] <= CONFIG.embedding_points


def test_an_unknown_diagnostic_lists_the_registered_ones():
    with pytest.raises(InputError, match=r"Diagnostic 'nope' is unknown\. Available: jsd, embeddings, groups, calibration\."):
        registry.diagnostic_class("nope")


class RightCounts:
    """A diagnostic added as the README shows: per condition, how many samples the model gets right."""

    part_classes = ()

    def __init__(self, facts: PassFacts) -> None:
        self.right = dict.fromkeys(facts.conditions, 0)
        self.n = 0

    def update(self, outcome: BatchOutcome) -> None:
        for condition, predicted in outcome.predictions.items():
            self.right[condition] += int((predicted == outcome.labels).sum())
        self.n += len(outcome.labels)

    def merge(self, other: RightCounts) -> None:
        for condition, count in other.right.items():
            self.right[condition] += count
        self.n += other.n

    def compute(self, context: FinishContext) -> Section:
        return Section({"available": True, "n": self.n, "right": {c: r for c, r in self.right.items() if c in context.condition_groups}})

    def reset(self) -> None:
        self.right = dict.fromkeys(self.right, 0)
        self.n = 0


@pytest.fixture
def with_right_counts(monkeypatch):
    monkeypatch.setitem(registry.DIAGNOSTICS, "right_counts", RightCounts)


def tiny():
    adapter = load_adapter(TINY)
    return adapter, adapter.build_model()


def test_a_new_diagnostic_is_one_class_and_one_registry_entry(with_right_counts, tmp_path):
    adapter, model = tiny()
    audit = ba.scan(model, adapter, conditions="full,missing", bootstrap=20, projection="pca", gradient_batches=1, batch_size=16)
    # tests/fixtures/tiny_adapter.py: the model reads only `a`, so it is right on all 80 test samples under Full and with
    # `b` muted, and with `a` muted predicts class 0 for everyone: right on the 20 samples of class 0.
    expected = {"available": True, "n": 80, "right": {"full": 80, "missing:a": 20, "missing:b": 80}}
    assert audit.document["right_counts"] == expected
    assert json.loads(audit.to_json(tmp_path / "audit.json").read_text())["right_counts"] == expected


def parts_of(model, adapter, config: ScanConfig, count: int, where: Path) -> list[Path]:
    paths = []
    for index in range(count):
        shard = Shard(index, count)
        context, state = scan_shard(model, adapter, config=config, shard=shard)
        write_part(where / part_name(shard), shard=shard, config=config, adapter=adapter, context=context, state=state, wall_time_s=0.0,
                   checkpoint={"path": None, "sha256": None, "prefix_removed": None}, adapter_source={"spec": "test", "sha256": None})
        paths.append(where / part_name(shard))
    return paths


def without_manifest(audit: dict) -> dict:
    return json.loads(json.dumps(to_jsonable({k: v for k, v in audit.items() if k != "manifest"})))


def test_a_new_diagnostic_merges_from_part_files_to_the_single_process_section(with_right_counts, tmp_path):
    adapter, model = tiny()
    config = ScanConfig(conditions="full,missing,noisy", bootstrap_replicates=20, projection="pca", gradient_batches=1,
                        batch_size=16, embedding_points=20)
    whole = without_manifest(audit_model(model, adapter, config=config, checkpoint=None))
    merged = without_manifest(merge_parts(parts_of(model, adapter, config, 3, tmp_path)))
    assert merged == whole
    assert merged["right_counts"]["n"] == 80 and merged["right_counts"]["right"]["full"] == 80


def test_parts_measured_with_a_diagnostic_this_biasaudit_lacks_are_refused_naming_it(monkeypatch, tmp_path):
    adapter, model = tiny()
    config = ScanConfig(conditions="full", bootstrap_replicates=10, projection="pca", gradient_batches=1, batch_size=16)
    with monkeypatch.context() as patched:
        patched.setitem(registry.DIAGNOSTICS, "right_counts", RightCounts)
        paths = parts_of(model, adapter, config, 2, tmp_path)
    known = r"Diagnostic 'right_counts' is unknown\. Available: jsd, embeddings, groups, calibration\."
    with pytest.raises(InputError, match=known):
        merge_parts(paths)
