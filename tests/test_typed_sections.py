"""Typed results all the way down (issue 23): every section of audit.json, compare.json, the gate verdict and the
leaderboard is a frozen view of the document (a value with an interval an Estimate, a section not run None). If a view
drifted from its JSON, a notebook would show one number and the CI gate judge another."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import json
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import biasaudit as ba
import biasaudit.results
from biasaudit import Adapter, Modality
from biasaudit.errors import InputError
from biasaudit.results import check_against_schema
from biasaudit.results.estimate import Estimate

FIXTURES = Path(__file__).parent / "fixtures"
FAST = dict(bootstrap=40, projection="pca", gradient_batches=2, batch_size=32, min_wrong=1)


class FusionModel(nn.Module):
    """Two tensor branches, concatenated, and a shared classifier: every hook the embeddings and gradient conflict need."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.image_branch, self.text_branch, self.classifier = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 3)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.image_branch(image), self.text_branch(text)], dim=1))


class FusionAdapter(Adapter):
    """Image: the label, blurred by noise; text: the bias value, which follows the label in 90% of train and a third of
    test (an out-of-distribution split for the shortcut)."""

    modalities: ClassVar = [Modality("image", "tensor"), Modality("text", "tensor")]
    num_classes = 3
    label_key = "label"
    bias_key = "bias"
    splits = ("train", "test")
    bias_names = ("red", "green", "blue")

    def build_model(self) -> nn.Module:
        return FusionModel()

    def data(self, split: str, *, batch_size: int):
        n = 120
        generator = torch.Generator().manual_seed(1 if split == "train" else 2)
        labels = torch.arange(n) % 3
        aligned = torch.rand(n, generator=generator) < (0.9 if split == "train" else 1 / 3)
        bias = torch.where(aligned, labels, (labels + 1 + torch.arange(n) % 2) % 3)
        image = nn.functional.one_hot(labels, 3).float() + 0.8 * torch.randn(n, 3, generator=generator)
        text = nn.functional.one_hot(bias, 3).float()
        for lo in range(0, n, batch_size):
            rows = slice(lo, lo + batch_size)
            yield {"image": image[rows], "text": text[rows], "label": labels[rows], "bias": bias[rows]}

    def prepare(self, batch, *, device):
        return batch["image"].to(device), batch["text"].to(device)

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"image": model.image_branch, "text": model.text_branch}


@pytest.fixture(scope="module")
def audit() -> ba.Audit:
    adapter = FusionAdapter()
    return ba.scan(adapter.build_model(), adapter, conditions="default,shapley,interaction", **FAST)


@pytest.fixture(scope="module")
def narrow() -> ba.Audit:
    adapter = FusionAdapter()
    return ba.scan(adapter.build_model(), adapter, conditions="missing", **FAST)


def same(typed, raw) -> bool:
    """A typed value equals the JSON value it reads: tuples are arrays, mappings objects, Estimates (value, interval)."""
    if typed is None and raw == (None, None):  # an Estimate the document does not hold (no value, no interval)
        return True
    if isinstance(typed, Estimate):
        value, interval = raw
        return typed.value == value and typed.interval == (tuple(interval) if interval is not None else None)
    if isinstance(typed, tuple):
        return raw is not None and len(typed) == len(raw) and all(same(t, r) for t, r in zip(typed, raw, strict=True))
    if isinstance(typed, Mapping):
        return raw is not None and set(typed) == set(raw) and all(same(typed[k], raw[k]) for k in typed)
    return typed == raw


def check(view, section: Mapping, *, skip: tuple[str, ...] = (), **keys) -> None:
    """Every field of `view` equals section[its name] (or section[keys[name]]; a (value, interval) key pair for an
    Estimate); `skip` names the fields that hold nested views, checked by the caller."""
    for field in dataclasses.fields(view):
        if field.name in skip:
            continue
        key = keys.get(field.name, field.name)
        raw = (section.get(key[0]), section.get(key[1])) if isinstance(key, tuple) else section.get(key)
        typed = getattr(view, field.name)
        assert same(typed, raw), f"{type(view).__name__}.{field.name}: {typed!r} vs {raw!r}"


