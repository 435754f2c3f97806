"""Sharded scans (issue 12, part 3): a scan split over processes must give the single-process audit to the last
digit, whether the processes share a torch.distributed group (torchrun) or run apart as a job array whose parts
`biasaudit merge` joins; and every way of merging the wrong parts must be refused naming them.

Equality is of everything but the manifest (wall time, run id, `manifest.shards`). Torch's CPU kernels may round
differently with another number of threads, so each comparison runs both sides with the same thread count (torchrun
gives every process one thread; the single-process reference here runs with one thread too)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from biasaudit.data.adapter import load_adapter
from biasaudit.scanning.audit import audit_model
from biasaudit.cli import app
from biasaudit.errors import InputError
from biasaudit.results import to_jsonable
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.engine import scan_shard
from biasaudit.scanning.part_values import from_plain as _decode, to_plain as _encode
from biasaudit.scanning.parts import merge_parts, part_name, seal, write_part
from biasaudit._core.sharding import Shard, parse_shard

ROOT = Path(__file__).resolve().parents[1]
DEMO = "examples/digits_captions_adapter.py:adapter"
ZOO = {"demo": DEMO, "cnn_bn_dropout": "tests/zoo/cnn_tokens.py:adapter", "three_modalities": "tests/zoo/three_modalities.py:adapter",
       "bert": "tests/zoo/hf_bert.py:left"}
runner = CliRunner()


def without_manifest(audit: dict) -> dict:
    return json.loads(json.dumps(to_jsonable({k: v for k, v in audit.items() if k != "manifest"})))


def model_of(spec: str):
    adapter = load_adapter(str(ROOT / spec.split(":")[0]) + ":" + spec.split(":")[1])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = adapter.build_model()
    return adapter, model


def parts_of(model, adapter, config: ScanConfig, count: int, where: Path) -> list[Path]:
    paths = []
    for index in range(count):
        shard = Shard(index, count)
        context, state = scan_shard(model, adapter, config=config, shard=shard)
        path = where / part_name(shard)
        write_part(path, shard=shard, config=config, checkpoint={"path": None, "sha256": None, "prefix_removed": None},
                   adapter_source={"spec": "test", "sha256": None}, adapter=adapter, context=context, state=state, wall_time_s=0.0)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", ["demo", "cnn_bn_dropout", "three_modalities", "bert"])
def test_three_parts_merge_to_the_single_process_audit_to_the_last_digit(name, tmp_path):
    adapter, model = model_of(ZOO[name])
    # Every diagnostic that streams, and a batch size that leaves a short last batch.
    config = ScanConfig(batch_size=24, bootstrap_replicates=50, projection="pca", conditions="default,shapley,interaction",
                        embedding_points=40, gradient_batches=3)
    whole = without_manifest(audit_model(model, adapter, config=config, checkpoint=None))
    merged = merge_parts(parts_of(model, adapter, config, 3, tmp_path))
    assert merged["manifest"]["shards"] == {"count": 3, "by": "parts"}
    assert without_manifest(merged) == whole
    # The diagnostics really ran (an empty section would be equal too).
    for section in ("carrier", "groups", "gradient_conflict", "embeddings", "shapley", "interaction"):
        assert whole[section]["available"], section


def test_draws_of_the_random_conditions_merge_to_the_single_process_audit(tmp_path):
    """Draws are combined once, after the parts merge: combining per part first would pick other draws per replicate."""
    adapter, model = model_of(DEMO)
    config = ScanConfig(batch_size=40, bootstrap_replicates=50, projection="pca", conditions="missing,noisy,ratio,ceilings,carrier", draws=3)
    whole = without_manifest(audit_model(model, adapter, config=config, checkpoint=None))
    assert whole["bootstrap"]["draws"]["noisy:image"] == 3
    assert without_manifest(merge_parts(parts_of(model, adapter, config, 3, tmp_path))) == whole


def test_more_shards_than_batches_leaves_empty_shards_that_merge(tmp_path):
    adapter, model = model_of(DEMO)
    config = ScanConfig(batch_size=128, bootstrap_replicates=20, projection="pca", conditions="full,missing")
    whole = without_manifest(audit_model(model, adapter, config=config, checkpoint=None))
    paths = parts_of(model, adapter, config, 5, tmp_path)  # 305 samples: 3 batches, shards 3 and 4 are empty
    assert without_manifest(merge_parts(paths)) == whole


# ---- refusals -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_parts(tmp_path_factory):
    where = tmp_path_factory.mktemp("parts")
    adapter, model = model_of(DEMO)
    config = ScanConfig(batch_size=128, bootstrap_replicates=20, projection="pca", conditions="full,missing")
    other = ScanConfig(batch_size=128, bootstrap_replicates=20, projection="pca", conditions="full,missing", seed=1)
    (where / "a").mkdir(), (where / "b").mkdir()
    return {"seed0": parts_of(model, adapter, config, 3, where / "a"), "seed1": parts_of(model, adapter, other, 3, where / "b")}


@pytest.mark.parametrize("how, message", [
    ("missing", "Shard 2/3 is missing (parts given: 0/3, 1/3); expected all 3."),
    ("duplicate", "are both shard 1/3; expected each shard once."),
    ("other seed", "are of different scans: their setting seed differs (0 vs 1)."),
    ("not a part", "is not a scan part"),
    ("absent", "does not exist; expected a file written by biasaudit scan --shard I/N."),
])
def test_merging_the_wrong_parts_is_refused_naming_them(how, message, demo_parts, tmp_path):
    a, b = demo_parts["seed0"], demo_parts["seed1"]
    given = {"missing": a[:2], "duplicate": [a[0], a[1], a[1], a[2]], "other seed": [a[0], b[1], a[2]],
             "not a part": [a[0], a[1], tmp_path / "junk.pt"], "absent": [a[0], a[1], tmp_path / "nothing.pt"]}[how]
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "audit.json").write_text('{"earlier": "results"}')  # an earlier run's audit must survive a refused merge
    result = runner.invoke(app, ["merge", *map(str, given), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert (out / "audit.json").read_text() == '{"earlier": "results"}'
    assert sorted(p.name for p in out.iterdir()) == ["audit.json"]


def test_a_part_holding_an_object_merge_does_not_rebuild_is_refused_without_running_it(tmp_path):
    from biasaudit.scanning.parts import FORMAT_VERSION, seal

    payload = {"format": "biasaudit-scan-part", "version": FORMAT_VERSION, "shard": [0, 1], "identity": ["object", "Popen", []],
               "facts": None, "context": None, "state": None, "extra": None}
    (tmp_path / "evil.pt").write_bytes(seal(payload))
    with pytest.raises(InputError, match="is damaged"):
        merge_parts([tmp_path / "evil.pt"])


def _payload_of(path: Path) -> dict:
    sealed = torch.load(path, weights_only=True)
    return torch.load(io.BytesIO(sealed["body"]), weights_only=True)


@pytest.mark.parametrize("tamper", ["flipped byte", "edited counts", "wrong length", "truncated"])
def test_an_altered_part_is_refused_naming_it_and_nothing_is_written(tamper, demo_parts, tmp_path):
    """A part with one byte flipped, or its confusion counts edited with its identity intact, merged with exit 0 into an
    audit that looked valid; one with an array of the wrong length ended in a traceback."""
    path = tmp_path / "altered.pt"
    original = demo_parts["seed0"][1].read_bytes()
    if tamper == "flipped byte":
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif tamper == "truncated":
        path.write_bytes(original[: len(original) - 100])
    else:
        sealed = torch.load(demo_parts["seed0"][1], weights_only=True)
        payload = _payload_of(demo_parts["seed0"][1])
        state = _decode(payload["state"])
        confusion = state.main.accuracy.confusion["full"]
        if tamper == "edited counts":
            confusion[0, 0] += 5  # the identity fields stay as they were
        else:
            state.main.accuracy.weighted_total = state.main.accuracy.weighted_total[:-3]
        payload["state"] = _encode(state)
        body = io.BytesIO()
        torch.save(payload, body)
        sealed["body"] = body.getvalue()  # new content under the old digest: what editing the file by hand amounts to
        buffer = io.BytesIO()
        torch.save(sealed, buffer)
        path.write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(demo_parts["seed0"][0]), str(path), str(demo_parts["seed0"][2]), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert str(path) in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("change, message", [
    ("older format", "is of part format 1; this biasaudit reads format"),
    ("older generator", "was drawn by random generator {'name': 'splitmix64-counter', 'version': 2}; this biasaudit draws with"),
])
def test_a_part_written_by_another_biasaudit_is_refused_naming_it(change, message, demo_parts, tmp_path):
    """An older biasaudit's part holds other accumulator layouts and other draws: merging it would fail mid-way or mix
    two generators' bootstrap weights into one audit."""
    payload = _payload_of(demo_parts["seed0"][1])
    if change == "older format":
        payload["version"] = 1
    else:
        identity = _decode(payload["identity"])
        identity["generator"] = {"name": "splitmix64-counter", "version": 2}
        payload["identity"] = _encode(identity)
    (tmp_path / "old.pt").write_bytes(seal(payload))  # what that biasaudit would have written, sealed as its own
    with pytest.raises(InputError, match=re.escape(message)) as refused:
        merge_parts([demo_parts["seed0"][0], tmp_path / "old.pt", demo_parts["seed0"][2]])
    assert str(tmp_path / "old.pt") in str(refused.value)


