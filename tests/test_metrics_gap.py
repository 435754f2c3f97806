"""Avg, Gap (signed and absolute), their paired intervals, and the dominant modality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biasaudit.errors import InputError
from biasaudit.diagnostics.gap import dominant_modality, summarize_gap


def test_balgrad_food101_baseline_row():
    """The BalGrad paper's Food-101 baseline (A_img 12.99, A_txt 63.52) must give Avg 38.26 and Gap 50.53."""
    summary = summarize_gap({"image": 12.99, "text": 63.52})
    assert summary.avg == pytest.approx(38.255)
    assert abs(summary.avg - 38.26) <= 0.005 + 1e-9  # the paper rounds to two decimals
    assert summary.gap == pytest.approx(50.53)
    assert summary.signed_gap == pytest.approx(12.99 - 63.52)  # first minus second, in mapping order
    assert (summary.highest, summary.lowest) == ("text", "image")
    assert summary.avg_ci is None and summary.gap_ci is None


def test_signed_gap_follows_mapping_order():
    """Swapping the order of modalities must flip the signed Gap but not the Gap."""
    a = summarize_gap({"image": 70.0, "text": 40.0})
    b = summarize_gap({"text": 40.0, "image": 70.0})
    assert a.signed_gap == pytest.approx(30.0) and b.signed_gap == pytest.approx(-30.0)
    assert a.gap == b.gap == pytest.approx(30.0)


def test_three_modalities_gap_is_max_minus_min():
    """With three modalities the Gap is the spread max - min, and the signed Gap equals it."""
    summary = summarize_gap({"image": 50.0, "text": 20.0, "audio": 65.0})
    assert summary.avg == pytest.approx(45.0)
    assert summary.gap == pytest.approx(45.0)
    assert summary.signed_gap == pytest.approx(45.0)
    assert (summary.highest, summary.lowest) == ("audio", "text")


def test_intervals_apply_the_formula_per_replicate():
    """Gap intervals must come from per-replicate gaps (paired), not from the scores' own intervals."""
    image = np.array([10.0, 12.0, 14.0, 16.0, 18.0])
    text = np.array([60.0, 61.0, 62.0, 63.0, 64.0])
    summary = summarize_gap({"image": 14.0, "text": 62.0}, replicates={"image": image, "text": text})
    assert summary.gap_ci == pytest.approx(tuple(np.percentile(np.abs(image - text), [2.5, 97.5])))
    assert summary.signed_gap_ci == pytest.approx(tuple(np.percentile(image - text, [2.5, 97.5])))
    assert summary.avg_ci == pytest.approx(tuple(np.percentile((image + text) / 2, [2.5, 97.5])))
    assert summary.gap_ci == pytest.approx((46.1, 49.9))  # by hand: gaps 46..50, positions 0.1 and 3.9
    json.dumps(summary.to_dict(), allow_nan=False)


def test_paired_intervals_of_identical_replicates_are_zero():
    """Identical paired replicates (the same condition twice) must give a Gap interval of exactly [0, 0]."""
    reps = np.array([30.0, 40.0, 50.0])
    summary = summarize_gap({"a": 40.0, "b": 40.0}, replicates={"a": reps, "b": reps.copy()})
    assert summary.gap_ci == (0.0, 0.0)
    assert summary.avg_ci == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))


def test_dominant_modality_is_largest_flip_rate_first_on_ties():
    """The modality whose removal flips the most predictions is the dominant one; ties go to the first."""
    assert dominant_modality({"image": 0.03, "text": 0.56}) == "text"
    assert dominant_modality({"image": 0.4, "text": 0.2, "audio": 0.1}) == "image"
    assert dominant_modality({"text": 0.3, "image": 0.3}) == "text"
    assert dominant_modality({"image": 0.3, "text": 0.3}) == "image"


def test_bad_inputs_raise_input_errors():
    """One modality, or replicates for the wrong modalities, must be a clear user error."""
    with pytest.raises(InputError, match="two modalities"):
        summarize_gap({"image": 50.0})
    with pytest.raises(InputError, match="Replicates"):
        summarize_gap({"image": 50.0, "text": 40.0}, replicates={"image": np.zeros(3)})
    with pytest.raises(InputError, match="Replicates"):
        summarize_gap({"image": 50.0, "text": 40.0}, replicates={"image": np.zeros(3), "text": np.zeros(4)})
    with pytest.raises(InputError):
        dominant_modality({})
