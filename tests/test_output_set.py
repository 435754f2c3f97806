"""A run's files are one consistent set (issue 11, class 5): staged and moved into place together, the directory
locked while a run writes it, every file stamped with its run. A kill -9 between two files, or a second run into
the same directory, must never leave a set on which the gate passes; Ctrl-C must leave what it says it leaves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from biasaudit.cli import app
from biasaudit.errors import InputError
from biasaudit._core.output_set import LOCK_NAME, MOVING_MARKER, OutputSet

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:TrainableShortcutAdapter"
FAST = ("--projection", "pca", "--bootstrap", "50")
FIX_FAST = ("--method", "ce", "--epochs", "1", "--scan-projection", "pca", "--bootstrap", "50")
FIX_FILES = {"model.pt", "before.json", "after.json", "compare.json", "train_log.json", "after.html", "compare.html"}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(directory.rglob("*"))}


def run_id_of_html(path: Path) -> str:
    import re

    return re.search(r'name="biasaudit-run" content="(\w+)"', path.read_text()).group(1)


@pytest.fixture(scope="module")
def checkpoint(shortcut_checkpoint) -> Path:
    return shortcut_checkpoint


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, checkpoint) -> dict[str, Path]:
    """Directories of earlier results, written by real runs."""
    root = tmp_path_factory.mktemp("earlier")
    result = run("scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--out", root / "scan")
    assert result.exit_code == 0, result.output
    result = run("fix", checkpoint, "--adapter", SHORTCUT, *FIX_FAST, "--out", root / "fix")
    assert result.exit_code == 0, result.output
    return {"scan": root / "scan", "fix": root / "fix"}


def used(earlier: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    target = tmp_path / kind
    shutil.copytree(earlier[kind], target)
    return target


def test_every_file_of_a_scan_and_a_fix_carries_the_same_run_and_nothing_else_is_left(earlier):
    scan_json = json.loads((earlier["scan"] / "audit.json").read_text())
    run_id = scan_json["manifest"]["run"]["id"]
    assert run_id_of_html(earlier["scan"] / "audit.html") == run_id
    assert sorted(p.name for p in earlier["scan"].iterdir()) == ["audit.html", "audit.json"], "no lock, staging or marker left"

    fix = earlier["fix"]
    stamp = json.loads((fix / "after.json").read_text())["manifest"]["run"]
    assert set(stamp["files"]) == FIX_FILES
    for name in ("before.json", "after.json"):
        assert json.loads((fix / name).read_text())["manifest"]["run"]["id"] == stamp["id"]
    for name in ("compare.json", "train_log.json"):
        assert json.loads((fix / name).read_text())["run"]["id"] == stamp["id"]
    for name in ("after.html", "compare.html"):
        assert run_id_of_html(fix / name) == stamp["id"]
    from biasaudit._core.files import file_sha256

    assert stamp["sha256"]["model.pt"] == file_sha256(fix / "model.pt")
    assert {p.name for p in fix.iterdir()} == FIX_FILES | {"state"}


def test_a_new_html_beside_an_old_json_is_refused_by_gate_report_and_compare(earlier, checkpoint, tmp_path):
    directory = used(earlier, "scan", tmp_path)
    old_html = (directory / "audit.html").read_bytes()
    assert run("scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--seed", "1", "--out", directory).exit_code == 0
    (directory / "audit.html").write_bytes(old_html)  # what a kill between the two files used to leave
    for args in (["gate", directory / "audit.json", "--max-gap", "90"], ["report", directory / "audit.json", "--out", tmp_path / "r.html"],
                 ["compare", directory / "audit.json", directory / "audit.json", "--out", tmp_path / "cmp"]):
        result = run(*args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "were written by different runs" in result.output and "mixed set" in result.output


def test_a_new_model_beside_an_earlier_runs_after_json_is_refused(earlier, tmp_path):
    directory = used(earlier, "fix", tmp_path)
    state = torch.load(directory / "model.pt")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, directory / "model.pt")
    result = run("gate", directory / "after.json", "--max-gap", "90")
    assert result.exit_code == 2 and "model.pt were written by different runs" in result.output, result.output


def test_an_audit_copied_elsewhere_or_renamed_is_judged_alone(earlier, tmp_path):
    shutil.copy(earlier["scan"] / "audit.json", tmp_path / "audit.json")  # without its HTML
    shutil.copy(earlier["fix"] / "after.json", tmp_path / "baseline.json")
    (tmp_path / "audit.html").write_text("<html>someone else's page</html>")  # not a member: baseline.json is not its name
    assert run("gate", tmp_path / "baseline.json", "--max-gap", "90").exit_code == 0
    (tmp_path / "audit.html").unlink()
    assert run("gate", tmp_path / "audit.json", "--max-gap", "90").exit_code == 0


KILLER = """
import os, signal, sys
from pathlib import Path
real_replace = os.replace
moves = 0

