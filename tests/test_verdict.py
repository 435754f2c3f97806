"""The verdicts in words (issue 9): bias measures first, the Gap only as reliance. On audits whose figures are
known by hand (tests/fixtures/bias_pair.py): a de-biased model with a larger Gap must read "less biased",
"bias increased" must never come from the Gap alone, a carrier that differs from the dominant modality must
be said in words, and audits without the new sections must still get a verdict."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

from biasaudit.comparing import compare_audits
from biasaudit.verdict import change, compare_sentences, compare_verdict, interval, number, scan_verdict

_spec = importlib.util.spec_from_file_location("bias_pair_for_verdict", Path(__file__).parent / "fixtures" / "bias_pair.py")
PAIR = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(PAIR)


def test_a_carrier_other_than_the_dominant_modality_is_said_in_plain_words():
    verdict = scan_verdict(PAIR.make("biased"))
    assert verdict["headline"] == ("The bias runs through text (excess bias-follow rate 58.0% [52.0, 63.0]); worst-group accuracy "
                                   "15.0% [10.0, 20.0]; OOD accuracy 30.0%; the model relies most on image (missing-modality Gap "
                                   "20.0 points).")
    assert ("The model relies most on image (muting it flips 62.0% of predictions) but the shortcut runs through text (swapping "
            "text's bias value makes 58.0% [52.0, 63.0] more predictions follow that bias value than a swap that keeps the bias value): a fix "
            "aimed at image would miss it.") in verdict["sentences"]
    # Bias measures come before reliance, caveats last.
    order = [next(i for i, s in enumerate(verdict["sentences"]) if s.startswith(start))
             for start in ("The bias runs through text", "Worst-group accuracy", "This split is out of distribution", "JSD",
                           "Reliance:", "The missing-modality Gap", "Unimodal ceilings", "The model relies most on image")]
    assert order == sorted(order)
    # Every sentence of a complete audit quotes the number it rests on.
    assert all(any(ch.isdigit() for ch in s) for s in verdict["sentences"])
    same = PAIR.make("biased")
    same["summary"]["missing"].update(flip_rates={"image": 0.1, "text": 0.6}, dominant="text")
    assert not any("but the shortcut runs through" in s for s in scan_verdict(same)["sentences"])


def test_the_ceilings_say_when_a_large_gap_is_expected():
    sentences = scan_verdict(PAIR.make("debiased"))["sentences"]
    assert ("Unimodal ceilings (what each modality can tell alone): image 61.2% [55.9, 66.4], text 31.0% [26.0, 36.1]; they "
            "alone imply a Gap of 30.2 points, so a large Gap is expected: the modalities can tell different amounts, and a "
            "large Gap need not mean bias.") in sentences
    assert "Utilisation (accuracy alone / ceiling): image 102.1%, text 96.8%." in sentences


def test_a_debiased_model_with_a_larger_gap_reads_less_biased_and_the_page_says_why():
    comparison = compare_audits(PAIR.make("biased"), PAIR.make("debiased"))
    assert comparison["verdict"] == compare_verdict(comparison)
    assert comparison["verdict"] == (
        "worst-group accuracy 15.0 -> 45.0%, bias-balanced accuracy 31.0 -> 46.5%, text bias-follow rate 58.0% -> 12.0%, "
        "missing-modality Gap 20.0 -> 32.5 points, Full (OOD) accuracy 30.0 -> 51.2: less biased, Gap widened (reliance, not "
        "bias), accuracy gained.")
    assert ("The missing-modality Gap grew from 20.0 to 32.5 points (change +12.5 [10.0, 19.2]) because image is now used more: "
            "image alone scores 62.5% (was 10.0%), text alone scores 30.0% (was 30.0%); the ceilings (what each modality can "
            "tell alone, after) are image 61.2%, text 31.0%, implying a Gap of 30.2 points, so a large Gap is expected. The Gap "
            "measures reliance, not bias: the bias measures above say the model is less biased although its Gap grew."
            ) in comparison["verdict_sentences"]
    assert "text bias-follow rate 58.0% -> 12.0% (change -46.0 [-47.9, -44.2] points)." in comparison["verdict_sentences"]


def _without_bias_change(after: dict, before: dict) -> dict:
    """`after` with every bias measure (points, replicates, JSD) copied from `before`: only reliance differs."""
    after = copy.deepcopy(after)
    for key in ("groups", "carrier", "jsd"):
        after[key] = copy.deepcopy(before[key])
    after["bootstrap"]["derived"] = copy.deepcopy(before["bootstrap"]["derived"])
    return after


def test_bias_increased_is_never_said_from_the_gap_alone():
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")
    # The biased model is "after": the bias measures got worse and say so; the Gap narrowed, which is not called less bias.
    worse = compare_audits(debiased, biased)
    assert ": bias increased, Gap narrowed (reliance, not bias)" in worse["verdict"]
    assert any(s.endswith("a narrower Gap alone does not mean less bias.") for s in worse["verdict_sentences"])
    # Same bias measures, Gap 20.0 -> 32.5 and OOD accuracy up (not a bias measure here: the split is not marked OOD).
    for audit in (biased, debiased):
        audit["groups"]["shift"]["ood"] = False
    gap_only = compare_audits(biased, _without_bias_change(debiased, biased))
    assert "bias increased" not in gap_only["verdict"] and "less biased" not in gap_only["verdict"]
    assert ": no clear change in bias, Gap widened (reliance, not bias)" in gap_only["verdict"]
    assert gap_only["summary"]["missing"]["gap"]["delta_ci"][0] > 0  # the Gap really grew, by its paired interval


def test_mixed_evidence_says_so_and_a_jsd_without_interval_cannot_overturn_paired_measures():
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")
    moved = copy.deepcopy(debiased)  # worst-group up, but the image now follows the bias: the shortcut moved
    moved["bootstrap"]["derived"]["bias_follow:image"] = [0.30, 0.32, 0.34, 0.32]
    moved["carrier"]["modalities"]["image"]["bias_swap"]["excess_follow_rate"] = 0.32
    moved["carrier"]["carrier"] = "image"
    verdict = compare_audits(biased, moved)["verdict"]
    assert (": mixed evidence on bias: better worst-group accuracy, bias-balanced accuracy, OOD accuracy, text bias-follow rate, "
            "worse image bias-follow rate") in verdict and "the shortcut moved from text to image" in verdict
    # Paired measures unchanged, JSD down 0.18 -> 0.05 without an interval: not enough to say "bias increased".
    for audit in (biased, debiased):
        audit["groups"]["shift"]["ood"] = False  # else the higher Full accuracy counts as higher OOD accuracy
    jsd_only = _without_bias_change(debiased, biased)
    jsd_only["jsd"]["weighted_mean"] = 0.05
    assert "no clear change in bias" in compare_audits(biased, jsd_only)["verdict"]
    # Unpaired audits: plain differences decide, and the words say so.
    unpaired = copy.deepcopy(jsd_only)
    unpaired["samples"]["count"] = 325
    assert "bias increased (plain differences, no intervals)" in compare_audits(biased, unpaired)["verdict"]


def test_audits_without_the_new_sections_still_get_verdicts():
    old = PAIR.old_audit()
    verdict = scan_verdict(old)
    assert verdict["headline"] == "The model relies most on text (missing-modality Gap 22.2 points [16.0, 28.1])."
    assert verdict["sentences"][-1] == ("This audit has no group or carrier measures (written by an older biasaudit); scan "
                                        "again for them.")
    comparison = compare_audits(old, old)
    assert comparison["bias"]["worst_group"] is None and comparison["bias"]["bias_follow"] is None
    assert comparison["bias"]["lacking"]["groups"] == ["the before audit has no groups section (written by an older biasaudit: scan it again)", "the after audit has no groups section (written by an older biasaudit: scan it again)"]
    assert ": no clear change in bias, Gap unchanged" in comparison["verdict"]
    unavailable = {**old, "carrier": {"available": False, "note": "The carrier test needs bias values."},
                   "groups": {"available": False, "note": "No bias values, so no groups."}}
    sentences = scan_verdict(unavailable)["sentences"]
    assert sentences[:2] == ["No carrier test: The carrier test needs bias values.", "No group accuracies: No bias values, so no groups."]
    assert scan_verdict({})["headline"] == "No verdict: the audit has neither bias measures nor a missing-modality Gap."
    assert compare_sentences(comparison)[-1].startswith("The audits do not pair (neither audit keeps bootstrap replicates")


def test_a_split_without_mistakes_says_so_instead_of_an_empty_jsd():
    audit = PAIR.make("biased")
    audit["summary"]["full"]["accuracy"] = 100.0
    audit["jsd"].update(mean=None, weighted_mean=None,
                        per_bias={name: {**row, "n_wrong": 0} for name, row in audit["jsd"]["per_bias"].items()})
    assert ("JSD: no mistakes on this split (Full accuracy 100.0%), so there is nothing to measure whether mistakes copy the "
            "bias.") in scan_verdict(audit)["sentences"]
    audit["summary"]["full"]["accuracy"] = 90.0
    audit["jsd"]["per_bias"]["red"]["n_wrong"] = 3
    assert ("JSD: no bias value with mistakes has a training prior, so there is no JSD to report."
            in scan_verdict(audit)["sentences"])


def test_a_gap_change_whose_interval_holds_zero_gets_no_cause():
    # A newcomer read "grew ... because image is now used less" for a +0.3 [-3.6, 3.7] change: a cause for noise.
    comparison = compare_audits(PAIR.make("biased"), PAIR.make("debiased"))
    comparison["summary"]["missing"]["gap"]["delta_ci"] = [-1.0, 14.0]
    sentences = compare_sentences(comparison)
    assert ("The missing-modality Gap did not clearly move (20.0 -> 32.5 points, change +12.5 [-1.0, 14.0]). The Gap measures "
            "reliance, not bias.") in sentences
    assert not any("because" in s and "Gap" in s for s in sentences)


MINUS_ZERO = re.compile(r"-0\.0+(?![0-9])")  # "-0.0", "-0.000", not "-0.03"


def test_an_interval_bound_that_rounds_to_zero_keeps_its_sign():
    """Issue 23 (6b): a bound of -0.03 printed as "-0.0": a minus zero reads as a typo, and "0.0" would hide which side of
    zero the interval starts. Every figure goes through one function that adds decimals until a nonzero digit shows."""
    assert interval([-0.03, 5.06]) == "[-0.03, 5.1]"
    assert interval([-0.0003, 0.02], scale=100, unit="%") == "[-0.03%, 2.0%]"
    assert [number(v) for v in (-0.04, -0.0004, -0.00001, -0.0, 0.03)] == ["-0.04", "-0.0004", "0.0", "0.0", "0.03"]
    assert [change(v) for v in (-0.03, 0.0, -0.0, 2.46)] == ["-0.03", "+0.0", "+0.0", "+2.5"]
    assert number(-0.0004, 3) == "-0.0004" and change(-0.00004, 3) == "-0.00004"
    # In the JSON verdicts: a compare sentence and a scan headline.
    comparison = compare_audits(PAIR.make("biased"), PAIR.make("debiased"))
    comparison["summary"]["missing"]["gap"]["delta_ci"] = [-0.03, 14.0]
    assert ("The missing-modality Gap did not clearly move (20.0 -> 32.5 points, change +12.5 [-0.03, 14.0]). The Gap measures "
            "reliance, not bias.") in compare_sentences(comparison)
    audit = PAIR.make("biased")
    audit["carrier"]["modalities"]["text"]["bias_swap"]["excess_follow_rate_ci"] = [-0.0004, 0.9]
    verdict = scan_verdict(audit)
    assert "(excess bias-follow rate 58.0% [-0.04, 90.0])" in verdict["headline"]
    for text in (verdict["headline"], *verdict["sentences"], compare_verdict(comparison), *compare_sentences(comparison)):
        assert not MINUS_ZERO.search(text), text


def test_a_sentence_gives_every_percentage_with_one_decimal():
    """Issue 23 (7): "muting it flips 61% of predictions, vs 35.9% for image" mixed precisions in one sentence (61.0% lost
    its decimal); every percentage of a verdict has one decimal."""
    audit = PAIR.make("biased")
    audit["summary"]["missing"].update(flip_rates={"image": 0.359, "text": 0.61}, dominant="text")
    verdict = scan_verdict(audit)
    assert "Reliance: the model relies most on text (muting it flips 61.0% of predictions, vs 35.9% for image)." in verdict["sentences"]
    comparison = compare_audits(PAIR.make("biased"), PAIR.make("debiased"))
    for text in (verdict["headline"], *verdict["sentences"], comparison["verdict"], *comparison["verdict_sentences"]):
        assert all(re.fullmatch(r"-?\d+\.\d", figure) for figure in re.findall(r"(-?[\d.]+)%", text)), text
