"""`--log mlflow|wandb` through the real console script (issue 24): a scan and a comparison land in a local MLflow
store with the files they wrote, a failing gate's verdict in an offline W&B run set up from the settings file; and
the mistakes a pipeline makes (the tracker not installed, a store that cannot be reached, a tracker option without
--log, an unknown tracker, --log with --shard) exit 2 in one sentence before any scan, with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
SCRIPT = Path(sys.executable).parent / "biasaudit"
sys.path.insert(0, str(Path(__file__).parent))
from wandb_records import only_run  # noqa: E402

sys.path.pop(0)
FAST = ["--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1", "--batch-size", "32", "--min-wrong", "1"]


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    """The machine's environment without any tracker setting, W&B offline under `tmp`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp), WANDB_DATA_DIR=str(tmp / "wandb-data"),
               WANDB_CACHE_DIR=str(tmp / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"), **extra)
    return env


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, python: str | None = None) -> subprocess.CompletedProcess:
    """The console script; with `python`, that code runs first in the same process (to make an import fail)."""
    command = [str(SCRIPT), *args] if python is None else [
        sys.executable, "-c", f"{python}; import sys; from biasaudit.cli import main; sys.argv = ['biasaudit', *sys.argv[1:]]; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env or environment(cwd), timeout=300)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(FIXTURES))
    try:
        import shortcut_adapter
    finally:
        sys.path.pop(0)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save(shortcut_adapter.ShortcutModel().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def scanned(checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """`biasaudit scan --log mlflow` into a sqlite store, run from its own folder (MLflow's artifacts go to ./mlruns)."""
    folder = tmp_path_factory.mktemp("scan")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", "out", *FAST, "--log", "mlflow", "--tracking-uri", store,
                 "--experiment", "nightly", "--run-name", "shortcut", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["out/audit.json", "out/audit.html"]  # stdout stays the files; the run is said on stderr
    assert "logged to mlflow: run " in result.stderr
    return folder, store


def test_a_scan_lands_in_the_store_with_the_files_it_wrote(scanned):
    folder, store = scanned
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("nightly")
    (logged,) = client.search_runs([experiment.experiment_id])
    audit = json.loads((folder / "out" / "audit.json").read_text())
    assert logged.info.run_name == "shortcut" and logged.info.status == "FINISHED"
    assert logged.data.metrics["biasaudit/full/accuracy"] == audit["summary"]["full"]["accuracy"]
    assert logged.data.metrics["biasaudit/bias/follow_rate/bias_cue"] == audit["carrier"]["modalities"]["bias_cue"]["bias_swap"]["excess_follow_rate"]
    assert logged.data.tags["biasaudit/verdict"] == audit["verdict"]["headline"] and logged.data.tags["biasaudit/carrier"] == "bias_cue"
    assert logged.data.params["biasaudit/config/bootstrap_replicates"] == "50"
    back = Path(client.download_artifacts(logged.info.run_id, "biasaudit", str(folder / "back")))
    for name in ("audit.json", "audit.html"):
        assert (back / name).read_bytes() == (folder / "out" / name).read_bytes(), name


def test_a_comparison_lands_in_the_store_with_its_changes(scanned):
    folder, store = scanned
    result = run("compare", "out/audit.json", "out/audit.json", "--out", "compare", "--log", "mlflow", "--tracking-uri", store,
                 "--experiment", "nightly", cwd=folder)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("nightly").experiment_id], filter_string="tags.`biasaudit/kind` = 'compare'")
    assert len(runs) == 1 and runs[0].data.metrics["biasaudit/change/full/accuracy"] == 0.0
    assert sorted(f.path for f in client.list_artifacts(runs[0].info.run_id, "biasaudit")) == ["biasaudit/compare.html", "biasaudit/compare.json"]


def test_a_failing_gate_logs_its_verdict_to_the_wandb_run_its_settings_file_names(scanned, tmp_path):
    """A pipeline's biasaudit.toml sets the tracker once; the gate still exits 1, and its run is a finished one."""
    folder, _ = scanned
    (tmp_path / "biasaudit.toml").write_text('[gate]\nlog = "wandb"\nexperiment = "ci"\nmin_accuracy = {full = 90}\n')
    result = run("gate", str(folder / "out" / "audit.json"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "logged to wandb: run " in result.stderr
    logged = only_run(tmp_path)
    assert logged.run.project == "ci" and logged.exit_code == 0
    assert logged.history["biasaudit/gate/min_accuracy/full/passed"] == 0.0
    assert logged.history["biasaudit/gate/min_accuracy/full/minimum"] == 90.0
    assert logged.summary["biasaudit/gate/status"] == "FAIL"
    assert logged.media("table", "rules").is_file()


def test_a_tracker_not_installed_exits_2_naming_the_extra_before_the_scan(checkpoint, tmp_path):
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", "out", *FAST, "--log", "mlflow",
                 cwd=tmp_path, python="import sys; sys.modules['mlflow'] = None")
    assert result.returncode == 2
    assert one_line(result) == 'error: Logging to mlflow needs the mlflow package, which is not installed: pip install "biasaudit[mlflow]".'
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_cannot_be_reached_exits_2_naming_it_before_the_scan(checkpoint, tmp_path):
    """The scan never started: no output folder; nor was anything written for MLflow."""
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", "out", *FAST, "--log", "mlflow",
                 cwd=tmp_path, env=environment(tmp_path, MLFLOW_TRACKING_URI="http://127.0.0.1:9"))
    assert result.returncode == 2
    assert one_line(result).startswith("error: The MLflow tracking URI http://127.0.0.1:9 (from MLFLOW_TRACKING_URI) cannot be reached (")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arguments, settings, message", [
    (["--experiment", "nightly"], None, "error: --experiment says where --log writes; give --log mlflow or --log wandb too."),
    (["--log", "neptune"], None, "error: --log is 'neptune', which is no tracker. Available: mlflow, wandb."),
    ([], '[gate]\nlog = "neptune"\n', "error: {toml} [gate] log is 'neptune', which is no tracker. Available: mlflow, wandb."),
    (["--log", "wandb", "--tracking-uri", "http://localhost:5000"], None,
     "error: --tracking-uri is MLflow's; W&B reads its server from WANDB_BASE_URL."),
])
def test_a_tracker_option_mistake_exits_2_in_one_sentence_naming_it(arguments, settings, message, tmp_path):
    if settings is not None:
        (tmp_path / "biasaudit.toml").write_text(settings)
    result = run("gate", str(FIXTURES / "audit_example.json"), "--min-accuracy", "full=20", *arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == message.format(toml=tmp_path / "biasaudit.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["biasaudit.toml"] if settings else [])


def test_a_settings_files_tracker_options_wait_for_log_and_log_nothing_without_it(tmp_path):
    """A pipeline's file names its experiment once; only the runs that add --log are logged."""
    (tmp_path / "biasaudit.toml").write_text('[gate]\nexperiment = "ci"\ntracking_uri = "sqlite:///mlflow.db"\n')
    result = run("gate", str(FIXTURES / "audit_example.json"), "--min-accuracy", "full=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "logged to" not in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["biasaudit.toml"]


def test_log_with_shard_is_refused_since_a_shard_writes_no_audit(checkpoint, tmp_path):
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", "out", "--shard", "0/2", "--log", "mlflow", cwd=tmp_path)
    assert result.returncode == 2 and "--shard writes only a part of an audit" in one_line(result)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_adapter_with_log_exits_2_before_the_tracker_writes_its_store(checkpoint, tmp_path):
    """MLflow's default store is ./mlflow.db: checked before the adapter, a typo in --adapter left that file behind."""
    result = run("scan", str(checkpoint), "--adapter", "typo.py:adapter", "--out", "out", "--log", "mlflow", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith("error: Adapter file typo.py ")
    assert list(tmp_path.iterdir()) == []


def test_a_tracker_failing_after_the_gate_warns_and_keeps_the_verdict_its_outputs_and_exit_code(tmp_path):
    """A server gone between the check and the log: the failing gate still exits 1 with its JSON, job summary and
    annotations, and says in one warning that the verdict was not logged and how to log it."""
    summary = tmp_path / "summary.md"
    env = environment(tmp_path, GITHUB_STEP_SUMMARY=str(summary), GITHUB_ACTIONS="true")
    gone = ("import biasaudit.integrations.tracking_mlflow as m; m.MlflowBackend.check = lambda self: None; "
            "m.MlflowBackend.log = lambda self, entry, files: (_ for _ in ()).throw(ConnectionError('the server went away'))")
    result = run("gate", str(FIXTURES / "audit_example.json"), "--min-accuracy", "full=90", "--json", "--log", "mlflow",
                 cwd=tmp_path, env=env, python=gone)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["status"] == "FAIL"
    assert "min_accuracy[full]" in summary.read_text()
    assert "::error title=biasaudit gate: min_accuracy[full] FAIL::" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the result was not logged to mlflow (the server went away); it is written: log it with "
                        "ba.log(ba.GateResult.from_dict(<the JSON above>), to='mlflow')."]
    assert "Traceback" not in result.stderr and "error:" not in result.stderr


def test_under_torchrun_only_rank_0_opens_the_tracker_and_its_refusal_stops_both(checkpoint, tmp_path, gloo_ranks, monkeypatch):
    """Every rank opened the tracker before joining the others: N processes creating MLflow's default store
    (./mlflow.db) at once, and a rank that failed left the others waiting. Now rank 0 alone opens it, and its refusal
    (here a store that cannot be reached) stops rank 1 too, with rank 0's sentence rather than a check of its own."""
    for name in [name for name in os.environ if name.startswith(("MLFLOW_", "WANDB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    out = tmp_path / "out"
    argv = ["-m", "biasaudit", "scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *FAST, "--log", "mlflow"]
    rank0, rank1 = gloo_ranks.run([argv, argv], cwd=[tmp_path, tmp_path], timeout=90)
    sentence = "The MLflow tracking URI http://127.0.0.1:9 (from MLFLOW_TRACKING_URI) cannot be reached ("
    assert rank0.returncode == 2 and one_line(rank0).startswith(f"error: {sentence}"), rank0.stderr[-3000:]
    assert rank1.returncode == 2 and one_line(rank1).startswith(f"error: Rank 0 of this torchrun stopped: {sentence}"), rank1.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def other_split(folder: Path) -> Path:
    """The example audit as if scanned on another split (manifest and dataset say val), for the refusals of two audits."""
    document = json.loads((FIXTURES / "audit_example.json").read_text())
    document["manifest"]["config"]["split"] = document["dataset"]["split"] = "val"
    path = folder / "val-audit.json"
    path.write_text(json.dumps(document))
    return path


AUDIT = str(FIXTURES / "audit_example.json")


@pytest.mark.parametrize("arguments, message", [
    (["gate", AUDIT], "error: No gate rule was given; "),
    (["gate", AUDIT, "--max-gap-increase", "2"], "error: --max-gap-increase compares against a stored audit; "),
    (["gate", AUDIT, "--min-worst-group", "bogus=10"], "error: --min-worst-group names condition 'bogus', "),
    (["gate", AUDIT, "--baseline", "{other}", "--max-gap-increase", "2"], "error: {other} vs {audit}: The two audits differ in split;"),
    (["compare", "{other}", AUDIT], "error: {other} vs {audit}: The two audits differ in split;"),
    (["gate", AUDIT, "--min-accuracy", "full=20", "--summary-md="], "error: --summary-md is empty; name the file to write, "),
])
def test_a_gate_or_compare_mistake_with_log_exits_2_before_mlflow_creates_its_default_store(arguments, message, tmp_path):
    """The tracker was opened before the gate's and compare's own checks: the right sentence, but MLflow's default
    store (./mlflow.db, 1 MB) was left in the working directory."""
    folder = tmp_path / "work"
    folder.mkdir()
    other = other_split(tmp_path)
    result = run(*[a.format(other=other) for a in arguments], "--log", "mlflow", cwd=folder)
    assert result.returncode == 2, result.stderr
    assert one_line(result).startswith(message.format(other=other, audit=AUDIT))
    assert list(folder.iterdir()) == []


def test_a_compare_out_that_is_a_file_exits_2_before_mlflow_creates_its_default_store(tmp_path):
    """compare checked --out only when writing, after the tracker had made ./mlflow.db in the working directory."""
    folder, taken = tmp_path / "work", tmp_path / "taken"
    folder.mkdir()
    taken.write_text("a file, not a directory")
    result = run("compare", AUDIT, AUDIT, "--out", str(taken), "--log", "mlflow", cwd=folder)
    assert result.returncode == 2, result.stderr
    assert one_line(result) == f"error: --out {taken} exists and is not a directory; expected a directory for the output files."
    assert list(folder.iterdir()) == [] and taken.read_text() == "a file, not a directory"


def test_a_settings_files_log_refused_by_shard_is_named_as_the_file_and_log_none_switches_it_off(checkpoint, tmp_path):
    """A pipeline's biasaudit.toml logs its scans: a --shard of it was refused blaming a --log the user never gave,
    and there was no way to switch the file's log off for one run."""
    (tmp_path / "biasaudit.toml").write_text('[scan]\nlog = "mlflow"\n')
    shard = ["scan", str(checkpoint), "--adapter", SHORTCUT, "--out", "out", *FAST, "--shard", "0/2"]
    refused = run(*shard, cwd=tmp_path)
    assert refused.returncode == 2
    assert one_line(refused) == (f"error: {tmp_path / 'biasaudit.toml'} [scan] log = 'mlflow' logs a result, and --shard writes "
                                 "only a part of an audit; give --log none for this run, and log the finished result from "
                                 "Python with ba.log.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biasaudit.toml"]
    switched_off = run(*shard, "--log", "none", cwd=tmp_path)
    assert switched_off.returncode == 0, switched_off.stderr
    assert switched_off.stdout.split() == ["out/scan-part-0-of-2.pt"] and "logged to" not in switched_off.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biasaudit.toml", "out"]


@pytest.mark.parametrize("command", ["scan", "fix", "compare", "gate", "leaderboard"])
def test_every_commands_help_shows_each_tracker_option_with_its_help(command, tmp_path):
    """gate's --help listed --log, --experiment, --run-name and --tracking-uri bare: no choices, no help text."""
    import typing

    from biasaudit.cli import tracker_options

    env = {**environment(tmp_path), "COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}
    result = run(command, "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())  # the help column's wrapped lines, joined
    assert "mlflow|wandb|none" in text
    options = {"--log": tracker_options.Log, "--experiment": tracker_options.Experiment, "--run-name": tracker_options.RunName,
               "--tracking-uri": tracker_options.TrackingUri}
    for flag, option in options.items():
        opening = " ".join(typing.get_args(option)[1].help.split()[:6])  # its help, as the module gives it
        assert f" {flag} " in text and opening in text, (flag, opening)