def replace(src, dst, *args, **kwargs):
    global moves
    real_replace(src, dst, *args, **kwargs)
    # a commit's move: from the staging directory into the output directory (not an atomic write inside staging)
    if Path(src).parent.name.startswith(".staging-") and Path(dst).parent != Path(src).parent:
        moves += 1
        if moves == int(os.environ["KILL_AFTER_MOVES"]):
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from biasaudit.cli import app
app(sys.argv[1:])
"""


def killed(after_moves: int, *args) -> subprocess.CompletedProcess:
    """The command in a real process that sends itself SIGKILL right after its n-th file was moved into place."""
    env = {**os.environ, "KILL_AFTER_MOVES": str(after_moves)}
    return subprocess.run([sys.executable, "-c", KILLER, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_kill_9_between_the_two_files_of_a_scan_leaves_a_set_the_gate_refuses(earlier, checkpoint, tmp_path):
    directory = used(earlier, "scan", tmp_path)
    done = killed(1, "scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--seed", "1", "--out", directory)
    assert done.returncode == -signal.SIGKILL, done.stderr
    result = run("gate", directory / "audit.json", "--max-gap", "90")
    assert result.exit_code == 2 and "incomplete set of results" in result.output, result.output
    # Without the marker (say it was deleted by hand), the run stamps alone still tell the two files apart.
    (directory / MOVING_MARKER).unlink()
    result = run("gate", directory / "audit.json", "--max-gap", "90")
    assert result.exit_code == 2 and "mixed set" in result.output, result.output
    # The next run into the directory cleans up what the killed one left, and its set is whole again.
    assert run("scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--out", directory).exit_code == 0
    assert sorted(p.name for p in directory.iterdir()) == ["audit.html", "audit.json"]
    assert run("gate", directory / "audit.json", "--max-gap", "90").exit_code == 0


@pytest.mark.parametrize("after_moves", [2, 6])
def test_kill_9_while_fix_moves_its_files_leaves_a_set_the_gate_refuses(earlier, checkpoint, tmp_path, after_moves):
    directory = used(earlier, "fix", tmp_path)
    done = killed(after_moves, "fix", checkpoint, "--adapter", SHORTCUT, *FIX_FAST, "--seed", "1", "--out", directory)
    assert done.returncode == -signal.SIGKILL, done.stderr
    for name in ("after.json", "before.json"):
        result = run("gate", directory / name, "--max-gap", "90")
        assert result.exit_code == 2 and "incomplete set of results" in result.output, result.output
    (directory / MOVING_MARKER).unlink()
    result = run("gate", directory / "after.json", "--max-gap", "90")
    assert result.exit_code == 2 and "mixed set" in result.output, result.output


def test_kill_9_of_a_fix_while_it_trains_leaves_the_earlier_set_whole(earlier, checkpoint, tmp_path):
    import time

    directory = used(earlier, "fix", tmp_path)
    results = {name: (directory / name).read_bytes() for name in FIX_FILES}
    state = directory / "state" / "last.pt"
    saved = state.stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, "-c", KILLER, "fix", str(checkpoint), "--adapter", SHORTCUT, *FIX_FAST[:2], "--epochs", "50",
                             *FIX_FAST[4:], "--seed", "2", "--out", str(directory)], env={**os.environ, "KILL_AFTER_MOVES": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and state.stat().st_mtime_ns == saved:
        time.sleep(0.05)  # until the new run has saved the state of its first epoch
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed while training"
    assert {name: (directory / name).read_bytes() for name in FIX_FILES} == results
    assert run("gate", directory / "after.json", "--max-gap", "90").exit_code == 0
    assert run("fix", checkpoint, "--adapter", SHORTCUT, *FIX_FAST[:2], "--epochs", "50", *FIX_FAST[4:], "--seed", "2", "--resume",
               "--out", directory).exit_code == 0, "the killed run resumes"
    assert not any(p.name.startswith(".staging-") for p in directory.iterdir())


def test_a_second_run_into_a_directory_being_written_is_refused_at_once(earlier, checkpoint, tmp_path):
    directory = used(earlier, "scan", tmp_path)
    with OutputSet(directory, files=("audit.json", "audit.html")):
        held = snapshot(directory)
        for args in (["scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--out", directory],
                     ["fix", checkpoint, "--adapter", SHORTCUT, *FIX_FAST, "--out", directory]):
            result = run(*args)
            assert result.exit_code == 2, result.output
            assert "is being written by another biasaudit run right now" in result.output
            assert snapshot(directory) == held
    assert not (directory / LOCK_NAME).exists(), "the run that created the lock file removes it"
    with pytest.raises(InputError, match="being written by another biasaudit run"):
        with OutputSet(directory, files=("x",)), OutputSet(directory, files=("y",)):
            pass


def test_a_failed_run_into_a_fresh_directory_leaves_no_directory(checkpoint, tmp_path):
    target = tmp_path / "a" / "b"
    result = run("scan", checkpoint, "--adapter", f"{FIXTURES / 'broken_adapters.py'}:returns_nan", *FAST, "--out", target)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "a").exists()


def test_ctrl_c_while_a_scan_moves_its_files_waits_until_both_are_in_place(earlier, checkpoint, tmp_path, monkeypatch):
    directory = used(earlier, "scan", tmp_path)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if Path(src).parent.name.startswith(".staging-") and Path(dst).parent != Path(src).parent:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the first file moved

    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(app, [str(a) for a in ("scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--seed", "1", "--out", directory)])
    monkeypatch.undo()
    assert result.exit_code == 130, result.output
    assert "interrupted after the results were written." in result.output
    audit = json.loads((directory / "audit.json").read_text())
    assert audit["manifest"]["seed"] == 1 and run_id_of_html(directory / "audit.html") == audit["manifest"]["run"]["id"]
    assert run("gate", directory / "audit.json", "--max-gap", "90").exit_code == 0


def test_ctrl_c_during_a_scan_writes_nothing_and_says_so(earlier, checkpoint, tmp_path, monkeypatch):
    import biasaudit.scanning.audit

    directory = used(earlier, "scan", tmp_path)
    kept = snapshot(directory)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(biasaudit.scanning.audit, "audit_model", interrupted)
    for target in (directory, tmp_path / "fresh"):
        result = run("scan", checkpoint, "--adapter", SHORTCUT, *FAST, "--out", target)
        assert result.exit_code == 130 and "interrupted; nothing was written." in result.output, result.output
    assert snapshot(directory) == kept
    assert not (tmp_path / "fresh").exists()


def test_ctrl_c_during_fix_training_says_the_state_is_kept_and_writes_no_results(earlier, checkpoint, tmp_path, monkeypatch):
    import biasaudit.training.fix

    directory = used(earlier, "fix", tmp_path)
    results = {name: (directory / name).read_bytes() for name in FIX_FILES}
    real_train = biasaudit.training.fix.train

    def stopped(*args, progress=None, **kwargs):
        def at_step(stage, done, total, status=None):
            if stage == "train" and done == 3:
                raise KeyboardInterrupt
        return real_train(*args, progress=at_step, **kwargs)

    monkeypatch.setattr(biasaudit.training.fix, "train", stopped)
    result = run("fix", checkpoint, "--adapter", SHORTCUT, *FIX_FAST[:2], "--epochs", "3", *FIX_FAST[4:], "--seed", "1", "--out", directory)
    assert result.exit_code == 130, result.output
    assert f"no results were written to {directory}; the training state {directory / 'state' / 'last.pt'} is kept" in " ".join(result.output.split())
    assert {name: (directory / name).read_bytes() for name in FIX_FILES} == results


@pytest.mark.parametrize("command", ["scan", "fix"])
def test_sigterm_cleans_up_and_says_so_as_ctrl_c_does(command, checkpoint, tmp_path):
    """CI time-outs, Slurm and `timeout` stop a run with SIGTERM; a `fix --scale auto` ended that way left the directory
    it had created holding only its lock file. It must leave what Ctrl-C leaves: nothing, and one sentence, exit 130."""
    import time

    out = tmp_path / "fresh"
    slow = ["--bootstrap", "50", "--projection", "pca", "--draws", "400"] if command == "scan" else \
        ["--method", "ce", "--epochs", "2000", "--bootstrap", "50", "--scan-projection", "pca"]  # (this adapter has no classifier: no mmdb)
    process = subprocess.Popen([sys.executable, "-m", "biasaudit", command, str(checkpoint), "--adapter", SHORTCUT, *slow, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # into the work, past the checks
    assert process.poll() is None, "the run ended before it could be stopped; make it slower"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; " in stderr and "Traceback" not in stderr
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
