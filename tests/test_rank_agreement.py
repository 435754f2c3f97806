"""Ranks that must agree (issue 20, item 3): the processes of a torchrun scan must be started alike, and one that fails
must stop the others with a sentence, not a hang or a traceback.

torchrun's own agent prints a ChildFailedError traceback and exits 1 whenever a child fails, which hides each
process's exit code; so these tests start the two ranks themselves, as torchrun would (its environment variables, one
thread each), each with its own arguments, and a timeout turns a hang into a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from biasaudit.data.adapter import load_adapter
from biasaudit.scanning.agreement import _difference

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILE = ROOT / "examples" / "digits_captions_adapter.py"
SMALL = ["--conditions", "full,missing", "--bootstrap", "10", "--projection", "pca", "--batch-size", "64"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two state dicts of the demo model: seed 0 and seed 1 (two different models of one architecture)."""
    where = tmp_path_factory.mktemp("ckpt")
    adapter = load_adapter(f"{DEMO_FILE}:adapter")
    paths = {}
    for seed in (0, 1):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            paths[f"seed{seed}"] = where / f"model{seed}.pt"
            torch.save(adapter.build_model().state_dict(), paths[f"seed{seed}"])
    return paths


def scan_argv(checkpoint: Path, adapter: str, out: Path, *extra: str) -> list[str]:
    return ["-m", "biasaudit", "scan", str(checkpoint), "--adapter", adapter, *SMALL, "--out", str(out), *extra]


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join(result.stderr.split())


def assert_both_refuse(results: list[subprocess.CompletedProcess], sentence: str, out: Path) -> None:
    for rank, result in enumerate(results):
        assert result.returncode == 2, f"rank {rank}: {result.stderr[-3000:]}"
        assert sentence in said(result), f"rank {rank}: {result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"rank {rank}"
    assert not out.exists()


@pytest.mark.parametrize("differing", ["seed", "batch size", "checkpoint", "adapter"])
def test_ranks_started_differently_both_refuse_naming_the_difference_and_write_nothing(differing, checkpoints, tmp_path, gloo_ranks):
    """Ranks given another seed or batch size ended in tracebacks from every rank; ranks given other checkpoints merged,
    exit 0, into one audit of two models. Both must now exit 2 before any work, naming the setting that differs."""
    out = tmp_path / "out"
    model, other = checkpoints["seed0"], checkpoints["seed1"]
    # Each rank in its own directory: the adapter case gives both the same spec, adapter.py, with other contents in
    # rank 1's directory, as on two machines whose copies of the file differ.
    homes = [tmp_path / "rank0", tmp_path / "rank1"]
    for home in homes:
        home.mkdir()
        (home / "adapter.py").write_text(DEMO_FILE.read_text() + ("# edited on rank 1's machine only\n" if home == homes[1] and differing == "adapter" else ""))
    adapter = "adapter.py:adapter"
    argv = [scan_argv(model, adapter, out), {
        "seed": scan_argv(model, adapter, out, "--seed", "1"),
        "batch size": scan_argv(model, adapter, out, "--batch-size", "32"),
        "checkpoint": scan_argv(other, adapter, out),
        "adapter": scan_argv(model, adapter, out),
    }[differing]]
    sentence = {
        "seed": "Rank 1 of this torchrun was given --seed 1 but rank 0 --seed 0; every process must be started with the same arguments.",
        "batch size": "Rank 1 of this torchrun was given --batch-size 32 but rank 0 --batch-size 64; every process must be started with the same arguments.",
        "checkpoint": f"Rank 1 of this torchrun reads checkpoint {other} but rank 0 {model}, and the files' contents differ; every process must read the same files.",
        "adapter": "Rank 1 of this torchrun reads adapter adapter.py:adapter but rank 0 adapter.py:adapter, and the files' contents differ; every process must read the same files.",
    }[differing]
    assert_both_refuse(gloo_ranks.run(argv, cwd=homes), sentence, out)


FAILING_ADAPTER = """
import os
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter

class FailingOnRankOne(DigitsCaptionsAdapter):
    def data(self, split, *, batch_size):
        for ordinal, batch in enumerate(super().data(split, batch_size=batch_size)):
            if split == "test" and ordinal == 3 and os.environ["RANK"] == "1":
                {failure}
            yield batch

adapter = FailingOnRankOne()
"""


@pytest.mark.parametrize("failure, code, sentence", [
    ("raise RuntimeError('the data server went away')", 3,
     "Rank 1 of this process group failed with RuntimeError (the data server went away); that rank's traceback says where."),
    ("batch = {**batch, 'label': batch['label'] + 100}", 2, "Rank 1 of this process group stopped: "),
], ids=["adapter-bug", "bad-labels"])
def test_a_rank_failing_mid_scan_stops_the_other_with_one_sentence(failure, code, sentence, checkpoints, tmp_path, gloo_ranks):
    """A rank whose data fails after a few batches left the healthy rank with a gloo "connection closed" traceback (or
    waiting for it); now the healthy rank stops with one sentence naming the failed rank, and nothing is written."""
    (tmp_path / "failing.py").write_text(FAILING_ADAPTER.format(failure=failure))
    out = tmp_path / "out"
    argv = scan_argv(checkpoints["seed0"], str(tmp_path / "failing.py") + ":adapter", out)
    healthy, failed = gloo_ranks.run([argv, argv], cwd=[tmp_path, tmp_path])
    assert healthy.returncode == code, healthy.stderr[-3000:]
    assert sentence in said(healthy), healthy.stderr[-3000:]
    assert "Traceback" not in healthy.stderr
    assert failed.returncode == code, failed.stderr[-3000:]
    if code == 2:  # an input error: the failed rank's own sentence, which the healthy one repeats
        assert "Traceback" not in failed.stderr and "has label" in said(failed)
        assert said(failed).split("error: ", 1)[1] in said(healthy)
    assert not out.exists()


