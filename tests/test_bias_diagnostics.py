"""Carrier test, groups, ceilings, calibration, Shapley values and mute checks on models whose answers are known
by hand (tests/fixtures/shortcut_adapter.py). If the verdict named the modality the model needs as the one that
carries the bias, or a group were miscounted, these tests fail."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biasaudit.scanning.audit import audit_model
from biasaudit.diagnostics.accuracy import bootstrap_weights, percentile_interval
from biasaudit.results import to_json_text
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "shortcut_adapter.py"
FAST = dict(split="test", bootstrap_replicates=200, projection="pca", gradient_batches=1, min_wrong=1)


def _module():
    spec = importlib.util.spec_from_file_location("shortcut_adapter_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FX = _module()


def scan(adapter, *, conditions="default,shapley", batch_size=16, **options):
    config = ScanConfig(**{**FAST, "conditions": conditions, "batch_size": batch_size, **options})
    return audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)


@pytest.fixture(scope="module")
def shortcut():
    return scan(FX.ShortcutAdapter())


@pytest.fixture(scope="module")
def content_only():
    return scan(FX.ContentOnlyAdapter())


def test_carrier_is_the_bias_modality_although_the_other_is_dominant(shortcut):
    assert shortcut["summary"]["missing"]["dominant"] == "content"
    assert shortcut["summary"]["missing"]["flip_rates"] == pytest.approx({"bias_cue": 20 / 90, "content": 40 / 90})
    carrier = shortcut["carrier"]
    assert carrier["carrier"] == shortcut["summary"]["carrier"] == "bias_cue"
    assert carrier["differs"] is True
    cue, content = carrier["modalities"]["bias_cue"]["bias_swap"], carrier["modalities"]["content"]["bias_swap"]
    assert (cue["n"], cue["skipped"]) == (90, 0)
    # Every label-2 sample predicts its donor's bias value and no other sample moves. Predicting one's own label is
    # never following the bias (methods.md section 9), so the label-2 samples whose donor carries k = 2 are right,
    # and every other label-2 sample follows: excess = 1 - accuracy under the swap, at least the 10 of (2, k=2).
    assert cue["excess_follow_rate"] == pytest.approx(1 - cue["accuracy"] / 100)
    assert 10 / 90 <= cue["excess_follow_rate"] < 30 / 90 and cue["flip_rate"] == pytest.approx(1 / 3)
    assert content["excess_follow_rate"] == 0.0  # a same-label donor has the same content input
    lo, hi = cue["excess_follow_rate_ci"]
    assert 0 < lo < cue["excess_follow_rate"] < hi


def test_verdict_says_in_words_that_dominant_and_carrier_differ(shortcut):
    text = " ".join([shortcut["verdict"]["headline"], *shortcut["verdict"]["sentences"]])
    assert "bias_cue" in text and "content" in text
    sentences = [s for s in shortcut["verdict"]["sentences"] if "bias_cue" in s and "content" in s]
    assert sentences, "no sentence names both the carrier and the dominant modality"


def test_a_modality_the_model_ignores_has_zero_follow_rates_and_zero_shapley_values(content_only):
    cue = content_only["carrier"]["modalities"]["bias_cue"]
    assert cue["bias_swap"]["excess_follow_rate"] == 0.0
    assert cue["bias_swap"]["flip_rate"] == 0.0
    assert cue["content_swap"]["excess_content_follow_rate"] == 0.0
    shapley = content_only["shapley"]["modalities"]["bias_cue"]
    assert shapley["mean"] == 0.0 and shapley["distribution"] == {"0": 90}
    assert content_only["summary"]["carrier"] is None  # nothing follows any bias value


def test_group_accuracies_equal_a_hand_count(shortcut):
    groups = shortcut["groups"]
    assert groups["grouping"] == "label x bias value" and groups["bias_source"] == "bias_key"
    table = {(r["label"], r["bias"]): r for r in groups["groups"]}
    assert len(table) == 9 and all(r["n"] == 10 and r["counted"] for r in table.values())
    for (label, bias), row in table.items():
        expected = 100.0 if label in (0, 1) or bias == 2 else 0.0
        assert row["accuracy"]["full"] == expected, (label, bias)
        assert row["accuracy"]["missing:content"] == (100.0 if bias == label else 0.0)
        assert row["conflicting"] is (bias != label)
    full = groups["conditions"]["full"]
    assert full["worst_group"] == 0.0 and full["bias_balanced"] == pytest.approx(700 / 9)
    assert full["conflicting_accuracy"] == pytest.approx(100 * 40 / 60) and full["aligned_accuracy"] == 100.0
    assert groups["shift"]["ood"] is True  # a third aligned vs 90% in train


def test_worst_group_intervals_streamed_equal_one_shot():
    """Groups with some right and some wrong samples (noisy content): the bootstrap of worst-group and bias-balanced
    accuracy, recomputed in one shot from every sample's prediction and weights."""
    adapter = FX.NoisyContentAdapter()
    audit = scan(adapter, conditions="missing", batch_size=13)
    batch = next(iter(adapter.data("test", batch_size=1000)))
    predicted = adapter.build_model()(*adapter.prepare(batch, device="cpu")).argmax(1).numpy()
    labels, bias = batch["label"].numpy(), batch["k"].numpy()
    correct = predicted == labels
    group = labels * 3 + bias
    weights = bootstrap_weights(np.arange(len(labels)), replicates=200, seed=0)
    per_group = 100 * np.stack([(weights[group == g] * correct[group == g, None]).sum(0) / weights[group == g].sum(0) for g in range(9)])
    full = audit["groups"]["conditions"]["full"]
    assert 0 < full["worst_group"] < full["bias_balanced"] < 100  # mixed groups: the intervals are not degenerate
    assert full["worst_group_ci"] == pytest.approx(percentile_interval(per_group.min(0)))
    assert full["bias_balanced_ci"] == pytest.approx(percentile_interval(per_group.mean(0)))
    assert np.allclose(audit["bootstrap"]["derived"]["worst_group:full"], per_group.min(0))
    assert full["worst_group"] == pytest.approx(min(100 * correct[group == g].mean() for g in range(9)))


