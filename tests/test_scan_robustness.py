"""Situations a real adapter runs into, where a scan must neither crash nor report something misleading."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from biasaudit.scanning.audit import audit_model
from biasaudit.scanning.config import ScanConfig

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import broken_adapters  # noqa: E402
import tiny_adapter  # noqa: E402

sys.path.pop(0)

FAST = dict(split="test", batch_size=16, bootstrap_replicates=50, projection="pca", gradient_batches=1)


def scan(adapter, model=None, **options):
    return audit_model(model or adapter.build_model(), adapter, config=ScanConfig(**{**FAST, **options}), checkpoint=None)


def test_hooks_set_to_none_disable_only_their_analyses():
    audit = scan(broken_adapters.ClassifierSetToNone())
    assert audit["embeddings"]["available"] is False and "classifier()" in audit["embeddings"]["note"]
    assert audit["summary"]["full"]["accuracy"] == 100.0


def test_a_bias_value_new_in_the_evaluated_split_gets_no_prior_instead_of_stopping_the_scan():
    audit = scan(broken_adapters.NewBiasOnTest(), min_wrong=1)
    per_bias = audit["jsd"]["per_bias"]
    new_values = [entry for entry in per_bias.values() if entry["bias"] >= 2 and entry["n_eval"] > 0]
    assert new_values and all(entry["prior"] is None and entry["soft"] is None for entry in new_values)


def test_no_dominant_modality_when_no_prediction_ever_changes():
    model = tiny_adapter.ReadsOnlyA()
    with torch.no_grad():
        model.classifier.weight.zero_()  # constant logits: every condition predicts class 0
    audit = scan(tiny_adapter.TinyAdapter(), model)
    assert audit["summary"]["missing"]["flip_rates"] == {"a": 0.0, "b": 0.0}
    assert audit["summary"]["missing"]["dominant"] is None


def test_ratio_sweep_reports_the_fraction_actually_muted():
    audit = scan(tiny_adapter.TinyAdapter())
    points = audit["ratio_sweep"]["a"]
    fractions = [p["muted_fraction"] for p in points]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(abs(p["muted_fraction"] - p["ratio"]) < 0.2 for p in points)
    # The model reads only `a`: exactly the muted samples that are not class 0 flip.
    for p in points:
        assert p["flip_rate"] <= p["muted_fraction"] + 1e-12


def test_mute_override_makes_missing_use_the_chosen_impairment():
    audit = scan(tiny_adapter.TinyAdapter(), conditions="missing", mute=(("a", "zero"),))
    rows = {row["name"]: row for row in audit["conditions"]}
    assert rows["missing:a"]["impairment"] == "zero"
    from biasaudit.errors import InputError

    with pytest.raises(InputError, match="--mute names modality 'c'. Available"):
        scan(tiny_adapter.TinyAdapter(), mute=(("c", "zero"),))


def test_negative_bias_values_are_named_as_a_data_error():
    from biasaudit.errors import DataError

    class NegativeBias(tiny_adapter.TinyAdapter):
        def data(self, split, *, batch_size):
            for batch in super().data(split, batch_size=batch_size):
                yield {**batch, "k": batch["k"] - 1}

    with pytest.raises(DataError, match=r"Bias values 'k' of split '(train|test)' must be non-negative integers; found -1"):  # whichever is read first
        scan(NegativeBias())


def test_an_adapter_that_must_not_read_beside_its_forwards_is_read_in_line():
    """Adapter.read_ahead = False: its data() shares something that is not thread-safe with prepare() (a fast
    tokenizer), so the scan must never call it from the reading thread."""
    import threading

    threads = set()

    class InLine(tiny_adapter.TinyAdapter):
        read_ahead = False

        def data(self, split, *, batch_size):
            for batch in super().data(split, batch_size=batch_size):
                threads.add(threading.current_thread().name)
                yield batch

    inline = scan(InLine())
    threads_inline, threads = threads, set()

    class Ahead(InLine):
        read_ahead = True

    ahead = scan(Ahead())
    assert threads_inline == {threading.current_thread().name} and "biasaudit-prefetch" in threads
    assert inline["conditions"] == ahead["conditions"]
