"""What every result becomes in an experiment tracker (issue 24), before any tracker is involved: the flat metric keys
and their values, read from the results' typed fields, the params, the verdict tag, the tables, and the thresholds the
gate's rules give MLflow. If this broke, a team's dashboard would chart a number under the wrong name, or a key the
guide (docs/trackers.md) promises would silently stop being logged."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import biasaudit as ba
from biasaudit.integrations.tracking_entries import entry_of, gate_thresholds
from biasaudit.integrations.tracking_keys import part, rule_path
from biasaudit.results.leaderboard_result import LeaderboardResult

FIXTURES = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parents[1] / "docs" / "trackers.md"
FAST = dict(bootstrap=50, projection="pca", gradient_batches=1, batch_size=32, min_wrong=1)


def _shortcut():
    spec = importlib.util.spec_from_file_location("shortcut_for_trackers", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    """The demo-like example audit; the shortcut model (it follows bias_cue) and the content-only model scanned alike,
    their comparison, a gate of one against the other, a one-epoch fix and a hand-written leaderboard."""
    shortcut = _shortcut()
    adapter = shortcut.ShortcutAdapter()
    biased = ba.scan(shortcut.ShortcutModel(), adapter, **FAST)
    content = ba.scan(shortcut.ShortcutModel(reads_bias=False), adapter, **FAST)
    trainable = shortcut.TrainableShortcutAdapter()
    rules = ba.GateRules(min_accuracy={"full": 90, "missing:content": 50}, max_gap={"noisy": 20}, max_gap_increase=2,
                         max_worst_group_drop=1, max_bias_follow_increase=1)
    return {
        "audit": ba.Audit.read(FIXTURES / "audit_example.json"),
        "biased": biased,
        "content": content,
        "comparison": ba.compare(biased, content),
        "gate": ba.gate(content, rules=rules, baseline=biased),
        "fix": ba.fix(trainable.build_model(), trainable, method="ce", epochs=1, bootstrap=50, projection="pca", scan_batch_size=32),
        "leaderboard": leaderboard(),
    }


def leaderboard() -> LeaderboardResult:
    """ce (the control) and mmdb over two seeds; mmdb recommended, its worst-group change +12 [4, 20]."""
    def entry(method: str, control: bool, full: float, worst: float) -> dict:
        return {"method": method, "control": control, "recommended": not control, "sentence": "", "options": None,
                "seeds": [{"seed": s, "run_id": f"{method}{s}".ljust(32, "0"), "folder": f"runs/{method}/seed-{s}",
                           "values": {"full": full, "worst_group": worst}, "epoch_loss": [1.0], "wall_time_s": 1.0} for s in (0, 1)],
                "values": {"full": {"mean": full, "std": 0.5}, "worst_group": {"mean": worst, "std": 1.5}},
                "changes": None if control else {
                    "full": {"delta": 0.5, "interval": [-1.0, 2.0], "seed_deltas": [0.0, 1.0], "seed_spread": 0.7, "significant": False},
                    "worst_group": {"delta": 12.0, "interval": [4.0, 20.0], "seed_deltas": [11.0, 13.0], "seed_spread": 1.4, "significant": True}}}
    document = {"schema": "biasaudit.leaderboard", "split": "ood", "ood": True, "carrier": "text",
                "measures": [{"name": "full", "label": "Full accuracy", "better": "higher", "kind": "accuracy"},
                             {"name": "worst_group", "label": "worst-group accuracy", "better": "higher", "kind": "bias"}],
                "methods": [entry("ce", True, 80.0, 10.0), entry("mmdb", False, 80.5, 22.0)],
                "verdict": "Use mmdb: it raised worst-group accuracy by +12.0 points over the control."}
    return LeaderboardResult(recommended="mmdb", verdict=document["verdict"], reasons=(), json_path=Path("leaderboard.json"),
                             html_path=None, document=document)


def test_a_condition_or_rule_name_becomes_a_key_path_every_tracker_takes():
    assert part("missing:image") == "missing/image" and part("ratio:text:0.5") == "ratio/text/0.5"
    assert part("image=gaussian:0.2") == "image/gaussian/0.2" and part("a b/../c") == "a_b/_/c"
    assert rule_path("max_gap[missing]") == "max_gap/missing" and rule_path("min_accuracy[missing:image]") == "min_accuracy/missing/image"
    assert rule_path("max_jsd_drop") == "max_jsd_drop"


def test_an_audit_is_logged_as_its_typed_figures(results):
    """Each documented audit key holds the typed field it names, its interval ends beside it."""
    audit = results["audit"]
    entry = entry_of(audit)
    metrics = entry.metrics
    for condition in audit.conditions:
        key = f"biasaudit/{part(condition.name)}"
        assert metrics[f"{key}/accuracy"] == condition.accuracy and metrics[f"{key}/flip_rate"] == condition.flip_rate
        assert (metrics[f"{key}/accuracy_ci_low"], metrics[f"{key}/accuracy_ci_high"]) == condition.accuracy_ci
    assert metrics["biasaudit/full/accuracy"] == audit.summary.accuracy == 31.2
    assert metrics["biasaudit/missing/image/accuracy"] == audit.condition("missing:image").accuracy == 30.6
    assert metrics["biasaudit/reliance/gap/missing"] == audit.summary.missing.gap == 22.2
    assert (metrics["biasaudit/reliance/gap_ci_low/missing"], metrics["biasaudit/reliance/gap_ci_high/missing"]) == (16.0, 28.1)
    text = audit.bias.follow_rate["text"]
    assert (metrics["biasaudit/bias/follow_rate/text"], metrics["biasaudit/bias/follow_rate_ci_low/text"],
            metrics["biasaudit/bias/follow_rate_ci_high/text"]) == (text.value, text.low, text.high) == (0.663, 0.603, 0.72)
    for condition, worst in audit.bias.worst_group.items():
        assert metrics[f"biasaudit/bias/worst_group/{part(condition)}"] == worst.value
        assert metrics[f"biasaudit/bias/bias_balanced_ci_high/{part(condition)}"] == audit.bias.bias_balanced[condition].high
    assert metrics["biasaudit/bias/ood_accuracy"] == audit.bias.ood_accuracy.value
    assert metrics["biasaudit/bias/jsd_weighted_mean"] == audit.bias.jsd_weighted_mean == 0.1792
    assert metrics["biasaudit/ceilings/ceiling/image"] == audit.ceilings.modalities["image"].ceiling.value
    assert entry.tags["biasaudit/verdict"] == audit.verdict.headline and entry.tags["biasaudit/carrier"] == "text"
    assert entry.params["biasaudit/seed"] == 0 and entry.params["biasaudit/split"] == "ood"
    assert entry.params["biasaudit/config/bootstrap_replicates"] == 1000
    assert entry.params["biasaudit/checkpoint_sha256"] == audit.manifest.checkpoint["sha256"]
    assert "biasaudit/adapter_sha256" not in entry.params  # the audit holds null: no param rather than "None"
    conditions = next(t for t in entry.tables if t.name == "conditions")
    assert [row[0] for row in conditions.rows] == [c.name for c in audit.conditions]
    assert conditions.rows[0][conditions.columns.index("accuracy_ci_low")] == 26.2


def test_no_key_lies_below_another_so_a_file_store_can_hold_every_one(results):
    """MLflow's file store writes a metric as a file at its key's path: a key below another would need both a file and
    a folder of the same name."""
    for name, result in results.items():
        keys = set(entry_of(result).metrics)
        assert not [k for k in keys if any(k.startswith(other + "/") for other in keys)], name
        assert all(re.fullmatch(r"[\w.\-/]+", key) for key in keys), name


def test_a_comparison_logs_each_change_with_its_paired_interval_and_both_sides(results):
    """Content-only vs the shortcut model: worst-group accuracy 0 -> 100, the bias_cue follow rate falls to 0."""
    comparison = results["comparison"]
    metrics = entry_of(comparison).metrics
    worst = comparison.bias.worst_group["full"]
    assert (metrics["biasaudit/before/bias/worst_group/full"], metrics["biasaudit/bias/worst_group/full"],
            metrics["biasaudit/change/bias/worst_group/full"]) == (worst.before, worst.after, worst.delta) == (0.0, 100.0, 100.0)
    follow = comparison.bias.follow_rate["bias_cue"]
    assert metrics["biasaudit/change/bias/follow_rate/bias_cue"] == follow.delta < 0
    assert (metrics["biasaudit/change/bias/follow_rate_ci_low/bias_cue"],
            metrics["biasaudit/change/bias/follow_rate_ci_high/bias_cue"]) == follow.delta_ci
    full = comparison.conditions[0]
    assert metrics["biasaudit/change/full/accuracy"] == full.accuracy.delta and metrics["biasaudit/full/accuracy_ci_low"] == full.after_ci[0]
    assert metrics["biasaudit/change/reliance/gap/noisy"] == comparison.noisy.gap.delta
    assert entry_of(comparison).tags["biasaudit/verdict"] == comparison.verdict


def test_a_fix_logs_the_after_audit_as_a_scan_would_the_before_audit_and_the_change(results):
    fix = results["fix"]
    entry = entry_of(fix)
    assert entry.metrics["biasaudit/full/accuracy"] == fix.after.summary.accuracy
    assert entry.metrics["biasaudit/before/full/accuracy"] == fix.before.summary.accuracy
    assert entry.metrics["biasaudit/change/full/accuracy"] == fix.comparison.accuracy.delta
    assert entry.metrics["biasaudit/before/bias/follow_rate/bias_cue"] == fix.before.bias.follow_rate["bias_cue"].value
    assert entry.params["biasaudit/fix/method"] == "ce" and entry.params["biasaudit/fix/config/epochs"] == 1
    assert entry.tags["biasaudit/kind"] == "fix" and entry.tags["biasaudit/verdict"] == fix.comparison.verdict


def test_a_gate_logs_each_rules_figures_and_whether_it_passed(results):
    gate = results["gate"]
    entry = entry_of(gate)
    by_name = {rule.rule: rule for rule in gate.rules}
    assert by_name["max_gap_increase[noisy]"].status == "FAIL" and by_name["min_accuracy[full]"].status == "PASS"
    assert entry.metrics["biasaudit/gate/max_gap_increase/noisy/passed"] == 0.0
    assert entry.metrics["biasaudit/gate/min_accuracy/full/passed"] == 1.0
    assert entry.metrics["biasaudit/gate/max_gap_increase/noisy/change"] == by_name["max_gap_increase[noisy]"].measured.change.value
    assert entry.metrics["biasaudit/gate/max_gap_increase/noisy/limit"] == 2.0
    assert entry.metrics["biasaudit/gate/min_accuracy/missing/content/minimum"] == 50.0
    assert entry.metrics["biasaudit/gate/exit_code"] == gate.exit_code == 1
    assert entry.tags["biasaudit/gate/status"] == "FAIL" and entry.tags["biasaudit/gate/max_gap_increase/noisy/status"] == "FAIL"
    assert entry.tags["biasaudit/verdict"].startswith("FAIL: ") and "max_gap_increase[noisy]" in entry.tags["biasaudit/verdict"]


def test_a_worst_group_is_logged_with_the_interval_the_report_gives_it(results):
    """The shortcut model gets its bias-conflicting groups all wrong: every bootstrap draw picks a group at 0%, so the
    bootstrap interval collapses to [0, 0]; the report and the verdict give the exact interval of that group, [0, x].
    A dashboard showing [0, 0] would claim a certainty the audit does not."""
    biased = results["biased"]
    groups = biased.bias.groups["full"]
    assert groups.worst_group.interval == (0.0, 0.0) and groups.worst_group_exact[1] > 0  # the two differ here
    entry = entry_of(biased)
    assert (entry.metrics["biasaudit/bias/worst_group/full"], entry.metrics["biasaudit/bias/worst_group_ci_low/full"],
            entry.metrics["biasaudit/bias/worst_group_ci_high/full"]) == (0.0, *groups.worst_group_exact)
    table = next(t for t in entry.tables if t.name == "bias")
    row = next(row for row in table.rows if row[0] == "full")
    assert row[table.columns.index("worst_group_ci_high")] == groups.worst_group_exact[1]


def test_a_bias_follow_rules_figures_are_all_in_its_points(results):
    """The rule's limit and change are points; its baseline and current were the rates as fractions (0.99 beside a
    limit of 1), so a chart of the four read nonsense. All four are points now, as docs/trackers.md says."""
    gate = results["gate"]
    (rule,) = [rule for rule in gate.rules if rule.rule == "max_bias_follow_increase[bias_cue]"]
    metrics = entry_of(gate).metrics
    key = "biasaudit/gate/max_bias_follow_increase/bias_cue"
    follow = results["comparison"].bias.follow_rate["bias_cue"]  # the same two audits: biased the baseline
    assert metrics[f"{key}/limit"] == 1.0 and metrics[f"{key}/change_points"] == rule.measured.change_points.value
    assert metrics[f"{key}/baseline"] == pytest.approx(100 * follow.before) and metrics[f"{key}/current"] == pytest.approx(100 * follow.after)
    assert metrics[f"{key}/current"] - metrics[f"{key}/baseline"] == pytest.approx(metrics[f"{key}/change_points"])
    assert metrics["biasaudit/gate/max_gap_increase/noisy/baseline"] == rule_of(gate, "max_gap_increase[noisy]").measured.baseline


def rule_of(gate, name: str):
    return next(rule for rule in gate.rules if rule.rule == name)


def test_a_leaderboard_logs_each_methods_change_against_the_control(results):
    entry = entry_of(results["leaderboard"])
    assert entry.metrics["biasaudit/leaderboard/mmdb/worst_group/change"] == 12.0
    assert (entry.metrics["biasaudit/leaderboard/mmdb/worst_group/change_ci_low"],
            entry.metrics["biasaudit/leaderboard/mmdb/worst_group/change_ci_high"]) == (4.0, 20.0)
    assert entry.metrics["biasaudit/leaderboard/ce/worst_group/mean"] == 10.0 and entry.metrics["biasaudit/leaderboard/mmdb/recommended"] == 1.0
    assert "biasaudit/leaderboard/ce/worst_group/change" not in entry.metrics  # the control has no change against itself
    assert entry.tags["biasaudit/leaderboard/recommended"] == "mmdb" and entry.params["biasaudit/leaderboard/seeds"] == "0,1"


def test_the_gates_rules_become_thresholds_on_the_keys_they_limit(results):
    thresholds = gate_thresholds(results["gate"])
    assert thresholds["biasaudit/full/accuracy"] == (90.0, True)
    assert thresholds["biasaudit/missing/content/accuracy"] == (50.0, True)
    assert thresholds["biasaudit/reliance/gap/noisy"] == (20.0, False)
    assert thresholds["biasaudit/change/reliance/gap/missing"] == (2.0, False)
    assert thresholds["biasaudit/change/bias/worst_group/full"] == (-1.0, True)
    assert thresholds["biasaudit/change/bias/follow_rate/bias_cue"] == (0.01, False)
    significant = ba.gate(results["content"], rules=ba.GateRules(max_gap_increase=2, significant=True), baseline=results["biased"])
    assert set(gate_thresholds(significant)) == {"biasaudit/change/reliance/gap_ci_low/missing",
                                                 "biasaudit/change/reliance/gap_ci_low/noisy"}


def _documented_patterns() -> list[str]:
    """The metric keys of docs/trackers.md's table, as written (`biasaudit/<condition>/accuracy`, ...)."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("### Metrics"):text.index("### Params")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `biasaudit/")]
    return [key for row in rows for key in re.findall(r"`(biasaudit/[^`]+)`", row)]