@pytest.mark.parametrize("text, message", [
    ("3/3", "shard index 3 is out of range for 3 shard(s)"), ("1/0", "at least 1 shard"),
    ("a/b", "expected I/N"), ("-1/2", "expected I/N"), ("", "expected I/N"), ("0/0", "at least 1 shard"),
])
def test_a_bad_shard_is_one_sentence(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_shard(text)


def cli_scan(*args: str, out: Path, checkpoint: Path):
    return runner.invoke(app, ["scan", str(checkpoint), "--adapter", str(ROOT / DEMO.split(":")[0]) + ":adapter", "--batch-size", "64",
                               "--bootstrap", "20", "--projection", "pca", "--out", str(out), *args])


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model_of(DEMO)[1].state_dict(), path)
    return path


def test_cli_shards_and_merge_give_the_cli_audit(demo_checkpoint, tmp_path):
    one = cli_scan(out=tmp_path / "one", checkpoint=demo_checkpoint)
    assert one.exit_code == 0, one.output
    for index in range(3):
        part = cli_scan("--shard", f"{index}/3", out=tmp_path / "parts", checkpoint=demo_checkpoint)
        assert part.exit_code == 0, part.output
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [part_name(Shard(i, 3)) for i in range(3)]
    merged = runner.invoke(app, ["merge", *map(str, sorted((tmp_path / "parts").glob("*.pt"))), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    single = json.loads((tmp_path / "one" / "audit.json").read_text())
    joined = json.loads((tmp_path / "merged" / "audit.json").read_text())
    assert without_manifest(joined) == without_manifest(single)
    assert joined["manifest"]["checkpoint"]["sha256"] == single["manifest"]["checkpoint"]["sha256"]
    assert (tmp_path / "merged" / "audit.html").is_file()


def test_shard_out_of_range_on_the_command_line_writes_nothing(demo_checkpoint, tmp_path):
    result = cli_scan("--shard", "4/4", out=tmp_path / "parts", checkpoint=demo_checkpoint)
    assert result.exit_code == 2 and "shard index 4 is out of range for 4 shard(s)" in " ".join(result.output.split())
    assert not (tmp_path / "parts").exists()


# ---- torch.distributed -------------------------------------------------------------------------------------------
def _one_thread_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on a free local port, so parallel test workers never collide.
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
                          cwd=cwd, env=_one_thread_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("extra", [[], ["--draws", "2"]], ids=["one-draw", "two-draws"])
def test_torchrun_with_two_processes_writes_the_single_process_audit(extra, demo_checkpoint, tmp_path):
    common = ["--adapter", str(ROOT / DEMO.split(":")[0]) + ":adapter", "--batch-size", "64", "--bootstrap", "20", "--projection", "pca", *extra]
    single = subprocess.run([sys.executable, "-m", "biasaudit", "scan", str(demo_checkpoint), *common, "--out", str(tmp_path / "one")],
                            cwd=tmp_path, env=_one_thread_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    run = _torchrun("-m", "biasaudit", "scan", str(demo_checkpoint), *common, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "audit.json").read_text())
    assert two["manifest"]["shards"] == {"count": 2, "by": "torch.distributed"}
    assert without_manifest(two) == without_manifest(json.loads((tmp_path / "one" / "audit.json").read_text()))
    assert run.stdout.count("audit.json") == 1  # rank 0 alone reports (and writes)


SCRIPT = """
import json, sys, torch, torch.distributed as dist
import biasaudit as ba
from biasaudit.data.adapter import load_adapter
dist.init_process_group("gloo")
adapter = load_adapter(sys.argv[1])
torch.manual_seed(0)
model = adapter.build_model()
audit = ba.scan(model, adapter, batch_size=64, bootstrap=20, projection="pca", distributed=True)
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as handle:
    json.dump(audit.to_dict(), handle)
if dist.get_rank() == 0:  # evaluation on one rank only (the default): must scan everything, not wait for the others
    alone = ba.scan(model, adapter, batch_size=64, bootstrap=20, projection="pca")
    with open(f"{sys.argv[2]}/alone.json", "w") as handle:
        json.dump(alone.to_dict(), handle)
dist.barrier()
dist.destroy_process_group()
"""


def test_ba_scan_inside_a_process_group_returns_the_single_process_audit_on_every_rank(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    spec = str(ROOT / DEMO.split(":")[0]) + ":adapter"
    run = _torchrun(str(tmp_path / "script.py"), spec, str(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    import biasaudit as ba

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process has
    try:
        adapter, model = model_of(DEMO)
        single = ba.scan(model, adapter, batch_size=64, bootstrap=20, projection="pca").to_dict()
    finally:
        torch.set_num_threads(threads)
    alone = json.loads((tmp_path / "alone.json").read_text())
    assert without_manifest(ranks[0]) == without_manifest(ranks[1]) == without_manifest(single) == without_manifest(alone)
    assert ranks[0]["manifest"]["shards"] == {"count": 2, "by": "torch.distributed"} and "shards" not in alone["manifest"]


def test_a_shard_of_data_without_a_bias_key_is_refused_before_any_forward():
    adapter, model = model_of(DEMO)
    adapter.bias_key = None  # k-means discovery needs the merged scan's dominant modality

    def forward(*args, **kwargs):
        raise AssertionError("no forward may run")

    adapter.forward = forward
    with pytest.raises(InputError, match="--shard needs data with a bias key"):
        scan_shard(model, adapter, config=ScanConfig(), shard=Shard(0, 2))


def test_parts_of_data_that_changed_between_runs_are_refused(tmp_path):
    adapter, model = model_of(DEMO)
    config = ScanConfig(batch_size=128, bootstrap_replicates=20, projection="pca", conditions="full,missing")
    first = parts_of(model, adapter, config, 2, tmp_path)[0]
    original = adapter.data

    def changed(split, *, batch_size):  # the same sizes, two labels of the first batch swapped
        for ordinal, batch in enumerate(original(split, batch_size=batch_size)):
            if ordinal == 0 and split == config.split:
                batch = dict(batch)
                batch["label"] = batch["label"].clone()
                batch["label"][[0, 1]] = batch["label"][[1, 0]]
            yield batch

    adapter.data = changed
    (tmp_path / "changed").mkdir()
    second = parts_of(model, adapter, config, 2, tmp_path / "changed")[1]
    with pytest.raises(InputError, match="read different data: the split's labels or bias values differ"):
        merge_parts([first, second])


def test_parts_of_other_shard_counts_are_named_as_different_scans(demo_parts, tmp_path):
    adapter, model = model_of(DEMO)
    config = ScanConfig(batch_size=128, bootstrap_replicates=20, projection="pca", conditions="full,missing")
    four = parts_of(model, adapter, config, 4, tmp_path)
    with pytest.raises(InputError, match=r"are of different scans: their shard counts differ \(3 vs 4\)"):
        merge_parts([demo_parts["seed0"][0], four[0]])


def test_one_gpu_for_every_process_of_a_machine_is_refused_under_torchrun(demo_checkpoint, tmp_path, monkeypatch):
    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    result = cli_scan("--device", "cuda:0", out=tmp_path / "out", checkpoint=demo_checkpoint)
    assert result.exit_code == 2, result.output
    assert "would put all 2 processes of this machine on one GPU" in " ".join(result.output.split())
