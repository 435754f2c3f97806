"""The gate's rule registry (biasaudit/gating/registry.py, issue 23): every rule is one entry there plus its evaluator,
and everything else reads the registry. A rule missing from one of the places a user reaches it would be a rule the
command line cannot set, the config file refuses, or the docs never mention; a loop that named rules one by one would
silently skip a new rule, so a CI gate would PASS a model the rule should FAIL."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import pytest

from biasaudit.errors import InputError
from biasaudit.gating import DropLimit, GateRules, LimitOption, Rule, RuleVerdict, evaluate_gate, parse_limits
from biasaudit.gating.registry import RULES

DOCS = Path(__file__).parent.parent / "docs" / "gating.md"


def _bias_pair_module():
    path = Path(__file__).parent / "fixtures" / "bias_pair.py"
    spec = importlib.util.spec_from_file_location("bias_pair_for_gate_registry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAIR = _bias_pair_module()


def _gate_command_options() -> dict[str, Any]:
    """The `biasaudit gate` command's options, by parameter name, as click builds them from the typer signature."""
    import typer.main

    from biasaudit.cli import app

    return {param.name: param for param in typer.main.get_command(app).commands["gate"].params}


@pytest.mark.parametrize("name", list(RULES))
def test_every_registered_rule_is_wired_to_python_the_command_line_the_config_file_and_the_docs(name):
    """A registry entry without its GateRules field cannot be set from Python (ba.GateRules refuses the keyword);
    without its flag, `biasaudit gate` cannot set it; without its config-file key, a [gate] table naming it exits 2
    as an unknown key; without a mention in docs/gating.md nobody learns it exists."""
    from biasaudit.cli.config_file import GATE_KEYS

    rule = RULES[name]
    fields = {f.name: f for f in dataclasses.fields(GateRules)}
    assert name in fields, f"GateRules has no field {name}: add `{name}: ... = None` to GateRules in biasaudit/gating/registry.py"
    assert all(setting in fields for setting in rule.settings), f"{name} reads settings GateRules lacks: {rule.settings}"
    default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else fields[name].default
    assert not rule.given(default), f"GateRules.{name}'s default sets the rule, so every gate would run it"
    option = _gate_command_options().get(name)
    assert option is not None and rule.flag in option.opts, f"biasaudit gate has no {rule.flag} (biasaudit/cli/gate.py)"
    assert rule.description in (option.help or ""), f"{rule.flag}'s help is not the registry's description (use RULE_HELP)"
    assert name in GATE_KEYS, f"a [gate] table cannot set {name}: add it to GATE_KEYS in biasaudit/cli/config_file.py"
    wanted = GATE_KEYS[name] if isinstance(GATE_KEYS[name], tuple) else (GATE_KEYS[name],)
    assert set(wanted) == set(rule.config_types), f"the config file takes {wanted} for {name}, its limits {rule.config_types}"
    assert f"`{rule.flag}" in DOCS.read_text(encoding="utf-8"), f"docs/gating.md never names `{rule.flag}`"


def test_the_baseline_rules_and_the_evaluation_order_come_from_the_registry():
    """Verdicts are reported in registry order (the JSON's `rules` list and the JUnit test cases keep it), and the rules
    that need --baseline are the entries that say so: a rule listed twice, or a baseline rule run without its
    comparison, would show up here."""
    from biasaudit.gating import BASELINE_RULES, OPTIONS

    assert tuple(name for name, rule in RULES.items() if rule.needs_baseline) == BASELINE_RULES
    assert BASELINE_RULES == ("max_worst_group_drop", "max_bias_follow_increase", "max_gap_increase", "max_jsd_drop")
    assert list(RULES) == ["max_gap", "min_accuracy", "min_worst_group", *BASELINE_RULES]
    assert set(OPTIONS) == {name for name, rule in RULES.items() if isinstance(rule.limits, LimitOption)}
    assert {rule.kind for rule in RULES.values()} == {"bias", "reliance"}


def _full_drop_toy(current: Mapping[str, Any], comparison: Mapping[str, Any], baseline: Mapping[str, Any], limit: float,
                   significant: bool) -> list[RuleVerdict]:
    """A toy rule: Full accuracy may fall by at most `limit` points against the baseline."""
    full = comparison["summary"]["full"]
    drop = full["before"] - full["after"]
    status = "PASS" if drop <= limit else "FAIL"
    text = f"full accuracy {full['before']:g} -> {full['after']:g}, drop {drop:g} vs {limit:g}"
    return [RuleVerdict("max_full_drop_toy", status, text, {"drop": drop, "limit": limit})]


TOY = Rule("max_full_drop_toy", "reliance", True, "FAIL when the Full accuracy fell by more than this many points against the "
           "baseline.", DropLimit(), _full_drop_toy)
