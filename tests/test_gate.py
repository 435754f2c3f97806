"""`biasaudit gate` on audits whose Gaps are known by hand: a gate that can fail, --significant that flips
between FAIL and WARN on the paired interval, JUnit XML a CI can read, and every exit code through the
real console script. A gate that never fails, or fails on noise, would let a biased model ship or block
a good one."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.scanning.audit import audit_model
from biasaudit.errors import InputError
from biasaudit.gating import GateRules, evaluate_gate
from biasaudit.results import write_json_atomic
from biasaudit.scanning.config import ScanConfig

SCRIPT = Path(sys.executable).parent / "biasaudit"
N, C = 200, 4
CONFIG = ScanConfig(split="test", conditions="missing", bootstrap_replicates=400, projection="pca", gradient_batches=1)


class WrongOnSamples(nn.Module):
    """logits = a + 0.5 * b_view: `a` (one-hot label) decides whenever it is there, so Full and
    "missing:b" are 100%. With `a` muted, `b` decides, and b's pathway names the next class for the
    samples in `wrong`: "missing:a" scores 100 * (1 - |wrong| / N), so the Gap is 100 * |wrong| / N."""

    def __init__(self, wrong: range) -> None:
        super().__init__()
        mask = torch.zeros(N, dtype=torch.bool)
        mask[list(wrong)] = True
        self.register_buffer("wrong", mask)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        one_hot, index = b[:, :C], b[:, C].long()
        b_view = torch.where(self.wrong[index].unsqueeze(1), one_hot.roll(1, dims=1), one_hot)
        return a + 0.5 * b_view


class IndexedAdapter(Adapter):
    modalities = [Modality("a", "tensor", key="a"), Modality("b", "tensor", key="b")]
    num_classes = C
    label_key = "y"
    splits = ("train", "test")

    def build_model(self) -> nn.Module:
        return WrongOnSamples(range(0))

    def data(self, split, *, batch_size):
        labels = torch.arange(N) % C
        a = nn.functional.one_hot(labels, C).float()
        b = torch.cat([a, torch.arange(N, dtype=torch.float32).unsqueeze(1)], dim=1)
        for lo in range(0, N, batch_size):
            yield {"a": a[lo:lo + batch_size], "b": b[lo:lo + batch_size], "y": labels[lo:lo + batch_size]}

    def prepare(self, batch, *, device):
        return batch["a"].to(device), batch["b"].to(device)


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Gaps 1.0 (baseline), 2.0 (two more wrong samples: within noise) and 15.0 (28 more: a real change)."""
    adapter, directory = IndexedAdapter(), tmp_path_factory.mktemp("audits")
    out = {}
    for name, wrong in (("base", range(2)), ("small", range(4)), ("big", range(30))):
        audit = audit_model(WrongOnSamples(wrong), adapter, config=CONFIG, checkpoint=None)
        out[name] = directory / f"{name}.json"
        write_json_atomic(audit, out[name])
    return out


def load(path):
    return json.loads(Path(path).read_text())


