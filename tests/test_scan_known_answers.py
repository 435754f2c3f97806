"""The scan on a model whose answers are known by hand (tests/fixtures/tiny_adapter.py): a model that reads
only modality `a`. If the engine leaked an impairment into the wrong modality, mixed up conditions or
mis-counted, these numbers would move."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from biasaudit.scanning.audit import audit_model
from biasaudit.results import public
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_adapter.py"


def load_fixture():
    spec = importlib.util.spec_from_file_location("tiny_adapter_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def audit():
    module = load_fixture()
    adapter = module.TinyAdapter()
    config = ScanConfig(split="test", batch_size=16, bootstrap_replicates=200, projection="pca", gradient_batches=2)
    return audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)


def by_name(audit):
    return {row["name"]: row for row in audit["conditions"]}


def test_full_accuracy_is_perfect_before_anything_else_is_trusted(audit):
    assert audit["summary"]["full"]["accuracy"] == 100.0


def test_impairing_the_unread_modality_changes_nothing(audit):
    rows = by_name(audit)
    b_rows = [row for name, row in rows.items() if row["modality"] == "b"]
    assert len(b_rows) == 1 + 1 + 6  # missing, noisy, the six-point ratio sweep
    for row in b_rows:
        assert row["accuracy"] == 100.0 and row["flip_rate"] == 0.0 and row["macro_f1"] == 100.0, row["name"]
        assert row["per_class_accuracy"] == rows["full"]["per_class_accuracy"]
        assert row["accuracy_ci"] == rows["full"]["accuracy_ci"]
    assert audit["reliance"]["drop"]["b"] == [0.0] * 4


def test_muting_the_read_modality_gives_exactly_chance(audit):
    rows = by_name(audit)
    assert rows["missing:a"]["accuracy"] == pytest.approx(100.0 / 4)
    assert rows["missing:a"]["flip_rate"] == pytest.approx(0.75)  # every non-class-0 prediction flips to 0
    assert rows["ratio:a:1"]["accuracy"] == rows["missing:a"]["accuracy"]


def test_gap_and_dominant_modality(audit):
    missing = audit["summary"]["missing"]
    assert missing["gap"] == pytest.approx(75.0)
    assert missing["avg"] == pytest.approx((25.0 + 100.0) / 2)
    assert missing["dominant"] == "a"
    lo, hi = missing["gap_ci"]
    assert lo <= 75.0 <= hi


def test_ratio_sweep_falls_monotonically_for_the_read_modality(audit):
    points = audit["ratio_sweep"]["a"]
    assert [p["ratio"] for p in points] == [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    accuracies = [p["accuracy"] for p in points]
    assert accuracies == sorted(accuracies, reverse=True)  # nested muted subsets
    assert all(p["accuracy"] == 100.0 for p in audit["ratio_sweep"]["b"])


def test_no_negative_transfer_and_perfect_model_has_no_jsd_mistakes(audit):
    assert not any(row["negative_transfer"] for row in audit["conditions"])
    assert audit["jsd"]["available"] is True
    assert all(entry["n_wrong"] == 0 for entry in audit["jsd"]["per_bias"].values())


def test_gradient_conflict_is_unavailable_with_a_note_when_nothing_is_shared(audit):
    conflict = audit["gradient_conflict"]
    assert conflict["available"] is False and conflict["note"]
    assert conflict["note"] in audit["notes"]


def test_audit_is_strict_json_with_schema_and_manifest(audit, tmp_path):
    from biasaudit.results import write_json_atomic

    path = tmp_path / "audit.json"
    write_json_atomic(audit, path)
    data = json.loads(path.read_text())
    assert data["schema"] == "biasaudit.audit" and data["schema_version"] == 1
    assert data["manifest"]["seed"] == 0 and data["manifest"]["config"]["split"] == "test"
    assert data["embeddings"]["available"] is True


def test_same_seed_gives_identical_numbers():
    module = load_fixture()
    adapter = module.TinyAdapter()
    config = ScanConfig(split="test", batch_size=16, bootstrap_replicates=100, projection="pca", gradient_batches=1)
    first = audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)
    config_other_batches = ScanConfig(split="test", batch_size=7, bootstrap_replicates=100, projection="pca", gradient_batches=1)
    second = audit_model(adapter.build_model(), adapter, config=config_other_batches, checkpoint=None)
    # The manifest holds times, and the gradient-conflict section is a per-batch sample by definition
    # (methods.md section 5), so both legitimately depend on the batching; every other number may not.
    strip = lambda a: json.dumps({k: v for k, v in public(a).items() if k not in ("manifest", "gradient_conflict", "notes")}, sort_keys=True)
    assert strip(first) == strip(second), "batch size must not change any number of the audit"
