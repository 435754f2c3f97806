"""When the data has no bias attribute, the JSD diagnostic falls back to k-means clusters of the dominant
modality's branch embeddings (methods.md section 3). On the demo, whose real bias is the caption's colour
word, the discovered clusters must expose the same shortcut: mistakes that copy the cluster's label prior."""

from __future__ import annotations

import pytest

from biasaudit.scanning.audit import audit_model
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.scanning.config import ScanConfig


class NoColourAdapter(DigitsCaptionsAdapter):
    bias_key = None
    bias_names = None


@pytest.fixture(scope="module")
def audits():
    adapter = NoColourAdapter()
    model = train_baseline(adapter, seed=0)
    config = ScanConfig(split="ood", conditions="missing", projection="pca", bootstrap_replicates=50, gradient_batches=1, min_wrong=10)
    with_colour = DigitsCaptionsAdapter()
    return audit_model(model, adapter, config=config, checkpoint=None), audit_model(model, with_colour, config=config, checkpoint=None)


def test_discovered_bias_is_labelled_as_kmeans_in_the_report(audits):
    discovered, _ = audits
    jsd = discovered["jsd"]
    assert jsd["available"] and jsd["bias_source"] == "kmeans"
    assert "k-means" in jsd["note"] and "text" in jsd["note"] and jsd["note"] in discovered["notes"]
    assert 2 <= len(jsd["per_bias"]) <= 16


def test_discovered_clusters_reveal_the_same_shortcut_as_the_true_colour(audits):
    discovered, true = audits
    assert true["jsd"]["weighted_mean"] < 0.5
    # Clusters of the text branch recover the colour words, so mistakes copy their prior as well.
    assert discovered["jsd"]["weighted_mean"] < 0.5
    assert sum(e["n_wrong"] for e in discovered["jsd"]["per_bias"].values()) == sum(e["n_wrong"] for e in true["jsd"]["per_bias"].values())
