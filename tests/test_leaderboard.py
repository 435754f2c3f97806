"""The leaderboard end to end on the demo's data: runs written as sets and reused by a restart, the document fits its
schema, the in-distribution split guards Full accuracy on an OOD split, a model without modality bias gets no
recommendation (in words, with the numbers behind them), and every mistake is refused before any audit."""

from __future__ import annotations

import sys

import json
from pathlib import Path

import jsonschema
import pytest

import biasaudit as ba
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import BiasAuditError, InputError

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from option_choice import expected_choice  # noqa: E402

sys.path.pop(0)

SCHEMA = json.loads((Path(__file__).parents[1] / "biasaudit" / "schemas" / "leaderboard.schema.json").read_text())
QUICK = dict(epochs=2, bootstrap=50)


@pytest.fixture(scope="module")
def biased():
    adapter = DigitsCaptionsAdapter()
    return train_baseline(adapter, seed=0, epochs=5), adapter


def test_a_leaderboard_writes_every_run_and_a_restart_trains_only_what_is_missing(biased, tmp_path, monkeypatch):
    model, adapter = biased
    result = ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", **QUICK)
    document = result.to_dict()
    jsonschema.validate(document, SCHEMA)
    assert [m["method"] for m in document["methods"]] == ["ce", "groupdro"]
    assert document["ood"] and document["manifest"]["full_accuracy_on"] == "test"  # Full guarded in distribution
    for method in document["methods"]:
        for seed in method["seeds"]:
            folder = tmp_path / seed["folder"]
            after = json.loads((folder / "after.json").read_text())
            assert after["manifest"]["run"]["id"] == seed["run_id"] and (folder / "also_after.json").is_file()
            assert after["manifest"]["config"]["split"] == "ood" and after["manifest"]["config"]["seed"] == seed["seed"]
    groupdro = document["methods"][1]
    assert set(groupdro["changes"]) == {"full", "worst_group", "bias_balanced", "ood", "follow_rate", "gap"}
    assert groupdro["changes"]["ood"]["seed_deltas"] == pytest.approx(
        [s["values"]["ood"] - c["values"]["ood"] for s, c in zip(groupdro["seeds"], document["methods"][0]["seeds"])])
    assert result.recommended == document["recommendation"]["method"] and result.html_path.is_file()
    # Group DRO's eta was chosen on val, seed by seed, from the documented grid; never on the evaluated split.
    options = groupdro["options"]
    assert options["option"] == "eta" and options["grid"] == [0.001, 0.01, 0.1] and options["validated_on"] == "val"
    for seed in groupdro["seeds"]:
        training = json.loads((tmp_path / seed["folder"] / "train_log.json").read_text())["training"]
        chosen = expected_choice(training["option_selection"])
        assert options["chosen"][str(seed["seed"])] == training["settings"]["eta"] == chosen
    assert "groupdro eta from {0.001, 0.01, 0.1}" in document["manifest"]["selection"]
    assert "eta chosen on val" in result.html_path.read_text()
    # --keep best: one checkpoint per method
    assert len(list((tmp_path / "runs" / "groupdro").glob("seed-*/model.pt"))) == 1

    # A killed leaderboard restarted with the same call reuses every finished run: nothing is trained again.
    monkeypatch.setattr("biasaudit.choosing.board.run_one", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", **QUICK)
    assert again.verdict == result.verdict
    assert groupdro["kept_chosen_on"].startswith("the best seed by worst-group on ood, the evaluated split")
    assert "Kept checkpoints (--keep best): the best seed by worst-group on ood" in result.html_path.read_text()
    # A restart with --keep all reuses the runs but cannot bring back what --keep best removed, and says so.
    every = ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", keep="all", **QUICK).to_dict()
    lost = next(s["seed"] for s in groupdro["seeds"] if f"seed-{s['seed']}" not in groupdro["kept_checkpoint"])
    assert every["methods"][1]["kept_checkpoint"] == groupdro["kept_checkpoint"]
    assert every["methods"][1]["kept_note"].startswith(f"seed {lost}'s model.pt was removed by an earlier run")

    # The same folder with other settings, or another starting model, is refused, naming what differs, before any work.
    with pytest.raises(InputError, match=r"other settings \(epochs 2 -> 3\)"):
        ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", epochs=3, bootstrap=50)
    other = train_baseline(adapter, seed=1, epochs=1)
    with pytest.raises(InputError, match=r"other settings \(starting_model '[0-9a-f]{64}' -> '[0-9a-f]{64}'\)"):
        ba.leaderboard(other, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", **QUICK)


def test_a_primary_measure_the_split_lacks_is_refused_before_any_training(biased, tmp_path, monkeypatch):
    model, adapter = biased
    monkeypatch.setattr("biasaudit.choosing.board.run_one", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(InputError, match="--primary ood ranks by OOD accuracy"):
        ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="test", primary="ood", **QUICK)


def test_on_a_model_without_modality_bias_no_method_is_recommended_and_the_page_says_why(tmp_path):
    # rho = 0: the caption's colour is drawn independently of the digit in train, so there is no shortcut to remove.
    adapter = DigitsCaptionsAdapter(rho=0.0)
    model = train_baseline(adapter, seed=0, epochs=5)
    result = ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1, 2), split="test", **QUICK)
    document = result.to_dict()
    assert result.recommended is None and result.verdict.startswith("No method helps here")
    groupdro = next(m for m in document["methods"] if m["method"] == "groupdro")
    assert not groupdro["recommended"]
    # The words follow from the numbers: no bias measure improved beyond its interval on most seeds, or Full fell.
    for name in ("worst_group", "bias_balanced"):
        change = groupdro["changes"][name]
        improved_everywhere = change["significant"] and change["interval"][0] > 0 and sum(d > 0 for d in change["seed_deltas"]) >= 2
        full = groupdro["changes"]["full"]
        assert not (improved_everywhere and full["interval"][0] > -1.0), (name, change, full)
    full = groupdro["changes"]["full"]
    assert f"{full['delta']:+.1f}" in groupdro["sentence"] or "moved no bias measure" in groupdro["sentence"]
    page = result.html_path.read_text()
    assert "No method helps here" in page