def _regex(pattern: str) -> re.Pattern:
    return re.compile("".join(".+" if piece.startswith("<") else re.escape(piece) for piece in re.split(r"(<\w+>)", pattern)))


def test_every_logged_key_is_documented_and_every_documented_key_is_logged(results):
    """The guide's key table is the contract: a key logged but not listed is one nobody can find, and a listed key
    never logged is a promise broken. An interval's ends are its figure's key with _ci_low or _ci_high."""
    patterns = {pattern: _regex(pattern) for pattern in _documented_patterns()}
    logged = {key for result in results.values() for key in entry_of(result).metrics}
    undocumented = {key for key in logged
                    if not any(regex.fullmatch(re.sub(r"_ci_(low|high)(?=/|$)", "", key)) for regex in patterns.values())}
    assert undocumented == set()
    never = {p for p, regex in patterns.items() if not any(regex.fullmatch(key) for key in logged)}
    assert never == {"biasaudit/also/change/<key>", "biasaudit/also/before/<key>", "biasaudit/also/<key>"}  # no second split here


def test_a_tracker_name_outside_the_registry_lists_the_ones_there():
    from biasaudit.errors import InputError

    with pytest.raises(InputError, match=r"^The 'to' parameter of ba\.log is str 'nosuch'; expected a tracker\. Available: mlflow, wandb\.$"):
        ba.log(ba.Audit.read(FIXTURES / "audit_example.json"), to="nosuch")