# From Python a rule's limit lives in a GateRules field; a built-in rule declares it in biasaudit/gating/registry.py. This
# subclass stands in for that one line, so that no file of the package changes for the toy rule.
ToyRules = dataclasses.make_dataclass("ToyRules", [("max_full_drop_toy", float | None, None)], bases=(GateRules,), frozen=True)


def test_a_rule_added_as_one_registry_entry_is_checked_evaluated_and_reported(monkeypatch):
    """Adding a gate rule is its evaluator plus one registry entry: with the toy entry registered, its limit is
    validated, it counts as a rule given and as one that needs --baseline, and evaluate_gate runs it and reports it
    after the built-in rules, with no other change. If evaluate_gate named its rules one by one, the toy rule would be
    silently skipped and a gate that should FAIL would PASS."""
    monkeypatch.setitem(RULES, TOY.name, TOY)
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")  # Full accuracy 30.0 and 51.25

    with pytest.raises(InputError, match=r"^max_full_drop_toy is -1; expected a finite drop >= 0"):
        ToyRules(max_full_drop_toy=-1)
    rules = ToyRules(max_full_drop_toy=5)
    assert not rules.is_empty and rules.comparing == ["max_full_drop_toy"]
    with pytest.raises(InputError, match="max_full_drop_toy compares against a stored audit"):
        evaluate_gate(biased, rules)

    worse = evaluate_gate(biased, rules, baseline=debiased)
    assert [(r["rule"], r["status"]) for r in worse["rules"]] == [("max_full_drop_toy", "FAIL")]
    assert worse["status"] == "FAIL" and worse["exit_code"] == 1 and worse["rules"][0]["figures"]["drop"] == pytest.approx(21.25)
    better = evaluate_gate(debiased, ToyRules(max_full_drop_toy=5, max_gap=50), baseline=biased)
    assert [(r["rule"], r["status"]) for r in better["rules"]] == [
        ("max_gap[missing]", "PASS"), ("max_gap[noisy]", "PASS"), ("max_full_drop_toy", "PASS")]


def test_a_registered_rule_gets_its_flag_and_config_key_from_its_entry(monkeypatch):
    """The command line's option and the config file's key are built from the registry entry, so a new rule needs no
    edit in biasaudit/cli: its flag, its help (the entry's description) and what a [gate] table may hold for it."""
    from biasaudit.cli.gate import rule_parameter

    monkeypatch.setitem(RULES, TOY.name, TOY)
    option = rule_parameter(TOY.name).default
    assert option.param_decls == ("--max-full-drop-toy",) and TOY.description in option.help and "Needs --baseline" in option.help
    keyed = rule_parameter("max_worst_group_drop").default
    assert keyed.metavar == "[CONDITION=]POINTS" and rule_parameter("min_accuracy").default.metavar == "CONDITION=PERCENT"
    assert TOY.config_types == (int, float)


def test_messages_that_list_rules_name_a_registered_rule(monkeypatch):
    """The "Available: ..." sentence for an unknown rule and the no-rule message list the registry, so they name a new
    rule without being edited (a hand-written list would hide it from the user)."""
    monkeypatch.setitem(RULES, TOY.name, TOY)
    with pytest.raises(InputError, match=r"There is no gate rule 'max_gapp'\. Available: max_gap, .*, max_full_drop_toy\.$"):
        parse_limits("max_gapp", 2)
    with pytest.raises(InputError, match=r"No gate rule was given; use a bias rule \(--min-worst-group, .*--max-full-drop-toy\)"):
        evaluate_gate(PAIR.make("biased"), GateRules())
    assert parse_limits("max_gap_increase", "missing=2") == {"missing": 2.0}


@pytest.mark.parametrize("entry, wrong", [
    (dict(kind="fairness"), "kind one of bias, reliance"),
    (dict(name="max full drop"), "name must be an identifier"),
    (dict(limits=LimitOption("CONDITION=POINTS", "full=2", None)), "a table limit \\(LimitOption\\) needs key"),
])
def test_a_malformed_registry_entry_fails_at_import_not_as_a_rule_that_never_runs(entry, wrong):
    """A misspelt kind or a table limit whose keys name nothing would otherwise load and then be skipped, misfiled in
    the help, or never have its condition names checked against the audits."""
    fields = dict(name="max_full_drop_toy", kind="reliance", needs_baseline=True, description="toy", limits=DropLimit(),
                  evaluate=_full_drop_toy)
    with pytest.raises(ValueError, match=wrong):
        Rule(**{**fields, **entry})


def test_the_rules_package_is_not_named_gate_so_ba_gate_stays_the_function():
    """Importing a subpackage biasaudit.gate would set the package's attribute `gate` to that module, so `ba.gate(...)`
    would raise "'module' object is not callable" after any `import biasaudit.api`. The rules live in biasaudit.gating."""
    import biasaudit as ba
    import biasaudit.api

    assert importlib.util.find_spec("biasaudit.gate") is None
    assert callable(ba.gate) and ba.gate is biasaudit.api.gate