@pytest.mark.parametrize("seed", range(6))
def test_a_noisy_modality_without_bias_is_never_named_the_carrier(seed):
    """Swapping the noisy content moves predictions by itself; a carrier needs an excess whose interval is above 0,
    measured against a swap that keeps the bias value (same label and bias), not against no swap at all."""
    audit = scan(FX.NoisyContentAdapter(), conditions="missing,carrier", seed=seed)
    assert audit["carrier"]["carrier"] is None, audit["carrier"]["modalities"]["content"]["bias_swap"]
    assert audit["carrier"]["modalities"]["bias_cue"]["bias_swap"]["excess_follow_rate"] == 0.0


def test_ece_matches_a_one_shot_numpy_reference(shortcut):
    labels, bias = FX.split_arrays("test")
    strength = torch.tensor(FX.STRENGTH)[labels]
    logits = torch.nn.functional.one_hot(labels, 3) * strength[:, None] + torch.nn.functional.one_hot(bias, 3)
    probabilities = torch.softmax(logits.float(), dim=1).numpy()
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    bins = np.minimum((confidence * 15).astype(int), 14)
    ece = sum(abs((predicted[bins == b] == labels.numpy()[bins == b]).sum() - confidence[bins == b].sum()) for b in range(15)) / len(labels)
    assert shortcut["calibration"]["conditions"]["full"]["ece"] == pytest.approx(ece)


def test_confidence_rise_rate_is_zero_when_muting_only_scales_logits_down(content_only):
    # Muting the ignored bias cue leaves the logits as they are: nothing rises. Muting the content leaves all-zero logits.
    rows = content_only["calibration"]["conditions"]
    assert rows["missing:bias_cue"]["confidence_rise_rate"] == 0.0
    assert rows["missing:content"]["confidence_rise_rate"] == 0.0
    assert rows["full"]["confidence_rise_rate"] is None


def test_shapley_values_and_contingency_by_hand(shortcut):
    labels, bias = (a.numpy() for a in FX.split_arrays("test"))
    v_ab = (labels < 2) | (bias == 2)
    v_cue = bias == labels  # content muted: predicts k
    v_content = np.ones(len(labels), bool)  # bias cue muted: predicts y
    v_none = labels == 0  # all-zero logits: class 0
    phi_cue = 0.5 * ((v_ab.astype(int) - v_content) + (v_cue.astype(int) - v_none))
    assert shortcut["shapley"]["modalities"]["bias_cue"]["mean"] == pytest.approx(phi_cue.mean())
    contingency = shortcut["shapley"]["contingency"]
    assert contingency == {"both": int(v_cue.sum()), "only:bias_cue": 0, "only:content": int((~v_cue).sum()), "neither": 0}