def test_shard_under_torchrun_is_refused_on_every_rank(checkpoints, tmp_path, gloo_ranks):
    """--shard under torchrun ended in tracebacks; every rank now refuses it alone, before joining the others."""
    out = tmp_path / "out"
    argv = [scan_argv(checkpoints["seed0"], f"{DEMO_FILE}:adapter", out, "--shard", f"{rank}/2") for rank in (0, 1)]
    assert_both_refuse(gloo_ranks.run(argv, cwd=[tmp_path, tmp_path]),
                       "--shard splits a scan into parts for a job array; under torchrun the processes already split it. Use one or the other.", out)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the /proc pseudo filesystem")
def test_out_on_a_pseudo_filesystem_under_torchrun_is_one_sentence_on_every_rank(checkpoints, tmp_path, gloo_ranks):
    """--out on /proc under torchrun ended in tracebacks; each rank now exits 2 with the sentence."""
    argv = scan_argv(checkpoints["seed0"], f"{DEMO_FILE}:adapter", Path("/proc/biasaudit-out"))
    for rank, result in enumerate(gloo_ranks.run([argv, argv], cwd=[tmp_path, tmp_path])):
        assert result.returncode == 2, f"rank {rank}: {result.stderr[-3000:]}"
        assert "--out /proc/biasaudit-out cannot be written" in said(result) and "Traceback" not in result.stderr


API_SCRIPT = """
import copy, os, sys, torch, torch.distributed as dist
import biasaudit as ba
from biasaudit.data.adapter import load_adapter
from biasaudit.errors import InputError
dist.init_process_group("gloo")
adapter = load_adapter(sys.argv[1])
torch.manual_seed(0)
model = adapter.build_model()
rank = int(os.environ["RANK"])
differing = {"seed": dict(seed=rank), "mute": dict(mute={"nope": "zero"} if rank else {}),
             "unimodal": dict(unimodal_models={"text": copy.deepcopy(model)} if rank else {})}[sys.argv[2]]
code = 0
try:
    ba.scan(model, adapter, distributed=True, **{**dict(conditions="full", batch_size=64, bootstrap=10, projection="pca"), **differing})
except InputError as exc:
    print(exc, flush=True)
    code = 2
finally:
    dist.destroy_process_group()  # leaving with gloo's threads alive can abort the interpreter at exit
sys.exit(code)
"""


@pytest.mark.parametrize("differing, sentences", [
    ("seed", ["Rank 1 of this process group was given seed=1 but rank 0 seed=0; every process must call scan with the same arguments."] * 2),
    # A mistake one rank alone makes, found before the ranks compare what they were given: it stops both, the other
    # rank with the sentence of the rank that made it (before, rank 0 met a gloo "connection closed" traceback).
    ("mute", ["Rank 1 of this process group stopped: The 'mute' parameter of ba.scan names modality 'nope'.",
              "The 'mute' parameter of ba.scan names modality 'nope'."]),
    # Another unimodal model on one rank would merge into one audit of two setups.
    ("unimodal", ["Rank 1 of this process group was given unimodal_models={'text': 'DemoModel'} but rank 0 "
                  "unimodal_models={}; every process must call scan with the same arguments."] * 2),
])
def test_ba_scan_called_differently_on_each_rank_raises_on_every_rank(differing, sentences, tmp_path, gloo_ranks):
    (tmp_path / "script.py").write_text(API_SCRIPT)
    argv = [str(tmp_path / "script.py"), f"{DEMO_FILE}:adapter", differing]
    for rank, result in enumerate(gloo_ranks.run([argv, argv], cwd=[tmp_path, tmp_path])):
        assert result.returncode == 2, f"rank {rank}: {result.stderr[-3000:]}"
        assert sentences[rank] in result.stdout, f"rank {rank}: {result.stdout[-2000:]}"
        assert "Traceback" not in result.stderr, f"rank {rank}"


def _fingerprint(seed: int = 0, torch_version: str = "2.4.0", sha: str = "a" * 64) -> dict:
    return {"setting": {"--seed": (f"--seed {seed}", seed)}, "file": {"checkpoint": (f"/models/{sha[0]}.pt", sha)},
            "version": {"torch": (f"torch {torch_version}", torch_version)}}


@pytest.mark.parametrize("ranks, sentence", [
    ([_fingerprint(), _fingerprint(), _fingerprint()], None),
    ([_fingerprint(), _fingerprint(1), _fingerprint(2)],
     "Ranks 1 and 2 of this torchrun were given --seed 1 and --seed 2 but rank 0 --seed 0; every process must be started with the same arguments."),
    ([_fingerprint(), _fingerprint(torch_version="2.3.0"), _fingerprint()],
     "Rank 1 of this torchrun runs torch 2.3.0 but rank 0 torch 2.4.0; every process must run the same library versions."),
    ([_fingerprint(torch_version="2.3.0"), _fingerprint(sha="b" * 64), _fingerprint(sha="b" * 64)],  # files before versions
     "Ranks 1 and 2 of this torchrun read checkpoint /models/b.pt but rank 0 /models/a.pt, and the files' contents differ; "
     "every process must read the same files."),
], ids=["alike", "several-ranks", "versions", "files-first"])
def test_the_first_difference_is_named_with_every_rank_that_has_it(ranks, sentence):
    """With more ranks than two the sentence must name each differing rank, not only the first."""
    assert _difference(ranks, group="this torchrun", remedy="be started with the same arguments") == sentence