def test_importing_biasaudit_imports_no_tracker():
    import subprocess

    code = "import sys, biasaudit as ba, biasaudit.api; ba.Tracker; print(any(m in sys.modules for m in ('mlflow', 'wandb')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_an_audit_that_cannot_see_the_bias_logs_no_worst_group_as_the_gate_refuses_it():
    """On the shortcut fixture's train split every bias-conflicting sample sits in a group under min_group: the worst
    group is a bias-aligned one at 100%. The gate says ERROR; a logged worst_group key would let MLflow's validation on
    metric_thresholds pass what the gate refused."""
    shortcut = _shortcut()
    audit = ba.scan(shortcut.ShortcutModel(), shortcut.ShortcutAdapter(), split="train", **FAST)
    assert audit.groups.blind and audit.bias.worst_group  # the audit holds figures that cannot see the bias
    gate = ba.gate(audit, rules=ba.GateRules(min_worst_group={"full": 40}))
    assert gate.status == "ERROR"
    metrics = entry_of(audit).metrics
    assert not [key for key in metrics if "/worst_group" in key or "/bias_balanced" in key]
    assert set(gate_thresholds(gate)) - set(metrics) == {"biasaudit/bias/worst_group/full"}  # validation fails, as the gate
    assert next(t for t in entry_of(audit).tables if t.name == "bias").rows == ()


def test_a_compare_run_logs_every_key_the_guide_lists_for_compare(results):
    """The guide's `logged by` column, per result kind: a key listed for compare that a compare never logs is a chart
    that stays empty."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("### Metrics"):text.index("### Params")]
    for kind, names in {"compare": ("comparison",), "fix": ("fix",), "audit": ("audit", "biased")}.items():
        logged = {key for name in names for key in entry_of(results[name]).metrics}
        listed = [key for line in table.splitlines() if line.startswith("| `biasaudit/")
                  and kind in line.rsplit("|", 2)[1] for key in re.findall(r"`(biasaudit/[^`]+)`", line.split("|")[1])]
        never = {p for p in listed if "also" not in p and not any(_regex(p).fullmatch(key) for key in logged)}
        # The content-only model makes no mistake to take a JSD of: its comparison has none to log.
        assert never <= {"biasaudit/bias/jsd_mean", "biasaudit/bias/jsd_weighted_mean"}, kind