def test_ceilings_from_linear_probes_on_the_branches(shortcut):
    ceilings = shortcut["ceilings"]["modalities"]
    assert ceilings["content"]["ceiling"] == 100.0  # the content branch is the scaled one-hot label
    assert ceilings["bias_cue"]["ceiling"] == pytest.approx(100 / 3)  # the bias value names the label only when aligned
    assert ceilings["content"]["alone"] == 100.0 and ceilings["bias_cue"]["alone"] == pytest.approx(100 / 3)
    assert shortcut["ceilings"]["implied_gap"] == pytest.approx(200 / 3)
    assert shortcut["ceilings"]["large_gap_expected"] is True


def test_everything_is_identical_across_batch_sizes():
    every = dict(conditions="default,shapley,interaction", mute_compare=True)
    shortcut, other = scan(FX.ShortcutAdapter(), batch_size=16, **every), scan(FX.ShortcutAdapter(), batch_size=7, **every)

    def comparable(audit):
        data = json.loads(to_json_text(audit))
        data["manifest"].pop("wall_time_s"), data["manifest"].pop("created")
        data["manifest"]["config"].pop("batch_size")
        return data

    assert comparable(other) == comparable(shortcut)


def test_forwards_per_sample_are_recorded(shortcut):
    """17 conditions cost full + 2 missing + 2 noisy forwards: a ratio's muted rows are muted as missing mutes them, so
    they take the missing condition's logits. A sweep that forwarded its muted rows again would cost about 10 per
    sample, one that forwarded every row (or ratio 1.0 beside missing) 17."""
    cost = shortcut["manifest"]["forwards_per_sample"]
    partial = sum(point["muted_fraction"] for sweep in shortcut["ratio_sweep"].values() for point in sweep if point["ratio"] < 1)
    assert 4.5 < partial < 5.5  # about 0.1 + 0.3 + 0.5 + 0.7 + 0.9 per modality were muted, at no forward of their own
    assert cost["conditions"] == 5.0
    assert cost["carrier"] == 6.0  # bias, content and null swap per modality
    assert cost["shapley"] == 1.0  # only the all-muted subset is new for two modalities
    assert cost["ceilings"] == pytest.approx(90 / 90)  # one train pass for the probes
    assert cost["total"] == pytest.approx(cost["conditions"] + 8.0)


def test_partial_mutes_without_missing_forward_only_the_rows_the_largest_fraction_mutes():
    """Without the missing condition, partial mutes still forward each muted row once, not once per fraction."""
    from biasaudit.data.impairments import muted_subset

    audit = scan(FX.ShortcutAdapter(), conditions="full,content=zero:0.3,content=zero:0.7")
    largest = muted_subset(np.arange(audit["dataset"]["n"]), seed=0, fraction=0.7).mean()
    assert 0.5 < largest < 0.9
    assert audit["manifest"]["forwards_per_sample"]["conditions"] == pytest.approx(1 + largest, abs=1e-12)
    accuracy = {row["name"]: row["accuracy"] for row in audit["conditions"]}
    assert accuracy["content=zero:0.3"] != accuracy["content=zero:0.7"]


def test_a_scan_without_the_named_diagnostics_leaves_them_out():
    audit = scan(FX.ShortcutAdapter(), conditions="missing")
    assert "carrier" not in audit and "ceilings" not in audit and "shapley" not in audit
    assert audit["groups"]["available"] and audit["calibration"]["available"]
    assert audit["manifest"]["forwards_per_sample"]["total"] == 3.0


class DegenerateMute(FX.ShortcutModel):
    """A black content image sends every sample to class 1, whatever the bias cue says."""

    def forward(self, bias_cue, content):
        flat = self.content_branch(content)
        black = (flat.abs().sum(1, keepdim=True) == 0).float()
        return flat + bias_cue + 10 * black * torch.tensor([0.0, 1.0, 0.0])


def test_a_degenerate_mute_names_the_class_and_suggests_the_mean_image():
    adapter = FX.ShortcutAdapter()
    config = ScanConfig(**{**FAST, "conditions": "missing", "mute_compare": True})
    audit = audit_model(DegenerateMute(), adapter, config=config, checkpoint=None)
    findings = [f for f in audit["mute_checks"]["findings"] if f["kind"] == "degenerate"]
    assert [(f["modality"], f["top_class"], f["share"]) for f in findings] == [("content", 1, 1.0)]
    assert "--mute content=mean" in findings[0]["message"]
    assert audit["summary"]["missing"]["dominant_caveat"] == findings[0]["message"]
    compared = audit["mute_checks"]["compare"]["content"]
    assert compared["choices"]["zero"]["accuracy"] == pytest.approx(100 / 3)
    assert set(compared["choices"]) == {"zero", "mean"} and set(compared["dominant"]) == {"zero", "mean"}


