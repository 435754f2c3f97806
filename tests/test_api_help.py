"""`help(ba.scan)`, `help(ba.fix)`, `help(ba.Audit)` ... describe every parameter and field: a parameter or field a
docstring never names (in backticks, `like_this`) is one a notebook user has to guess."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import biasaudit as ba

CALLS = ("scan", "scan_shard", "merge", "fix", "leaderboard", "merge_leaderboard", "compare", "gate", "load_adapter", "demo",
         "log", "open_tracker")
RESULTS = ("Audit", "Comparison", "FixResult", "LeaderboardResult", "GateResult", "BiasMeasures", "BiasChanges", "Summary",
           "GapSummary", "ConditionResult", "Change", "Estimate", "RuleResult", "TrackedRun", "GateChanges", "MeasureChange")


@pytest.mark.parametrize("name", CALLS)
def test_every_parameter_of_a_call_is_described_in_its_docstring(name):
    function = getattr(ba, name)
    doc = inspect.getdoc(function) or ""
    missing = [p for p in inspect.signature(function).parameters if f"`{p}`" not in doc]
    assert not missing, f"help(ba.{name}) never names {missing}"


@pytest.mark.parametrize("name", RESULTS)
def test_every_field_of_a_result_is_described_in_its_docstring(name):
    cls = getattr(ba, name)
    doc = inspect.getdoc(cls) or ""
    missing = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in doc]
    assert not missing, f"help(ba.{name}) never names {missing}"
