"""`torchrun --nproc-per-node 2 -m biasaudit fix`: the processes train data-parallel and audit with the sharded scan, rank 0
alone writes and reports, the fixed model is the one-process fix's (to 1e-5), and the written state refuses to be
resumed by another number of processes, with nothing overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = str(ROOT / "examples" / "digits_captions_adapter.py") + ":adapter"
# 989 training rows in batches of 99: unequal shares in the last batch (98 rows: 49/49) and none elsewhere would hide
# the share scaling, so 97 (shares 49/48) and a last batch of 19 (10/9).
ARGS = ["--adapter", ADAPTER, "--method", "balgrad", "--epochs", "2", "--batch-size", "97", "--conditions", "missing",
        "--split", "ood", "--also-split", "none", "--bootstrap", "20", "--scan-projection", "pca"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _fix(*args: str, cwd: Path, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "biasaudit", "fix", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)


def test_fix_under_torchrun_writes_the_one_process_fix_once_and_refuses_another_world_on_resume(tmp_path):
    checkpoint = tmp_path / "baseline.pt"
    torch.save(train_baseline(DigitsCaptionsAdapter(), seed=0, epochs=3).state_dict(), checkpoint)
    alone = _fix(str(checkpoint), *ARGS, "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two = _fix(str(checkpoint), *ARGS, "--out", str(tmp_path / "two"), cwd=tmp_path, processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("model.pt") == 1, "rank 0 alone reports the written files"

    one_model, two_model = (torch.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    for key, value in one_model.items():
        assert float((value.float() - two_model[key].float()).abs().max()) <= 1e-5, key
    after = json.loads((tmp_path / "two" / "after.json").read_text())
    assert after["manifest"]["shards"] == {"count": 2, "by": "torch.distributed"}
    assert json.loads((tmp_path / "two" / "train_log.json").read_text())["training"]["processes"] == 2
    before = [json.loads((tmp_path / d / "before.json").read_text()) for d in ("one", "two")]
    assert before[0]["summary"] == before[1]["summary"], "the sharded before-audit differs from one process's"

    written = (tmp_path / "two" / "model.pt").read_bytes()
    resumed = _fix(str(checkpoint), *ARGS, "--out", str(tmp_path / "two"), "--resume", cwd=tmp_path)
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    said = " ".join(resumed.stderr.split())
    assert "over 2 process(es), not 1" in said and "Traceback" not in resumed.stderr
    assert (tmp_path / "two" / "model.pt").read_bytes() == written


def test_a_leaderboard_under_torchrun_splits_its_runs_over_the_processes_and_rank_0_writes_it(tmp_path):
    checkpoint = tmp_path / "baseline.pt"
    torch.save(train_baseline(DigitsCaptionsAdapter(), seed=0, epochs=3).state_dict(), checkpoint)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "biasaudit", "leaderboard"]
    run = subprocess.run([sys.executable, *launcher, str(checkpoint), "--adapter", ADAPTER, "--methods", "groupdro",
                          "--seeds", "0", "--seeds", "1", "--split", "test", "--epochs", "1", "--bootstrap", "50",
                          "--grid", "groupdro=0.01", "--out", str(tmp_path / "board")],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert document["manifest"]["shards"] == 2, "the runs were not split over the two processes"
    records = sorted(p.name for p in (tmp_path / "board").glob("shard-*-of-2.json"))
    assert records == ["shard-0-of-2.json", "shard-1-of-2.json"]
    ran = {(json.loads(p.read_text())["shard"]["index"], r["method"], r["seed"])
           for p in (tmp_path / "board").glob("shard-*-of-2.json") for r in json.loads(p.read_text())["runs"]}
    assert {(m, s) for _, m, s in ran} == {("ce", 0), ("ce", 1), ("groupdro", 0), ("groupdro", 1)} and len(ran) == 4
    assert run.stdout.count("leaderboard.json") == 1, "rank 0 alone reports the leaderboard"
