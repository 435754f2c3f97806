"""biasaudit results in an offline Weights & Biases run (issue 24), read back from the run's own folder: the records of
its .wandb file (history, summary, config, artifacts) and its media files (the report as wandb.Html, the tables as
wandb.Table). An active run is used and left open; W&B not installed, online without an account, or asked for
MLflow's tracking URI, is one sentence before any work. No network: every run is offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import wandb

import biasaudit as ba
from biasaudit.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent))
from wandb_records import only_run  # noqa: E402

sys.path.pop(0)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """W&B offline, everything it writes under this test's folder, no account and no setting of the machine."""
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name, sub in (("WANDB_DIR", "runs"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (folder / sub).mkdir(parents=True)
        monkeypatch.setenv(name, str(folder / sub))
    monkeypatch.setenv("HOME", str(folder))  # no ~/.netrc key
    wandb.teardown()  # W&B reads its settings once per process, at its first use: each test's own from here
    yield folder / "runs"
    if wandb.run is not None:  # a failed test's run
        wandb.run.finish()
    wandb.teardown()


@pytest.fixture(scope="module")
def audit() -> ba.Audit:
    return ba.Audit.read(FIXTURES / "audit_example.json")


def test_the_demo_audit_appears_in_an_offline_run_with_the_documented_keys_and_files(audit, offline, tmp_path):
    logged = ba.log(audit, to="wandb", experiment="bias-audits", run_name="demo")
    run = only_run(offline)
    assert (run.run.project, run.run.display_name, run.run.run_id) == ("bias-audits", "demo", logged.run_id)
    assert {"biasaudit", "biasaudit-audit"} <= set(run.run.tags) and run.exit_code == 0
    assert logged.location == str(run.folder)
    for key in logged.metrics:
        assert run.history[key] == run.summary[key], key
    history = run.history
    assert history["biasaudit/full/accuracy"] == audit.summary.accuracy
    assert (history["biasaudit/missing/text/accuracy"], history["biasaudit/missing/text/accuracy_ci_low"]) == (52.8, 47.2)
    follow = audit.bias.follow_rate["text"]
    assert (history["biasaudit/bias/follow_rate/text"], history["biasaudit/bias/follow_rate_ci_low/text"],
            history["biasaudit/bias/follow_rate_ci_high/text"]) == (follow.value, follow.low, follow.high)
    assert history["biasaudit/bias/worst_group/noisy/text"] == audit.bias.worst_group["noisy:text"].value
    assert history["biasaudit/reliance/gap/missing"] == 22.2 and history["biasaudit/bias/jsd_weighted_mean"] == 0.1792
    assert run.summary["biasaudit/verdict"] == audit.verdict.headline and run.summary["biasaudit/carrier"] == "text"
    assert run.config["biasaudit/seed"] == 0 and run.config["biasaudit/split"] == "ood"
    assert run.config["biasaudit/config/bootstrap_replicates"] == 1000
    assert run.artifacts == [("biasaudit-audit", "biasaudit-audit", ["audit.html", "audit.json"])]
    html = run.media("html", "audit").read_text(encoding="utf-8")
    assert html == audit.to_html(tmp_path / "again.html").read_text(encoding="utf-8")  # the report as written, no W&B styles
    table = json.loads(run.media("table", "conditions").read_text())
    assert [row[0] for row in table["data"]] == [c.name for c in audit.conditions]
    accuracy = table["columns"].index("accuracy")
    assert [row[accuracy] for row in table["data"]] == [c.accuracy for c in audit.conditions]
    bias = json.loads(run.media("table", "bias").read_text())
    assert bias["data"][0][:4] == ["full", *(getattr(audit.bias.worst_group["full"], f) for f in ("value", "low", "high"))]


def test_an_active_run_is_logged_into_and_left_open(audit, offline):
    active = wandb.init(project="training", name="mine")
    active.log({"train/loss": 0.5})
    logged = ba.log(audit, to="wandb", files=[FIXTURES / "audit_example.json"])
    assert logged.run_id == active.id and wandb.run is active  # still the user's, still open
    active.finish()
    run = only_run(offline)
    assert run.run.project == "training" and run.history["train/loss"] == 0.5 and run.history["biasaudit/full/accuracy"] == 31.2
    assert run.artifacts == [("biasaudit-audit", "biasaudit-audit", ["audit_example.json"])]


def test_a_gate_verdict_is_logged_with_its_status_and_a_row_per_rule(audit, offline):
    gate = ba.gate(audit, rules=ba.GateRules(min_accuracy={"full": 20}, min_worst_group={"full": 5}))
    ba.log(gate, to="wandb")
    run = only_run(offline)
    assert run.history["biasaudit/gate/min_worst_group/full/passed"] == 0.0 and run.history["biasaudit/gate/min_accuracy/full/passed"] == 1.0
    assert run.history["biasaudit/gate/min_worst_group/full/worst_group"] == 0.0
    assert run.summary["biasaudit/gate/status"] == "FAIL" and run.summary["biasaudit/gate/min_worst_group/full/status"] == "FAIL"
    rules = json.loads(run.media("table", "rules").read_text())
    assert [row[:2] for row in rules["data"]] == [["min_accuracy[full]", "PASS"], ["min_worst_group[full]", "FAIL"]]
    assert run.artifacts == [("biasaudit-gate", "biasaudit-gate", ["gate.json", "gate.md"])]


def test_wandb_not_installed_is_one_sentence_naming_the_extra(audit, monkeypatch, offline):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(InputError, match=r'^Logging to wandb needs the wandb package, which is not installed: pip install "biasaudit\[wandb\]"\.$'):
        ba.log(audit, to="wandb")
    assert not (offline / "wandb").exists()


def test_online_without_an_account_is_refused_before_any_work(audit, monkeypatch, offline):
    """In CI without WANDB_API_KEY, W&B would stop at its login prompt after the scan (and, unanswered, quietly log
    offline): the check says so at once, naming the server, and asks nothing."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # never contacted: there is no key to verify
    monkeypatch.setattr("sys.stdin", None)  # a prompt would fail the test rather than wait
    with pytest.raises(InputError, match=r"^W&B logs online here \(WANDB_MODE online\) but has no API key for http://127\.0\.0\.1:9: "
                                         r"run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline\.$"):
        ba.open_tracker("wandb")
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(InputError, match=r"^WANDB_MODE is 'ofline', which W&B does not know\. Available: online, offline, "):
        ba.open_tracker("wandb")
    assert not (offline / "wandb").exists()


def test_a_server_that_cannot_be_reached_is_refused_before_any_work_naming_it(monkeypatch, offline):
    """Online with a key, W&B's login read the key and never asked the server: one that cannot be reached was found
    only by wandb.init, after the scan. Port 9 refuses connections here (W&B gives up after about 10 s); no network."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    with pytest.raises(InputError, match=r"^W&B logs online here \(WANDB_MODE online\) but cannot log in to http://127\.0\.0\.1:9 "
                                         r"\(.+\): check WANDB_BASE_URL and the API key, or set WANDB_MODE=offline\.$"):
        ba.open_tracker("wandb")
    assert not (offline / "wandb").exists()


def test_mlflows_tracking_uri_is_refused_for_wandb_naming_where_wandb_reads_its_server(audit):
    with pytest.raises(InputError, match=r"^The 'tracking_uri' parameter of ba\.log is MLflow's; W&B reads its server from WANDB_BASE_URL\.$"):
        ba.log(audit, to="wandb", tracking_uri="http://localhost:5000")


def test_wandb_mode_disabled_is_refused_rather_than_reporting_a_run_folder_never_written(audit, monkeypatch, offline):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(InputError, match=r"^WANDB_MODE is 'disabled', under which W&B logs nothing: unset it, or set WANDB_MODE=offline\.$"):
        ba.open_tracker("wandb")


def test_an_active_run_refuses_a_project_or_run_name_it_would_ignore(audit, offline):
    with wandb.init(project="mine", name="training"):
        with pytest.raises(InputError, match=r"^The project 'other' was given, but a W&B run is active \(wandb\.run, project 'mine'\)"):
            ba.open_tracker("wandb", experiment="other")
        with pytest.raises(InputError, match=r"^The run name 'x' was given, but a W&B run is active"):
            ba.open_tracker("wandb", run_name="x")