def gate(*args):
    return subprocess.run([str(SCRIPT), "gate", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_audits_have_the_gaps_known_by_hand(audits):
    assert [load(audits[n])["summary"]["missing"]["gap"] for n in ("base", "small", "big")] == pytest.approx([1.0, 2.0, 15.0])


def test_max_gap_fails_past_the_threshold_and_passes_below_it(audits):
    current = load(audits["big"])
    assert evaluate_gate(current, GateRules(max_gap=10))["rules"][0]["status"] == "FAIL"
    assert evaluate_gate(current, GateRules(max_gap=20))["rules"][0]["status"] == "PASS"


def test_the_ratchet_fails_when_the_gap_grows_past_the_allowed_increase(audits):
    base, big = load(audits["base"]), load(audits["big"])
    grown = evaluate_gate(big, GateRules(max_gap_increase=5), baseline=base)
    assert grown["status"] == "FAIL" and grown["exit_code"] == 1 and grown["paired"] is True
    figures = grown["rules"][0]["figures"]
    assert figures["change"] == pytest.approx(14.0) and figures["change_ci"][0] > 0
    assert evaluate_gate(big, GateRules(max_gap_increase=20), baseline=base)["status"] == "PASS"
    assert evaluate_gate(base, GateRules(max_gap_increase=0), baseline=big)["status"] == "PASS"  # the Gap shrank


def test_significant_flips_a_noisy_increase_from_fail_to_warn_but_not_a_real_one(audits):
    base, small, big = (load(audits[n]) for n in ("base", "small", "big"))
    plain = evaluate_gate(small, GateRules(max_gap_increase=0.5), baseline=base)
    assert plain["rules"][0]["status"] == "FAIL" and plain["exit_code"] == 1
    noisy = evaluate_gate(small, GateRules(max_gap_increase=0.5, significant=True), baseline=base)
    lo, hi = noisy["rules"][0]["figures"]["change_ci"]
    assert lo <= 0 < hi  # two samples' worth of change: some replicates draw neither
    assert noisy["rules"][0]["status"] == "WARN" and noisy["exit_code"] == 0
    assert "the interval reaches within the limit" in noisy["rules"][0]["message"]
    real = evaluate_gate(big, GateRules(max_gap_increase=0.5, significant=True), baseline=base)
    assert real["rules"][0]["status"] == "FAIL" and "the whole interval lies beyond the limit" in real["rules"][0]["message"]
    # Issue 9: --significant means "beyond the limit", no longer "beyond zero". A limit between the interval's
    # low end and the change: the interval excludes zero (the old rule failed it) but not the limit, so WARN.
    lo, hi = real["rules"][0]["figures"]["change_ci"]
    assert 0.5 < lo < 14.0 < hi
    inside = evaluate_gate(big, GateRules(max_gap_increase=(lo + 14.0) / 2, significant=True), baseline=base)
    assert inside["rules"][0]["status"] == "WARN" and inside["exit_code"] == 0


def test_significant_on_audits_that_do_not_pair_says_the_plain_difference_is_used(audits):
    base, big = load(audits["base"]), load(audits["big"])
    del base["bootstrap"]
    result = evaluate_gate(big, GateRules(max_gap_increase=0.5, significant=True), baseline=base)
    assert result["paired"] is False and result["rules"][0]["status"] == "FAIL"
    assert "do not pair" in result["rules"][0]["message"] and "plain difference is used" in result["rules"][0]["message"]


def test_min_accuracy_checks_any_condition_and_names_the_available_ones(audits):
    big = load(audits["big"])
    result = evaluate_gate(big, GateRules(min_accuracy={"full": 99, "missing:a": 90}))
    assert [r["status"] for r in result["rules"]] == ["PASS", "FAIL"]
    # A condition the audit did not run is the user's mistake (a typo, a rule for another scan), refused before any
    # verdict is written, rather than an ERROR row beside real verdicts.
    with pytest.raises(InputError, match=r"min_accuracy names condition 'noisy:a', which the audit did not run; .* "
                                         r"Available: full, missing:a, missing:b\."):
        evaluate_gate(big, GateRules(min_accuracy={"full": 99, "noisy:a": 10}))


def test_rules_that_need_a_baseline_or_no_rule_at_all_are_usage_errors(audits):
    big = load(audits["big"])
    with pytest.raises(InputError, match="max_gap_increase compares against a stored audit; give it with --baseline"):
        evaluate_gate(big, GateRules(max_gap_increase=1))
    with pytest.raises(InputError, match="No gate rule was given"):
        evaluate_gate(big, GateRules())


def test_exit_codes_json_and_junit_through_the_console_script(audits, tmp_path):
    passed = gate(audits["big"], "--max-gap", "20", "--json")
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["status"] == "PASS" and "max_gap[missing]" in passed.stderr
    junit = tmp_path / "gate.xml"
    failed = gate(audits["big"], "--baseline", audits["base"], "--max-gap-increase", "5", "--max-gap", "20",
                  "--min-accuracy", "full=99", "--junit", junit)
    assert failed.returncode == 1, failed.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == {"max_gap[missing]", "min_accuracy[full]", "max_gap_increase[missing]"}
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "0"
    assert cases["max_gap_increase[missing]"].find("failure") is not None
    assert cases["max_gap[missing]"].find("failure") is None and cases["min_accuracy[full]"].find("failure") is None


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_text("{not json"), "is not valid JSON"),
    (lambda path: path.write_text(json.dumps({**load(path), "schema_version": 99})), "has schema_version 99; this biasaudit reads version 1"),
])
def test_damaged_audit_files_exit_2_naming_the_file(damage, message, audits, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(Path(audits["big"]).read_text())
    damage(broken)
    result = gate(broken, "--max-gap", "20", "--junit", tmp_path / "never.xml")
    assert result.returncode == 2 and str(broken) in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "never.xml").exists()


