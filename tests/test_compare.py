"""Before/after comparisons read from audit files: paired bootstrap intervals exactly as in memory when both
audits saw the same samples, a plain "not paired, because ..." otherwise, and damaged files refused."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biasaudit.scanning.audit import audit_model
from biasaudit.comparing import compare_audits
from biasaudit.errors import DataError, InputError
from biasaudit.diagnostics.accuracy import BootstrapCounts, percentile_interval
from biasaudit.report.compare_render import render_compare_html
from biasaudit.results import read_audit, write_json_atomic
from biasaudit.scanning.config import ScanConfig

TESTS = Path(__file__).parent
SCRIPT = Path(sys.executable).parent / "biasaudit"
CONFIG = ScanConfig(split="test", conditions="missing", batch_size=16, bootstrap_replicates=200, projection="pca", gradient_batches=1)


def _fixture_module(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_for_compare", TESTS / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = _fixture_module("tiny_adapter")


class ChangedTestSplit(TINY.TinyAdapter):
    """The tiny adapter whose test split is re-batched after `change(whole split as one batch)`."""

    def __init__(self, change) -> None:
        self.change = change

    def data(self, split, *, batch_size):
        if split != "test":
            yield from super().data(split, batch_size=batch_size)
            return
        whole = self.change(next(iter(super().data(split, batch_size=10**6))))
        n = len(whole["y"])
        for lo in range(0, n, batch_size):
            yield {key: value[lo:lo + batch_size] for key, value in whole.items()}


def _reversed(batch):
    return {key: value.flip(0) if isinstance(value, torch.Tensor) else value[::-1] for key, value in batch.items()}


def _first_60(batch):
    return {key: value[:60] for key, value in batch.items()}


def _other_bias(batch):
    return {**batch, "k": 1 - batch["k"]}


def _edited_caption(batch):
    return {**batch, "b": ["an edited caption"] + list(batch["b"][1:])}


def _wrong_on_class_3():
    model = TINY.TinyAdapter().build_model()
    with torch.no_grad():
        model.classifier.weight[3] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # class 3 is predicted as class 2
    return model


@pytest.fixture(scope="module")
def pair():
    adapter = TINY.TinyAdapter()
    before = audit_model(adapter.build_model(), adapter, config=CONFIG, checkpoint=None)
    after = audit_model(_wrong_on_class_3(), adapter, config=CONFIG, checkpoint=None)
    return before, after


def _write_and_read(audits, directory: Path):
    paths = []
    for name, audit in zip(("before", "after"), audits):
        paths.append(directory / f"{name}.json")
        write_json_atomic(audit, paths[-1])
    return [read_audit(p) for p in paths], paths


def test_intervals_from_audit_files_equal_the_in_memory_ones(pair, tmp_path):
    """`biasaudit compare` on files would otherwise give other (or no) intervals than `fix` gave in memory."""
    in_memory = compare_audits(*pair)
    (before, after), _ = _write_and_read(pair, tmp_path)
    from_files = compare_audits(before, after)
    assert in_memory["paired"] is True and from_files["paired"] is True and from_files["unpaired_reason"] is None
    assert from_files == in_memory
    lo, hi = from_files["summary"]["full"]["delta_ci"]
    assert lo < -25.0 < hi  # the change really varies across replicates: the test is not comparing [0, 0]s
    assert from_files["summary"]["missing"]["avg"]["delta_ci"] is not None
    # The integers in the file reproduce every interval the scan computed in memory, bit for bit.
    counts = BootstrapCounts.from_dict(after["bootstrap"], conditions=[row["name"] for row in after["conditions"]])
    for row in after["conditions"]:
        assert percentile_interval(counts.accuracy(row["name"])) == tuple(row["accuracy_ci"]), row["name"]


@pytest.mark.parametrize("change, reason", [
    (_reversed, "different samples (fingerprints differ: the labels are not the same in scan order)"),
    (_first_60, "different samples (80 vs 60 samples)"),
    (_other_bias, "different samples (fingerprints differ: the bias values are not the same in scan order)"),
    (_edited_caption, "different samples (fingerprints differ: the inputs under batch key 'b' are not the same in scan order, "
                      "or were batched differently)"),
])
def test_audits_of_different_samples_are_not_paired_and_say_why(pair, change, reason):
    """Pairing replicate r of one sample set with replicate r of another would give a tight, wrong interval."""
    adapter = ChangedTestSplit(change)
    other = audit_model(adapter.build_model(), adapter, config=CONFIG, checkpoint=None)
    comparison = compare_audits(pair[0], other)
    assert comparison["paired"] is False and comparison["unpaired_reason"] == reason
    assert f"Not paired: {reason}; deltas have no interval." in comparison["note"]
    assert all(row["delta_ci"] is None and row["delta"] is not None for row in comparison["conditions"])
    assert comparison["summary"]["full"]["delta_ci"] is None
    assert comparison["summary"]["missing"]["avg"]["delta_ci"] is None and comparison["summary"]["missing"]["gap"]["delta_ci"] is None


def test_the_same_samples_in_other_batches_still_pair(pair):
    """The fingerprint streams sample by sample: another --batch-size must not lose the pairing."""
    adapter = TINY.TinyAdapter()
    other = audit_model(_wrong_on_class_3(), adapter, config=ScanConfig(**{**CONFIG.to_dict(), "batch_size": 7}), checkpoint=None)
    assert other["samples"] == pair[1]["samples"]
    assert compare_audits(pair[0], other) == compare_audits(*pair)


def test_audits_that_impaired_differently_are_refused(pair):
    """`--mute a=...` changes what "missing:a" means while the condition names stay; a delta between two
    different impairments would read as a change of the model."""
    other = copy.deepcopy(pair[1])
    row = next(r for r in other["conditions"] if r["name"] == "missing:a")
    row["impairment"] = "mean"
    with pytest.raises(InputError, match=r"impaired differently under the same condition names \(missing:a: zero vs mean\)"):
        compare_audits(pair[0], other)
    fewer = copy.deepcopy(pair[1])
    fewer["conditions"] = [r for r in fewer["conditions"] if r["name"] != "missing:b"]
    with pytest.raises(InputError, match=r"ran different conditions \(missing:b in one only\)"):
        compare_audits(pair[0], fewer)


def test_audits_with_different_replicate_counts_are_not_paired(pair):
    adapter = TINY.TinyAdapter()
    config = ScanConfig(**{**CONFIG.to_dict(), "bootstrap_replicates": 100})
    other = audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)
    comparison = compare_audits(pair[0], other)
    assert comparison["paired"] is False and comparison["unpaired_reason"] == "different replicate counts (200 vs 100)"


@pytest.mark.parametrize("older", [None, {"name": "splitmix64-counter", "version": 2}])
def test_an_audit_drawn_by_an_older_generator_is_never_paired_with_a_new_one(pair, older):
    """Same seed, samples and replicate count, but another generator draws other weights: pairing them would give
    intervals of a difference between two unrelated resamplings. Version 1 audits name no generator (numpy per
    sample); version 2 drew one bootstrap weight per hashed word."""
    from biasaudit._core.randomness import GENERATOR

    old = copy.deepcopy(pair[0])
    if older is None:
        del old["manifest"]["randomness"]
    else:
        old["manifest"]["randomness"] = older
    comparison = compare_audits(old, pair[1])
    assert comparison["paired"] is False
    named = "numpy-default_rng-per-sample v1" if older is None else "splitmix64-counter v2"
    assert comparison["unpaired_reason"] == ("the audits drew their random numbers with different generators "
                                             f"({named} vs splitmix64-counter v{GENERATOR['version']})")


def test_older_audits_without_replicates_still_load_and_compare_unpaired(pair, tmp_path):
    """An audit written before the bootstrap section existed must not become unreadable."""
    old = read_audit(TESTS / "fixtures" / "audit_example.json")
    assert "bootstrap" not in old
    assert compare_audits(old, old)["unpaired_reason"] == "neither audit keeps bootstrap replicates (written by an older biasaudit)"
    stripped = {k: v for k, v in pair[0].items() if k not in ("bootstrap", "samples")}
    (before, after), _ = _write_and_read((stripped, pair[1]), tmp_path)
    comparison = compare_audits(before, after)
    assert comparison["paired"] is False
    assert comparison["unpaired_reason"] == "the before audit keeps no bootstrap replicates (written by an older biasaudit)"


def _damage(audit, how):
    audit = copy.deepcopy(audit)
    section = audit["bootstrap"]
    if how == "short":
        section["correct_weight"]["full"] = section["correct_weight"]["full"][:-1]
    elif how == "float":
        section["total_weight"][0] = float(section["total_weight"][0])
    elif how == "bool":
        section["correct_weight"]["missing:a"][0] = True
    elif how == "above total":
        section["correct_weight"]["full"][0] = section["total_weight"][0] + 1
    elif how == "condition missing":
        del section["correct_weight"]["missing:b"]
    elif how == "bad fingerprint":
        audit["samples"]["labels_sha256"] = "not a hash"
    return audit


@pytest.mark.parametrize("how, expected", [
    ("short", "invalid bootstrap section: bootstrap.correct_weight['full'] has 199 values; expected a list of 200 integers"),
    ("float", "invalid bootstrap section: bootstrap.total_weight holds a value that is not a non-negative integer"),
    ("bool", "invalid bootstrap section: bootstrap.correct_weight['missing:a'] holds a value that is not a non-negative integer"),
    ("above total", "invalid bootstrap section: bootstrap.correct_weight['full'] exceeds total_weight"),
    ("condition missing", "invalid bootstrap section: bootstrap.correct_weight covers ['full', 'missing:a']; expected one list per condition"),
    ("bad fingerprint", "invalid samples section: samples.labels_sha256 is 'not a hash'"),
])
def test_a_damaged_bootstrap_or_samples_section_is_refused_naming_the_file(pair, tmp_path, how, expected):
    """A damaged file would otherwise give intervals computed from garbage, or a traceback."""
    path = tmp_path / "damaged.json"
    write_json_atomic(_damage(pair[0], how), path)
    with pytest.raises(DataError) as caught:
        read_audit(path)
    assert str(caught.value).startswith(f"Audit file {path} has an ") and expected in str(caught.value)


def test_compare_of_a_damaged_bootstrap_section_exits_2_and_writes_nothing(pair, tmp_path):
    (_, _), (good, _) = _write_and_read(pair, tmp_path)
    damaged = tmp_path / "damaged.json"
    write_json_atomic(_damage(pair[1], "short"), damaged)
    result = subprocess.run([str(SCRIPT), "compare", str(good), str(damaged), "--out", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "damaged.json has an invalid bootstrap section" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()


# A hand-made pair: 4 replicates, totals [10, 20, 10, 20], so every replicate accuracy is a round number.
TOTAL = [10, 20, 10, 20]
HAND = {
    # condition: (before correct counts, after correct counts)
    "full": ([8, 16, 9, 18], [9, 18, 9, 17]),
    "missing:image": ([5, 12, 7, 16], [6, 10, 8, 18]),  # before 50 60 70 80, after 60 50 80 90
    "missing:text": ([3, 6, 3, 6], [4, 10, 5, 12]),  # before 30 30 30 30, after 40 50 50 60
}


def _hand_audit(which: int) -> dict:
    def point(name):
        return 100.0 * sum(HAND[name][which]) / sum(TOTAL)

    rows = [{"name": name, "group": name.split(":")[0], "modality": name.split(":")[1] if ":" in name else None,
             "accuracy": point(name), "accuracy_ci": None, "flip_rate": 0.0} for name in HAND]
    scores = {"image": point("missing:image"), "text": point("missing:text")}
    return {"manifest": {"config": {"split": "test", "conditions": "missing", "seed": 0}},
            "conditions": rows,
            "summary": {"full": {"accuracy": point("full")},
                        "missing": {"avg": sum(scores.values()) / 2, "gap": abs(scores["image"] - scores["text"]), "scores": scores,
                                    "dominant": "text", "flip_rates": {"image": 0.1, "text": 0.5}}},
            "jsd": {"available": False},
            "samples": {"count": 7, "labels_sha256": "0" * 64, "bias_sha256": None},
            "bootstrap": {"replicates": 4, "seed": 0, "total_weight": TOTAL,
                          "correct_weight": {name: counts[which] for name, counts in HAND.items()}}}


def test_avg_change_interval_equals_the_hand_computed_one():
    """Avg per replicate: before 40 45 50 55, after 50 50 65 75, change 10 5 15 20. Sorted 5 10 15 20, the
    2.5th percentile is 5 + 0.075 * 5 = 5.375 and the 97.5th 15 + 0.925 * 5 = 19.625 (linear interpolation)."""
    comparison = compare_audits(_hand_audit(0), _hand_audit(1))
    assert comparison["paired"] is True
    assert comparison["summary"]["missing"]["avg"]["delta_ci"] == pytest.approx((5.375, 19.625), abs=1e-12)
    # Gap per replicate: before 20 30 40 50, after 20 0 30 30, change 0 -30 -10 -20 -> [-29.25, -0.75].
    assert comparison["summary"]["missing"]["gap"]["delta_ci"] == pytest.approx((-29.25, -0.75), abs=1e-12)
    page = render_compare_html(comparison, _hand_audit(0), _hand_audit(1))
    avg_row = re.search(r"<tr><td>missing: Avg</td>.*?</tr>", page).group(0)
    assert "[5.4, 19.6]" in avg_row and "95% paired interval" in page


def test_an_unpaired_report_does_not_claim_paired_intervals():
    before, after = _hand_audit(0), _hand_audit(1)
    after["samples"] = {**after["samples"], "count": 8}
    comparison = compare_audits(before, after)
    page = render_compare_html(comparison, before, after)
    assert "95% paired interval" not in page and "not paired: no interval" in page
    assert "Not paired: different samples (7 vs 8 samples); deltas have no interval." in page
    assert json.loads(json.dumps(comparison))["summary"]["missing"]["avg"]["delta_ci"] is None
    assert np.isclose(comparison["summary"]["missing"]["avg"]["delta"], 12.5)


@pytest.mark.parametrize("gap_ci, full_ci, words", [
    ([-12.0, -6.0], [-1.5, 1.0], "Gap narrowed (reliance, not bias), no clear accuracy change"),
    ([-3.0, 2.0], [-4.0, -1.0], "Gap unchanged, 2.5 points of accuracy lost"),
    ([1.0, 5.0], [0.5, 2.0], "Gap widened (reliance, not bias), accuracy gained"),
    (None, None, "Gap narrowed (reliance, not bias; plain difference, no interval), 2.5 points of accuracy lost (plain difference, "
                 "no interval)"),
])
def test_the_verdict_judges_each_change_by_its_paired_interval(gap_ci, full_ci, words):
    """The one line a reader takes away: a shift whose interval spans zero must not read as a change, and
    without intervals it must say the words rest on plain differences. Without bias measures (an audit
    written before them) the Gap is reported as reliance and never called a change of bias (issue 9)."""
    from biasaudit.verdict import compare_verdict

    summary = {"missing": {"gap": {"before": 39.7, "after": 30.5, "delta": -9.2, "delta_ci": gap_ci}},
               "full": {"before": 93.8, "after": 91.3, "delta": -2.5, "delta_ci": full_ci}}
    assert compare_verdict({"summary": summary}) == ("missing-modality Gap 39.7 -> 30.5 points, Full accuracy 93.8 -> 91.3: "
                                                     f"bias not measured (no group, carrier or JSD figures), {words}.")


def test_the_verdict_names_an_overshoot_to_the_other_modality_and_a_rising_noisy_gap():
    from biasaudit.verdict import compare_verdict

    summary = {"missing": {"gap": {"before": 39.7, "after": 9.5, "delta": -30.2, "delta_ci": [-36.0, -24.0]},
                           "dominant": {"before": "text", "after": "image"}},
               "noisy": {"gap": {"before": 1.6, "after": 16.4, "delta": 14.8, "delta_ci": [7.5, 20.5]}},
               "full": {"before": 93.8, "after": 81.6, "delta": -12.2, "delta_ci": [-15.0, -9.0]}}
    # Two bad changes join with "and" (issue 23, item 7: "accuracy lost, but the noisy-input Gap rose" read as if the rise
    # made up for the loss); "but" only sets a bad change against a good one.
    assert compare_verdict({"summary": summary}) == (
        "missing-modality Gap 39.7 -> 9.5 points, Full accuracy 93.8 -> 81.6: bias not measured (no group, carrier or JSD "
        "figures), Gap narrowed (reliance, not bias), the model now leans on image instead of text, 12.2 points of accuracy "
        "lost, and the noisy-input Gap rose 1.6 -> 16.4.")
    summary["full"] = {"before": 81.6, "after": 93.8, "delta": 12.2, "delta_ci": [9.0, 15.0]}
    assert compare_verdict({"summary": summary}).endswith("accuracy gained, but the noisy-input Gap rose 1.6 -> 16.4.")
    summary["full"] = {"before": 93.8, "after": 93.6, "delta": -0.2, "delta_ci": [-1.0, 0.6]}
    assert compare_verdict({"summary": summary}).endswith("no clear accuracy change, and the noisy-input Gap rose 1.6 -> 16.4.")


# --- bias measures (issue 9) on the hand-built pair of tests/fixtures/bias_pair.py -----------------------------

PAIR = _fixture_module("bias_pair")


def test_bias_measures_get_the_hand_computed_paired_intervals():
    """Interval = percentile of after[r] - before[r] over the derived replicates; a null replicate is dropped."""
    bias = compare_audits(PAIR.make("biased"), PAIR.make("debiased"))["bias"]
    assert bias["carrier"] == {"before": "text", "after": "text"}
    assert bias["worst_group"]["full"]["delta"] == pytest.approx(30.0)
    assert bias["worst_group"]["full"]["delta_ci"] == pytest.approx((30.0, 34.625))
    assert bias["bias_balanced"]["full"]["delta_ci"] == pytest.approx((14.075, 16.925))
    assert bias["bias_follow"]["text"]["delta"] == pytest.approx(-0.46)
    assert bias["bias_follow"]["text"]["delta_ci"] == pytest.approx((-0.4785, -0.4415))
    # image: changes [NaN, 0.01, 0.01, -0.01] -> sorted finite -0.01, 0.01, 0.01 -> [-0.009, 0.01]
    assert bias["bias_follow"]["image"]["delta_ci"] == pytest.approx((-0.009, 0.01))
    assert bias["ood"]["delta"] == pytest.approx(21.25) and bias["ood"]["delta_ci"] == pytest.approx((20.0, 24.625))
    assert bias["ceilings"]["implied_gap"] == {"before": 30.2, "after": 30.2} and bias["lacking"] == {}


def test_bias_measures_without_pairing_or_replicates_are_plain_deltas():
    before, after = PAIR.make("biased"), PAIR.make("debiased")
    after["samples"]["count"] = 325
    unpaired = compare_audits(before, after)["bias"]
    assert unpaired["worst_group"]["full"] == {"before": 15.0, "after": 45.0, "delta": 30.0, "delta_ci": None}
    assert unpaired["ood"]["delta_ci"] is None
    kept_none = PAIR.make("debiased")
    del kept_none["bootstrap"]["derived"]
    paired = compare_audits(before, kept_none)
    assert paired["paired"] is True and paired["bias"]["bias_follow"]["text"]["delta_ci"] is None
    damaged = PAIR.make("debiased")
    damaged["bootstrap"]["derived"]["worst_group:full"] = [40.0, 50.0]
    with pytest.raises(DataError, match=r"after audit's bootstrap.derived\['worst_group:full'\] is not a list of 4 numbers"):
        compare_audits(before, damaged)


def test_the_compare_page_puts_the_bias_measures_first_and_labels_the_gap_as_reliance(tmp_path):
    before, after = PAIR.make("biased"), PAIR.make("debiased")
    comparison = compare_audits(before, after)
    page = render_compare_html(comparison, before, after)
    assert page.index('id="verdict"') < page.index('id="bias"') < page.index('id="summary"')
    bias = page[page.index('id="bias"'):page.index('id="summary"')]
    for row in ("<tr><td>bias carrier (largest excess bias-follow rate)</td><td>text</td><td>text</td><td></td></tr>",
                "<tr><td>excess bias-follow rate, text swapped</td><td>58.0%</td><td>12.0%</td><td>-46.0 [-47.9, -44.2] points</td></tr>",
                "<tr><td>worst-group accuracy, full</td><td>15.0</td><td>45.0</td><td>+30.0 [30.0, 34.6]</td></tr>",
                "<tr><td>bias-balanced accuracy, full</td><td>31.0</td><td>46.5</td><td>+15.5 [14.1, 16.9]</td></tr>",
                "<tr><td>OOD accuracy (Full, on this shifted split)</td><td>30.0</td><td>51.2</td><td>+21.2 [20.0, 24.6]</td></tr>",
                "<tr><td>JSD weighted mean</td><td>0.180</td><td>0.350</td><td>+0.170 (no interval)</td></tr>"):
        assert row in bias, row
    assert "Reliance: Gap, Avg and flip rates" in page and "because image is now used more" in page
    old = PAIR.old_audit()
    old_page = render_compare_html(compare_audits(old, old), old, old)
    assert "Not compared: the before audit has no groups section (written by an older biasaudit: scan it again); the after audit has no groups section" in old_page
    # Through the console script: the verdict and its sentences on stderr, compare.json with the bias section.
    paths = []
    for name, audit in (("before", before), ("after", after)):
        paths.append(tmp_path / f"{name}.json")
        write_json_atomic(audit, paths[-1])
    result = subprocess.run([str(SCRIPT), "compare", *map(str, paths), "--out", str(tmp_path / "c")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()  # one line per sentence, never wrapped, so CI logs and grep see whole sentences
    assert lines[0] == comparison["verdict"] and [line.strip() for line in lines[1:]] == comparison["verdict_sentences"]
    written = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert written["bias"]["worst_group"]["full"]["delta_ci"] == pytest.approx([30.0, 34.625])
    assert isinstance(written["verdict"], str) and written["verdict_sentences"] == comparison["verdict_sentences"]


def test_the_bias_table_has_per_condition_rows_only_where_the_condition_has_figures_of_its_own():
    """Issue 23 (6b): the compare page repeated worst-group and bias-balanced accuracy for every rung of the ratio sweep
    (rows of "0.0 0.0 +0.0"; ratio:image:1 is missing:image again) and kept rows with no figure on either side. Per-condition
    rows are those of the audit's own page, Full and the missing modalities, and only with a figure."""
    before, after = PAIR.make("biased"), PAIR.make("debiased")
    comparison = compare_audits(before, after)
    rungs = [{"name": f"ratio:image:{r}", "group": "ratio", "modality": "image"} for r in ("0.5", "1")]
    before = {**before, "conditions": [*before["conditions"], *rungs]}
    for key in ("worst_group", "bias_balanced"):
        comparison["bias"][key].update({rung["name"]: {"before": 0.0, "after": 0.0, "delta": 0.0, "delta_ci": None} for rung in rungs})
        comparison["bias"][key]["missing:image"] = {"before": 30.0, "after": 40.0, "delta": 10.0, "delta_ci": [5.0, 15.0]}
        comparison["bias"][key]["missing:text"] = {"before": None, "after": None, "delta": None, "delta_ci": None}
    page = render_compare_html(comparison, before, after)
    bias = page[page.index('id="bias"'):page.index('id="summary"')]
    assert "ratio:" not in bias and "missing:text" not in bias
    measures = re.findall(r"<tr><td>((?:worst-group|bias-balanced) accuracy, [^<]+)</td>", bias)
    assert measures == ["worst-group accuracy, full", "worst-group accuracy, missing:image",
                        "bias-balanced accuracy, full", "bias-balanced accuracy, missing:image"]