@pytest.mark.parametrize("arguments, needle", [
    (dict(methods=("nosuch",)), "Available: ce, mmdb"),
    (dict(seeds=(0,)), "at least two different seeds"),
    (dict(split="val"), "the split methods choose their options on"),
    (dict(primary="worst"), "primary"),
    (dict(keep="some"), "keep"),
    (dict(grids={"balgrad": (1.0,)}), "grids"),
])
def test_leaderboard_mistakes_are_one_sentence_before_any_audit(biased, tmp_path, monkeypatch, arguments, needle):
    model, adapter = biased
    monkeypatch.setattr("biasaudit.choosing.runs.audit_model", lambda *a, **k: pytest.fail("audited before refusing"))
    with pytest.raises(BiasAuditError) as caught:
        ba.leaderboard(model, adapter, out=tmp_path / "out", **{"split": "ood", **QUICK, **arguments})
    message = str(caught.value)
    assert needle in message and "\n" not in message
    assert not (tmp_path / "out" / "runs").exists()


def test_runs_in_parallel_processes_give_the_leaderboard_one_process_gives(biased, tmp_path, monkeypatch):
    model, adapter = biased
    one = ba.leaderboard(model, adapter, out=tmp_path / "one", methods=("groupdro",), seeds=(0, 1), split="test", epochs=1,
                         bootstrap=50, grids={"groupdro": (0.01,)}).to_dict()
    assert "Fixed: groupdro eta = 0.01 (a one-value grid)" in one["manifest"]["selection"]
    assert one["methods"][1]["options"] is None
    monkeypatch.setattr("biasaudit.choosing.parallel.available_workers", lambda device: 2)  # also on a one-core machine
    two = ba.leaderboard(model, adapter, out=tmp_path / "two", methods=("groupdro",), seeds=(0, 1), split="test", epochs=1,
                         bootstrap=50, jobs=2, grids={"groupdro": (0.01,)}).to_dict()
    assert [[s["values"] for s in m["seeds"]] for m in two["methods"]] == [[s["values"] for s in m["seeds"]] for m in one["methods"]]
    assert two["verdict"] == one["verdict"]
    with pytest.raises(InputError, match="--jobs 3 asks for more parallel runs than this machine has 2 CPU core"):
        ba.leaderboard(model, adapter, out=tmp_path / "three", methods=("groupdro",), seeds=(0, 1), split="test", jobs=3, **QUICK)

    class Unpicklable(DigitsCaptionsAdapter):  # defined inside a function: pickle cannot find it by name
        pass

    monkeypatch.setattr("biasaudit.choosing.runs.audit_model", lambda *a, **k: pytest.fail("audited before refusing"))
    with pytest.raises(InputError, match="--jobs 2 sends the adapter to other processes, but it cannot be pickled"):
        ba.leaderboard(model, Unpicklable(), out=tmp_path / "four", methods=("groupdro",), seeds=(0, 1), split="test", jobs=2,
                       **QUICK)