def test_audits_of_other_conditions_exit_2_naming_both_files(audits, tmp_path):
    other = load(audits["big"])
    other["manifest"]["config"]["conditions"] = "missing,noisy"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    result = gate(path, "--baseline", audits["base"], "--max-gap-increase", "1")
    assert result.returncode == 2 and "differ in conditions" in result.stderr
    assert str(path) in result.stderr and str(audits["base"]) in result.stderr
    bad_rule = gate(audits["big"], "--min-accuracy", "full")
    assert bad_rule.returncode == 2 and "is not CONDITION=PERCENT" in bad_rule.stderr


def test_report_renders_the_html_again_from_the_json_alone(audits, tmp_path):
    """A CI job keeps audit.json as an artifact; the HTML must be reproducible from it without the model."""
    result = subprocess.run([str(SCRIPT), "report", str(audits["big"]), "--out", str(tmp_path / "again.html")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "again.html").read_text()
    assert 'id="verdict"' in page and "missing:a" in page and "15.0" in page
    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    result = subprocess.run([str(SCRIPT), "report", str(broken)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not a biasaudit audit" in result.stderr and not (tmp_path / "broken.html").exists()


def test_gate_rules_from_biasaudit_toml_with_command_line_overrides(audits, tmp_path):
    """A pipeline keeps its rules in a file; an option typed on the command line must still win, and the
    verdict must say where each setting came from."""
    (tmp_path / "biasaudit.toml").write_text(f'[gate]\nbaseline = "{audits["base"]}"\nmax_gap_increase = 5\n'
                                             '[gate.min_accuracy]\nfull = 99\n')
    run = lambda *args: subprocess.run([str(SCRIPT), "gate", str(audits["big"]), "--json", *args], capture_output=True,  # noqa: E731
                                       text=True, timeout=300, cwd=tmp_path)
    from_file = run()
    assert from_file.returncode == 1, from_file.stderr
    verdict = json.loads(from_file.stdout)
    assert [r["rule"] for r in verdict["rules"]] == ["min_accuracy[full]", "max_gap_increase[missing]"]
    sources = verdict["settings"]["sources"]
    assert sources["max_gap_increase"].endswith("biasaudit.toml [gate]") and sources["max_gap"] == "default"
    overridden = run("--max-gap-increase", "20")
    assert overridden.returncode == 0, overridden.stderr
    assert json.loads(overridden.stdout)["settings"]["sources"]["max_gap_increase"] == "command line"
    added = json.loads(run("--min-accuracy", "missing:a=10").stdout)  # adds a condition, keeps the file's full=99
    assert [r["rule"] for r in added["rules"]][:2] == ["min_accuracy[full]", "min_accuracy[missing:a]"]
    assert added["settings"]["sources"]["min_accuracy"].startswith("command line over ")


def test_pyproject_tool_table_is_read_and_a_bad_key_exits_2_naming_the_file(audits, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.biasaudit.gate]\nmax_gap = 10\n')
    result = subprocess.run([str(SCRIPT), "gate", str(audits["big"])], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1 and "max_gap[missing]" in result.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.biasaudit.gate]\nmax_gapp = 10\n')
    result = subprocess.run([str(SCRIPT), "gate", str(audits["big"])], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "pyproject.toml: [tool.biasaudit.gate] has no setting 'max_gapp'. Available: baseline" in result.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.biasaudit.gate]\nsignificant = "yes"\n')
    result = subprocess.run([str(SCRIPT), "gate", str(audits["big"]), "--max-gap", "1"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "significant = 'yes' is not true or false." in result.stderr


def test_scan_settings_from_the_file_land_in_the_manifest_with_their_source(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    sys.path.insert(0, str(fixtures))
    try:
        import tiny_adapter
    finally:
        sys.path.pop(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_adapter.ReadsOnlyA().state_dict(), checkpoint)
    (tmp_path / "biasaudit.toml").write_text(f'[scan]\nadapter = "{fixtures / "tiny_adapter.py"}:adapter"\nconditions = "missing"\n'
                                             'bootstrap = 50\nprojection = "pca"\n')
    result = subprocess.run([str(SCRIPT), "scan", str(checkpoint), "--bootstrap", "60", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = load(tmp_path / "out" / "audit.json")["manifest"]
    assert manifest["config"]["conditions"] == "missing" and manifest["config"]["bootstrap_replicates"] == 60
    sources = manifest["settings"]["sources"]
    assert sources["conditions"].endswith("biasaudit.toml [scan]") and sources["bootstrap"] == "command line"
    assert sources["seed"] == "default" and manifest["settings"]["config_file"].endswith("biasaudit.toml")


def test_scan_without_an_adapter_on_the_command_line_or_in_a_file_exits_2(tmp_path):
    result = subprocess.run([str(SCRIPT), "scan", "model.pt"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "--adapter is required: give it on the command line or as adapter" in result.stderr
    assert not (tmp_path / "biasaudit-out").exists()


# --- bias rules (issue 9) on the hand-built pair of tests/fixtures/bias_pair.py -----------------------------

def _bias_pair_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bias_pair_for_gate", Path(__file__).parent / "fixtures" / "bias_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAIR = _bias_pair_module()
BIAS_RULES = dict(min_worst_group={"full": 40}, max_worst_group_drop=2, max_bias_follow_increase=5)


@pytest.fixture
def pair_files(tmp_path):
    paths = {}
    for name in ("biased", "debiased"):
        paths[name] = tmp_path / f"{name}.json"
        write_json_atomic(PAIR.make(name), paths[name])
    return paths


def test_bias_rules_pass_the_debiased_model_that_a_gap_ratchet_blocks():
    """The issue's case: the fix removed the text shortcut (worst-group 15 -> 45, text bias-follow 58% -> 12%) and
    uses the image better, so its Gap grew 20.0 -> 32.5. The Gap ratchet blocks it and passes the biased model;
    the bias rules do the opposite."""
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")
    good = evaluate_gate(debiased, GateRules(**BIAS_RULES, significant=True), baseline=biased)
    assert good["status"] == "PASS" and good["exit_code"] == 0
    assert [r["rule"] for r in good["rules"]] == ["min_worst_group[full]", "max_worst_group_drop[full]", "max_bias_follow_increase[text]"]
    follow = good["rules"][2]
    assert "text (the carrier of both audits) bias-follow rate 58.0% -> 12.0%, change -46.0 [-47.9, -44.2] points" in follow["message"]
    assert follow["figures"]["change_ci_points"] == pytest.approx([-47.85, -44.15])
    ratchet = evaluate_gate(debiased, GateRules(max_gap_increase={"missing": 2}, significant=True), baseline=biased)
    assert ratchet["status"] == "FAIL" and ratchet["rules"][0]["figures"]["change_ci"] == pytest.approx([10.0, 19.25])
    bad = evaluate_gate(biased, GateRules(**BIAS_RULES, significant=True), baseline=debiased)
    assert [r["status"] for r in bad["rules"]] == ["FAIL", "FAIL", "FAIL"] and bad["exit_code"] == 1
    assert evaluate_gate(biased, GateRules(max_gap_increase=2, significant=True), baseline=debiased)["status"] == "PASS"


def test_significant_fails_only_when_the_whole_interval_lies_beyond_the_limit():
    """Biased after debiased: text bias-follow change +46.0 points, paired interval [44.15, 47.85] (hand-computed)."""
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")

    def status(limit, significant):
        result = evaluate_gate(biased, GateRules(max_bias_follow_increase={"text": limit}, significant=significant), baseline=debiased)
        return result["rules"][0]["status"], result["rules"][0]["message"]

    assert status(45, False)[0] == "FAIL"  # past the limit
    warned = status(45, True)  # past it, but the interval reaches back to 44.15
    assert warned[0] == "WARN" and "the interval reaches within the limit" in warned[1]
    assert status(44, True) == ("FAIL", "text bias-follow rate 12.0% -> 58.0%, change +46.0 [44.2, 47.9] points vs limit +44; "
                                        "the whole interval lies beyond the limit")
    assert status(50, True)[0] == "PASS"
    # Drops: worst-group change -30.0, interval [-34.625, -30.0]; the limit is on the drop.
    drop = evaluate_gate(biased, GateRules(max_worst_group_drop={"full": 29}, significant=True), baseline=debiased)["rules"][0]
    assert drop["status"] == "FAIL" and drop["figures"]["change_ci"] == pytest.approx([-34.625, -30.0])
    assert evaluate_gate(biased, GateRules(max_worst_group_drop=31, significant=True), baseline=debiased)["status"] == "PASS"


def test_bias_rules_on_audits_that_do_not_pair_or_lack_the_sections():
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")
    debiased["samples"]["count"] = 325
    unpaired = evaluate_gate(biased, GateRules(max_bias_follow_increase=40, significant=True), baseline=debiased)
    assert unpaired["paired"] is False and unpaired["rules"][0]["status"] == "FAIL"
    assert "the audits do not pair (different samples (325 vs 324 samples)), so the plain difference is used" in unpaired["rules"][0]["message"]
    old = PAIR.old_audit()
    lacking = evaluate_gate(biased, GateRules(**BIAS_RULES), baseline=old)
    assert [r["status"] for r in lacking["rules"]] == ["FAIL", "ERROR", "ERROR"] and lacking["exit_code"] == 2
    assert lacking["rules"][1]["message"] == "no worst-group accuracy to compare: the baseline audit has no groups section (written by an older biasaudit: scan it again)"
    unknown = evaluate_gate(biased, GateRules(max_worst_group_drop={"noisy:text": 2}), baseline=debiased)["rules"][0]
    assert unknown["status"] == "ERROR" and unknown["message"].endswith("Available: full")
    no_carrier = PAIR.make("debiased")
    no_carrier["carrier"]["carrier"] = None
    every = evaluate_gate(biased, GateRules(max_bias_follow_increase=5), baseline=no_carrier)["rules"]
    # No carrier in the baseline: the plain limit follows the current audit's carrier.
    assert [r["rule"] for r in every] == ["max_bias_follow_increase[text]"] and "(the current carrier)" in every[0]["message"]
    neither = dict(biased, carrier={**biased["carrier"], "carrier": None})
    every = evaluate_gate(neither, GateRules(max_bias_follow_increase=5), baseline=no_carrier)["rules"]
    assert [r["rule"] for r in every] == ["max_bias_follow_increase[image]", "max_bias_follow_increase[text]"]
    assert "(neither audit names a carrier, so every modality)" in every[0]["message"]


def test_the_jsd_rule_reads_the_weighted_mean_by_default_and_says_why_a_statistic_is_missing():
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")  # JSD mean: none in `biased` (too few mistakes per colour)
    weighted = evaluate_gate(biased, GateRules(max_jsd_drop=0.1), baseline=debiased)["rules"][0]
    assert weighted["status"] == "FAIL" and weighted["figures"]["statistic"] == "weighted"
    assert weighted["message"].startswith("JSD weighted 0.350 -> 0.180, drop +0.170 > 0.1")
    mean = evaluate_gate(biased, GateRules(max_jsd_drop=0.1, jsd="mean"), baseline=debiased)["rules"][0]
    assert mean["status"] == "ERROR" and "the current audit has no JSD mean: no bias value has 15 mistakes" in mean["message"]
    perfect = PAIR.make("biased")
    perfect["jsd"].update(weighted_mean=None, per_bias={k: {**v, "n_wrong": 0} for k, v in perfect["jsd"]["per_bias"].items()})
    none = evaluate_gate(perfect, GateRules(max_jsd_drop=0.1), baseline=debiased)["rules"][0]
    assert none["status"] == "ERROR" and "the current model makes no mistakes on this split" in none["message"]


def test_gap_rules_per_group(audits):
    big = load(audits["big"])  # has a missing Gap only
    assert [r["rule"] for r in evaluate_gate(big, GateRules(max_gap={"missing": 20}))["rules"]] == ["max_gap[missing]"]
    absent = evaluate_gate(big, GateRules(max_gap={"noisy": 20}))
    assert absent["status"] == "ERROR" and "the audit has no noisy Gap" in absent["rules"][0]["message"]
    biased, debiased = PAIR.make("biased"), PAIR.make("debiased")
    both = evaluate_gate(debiased, GateRules(max_gap_increase=2), baseline=biased)
    assert [(r["rule"], r["status"]) for r in both["rules"]] == [("max_gap_increase[missing]", "FAIL"), ("max_gap_increase[noisy]", "PASS")]
    noisy = evaluate_gate(debiased, GateRules(max_gap_increase={"noisy": 2}), baseline=biased)
    assert [(r["rule"], r["status"]) for r in noisy["rules"]] == [("max_gap_increase[noisy]", "PASS")]


def test_bias_rules_through_the_console_script_with_json_and_junit(pair_files, tmp_path):
    junit = tmp_path / "gate.xml"
    passed = gate(pair_files["debiased"], "--baseline", pair_files["biased"], "--min-worst-group", "full=40", "--max-worst-group-drop", "2",
                  "--max-bias-follow-increase", "5", "--significant", "--json", "--junit", junit)
    assert passed.returncode == 0, passed.stderr
    verdict = json.loads(passed.stdout)
    assert verdict["significant"] is True and "whole paired 95% interval lies beyond the limit" in verdict["significant_means"]
    suite = ET.parse(junit).getroot().find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["paired"] == "true" and properties["significant"] == "true"
    blocked = gate(pair_files["debiased"], "--baseline", pair_files["biased"], "--max-gap-increase", "missing=2", "--significant")
    assert blocked.returncode == 1 and "max_gap_increase[missing]" in blocked.stderr


@pytest.mark.parametrize("args, message", [
    (["--min-worst-group", "full=abc"], "--min-worst-group 'full=abc' is not CONDITION=PERCENT (e.g. full=60 or missing:image=20)."),
    (["--min-worst-group", "60"], "--min-worst-group '60' is not CONDITION=PERCENT"),
    (["--max-gap", "3", "--jsd", "median"], "--jsd 'median' is not a JSD statistic. Available: weighted, mean."),
    (["--max-gap-increase", "foo=2"], "--max-gap-increase 'foo=2' names no impairment group 'foo'; expected POINTS or GROUP=POINTS. "
                                      "Available: missing, noisy."),
    (["--max-bias-follow-increase", "text=lots"], "--max-bias-follow-increase 'text=lots' is not POINTS or MODALITY=POINTS"),
    (["--max-worst-group-drop", "nan"], "--max-worst-group-drop 'nan' is not POINTS or CONDITION=POINTS"),
])
def test_bad_rules_exit_2_naming_the_option_before_any_audit_is_read(args, message, tmp_path):
    """The audit paths do not exist: had the gate read them first, the error would name the file instead."""
    result = gate(tmp_path / "nope.json", "--baseline", tmp_path / "nope-either.json", *args)
    assert result.returncode == 2 and message in result.stderr and "does not exist" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_unknown_modality_exits_2_naming_the_audits_modalities(pair_files):
    result = gate(pair_files["debiased"], "--baseline", pair_files["biased"], "--max-bias-follow-increase", "audio=5")
    assert result.returncode == 2
    assert ("--max-bias-follow-increase names modality 'audio', which the audits do not have; expected MODALITY=POINTS. "
            "Available: image, text.") in result.stderr


def test_bias_rules_from_the_config_file_share_the_command_lines_checks(pair_files, tmp_path):
    (tmp_path / "biasaudit.toml").write_text(f'[gate]\nbaseline = "{pair_files["biased"]}"\nmax_bias_follow_increase = 5\n'
                                             'max_gap_increase = {missing = 2}\n[gate.min_worst_group]\nfull = 40\n')
    run = lambda *args: subprocess.run([str(SCRIPT), "gate", str(pair_files["debiased"]), "--json", *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    from_file = run()
    assert from_file.returncode == 1, from_file.stderr  # the Gap ratchet in the file blocks it
    assert [r["rule"] for r in json.loads(from_file.stdout)["rules"]] == [
        "min_worst_group[full]", "max_bias_follow_increase[text]", "max_gap_increase[missing]"]
    # Per-key limits on the command line override or add keys; the file's others stay.
    merged = run("--max-gap-increase", "missing=20", "--min-worst-group", "missing:image=5")
    rules = {r["rule"]: r for r in json.loads(merged.stdout)["rules"]}
    assert rules["max_gap_increase[missing]"]["status"] == "PASS" and rules["max_gap_increase[missing]"]["figures"]["limit"] == 20
    assert rules["min_worst_group[full]"]["status"] == "PASS"
    # The hand-built audits have group figures for full only: a named condition they lack is an ERROR naming what they have.
    assert rules["min_worst_group[missing:image]"]["message"].endswith("Available: full") and merged.returncode == 2
    (tmp_path / "biasaudit.toml").write_text('[gate]\nmax_gap_increase = {foo = 2}\n')
    bad = run()
    assert bad.returncode == 2 and "biasaudit.toml [gate] max_gap_increase 'foo=2' names no impairment group 'foo'" in bad.stderr


@pytest.mark.parametrize("rules, expected", [
    (dict(max_bias_follow_increase=-5), "^max_bias_follow_increase"),  # from Python, errors name the keyword
    (dict(max_worst_group_drop=-3), "^max_worst_group_drop"),
    (dict(max_gap_increase=-1), "^max_gap_increase"),
    (dict(max_jsd_drop=-0.1), "^max_jsd_drop"),
    (dict(max_worst_group_drop={"full": "2"}), "must be a mapping .* of str to number or a number or None; got dict"),
])
def test_a_negative_ratchet_or_a_text_limit_is_refused_because_identical_audits_would_fail(rules, expected):
    from biasaudit.errors import InputError
    from biasaudit.gating import GateRules

    with pytest.raises(InputError, match=expected):
        GateRules(**rules)


def test_a_plain_bias_follow_limit_also_watches_a_shortcut_that_moved_to_another_modality():
    """BalGrad can move the shortcut from the caption into the image: the baseline's carrier is then calm while the
    current carrier follows the bias; a plain limit checks both."""
    baseline = PAIR.make("biased")  # carrier: text
    moved = PAIR.make("biased")
    moved["carrier"]["carrier"] = "image"
    result = evaluate_gate(moved, GateRules(max_bias_follow_increase=5), baseline=baseline)
    assert [r["rule"] for r in result["rules"]] == ["max_bias_follow_increase[text]", "max_bias_follow_increase[image]"]
    assert "(the current carrier)" in result["rules"][1]["message"]


def test_worst_group_figures_of_audits_grouped_differently_or_on_kmeans_values_do_not_pair():
    """A rescan with another --min-group drops the small worst group: 15 -> 40 would read as less bias."""
    before, after = PAIR.make("biased"), PAIR.make("biased")
    after["groups"]["min_group"] = 20
    result = evaluate_gate(after, GateRules(max_worst_group_drop=2), baseline=before)
    assert result["rules"][0]["status"] == "ERROR" and "grouped differently (min_group 10 vs 20)" in result["rules"][0]["message"]
    kmeans = PAIR.make("biased")
    kmeans["groups"]["bias_source"] = kmeans["carrier"]["bias_source"] = "kmeans"
    result = evaluate_gate(kmeans, GateRules(max_bias_follow_increase=2), baseline=dict(kmeans))
    assert result["rules"][0]["status"] == "ERROR" and "k-means on each model's own embeddings" in result["rules"][0]["message"]


def test_a_missing_worst_group_is_an_error_not_a_failure():
    audit = PAIR.make("biased")
    audit["groups"]["conditions"]["full"]["worst_group"] = None
    audit["groups"]["note"] = "No group has 10 samples (min_group), so there is no worst-group accuracy."
    rule = evaluate_gate(audit, GateRules(min_worst_group={"full": 40}))["rules"][0]
    assert rule["status"] == "ERROR" and "No group has 10 samples" in rule["message"]


def test_an_infinite_jsd_drop_limit_is_refused():
    from biasaudit.errors import InputError

    with pytest.raises(InputError, match="finite drop"):
        GateRules(max_jsd_drop=float("inf"))


def test_a_plain_limit_in_the_file_and_a_keyed_one_on_the_command_line_add_up_and_file_mistakes_name_the_file():
    from biasaudit.cli.config_file import Settings, resolve
    from biasaudit.errors import InputError

    settings = Settings(path=Path("biasaudit.toml"), sections={"gate": {"max_bias_follow_increase": 2, "min_accuracy": {"full": 200}}})
    values, _ = resolve({"max_bias_follow_increase": ["image=3"]}, {"max_bias_follow_increase"}, settings, "gate")
    assert values["max_bias_follow_increase"] == ["*=2", "image=3"]
    with pytest.raises(InputError, match=r"biasaudit.toml \[gate\] min_accuracy 'full=200'"):
        resolve({"min_accuracy": ["missing:image=40"]}, {"min_accuracy"}, settings, "gate")


def test_condition_names_holding_emoji_codes_reach_the_table_and_the_json_exactly(audits, tmp_path):
    """`ratio:a:0.5` holds `:a:`, an emoji code: the console must not turn it into a picture, and --json is the
    verdict as json wrote it (a CI parses it)."""
    audit = load(audits["base"])
    row = dict(next(r for r in audit["conditions"] if r["name"] == "missing:a"), name="ratio:a:0.5", group="ratio")
    audit["conditions"].append(row)
    audit["bootstrap"]["correct_weight"]["ratio:a:0.5"] = audit["bootstrap"]["correct_weight"]["missing:a"]
    path = tmp_path / "ratio.json"
    path.write_text(json.dumps(audit))
    result = gate(path, "--min-accuracy", "ratio:a:0.5=10", "--json")
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["rules"][0]["rule"] == "min_accuracy[ratio:a:0.5]"
    assert "ratio:a:0.5" in " ".join(result.stderr.split()) and "🅰" not in result.stderr + result.stdout