def test_intervals_and_changes_near_zero_keep_their_sign_on_the_compare_page():
    """Issue 23 (6b): a paired interval from -0.03 read "[-0.0, 5.1]" and a change of -0.04 read "-0.0": a minus zero,
    which hides which side of zero the figure lies. The bound gets the decimals it needs, in every table of the page."""
    before, after = PAIR.make("biased"), PAIR.make("debiased")
    comparison = compare_audits(before, after)
    comparison["summary"]["missing"]["gap"].update(delta=2.5, delta_ci=[-0.03, 5.1])
    comparison["bias"]["worst_group"]["full"].update(delta=-0.04, delta_ci=[-0.3, 0.0004])
    comparison["bias"]["bias_follow"]["image"].update(delta=0.0002, delta_ci=[-0.00004, 0.0004])
    page = render_compare_html(comparison, before, after)
    assert re.search(r"<tr><td>missing: Gap</td><td>20.0</td><td>32.5</td><td>\+2.5 \[-0.03, 5.1\]</td></tr>", page)
    assert "<td>-0.04 [-0.3, 0.0004]</td>" in page
    assert "<td>+0.02 [-0.004, 0.04] points</td>" in page
    assert not re.search(r"-0\.0+(?![0-9])", page)


def test_the_training_chart_shows_balgrad_weights_only_when_the_log_has_them():
    """Issue 23 (6b): an MMDB compare page showed an empty "BalGrad weights and lambda" panel next to its loss curve."""
    from biasaudit.report.training_figures import training_curves

    mmdb = training_curves([{"epoch": 0, "step": i, "loss": 1.0 / (i + 1)} for i in range(5)])
    assert [ax.get_title() for ax in mmdb.axes] == ["losses"] and mmdb.axes[0].lines
    balgrad = training_curves([{"step": i, "loss": 1.0, "loss_v": 0.5, "loss_l": 0.7, "weight_v": 0.4, "weight_l": 0.6, "lam": 0.1}
                               for i in range(5)], modalities=("image", "text"))
    assert [ax.get_title() for ax in balgrad.axes] == ["losses", "BalGrad weights and lambda"]
    assert all(ax.lines for ax in balgrad.axes)