def test_the_starting_model_is_audited_once_per_seed_and_split_not_once_per_run(biased, tmp_path, monkeypatch):
    import biasaudit.training.fix

    model, adapter = biased
    audited = []
    real = biasaudit.training.fix.audit_model
    monkeypatch.setattr("biasaudit.training.fix.audit_model", lambda *a, **k: audited.append(k["config"].split) or real(*a, **k))
    ba.leaderboard(model, adapter, out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="ood", grids={"groupdro": (0.01,)}, **QUICK)
    # 4 runs, each auditing its fixed model on ood and on test; the starting model's audits are the leaderboard's own.
    assert sorted(audited) == ["ood"] * 4 + ["test"] * 4
    assert {p.name for p in (tmp_path / "before").iterdir()} == {"seed-0.json", "seed-1.json", "seed-0-test.json", "seed-1-test.json"}


@pytest.mark.parametrize("grid, needle", [
    ("ogm_ge", "--grid 'ogm_ge' is not METHOD=V1,V2,..."),
    ("ogm_ge=0.1,x", "--grid 'ogm_ge=0.1,x' is not METHOD=V1,V2,..."),
    ("balgrad=1", "--grid names 'balgrad', which has no option chosen on validation data. Available: mmdb, ogm_ge, mmpareto, groupdro, jtt."),
    ("groupdro=0.1,0.1", "The grid of groupdro's eta is (0.1, 0.1); expected one or more distinct positive, finite numbers."),
])
def test_a_bad_grid_on_the_command_line_is_one_sentence_and_exit_2_before_anything_is_read(tmp_path, grid, needle):
    from typer.testing import CliRunner

    from biasaudit.cli import app

    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "missing.pt"), "--adapter", "nosuch.module:adapter",
                                      "--grid", grid, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_sharded_leaderboard_merges_into_the_document_one_process_writes(biased, tmp_path):
    from typer.testing import CliRunner

    from biasaudit.cli import app

    model, adapter = biased
    same = dict(methods=("groupdro",), seeds=(0, 1), split="test", epochs=1, bootstrap=50, grids={"groupdro": (0.01,)})
    one = ba.leaderboard(model, adapter, out=tmp_path / "one", **same).to_dict()
    first = ba.leaderboard(model, adapter, out=tmp_path / "s0", shard="0/2", **same)
    assert first.recommended is None and first.html_path is None and first.json_path.name == "shard-0-of-2.json"
    assert [(r["method"], r["seed"]) for r in first.document["runs"]] == [("ce", 0), ("groupdro", 0)]  # methods x seeds, every 2nd
    assert not (tmp_path / "s0" / "leaderboard.json").exists()
    with pytest.raises(InputError, match=r"Shard 1/2 has no record in the folders given"):
        ba.merge_leaderboard([tmp_path / "s0"], out=tmp_path / "merged")
    ba.leaderboard(model, adapter, out=tmp_path / "s1", shard="1/2", **same)
    merged = ba.merge_leaderboard([tmp_path / "s1", tmp_path / "s0"], out=tmp_path / "merged").to_dict()
    jsonschema.validate(merged, SCHEMA)
    assert merged["verdict"] == one["verdict"] and merged["manifest"]["shards"] == 2
    for ours, theirs in zip(merged["methods"], one["methods"]):
        assert [s["values"] for s in ours["seeds"]] == [s["values"] for s in theirs["seeds"]]
        assert ours["changes"] == theirs["changes"]
        assert all((tmp_path / "merged" / s["folder"] / "compare.html").is_file() for s in ours["seeds"])  # the page's links work

    # Shards sharing one folder (a shared filesystem), merged in place, from the command line.
    for part in ("0/2", "1/2"):
        ba.leaderboard(model, adapter, out=tmp_path / "shared", shard=part, **same)
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "shared"), "--out", str(tmp_path / "shared")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "shared" / "leaderboard.json").read_text())["verdict"] == one["verdict"]

    # Shards of two different leaderboards are refused, naming the setting.
    ba.leaderboard(model, adapter, out=tmp_path / "other", shard="1/2", **{**same, "epochs": 2})
    with pytest.raises(InputError, match=r"other settings than .*\(epochs 1 -> 2"):
        ba.merge_leaderboard([tmp_path / "s0", tmp_path / "other"], out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_without_a_val_split_options_are_chosen_on_held_out_train_and_the_document_says_so(biased, tmp_path):
    class NoVal(DigitsCaptionsAdapter):
        splits = ("train", "test", "ood")

    model, _ = biased
    result = ba.leaderboard(model, NoVal(), out=tmp_path, methods=("groupdro",), seeds=(0, 1), split="test", epochs=1, bootstrap=50,
                            grids={"groupdro": (0.001, 0.1)})
    document = result.to_dict()
    assert "chosen on a seeded 20% of train (the adapter has no val split)" in document["manifest"]["selection"]
    options = document["methods"][1]["options"]
    assert options["validated_on"] == "held-out 20% of train" and options["grid"] == [0.001, 0.1]
    assert "eta chosen on held-out 20% of train" in result.html_path.read_text()

