"""biasaudit results in a real local MLflow store (issue 24): the demo-like audit logged with `ba.log` and read back with
MlflowClient (the documented keys with the audit's own figures, the params, the verdict tag, audit.json and audit.html
as artifacts); an active run used and left open; a fix's documents attached; the gate's rules as MetricThresholds that
MLflow's own validation judges as the gate did; and the tracker refused in one sentence before any work when it is not
installed or its store cannot be reached. No network: the store is a sqlite file in a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

import biasaudit as ba
from biasaudit.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
FAST = dict(bootstrap=50, projection="pca", gradient_batches=1, batch_size=32, min_wrong=1)


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> str:
    """A sqlite store of this test's own, in its folder (MLflow puts a run's artifacts in ./mlruns beside it); no MLflow
    setting of the machine leaks in."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def audit() -> ba.Audit:
    return ba.Audit.read(FIXTURES / "audit_example.json")


@pytest.fixture(scope="module")
def shortcut_audits():
    """The shortcut model (it follows bias_cue) and the content-only model, scanned alike, so that they pair."""
    spec = importlib.util.spec_from_file_location("shortcut_for_mlflow", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter = module.ShortcutAdapter()
    return ba.scan(module.ShortcutModel(), adapter, **FAST), ba.scan(module.ShortcutModel(reads_bias=False), adapter, **FAST)


def test_the_demo_audit_appears_in_a_local_store_with_the_documented_keys_and_files(audit, store, tmp_path):
    run = ba.log(audit, to="mlflow", tracking_uri=store, experiment="bias-audits", run_name="demo")
    client = MlflowClient(store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "demo"
    assert client.get_experiment(logged.info.experiment_id).name == "bias-audits" == client.get_experiment(run.experiment).name
    metrics, params, tags = logged.data.metrics, logged.data.params, logged.data.tags
    assert set(metrics) == set(run.metrics)
    assert metrics["biasaudit/full/accuracy"] == audit.summary.accuracy
    assert (metrics["biasaudit/full/accuracy_ci_low"], metrics["biasaudit/full/accuracy_ci_high"]) == audit.summary.accuracy_ci
    for condition in audit.conditions:
        name = condition.name.replace(":", "/")
        assert metrics[f"biasaudit/{name}/accuracy"] == condition.accuracy, condition.name
        assert metrics[f"biasaudit/{name}/flip_rate"] == condition.flip_rate, condition.name
    worst, follow = audit.bias.worst_group["full"], audit.bias.follow_rate["text"]
    assert (metrics["biasaudit/bias/worst_group/full"], metrics["biasaudit/bias/worst_group_ci_high/full"]) == (worst.value, worst.high)
    assert (metrics["biasaudit/bias/follow_rate/text"], metrics["biasaudit/bias/follow_rate_ci_low/text"],
            metrics["biasaudit/bias/follow_rate_ci_high/text"]) == (0.663, 0.603, 0.72)
    assert metrics["biasaudit/bias/bias_balanced/missing/text"] == audit.bias.bias_balanced["missing:text"].value
    assert metrics["biasaudit/reliance/gap/noisy"] == audit.summary.noisy.gap == 6.5
    assert params["biasaudit/seed"] == "0" and params["biasaudit/split"] == "ood" and params["biasaudit/config/bootstrap_replicates"] == "1000"
    assert params["biasaudit/adapter"] == "examples/digits_adapter.py:adapter"
    assert tags["biasaudit/verdict"] == audit.verdict.headline and tags["biasaudit/kind"] == "audit" and tags["biasaudit/carrier"] == "text"
    assert sorted(f.path for f in client.list_artifacts(run.run_id, "biasaudit")) == ["biasaudit/audit.html", "biasaudit/audit.json"]
    folder = Path(client.download_artifacts(run.run_id, "biasaudit", str(tmp_path / "back")))
    assert json.loads((folder / "audit.json").read_text()) == audit.to_dict()
    assert (folder / "audit.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_an_active_run_is_logged_into_and_left_open(audit, store, monkeypatch):
    """A user's own training run: biasaudit's keys join it, no second run appears, and the run stays the user's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with mlflow.start_run(run_name="training") as active:
        mlflow.log_metric("train/loss", 0.5)
        run = ba.log(audit, to="mlflow", files=[FIXTURES / "audit_example.json"])
        client = MlflowClient(store)
        assert run.run_id == active.info.run_id and client.get_run(run.run_id).info.status == "RUNNING"
        assert mlflow.active_run().info.run_id == active.info.run_id
    logged = client.get_run(active.info.run_id)
    assert logged.info.status == "FINISHED" and logged.data.metrics["train/loss"] == 0.5
    assert logged.data.metrics["biasaudit/full/accuracy"] == 31.2
    assert [f.path for f in client.list_artifacts(run.run_id, "biasaudit")] == ["biasaudit/audit_example.json"]
    assert len(client.search_runs([active.info.experiment_id])) == 1


def test_a_tracker_logs_several_results_into_one_run_and_keeps_the_first_params(audit, store, shortcut_audits):
    biased, content = shortcut_audits
    with ba.open_tracker("mlflow", tracking_uri=store) as tracker:
        first = tracker.log(audit, files=[])
        with pytest.warns(UserWarning, match=r"keeps its params .*biasaudit/split"):
            second = tracker.log(biased, files=[])
    logged = MlflowClient(store).get_run(first.run_id)
    assert first.run_id == second.run_id and logged.info.status == "FINISHED"
    assert logged.data.params["biasaudit/split"] == "ood"  # the first result's; MLflow never changes a param
    assert logged.data.metrics["biasaudit/bias/follow_rate/bias_cue"] == biased.bias.follow_rate["bias_cue"].value


def test_a_block_left_by_an_exception_ends_the_run_it_started_as_failed(audit, store):
    with pytest.raises(RuntimeError), ba.open_tracker("mlflow", tracking_uri=store) as tracker:
        run = tracker.log(audit, files=[])
        raise RuntimeError("the training after the scan crashed")
    assert MlflowClient(store).get_run(run.run_id).info.status == "FAILED"
    with pytest.raises(InputError, match="tracker is closed"):
        tracker.log(audit)


def test_the_gates_rules_as_metric_thresholds_judge_a_logged_run_as_the_gate_did(shortcut_audits, store):
    """Each rule, validated by MLflow's own API on the run of the comparison (whose plain keys are the current audit's
    and whose change keys are the baseline rules'), passes exactly when the gate's verdict on it does."""
    from biasaudit.integrations.tracking_mlflow import metric_thresholds

    biased, content = shortcut_audits
    rules = ba.GateRules(min_accuracy={"full": 90, "missing:content": 50}, min_worst_group={"full": 50}, max_gap={"noisy": 20},
                         max_gap_increase=2, max_worst_group_drop=1, max_bias_follow_increase=1)
    gate = ba.gate(content, rules=rules, baseline=biased)
    run = ba.log(ba.compare(biased, content), to="mlflow", tracking_uri=store)
    metrics = MlflowClient(store).get_run(run.run_id).data.metrics
    thresholds = metric_thresholds(gate)
    assert len(thresholds) == len(gate.rules) == 8  # max_gap_increase: missing and noisy

    def passes(selected: dict) -> bool:
        try:
            mlflow.validate_evaluation_results(selected, EvaluationResult(metrics=metrics, artifacts={}))
        except ModelValidationFailedException:
            return False
        return True

    from biasaudit.integrations.tracking_entries import gate_thresholds  # the same keys, in the rules' order

    verdicts = {key: rule.status for key, rule in zip(gate_thresholds(gate), gate.rules, strict=True)}
    assert {key: passes({key: thresholds[key]}) for key in thresholds} == {k: s in ("PASS", "WARN") for k, s in verdicts.items()}
    assert set(verdicts.values()) == {"PASS", "FAIL"}  # both answers are checked
    assert not passes(thresholds) and gate.status == "FAIL"


def test_significant_change_rules_limit_the_near_end_of_the_interval_in_mlflows_validation(store):
    """With significant, a worst-group drop past its limit whose interval reaches back within it is a WARN, which a
    gate passes: MLflow must judge the interval's upper end (_ci_high) as the gate does, not the value, nor the lower
    end a rise rule (max_gap_increase) uses. The shortcut model read through noisy content dropped the worst group
    from 20% to 10% against the content-only model, interval [-29.9, 0]."""
    from biasaudit.integrations.tracking_mlflow import metric_thresholds

    spec = importlib.util.spec_from_file_location("shortcut_noisy_for_mlflow", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter = module.NoisyContentAdapter()
    content, biased = (ba.scan(module.ShortcutModel(reads_bias=reads), adapter, **FAST) for reads in (False, True))
    run = ba.log(ba.compare(content, biased), to="mlflow", tracking_uri=store)
    metrics = MlflowClient(store).get_run(run.run_id).data.metrics

    def judged(significant: bool) -> tuple[dict, dict]:
        rules = ba.GateRules(max_worst_group_drop=5, max_gap_increase=20, significant=significant)
        gate = ba.gate(biased, rules=rules, baseline=content)
        thresholds = metric_thresholds(gate)
        verdicts = {rule.rule: rule.status for rule in gate.rules}
        passed = {}
        for rule, key in zip(verdicts, thresholds, strict=True):
            try:
                mlflow.validate_evaluation_results({key: thresholds[key]}, EvaluationResult(metrics=metrics, artifacts={}))
                passed[rule] = True
            except ModelValidationFailedException:
                passed[rule] = False
        return verdicts, passed

    verdicts, passed = judged(significant=True)
    assert verdicts["max_worst_group_drop[full]"] == "WARN" and set(verdicts.values()) <= {"PASS", "WARN"}
    assert metrics["biasaudit/change/bias/worst_group_ci_high/full"] > -5 > metrics["biasaudit/change/bias/worst_group/full"]
    assert passed == {rule: True for rule in verdicts}  # WARN and PASS pass, through _ci_high and _ci_low
    verdicts, passed = judged(significant=False)  # the same limit on the value itself fails, in both
    assert verdicts["max_worst_group_drop[full]"] == "FAIL" and passed["max_worst_group_drop[full]"] is False


def test_a_wrong_mlflow_experiment_id_is_refused_before_any_work_naming_it(audit, store, monkeypatch):
    """MLFLOW_EXPERIMENT_ID was read only when the run was created, after the work; a wrong one now stops at once."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "4242")
    with pytest.raises(InputError, match=r"^MLFLOW_EXPERIMENT_ID is '4242', which is no experiment in sqlite:///.+ \(.+\); "
                                         r"set it to an existing experiment's ID, or name the experiment instead\.$"):
        ba.open_tracker("mlflow", tracking_uri=store)
    run = ba.log(audit, to="mlflow", tracking_uri=store, experiment="named")  # a name wins over the ID, as in _run
    assert MlflowClient(store).get_experiment(run.experiment).name == "named"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")  # MLflow's Default: there
    assert ba.log(audit, to="mlflow", tracking_uri=store, files=[]).experiment == "0"


def test_a_fix_attaches_its_documents(store):
    spec = importlib.util.spec_from_file_location("shortcut_for_fix", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter = module.TrainableShortcutAdapter()
    result = ba.fix(adapter.build_model(), adapter, method="ce", epochs=1, bootstrap=50, projection="pca", scan_batch_size=32)
    run = ba.log(result, to="mlflow", tracking_uri=store)
    logged = MlflowClient(store).get_run(run.run_id)
    assert run.artifacts == ("before.json", "after.json", "after.html", "compare.json")
    assert logged.data.params["biasaudit/fix/method"] == "ce" and logged.data.tags["biasaudit/kind"] == "fix"
    assert logged.data.metrics["biasaudit/change/full/accuracy"] == result.comparison.accuracy.delta


def test_mlflow_not_installed_is_one_sentence_naming_the_extra_and_nothing_is_written(audit, monkeypatch, tmp_path, store):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as `import mlflow` fails where it is not installed
    with pytest.raises(InputError, match=r'^Logging to mlflow needs the mlflow package, which is not installed: pip install "biasaudit\[mlflow\]"\.$'):
        ba.log(audit, to="mlflow", tracking_uri=store)
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_cannot_be_reached_is_refused_at_once_naming_it(audit, monkeypatch, tmp_path):
    """Port 9 (discard) refuses connections on this machine: no network is used, and no retry is waited for."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"^The MLflow tracking URI http://127\.0\.0\.1:9 cannot be reached \(.+\)\.$"):
        ba.open_tracker("mlflow", tracking_uri="http://127.0.0.1:9")
    assert time.monotonic() - started < 20
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")  # MLflow 3 refuses a folder store by default
    with pytest.raises(InputError, match=r"^The MLflow tracking URI file://.+ \(from MLFLOW_TRACKING_URI\) is a file store, "
                                         r"which MLflow 3 no longer supports: use a database such as sqlite:///PATH/mlflow\.db "
                                         r"\(or set MLFLOW_ALLOW_FILE_STORE=true\)\.$"):
        ba.log(audit, to="mlflow")
    assert not (tmp_path / "mlruns").exists()


def test_a_file_path_or_an_unknown_scheme_as_the_uri_says_so_in_one_sentence(audit, tmp_path):
    """A path (a file or a folder) got MLflow's page about its file store's maintenance mode, cut off; a mistyped
    scheme got the model registry's complaint."""
    (tmp_path / "notadb.txt").write_text("x")
    for uri in (str(tmp_path / "notadb.txt"), str(tmp_path)):
        with pytest.raises(InputError, match=r"is a file store, which MLflow 3 no longer supports: use a database such as sqlite:///"):
            ba.open_tracker("mlflow", tracking_uri=uri)
    with pytest.raises(InputError, match=r"^The MLflow tracking URI sqlit:/bad has the scheme 'sqlit', which MLflow does not know: "):
        ba.open_tracker("mlflow", tracking_uri="sqlit:/bad")


def test_a_wrong_mlflow_run_id_is_refused_naming_it_not_the_store(audit, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "deadbeef")
    with pytest.raises(InputError, match=r"^MLFLOW_RUN_ID is 'deadbeef', which is no run in sqlite:///.+; set it to an existing run's ID"):
        ba.open_tracker("mlflow", tracking_uri=store)


def test_an_existing_run_refuses_an_experiment_or_run_name_it_would_ignore(audit, store, monkeypatch):
    """MLFLOW_RUN_ID's run (or the active one) took the result and kept its experiment and name, silently."""
    first = ba.log(audit, to="mlflow", tracking_uri=store, experiment="kept", run_name="old", files=[])
    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    with pytest.raises(InputError, match=r"^The experiment 'other' was given, but MLFLOW_RUN_ID is '\w+', a run of experiment 'kept'"):
        ba.open_tracker("mlflow", tracking_uri=store, experiment="other")
    with pytest.raises(InputError, match=r"^The run name 'new' was given, but MLFLOW_RUN_ID is '\w+', a run named 'old'"):
        ba.open_tracker("mlflow", tracking_uri=store, run_name="new")
    again = ba.log(audit, to="mlflow", tracking_uri=store, experiment="kept", run_name="old", files=[])  # the same: fine
    assert again.run_id == first.run_id
    monkeypatch.delenv("MLFLOW_RUN_ID")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with mlflow.start_run(run_name="training"), pytest.raises(InputError, match=r"^The run name 'x' was given, but an MLflow run is active"):
        ba.open_tracker("mlflow", run_name="x")


def test_the_param_warning_points_at_the_users_line(audit, store, shortcut_audits):
    with ba.open_tracker("mlflow", tracking_uri=store) as tracker:
        tracker.log(audit, files=[])
        with pytest.warns(UserWarning, match="keeps its params") as caught:
            tracker.log(shortcut_audits[0], files=[])
    assert caught[0].filename == __file__


def test_an_active_run_in_another_store_than_the_one_named_is_refused(audit, store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with mlflow.start_run(), pytest.raises(InputError, match=r"An MLflow run is active .* the tracking URI given is another store"):
        ba.log(audit, to="mlflow", tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")


def test_a_token_in_the_tracking_uri_never_reaches_a_message():
    """CI logs keep every error: a store's credentials written into its URI must not be among them."""
    with pytest.raises(InputError) as raised:
        ba.open_tracker("mlflow", tracking_uri="http://ci-bot:s3cret-token@127.0.0.1:9")
    assert "s3cret" not in str(raised.value) and "http://***@127.0.0.1:9 cannot be reached" in str(raised.value)