def test_every_section_of_a_real_audit_is_typed_field_by_field(audit):
    document = audit.document
    assert set(audit.diagnostics) >= {"groups", "carrier", "ceilings", "shapley", "interaction"} and not audit.unavailable
    check(audit.dataset, document["dataset"], skip=("modalities",))
    assert [dataclasses.asdict(m) for m in audit.dataset.modalities] == list(map(dict, document["dataset"]["modalities"]))
    check(audit.manifest, document["manifest"], skip=("section",))
    assert audit.manifest["config"] is audit.manifest.config and audit.manifest.randomness["version"] >= 1
    check(audit.verdict, document["verdict"], sentences="sentences")
    jsd = document["jsd"]
    check(audit.jsd, jsd, skip=("most_frequent", "per_bias"))
    check(audit.jsd.most_frequent, jsd["most_frequent"])
    [check(audit.jsd.per_bias[name], entry) for name, entry in jsd["per_bias"].items()]
    embeddings = document["embeddings"]
    check(audit.embeddings, embeddings, skip=("angular_spread",))
    for spread, entry in zip(audit.embeddings.angular_spread, embeddings["angular_spread"], strict=True):
        check(spread, entry, class_label="class")
    conflict = document["gradient_conflict"]
    check(audit.gradient_conflict, conflict, skip=("pairs",))
    for pair, entry in zip(audit.gradient_conflict.pairs, conflict["pairs"], strict=True):
        check(pair, entry, skip=("histogram",))
        check(pair.histogram, entry["histogram"])
    shapley = document["shapley"]
    check(audit.shapley, shapley, skip=("modalities",))
    for name, entry in shapley["modalities"].items():
        check(audit.shapley.modalities[name], entry, mean=("mean", "mean_ci"))
    check(audit.interaction, document["interaction"], share=("interaction_share", "interaction_share_ci"),
          plain_share="plain_interaction_share")
    groups = document["groups"]
    check(audit.groups, groups, skip=("groups", "conditions", "shift", "favoured"))
    for group, entry in zip(audit.groups.groups, groups["groups"], strict=True):
        check(group, entry, accuracy_exact="accuracy_exact_ci")
    for name, entry in groups["conditions"].items():
        figures = audit.groups.conditions[name]
        assert figures == audit.bias.groups[name]
        check(figures, entry, skip=("uncounted",), worst_group=("worst_group", "worst_group_ci"),
              worst_group_exact="worst_group_exact_ci", bias_balanced=("bias_balanced", "bias_balanced_ci"),
              conflicting_accuracy=("conflicting_accuracy", "conflicting_accuracy_ci"))
        if entry.get("uncounted"):
            check(figures.uncounted, entry["uncounted"], accuracy=("accuracy", "accuracy_ci"))
    check(audit.groups.shift, groups["shift"])
    check(audit.groups.favoured, groups["favoured"], skip=("values",))
    [check(value, entry) for value, entry in zip(audit.groups.favoured.values, groups["favoured"]["values"], strict=True)]
    for name, entry in document["calibration"]["conditions"].items():
        check(audit.calibration[name], entry, skip=("reliability",))
        [check(bin_, raw) for bin_, raw in zip(audit.calibration[name].reliability, entry["reliability"], strict=True)]
    for name, points in document["ratio_sweep"].items():
        for point, entry in zip(audit.ratio_sweep[name], points, strict=True):
            check(point, entry, accuracy=("accuracy", "accuracy_ci"))
    check(audit.reliance, document["reliance"])
    check(audit.mute_checks, document["mute_checks"], skip=("findings",))
    assert audit.notes == tuple(document["notes"])
    for name, ceiling in document["ceilings"]["modalities"].items():
        check(audit.ceilings.modalities[name], ceiling, ceiling=("ceiling", "ceiling_ci"), alone=("alone", "alone_ci"))