def test_discovered_bias_values_drive_groups_and_carrier_and_say_so():
    audit = scan(FX.NoBiasKeyAdapter(), conditions="missing,carrier", kmeans_k=3)
    assert audit["groups"]["bias_source"] == "kmeans" and "k-means" in audit["groups"]["note"]
    assert audit["carrier"]["bias_source"] == "kmeans" and "k-means" in audit["carrier"]["note"]
    # The content branch's three clusters are its three labels: every sample is grouped, by a cluster id < k.
    groups = audit["groups"]["groups"]
    assert sum(g["n"] for g in groups) == 90 and {g["bias"] for g in groups} <= {0, 1, 2}
    # Clusters that follow the labels leave no same-label donor of another cluster: said, and no forward wasted.
    assert "no modality could be swapped" in audit["carrier"]["note"]
    cost = audit["manifest"]["forwards_per_sample"]
    assert cost["carrier"] == 0.0 and cost["bias_discovery"] == 2.0  # the train and the test split once each


def test_no_mistakes_on_the_split_is_said_in_the_jsd_note_and_the_notes():
    spec = importlib.util.spec_from_file_location("tiny_adapter_fixture", Path(__file__).parent / "fixtures" / "tiny_adapter.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    adapter = tiny.TinyAdapter()
    audit = audit_model(adapter.build_model(), adapter, config=ScanConfig(**{**FAST, "conditions": "missing"}), checkpoint=None)
    assert audit["summary"]["full"]["accuracy"] == 100.0
    assert audit["jsd"]["n_wrong"] == 0 and "no mistakes" in audit["jsd"]["note"]
    assert any("no mistakes" in note for note in audit["notes"])
    assert any("no mistakes" in s.lower() for s in [audit["verdict"]["headline"], *audit["verdict"]["sentences"]])


class Gated(FX.ShortcutModel):
    """The bias cue multiplies the content instead of adding to it: logits = content * (1 + 3 * cue). Always right,
    but what the cue does depends on the content, which an additive projection cannot express."""

    def forward(self, bias_cue, content):
        return self.content_branch(content) * (1 + 3 * self.bias_branch(bias_cue))


def test_interaction_share_is_exactly_zero_for_an_additive_model_and_positive_for_a_gated_one():
    additive = scan(FX.ShortcutAdapter(), conditions="missing,interaction")
    assert additive["interaction"]["interaction_share"] == 0.0
    assert additive["manifest"]["forwards_per_sample"]["interaction"] == 8 * 3  # R donors x (M + 1)
    adapter = FX.ShortcutAdapter()
    gated = audit_model(Gated(), adapter, config=ScanConfig(**{**FAST, "conditions": "missing,interaction"}), checkpoint=None)
    assert gated["interaction"]["accuracy"] == 100.0
    assert gated["interaction"]["interaction_share"] > 0


@pytest.mark.parametrize("batch_size", [5, 16])
def test_token_swaps_give_the_same_carrier_for_left_and_right_padded_ids(batch_size):
    """Donor rows come from batches of other widths; they keep their tokens, sit on the batch's padding side, and
    widen token_type_ids with the ids (the model refuses mismatched widths)."""
    right = scan(FX.TokenAdapter(), conditions="missing,carrier,ceilings", batch_size=batch_size)
    left = scan(FX.LeftPaddedTokenAdapter(), conditions="missing,carrier,ceilings", batch_size=batch_size)
    for audit in (right, left):
        # The words carry both the content and the bias token; a same-label donor's words bring another bias
        # token, which every label-2 sample (content 0.5 < bias 1.0) follows, and no other (a donor token of
        # bias value 2 makes the sample right, which is not following: excess = 1 - accuracy under the swap).
        words = audit["carrier"]["modalities"]["words"]["bias_swap"]
        assert (words["n"], words["flip_rate"]) == (90, pytest.approx(1 / 3))
        assert words["excess_follow_rate"] == pytest.approx(1 - words["accuracy"] / 100) and words["excess_follow_rate"] >= 10 / 90
        assert audit["carrier"]["modalities"]["pixels"]["bias_swap"]["excess_follow_rate"] == 0.0
        assert audit["carrier"]["carrier"] == "words"
    assert right["carrier"] == left["carrier"]
    assert right["groups"]["conditions"] == left["groups"]["conditions"]
    # A [B, L, D] branch output of varying L is averaged over positions: the probe and the mute checks still run.
    assert right["ceilings"]["modalities"]["words"]["ceiling"] is not None and "words" in right["mute_checks"]["distances"]


class CueScales(FX.ShortcutModel):
    """The bias cue only scales the content logits: by 2 with the cue present, by 1 without it (or the reverse,
    `rises=True`), so muting the cue scales every sample's logits down (or up)."""

    def __init__(self, *, rises: bool = False) -> None:
        super().__init__()
        self.rises = rises

    def forward(self, bias_cue, content):
        present = self.bias_branch(bias_cue).sum(1, keepdim=True)
        return self.content_branch(content) * ((2 - present) if self.rises else (1 + present))


@pytest.mark.parametrize("rises, expected", [(False, 0.0), (True, 1.0)])
def test_confidence_rise_rate_is_zero_when_muting_scales_logits_down_and_one_when_up(rises, expected):
    adapter = FX.ShortcutAdapter()
    audit = audit_model(CueScales(rises=rises), adapter, config=ScanConfig(**{**FAST, "conditions": "missing"}), checkpoint=None)
    assert audit["calibration"]["conditions"]["missing:bias_cue"]["confidence_rise_rate"] == expected
    assert audit["conditions"][1]["name"] == "missing:bias_cue" and audit["conditions"][1]["flip_rate"] == 0.0  # same argmax


def test_sequence_branch_ceilings_do_not_depend_on_the_batch_width():
    """The words branch returns [B, L, D] with L the batch's longest row: averaged over the attention mask, a
    sample's feature is the same in a batch of 5 as in a batch of 16."""
    small, large = (scan(FX.TokenAdapter(), conditions="missing,ceilings", batch_size=b) for b in (5, 16))
    assert small["ceilings"] == large["ceilings"]
    assert small["mute_checks"]["distances"] == pytest.approx(large["mute_checks"]["distances"])


def test_worst_group_that_covers_only_aligned_groups_says_it_cannot_see_the_bias():
    """On an in-distribution split the few bias-conflicting samples sit in groups below min_group: the worst group is a
    bias-aligned one (100%) although label-2 conflicting samples all fail. The audit, the verdict and the gate say so
    instead of reporting 100% as worst-group accuracy."""
    from biasaudit.gating import GateRules, evaluate_gate

    audit = scan(FX.ShortcutAdapter(), conditions="missing", split="train")
    groups = audit["groups"]
    assert groups["grouping"] == "label x bias-aligned/conflicting/neutral"  # auto: the conflicting samples are not covered
    assert groups["conflicting_samples"] == 9 and groups["counted_conflicting_groups"] == 0 and groups["blind"]
    full = groups["conditions"]["full"]
    assert full["conflicting_accuracy"] == pytest.approx(100 * 6 / 9)  # the 3 conflicting label-2 samples follow the bias
    text = " ".join(audit["verdict"]["sentences"])
    assert "cannot see the bias" in text and "bias-conflicting accuracy" in audit["verdict"]["headline"].lower()
    verdict = evaluate_gate(audit, GateRules(min_worst_group={"full": 90}))
    assert verdict["status"] == "ERROR" and "cannot see the bias" in verdict["rules"][0]["message"]


def test_a_default_scan_reads_each_split_no_more_often_than_it_must():
    """Reading data is often the slow part of a real scan (decoding images from disk). The evaluated split is read
    twice: once ahead of the pass (its largest bias value and the carrier's donor pool, together) and once by the
    pass, which also keeps the gradient-conflict batches as it goes. Train is read once, its labels for the JSD
    priors; val (the probes' split, docs/methods.md "Ceilings") twice: its labels for the probes' sample, then the
    sampled rows for the probes' forwards."""
    from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter

    reads = []

    class Counting(DigitsCaptionsAdapter):
        def data(self, split, *, batch_size):  # a read is counted when its first batch is taken, not when data() is called
            for step, batch in enumerate(super().data(split, batch_size=batch_size)):
                if step == 0:
                    reads.append(split)
                yield batch

    audit = audit_model(DemoModel(), Counting(seed=0), config=ScanConfig(**{**FAST, "conditions": "default", "gradient_batches": 2,
                                                                         "split": "ood", "batch_size": 64}), checkpoint=None)
    assert audit["gradient_conflict"]["available"] and audit["gradient_conflict"]["n_batches"] == 2
    assert reads.count("ood") == 2 and reads.count("train") == 1 and reads.count("val") == 2, reads