def test_the_documents_named_figures_read_as_estimates(audit):
    document = audit.document
    swap = document["carrier"]["modalities"]["text"]["bias_swap"]
    assert audit.bias.follow_rate["text"] == Estimate(swap["excess_follow_rate"], *swap["excess_follow_rate_ci"])
    full = document["groups"]["conditions"]["full"]
    assert audit.bias.worst_group["full"] == Estimate(full["worst_group"], *full["worst_group_ci"])
    assert audit.interaction.share.value == document["interaction"]["interaction_share"]


def test_a_section_the_scan_did_not_run_is_none_and_one_it_could_not_run_keeps_its_note(narrow, shortcut_checkpoint):
    assert narrow.shapley is None and narrow.interaction is None and narrow.ceilings is None
    assert narrow.bias.carrier is None and not narrow.bias.swaps
    spec = importlib.util.spec_from_file_location("shortcut_for_typed", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter = module.ShortcutAdapter()
    model = adapter.build_model()
    model.load_state_dict(torch.load(shortcut_checkpoint, weights_only=True))
    hookless = ba.scan(model, adapter, conditions="missing", **FAST)
    assert hookless.embeddings is None and hookless.unavailable["embeddings"] == hookless.document["embeddings"]["note"]
    assert hookless.gradient_conflict is None and "gradient_conflict" in hookless.unavailable


def older_audits() -> dict[str, dict]:
    """Every shape of schema version 1 written so far: the fixture (no sample fingerprint, bootstrap counts or counter
    generator) and the oldest shape, with only what the published schema requires."""
    example = json.loads((FIXTURES / "audit_example.json").read_text(encoding="utf-8"))
    oldest = copy.deepcopy(example)
    for key in ("samples", "bootstrap", "shapley", "interaction", "groups", "carrier", "ceilings", "calibration", "mute_checks",
                "diagnostics", "embeddings", "gradient_conflict", "ratio_sweep", "reliance", "notes", "verdict"):
        oldest.pop(key, None)
    oldest["manifest"] = {"seed": 0, "config": {"split": "ood"}}
    oldest["dataset"] = {key: oldest["dataset"][key] for key in ("split", "n", "num_classes", "modalities")}
    return {"fixture": example, "oldest": oldest}


@pytest.mark.parametrize("name", ["fixture", "oldest"])
def test_audit_read_reads_every_shape_of_every_schema_version_and_writes_it_back_exactly(name, tmp_path):
    document = older_audits()[name]
    assert document["schema_version"] == biasaudit.results.AUDIT_SCHEMA_VERSION == 1  # the only version written so far
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    read = ba.Audit.read(path)
    assert read.to_dict() == document and ba.Audit.from_dict(read.to_dict()) == read
    assert read.dataset.split == document["dataset"]["split"] and read.manifest.seed == 0
    if name == "oldest":
        assert read.manifest.randomness is None and read.verdict is None and read.groups is None and read.shapley is None
        assert read.dataset.class_names is None and read.ratio_sweep == {} and read.bias.worst_group == {}
    else:
        assert read.interaction.plain_share is None
        assert read.interaction.share.value == document["interaction"]["interaction_share"]
        assert read.ceilings.probe_split is None and read.groups.favoured is None
    repr(read), read._repr_html_()


def test_the_notebook_views_give_the_worst_group_the_interval_the_verdict_gives(audit):
    """The verdict and the report state the worst group's exact (Clopper-Pearson) interval; a notebook view showing
    the bootstrap one would disagree with them on the same audit ([0, 0] against [0, 11.9] for a group the model gets
    all wrong)."""
    document = audit.to_dict()
    full = document["groups"]["conditions"]["full"]
    full = {**full, "worst_group": 0.0, "worst_group_ci": [0.0, 0.0], "worst_group_exact_ci": [0.0, 11.944486906950269]}
    shown = ba.Audit.from_dict({**document, "groups": {**document["groups"], "conditions": {"full": full}}})
    assert "worst_group='0 [0, 11.94]'" in repr(shown) and "11.9" in shown._repr_html_()
    assert shown.bias.worst_group["full"].interval == (0.0, 0.0)  # the JSON's bootstrap interval, read as it is


def test_a_real_audit_reads_back_from_its_file_exactly(audit, tmp_path):
    read = ba.Audit.read(audit.to_json(tmp_path / "audit.json"))
    assert read == audit and read.to_dict() == audit.to_dict()
    future = {**audit.to_dict(), "schema_version": 2}
    (tmp_path / "future.json").write_text(json.dumps(future), encoding="utf-8")
    with pytest.raises(InputError, match="schema_version 2"):
        ba.Audit.read(tmp_path / "future.json")


def test_a_comparison_is_typed_block_by_block(audit):
    comparison = ba.compare(audit, audit)
    document = comparison.to_dict()
    check_against_schema(document, "compare", source="compare.json")
    assert ba.Comparison.from_dict(document) == comparison and comparison.split == document["split"]
    assert comparison.note == document["note"] and comparison.also_split is None and comparison.before_is is None
    for change, row in zip(comparison.conditions, document["conditions"], strict=True):
        check(change, row, skip=("accuracy",))
        check(change.accuracy, row, skip=("groups_at_minimum",))
    missing = document["summary"]["missing"]
    assert comparison.missing.gap == comparison.missing_gap and comparison.missing.avg.delta == missing["avg"]["delta"]
    assert comparison.missing.dominant_before == missing["dominant"]["before"]
    assert comparison.missing.flip_rates_after == missing["flip_rates"]["after"]
    assert comparison.jsd.weighted_mean.before == document["jsd"]["weighted_mean"]["before"]
    bias = document["bias"]
    worst = comparison.bias.worst_group["full"]
    assert worst.change == Estimate(bias["worst_group"]["full"]["delta"], *bias["worst_group"]["full"]["delta_ci"])
    assert worst.groups_at_minimum.before == bias["worst_group"]["full"]["groups_at_minimum"]["before"]
    assert comparison.bias.interaction.delta == bias["interaction"]["delta"]
    ceilings = bias["ceilings"]
    assert comparison.bias.ceilings.implied_gap.after == ceilings["implied_gap"]["after"]
    assert comparison.bias.ceilings.modalities["image"].ceiling.before == ceilings["modalities"]["image"]["ceiling"]["before"]
    assert comparison.bias.ceilings.large_gap_expected_after == ceilings["large_gap_expected"]["after"]
    assert "Comparison(verdict=" in repr(comparison) and "<table>" in comparison._repr_html_()


GATE_FLAGS = ["--max-gap", "90", "--min-accuracy", "full=10", "--min-worst-group", "full=0", "--max-gap-increase", "1",
              "--max-worst-group-drop", "full=2", "--max-bias-follow-increase", "text=5", "--max-jsd-drop", "0.05"]


def check_gate(result: ba.GateResult, document: dict) -> None:
    assert ba.GateResult.from_dict(document) == result and result.to_dict() == document
    check(result, document, skip=("document", "rules", "config_file", "sources", "changes"))
    block = document.get("changes")
    assert (result.changes is None) == (block is None)
    if block is not None:
        check(result.changes, block, skip=("largest",))
        for typed, entry in zip(result.changes.largest, block["largest"], strict=True):
            check(typed, entry, change=("change_points", "change_ci_points"))
    settings = document.get("settings") or {}
    assert result.config_file == settings.get("config_file") and result.sources == settings.get("sources", {})
    for rule, entry in zip(result.rules, document["rules"], strict=True):
        check(rule, entry, skip=("measured",))
        check(rule.measured, entry["figures"], gap=("gap", "gap_ci"), accuracy=("accuracy", "accuracy_ci"),
              worst_group=("worst_group", "worst_group_ci"), change=("change", "change_ci"),
              change_points=("change_points", "change_ci_points"))


def test_a_gate_verdicts_figures_are_typed_numbers(audit, tmp_path):
    from typer.testing import CliRunner

    from biasaudit.cli import app

    path = audit.to_json(tmp_path / "audit.json")
    printed = CliRunner().invoke(app, ["gate", str(path), "--baseline", str(path), *GATE_FLAGS, "--json"])
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    check_against_schema(document, "gate", source="gate verdict")
    result = ba.GateResult.from_dict(document)
    check_gate(result, document)
    assert result.sources["max_gap"] == "command line" and result.current == str(path)
    measured = {rule.rule.split("[")[0]: rule.measured for rule in result.rules}
    assert measured["max_gap"].gap.interval is not None and measured["max_gap"].limit == 90.0
    assert measured["min_accuracy"].minimum == 10.0 and measured["max_worst_group_drop"].change.value == 0.0
    follow = measured["max_bias_follow_increase"]
    assert follow.change_points.value == 0.0 and follow.modality == "text" and isinstance(follow.carrier, bool)
    assert measured["max_jsd_drop"].drop == 0.0 and measured["max_jsd_drop"].change is None
    assert "status='PASS'" in repr(result) and "max_gap[missing]" in result._repr_html_()
    rules = ba.GateRules(max_gap=90.0, min_accuracy={"full": 100.0}, max_worst_group_drop={"full": 2.0})
    through_api = ba.gate(audit, rules=rules, baseline=audit)
    check_gate(through_api, through_api.to_dict())
    assert through_api.status == "FAIL" and "min_accuracy[full]" in repr(through_api)


def _leaderboard_document() -> dict:
    page_tests = Path(__file__).parent / "test_leaderboard_page.py"
    spec = importlib.util.spec_from_file_location("leaderboard_page_for_typed", page_tests)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.leaderboard_document()


def test_a_leaderboards_per_seed_rows_and_pooled_changes_are_typed(tmp_path):
    document = _leaderboard_document()
    check_against_schema(document, "leaderboard", source="leaderboard.json")
    result = ba.LeaderboardResult(recommended=document["recommendation"]["method"], verdict=document["verdict"],
                                  reasons=tuple(document["recommendation"]["reasons"]), json_path=tmp_path / "leaderboard.json",
                                  html_path=tmp_path / "leaderboard.html", document=document)
    assert result.to_dict() == document and (result.split, result.ood, result.carrier) == ("ood", True, "text")
    [check(measure, entry) for measure, entry in zip(result.measures, document["measures"], strict=True)]
    for entry in document["methods"]:
        method = result.methods[entry["method"]]
        [check(run, row) for run, row in zip(method.seeds, entry["seeds"], strict=True)]
        for name, change in (entry["changes"] or {}).items():
            check(method.pooled[name], change, change=("delta", "interval"))
            assert method.changes[name] == method.pooled[name].change
    assert result.runs == () and "mmdb" in repr(result)
    page = result._repr_html_()
    assert "(recommended)" in page and "(control)" in page and "<table>" in page


def _result_classes() -> list[type]:
    modules = [importlib.import_module(f"biasaudit.results.{info.name}")
               for info in pkgutil.iter_modules(biasaudit.results.__path__)]
    return sorted({obj for module in modules for _, obj in inspect.getmembers(module, dataclasses.is_dataclass)
                   if isinstance(obj, type) and obj.__module__.startswith("biasaudit.results.")}, key=lambda c: c.__qualname__)


@pytest.mark.parametrize("cls", _result_classes(), ids=lambda c: c.__qualname__)
def test_help_on_every_typed_result_names_each_field(cls):
    """tests/test_api_help.py checks the classes reachable as ba.X; this checks every typed view they lead to."""
    doc = inspect.getdoc(cls) or ""
    missing = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in doc]
    assert not missing, f"help({cls.__qualname__}) never names {missing}"
