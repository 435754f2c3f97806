"""Mistakes made from Python at the public API's edge (issue 20). Every public function, user-built class and result
method checks its arguments before any work: a wrong type raises ArgumentTypeError (a BiasAuditError and a
TypeError), a wrong value InputError (a BiasAuditError and a ValueError), each one sentence naming the parameter. If
this broke, a notebook user would meet an AttributeError from deep inside a scan, a setting half-read into an audit
of the wrong conditions, or a FileExistsError naming a temporary file, instead of a sentence saying what to change.

The enumeration is the test's own guard: every public callable found on `biasaudit` must have an entry in CALLS, and
every one of its parameters a wrong value in WRONG_VALUES or a reason in EVERY_VALUE_FITS, so a parameter added
later without a check fails here until it has one. The fix methods that users put into their own loops
(`biasaudit.methods`, issue 21) have tables of their own, METHOD_CALLS and the rest, checked the same way: there a
mistake would surface as a shape error inside autograd, or a gradient quietly rescaled by a string.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biasaudit as ba
import biasaudit.methods as bm
from biasaudit.errors import ArgumentTypeError, BiasAuditError, CheckpointError, InputError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from method_models import TwoBranch  # noqa: E402

sys.path.pop(0)
FAST = dict(bootstrap=50, projection="pca", gradient_batches=1, batch_size=32, min_wrong=1)


class Alien:
    """A value of no type any public parameter accepts."""

    def __repr__(self) -> str:
        return "Alien()"


def _shortcut_module():
    spec = importlib.util.spec_from_file_location("shortcut_for_arguments", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OneModality:
    """An adapter of the right type whose contract is wrong: one modality."""

    modalities = (ba.Modality("image", "image"),)
    num_classes = 2

    def build_model(self):
        return nn.Linear(1, 2)

    def data(self, split, *, batch_size):
        return []

    def prepare(self, batch, *, device):
        return batch


@dataclasses.dataclass
class World:
    adapter: Any
    trainable: Any
    model: nn.Module
    audit: ba.Audit
    other_seed: ba.Audit  # an audit of the same model that no comparison pairs with `audit`
    comparison: ba.Comparison
    gate_result: ba.GateResult
    audit_json: Path
    tmp: Path


@pytest.fixture(scope="module")
def world(shortcut_checkpoint, tmp_path_factory) -> World:
    module = _shortcut_module()
    adapter = module.ShortcutAdapter()
    model = adapter.build_model()
    model.load_state_dict(torch.load(shortcut_checkpoint, weights_only=True))
    audit = ba.scan(model, adapter, **FAST)
    document = audit.to_dict()
    document["manifest"]["config"]["seed"] = 1
    tmp = tmp_path_factory.mktemp("arguments")
    return World(adapter=adapter, trainable=module.TrainableShortcutAdapter(), model=model, audit=audit,
                 other_seed=ba.Audit.from_dict(document), comparison=ba.compare(audit, audit),
                 gate_result=ba.gate(audit, rules=ba.GateRules(min_accuracy={"full": 0})), audit_json=audit.to_json(tmp / "audit.json"),
                 tmp=tmp)


SHORTCUT_SPEC = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"


def _store(w: World) -> str:
    return f"sqlite:///{w.tmp / 'mlflow.db'}"  # a local MLflow store (issue 24): no network


_TRACKERS: dict[Path, Any] = {}


def _tracker(w: World) -> Any:
    """One MLflow tracker per world, opened once (its store's tables take seconds to create); no run until a log."""
    if w.tmp not in _TRACKERS:
        _TRACKERS[w.tmp] = ba.open_tracker("mlflow", tracking_uri=_store(w))
    return _TRACKERS[w.tmp]


def _checkpoint(w: World) -> Path:
    torch.save(w.model.state_dict(), w.tmp / "model.pt")
    return w.tmp / "model.pt"


# name -> (the callable, right keyword arguments for every parameter the test varies), from the world.
CALLS: dict[str, Callable[[World], tuple[Callable, dict[str, Any]]]] = {
    "ba.scan": lambda w: (ba.scan, dict(model=w.model, adapter=w.adapter, **FAST)),
    "ba.fix": lambda w: (ba.fix, dict(model=w.model, adapter=w.trainable, method="ce", epochs=1, projection="pca", bootstrap=50)),
    "ba.leaderboard": lambda w: (ba.leaderboard, dict(model=w.model, adapter=w.trainable, out=w.tmp / "leaderboard", methods=("jtt",),
                                                    epochs=1, bootstrap=50)),
    "ba.merge_leaderboard": lambda w: (ba.merge_leaderboard, dict(folders=[w.tmp / "shard-0"], out=w.tmp / "merged")),
    "LeaderboardResult.to_dict": lambda w: (ba.LeaderboardResult(recommended=None, verdict="No method helps here.", reasons=(),
                                                                 json_path=w.tmp / "l.json", html_path=w.tmp / "l.html",
                                                                 document={"schema": "biasaudit.leaderboard"}).to_dict, {}),
    "ba.compare": lambda w: (ba.compare, dict(before=w.audit, after=w.audit)),
    "ba.scan_shard": lambda w: (ba.scan_shard, dict(checkpoint=_checkpoint(w), adapter=w.adapter, shard="0/2", out=w.tmp / "parts", **FAST)),
    "ba.merge": lambda w: (ba.merge, dict(parts=[w.tmp / "scan-part-0-of-1.pt"], out=w.tmp / "merged-scan")),
    "ba.demo": lambda w: (ba.demo, dict(out=w.tmp / "demo", split="nosuch")),
    "ba.load_adapter": lambda w: (ba.load_adapter, dict(spec=SHORTCUT_SPEC)),
    "ba.gate": lambda w: (ba.gate, dict(current=w.audit, rules=ba.GateRules(min_accuracy={"full": 0}, max_gap_increase=100),
                                        baseline=w.audit)),
    "ba.GateRules": lambda w: (ba.GateRules, {}),
    "ba.Modality": lambda w: (ba.Modality, dict(name="image", kind="image")),
    "Audit.read": lambda w: (ba.Audit.read, dict(path=w.audit_json)),
    "Audit.from_dict": lambda w: (ba.Audit.from_dict, dict(document=w.audit.to_dict())),
    "Audit.condition": lambda w: (w.audit.condition, dict(name="full")),
    "Audit.to_json": lambda w: (w.audit.to_json, dict(path=w.tmp / "again.json")),
    "Audit.to_html": lambda w: (w.audit.to_html, dict(path=w.tmp / "again.html")),
    "Audit.to_dict": lambda w: (w.audit.to_dict, {}),
    "Comparison.from_dict": lambda w: (ba.Comparison.from_dict, dict(document=w.comparison.to_dict())),
    "Comparison.to_json": lambda w: (w.comparison.to_json, dict(path=w.tmp / "compare.json")),
    "Comparison.to_dict": lambda w: (w.comparison.to_dict, {}),
    "GateResult.from_dict": lambda w: (ba.GateResult.from_dict, dict(document=w.gate_result.to_dict())),
    "GateResult.to_dict": lambda w: (w.gate_result.to_dict, {}),
    "GateResult.to_markdown": lambda w: (w.gate_result.to_markdown, {}),
    "ba.log": lambda w: (ba.log, dict(result=w.audit, to="mlflow", experiment="audits", run_name="nightly",
                                      tracking_uri=_store(w), files=[w.audit_json])),
    "ba.open_tracker": lambda w: (ba.open_tracker, dict(to="mlflow", experiment="audits", run_name="nightly", tracking_uri=_store(w))),
    "Tracker.log": lambda w: (_tracker(w).log, dict(result=w.audit, files=[w.audit_json])),
    "Tracker.close": lambda w: (_tracker(w).close, {}),
}

# Classes on `biasaudit` that users do not construct or call methods of, and why.
NOT_CALLED = {
    "Summary": "a typed record inside an Audit, built by Audit.from_dict",
    "GapSummary": "a typed record inside an Audit, built by Audit.from_dict",
    "ConditionResult": "a typed record inside an Audit, built by Audit.from_dict",
    "Change": "a typed record inside a Comparison, built by Comparison.from_dict",
    "Estimate": "a figure with its interval inside an Audit, a Comparison or a LeaderboardResult, built from their documents",
    "BiasMeasures": "a typed record inside an Audit (Audit.bias), built by Audit.from_dict",
    "BiasChanges": "a typed record inside a Comparison (Comparison.bias), built by Comparison.from_dict",
    "RuleResult": "a typed record inside a GateResult, built by GateResult.from_dict",
    "Calibration": "a typed record inside an Audit (Audit.calibration), built by Audit.from_dict",
    "Ceilings": "a typed record inside an Audit (Audit.ceilings), built by Audit.from_dict",
    "Groups": "a typed record inside an Audit (Audit.groups), built by Audit.from_dict",
    "Jsd": "a typed record inside an Audit (Audit.jsd), built by Audit.from_dict",
    "Embeddings": "a typed record inside an Audit (Audit.embeddings), built by Audit.from_dict",
    "GradientConflict": "a typed record inside an Audit (Audit.gradient_conflict), built by Audit.from_dict",
    "Shapley": "a typed record inside an Audit (Audit.shapley), built by Audit.from_dict",
    "Interaction": "a typed record inside an Audit (Audit.interaction), built by Audit.from_dict",
    "RunManifest": "a typed record inside an Audit (Audit.manifest), built by Audit.from_dict",
    "Dataset": "a typed record inside an Audit (Audit.dataset), built by Audit.from_dict",
    "ConditionChange": "a typed record inside a Comparison (Comparison.conditions), built by Comparison.from_dict",
    "GroupChange": "a typed record inside a Comparison, built by Comparison.from_dict",
    "RuleFigures": "a typed record inside a GateResult (RuleResult.measured), built by GateResult.from_dict",
    "GateChanges": "a typed record inside a GateResult (GateResult.changes), built by GateResult.from_dict",
    "MeasureChange": "a typed record inside GateChanges (GateChanges.largest), built by GateResult.from_dict",
    "MethodResult": "a typed record inside a LeaderboardResult (LeaderboardResult.methods), read from leaderboard.json",
    "SeedRun": "a typed record inside a MethodResult (MethodResult.seeds), read from leaderboard.json",
    "PooledChange": "a typed record inside a MethodResult (MethodResult.pooled), read from leaderboard.json",
    "FixResult": "returned by ba.fix; it has no methods",
    "TrackedRun": "returned by ba.log and Tracker.log; it has no methods",
    "Audit": "returned by ba.scan and Audit.read; its methods are listed one by one",
    "Comparison": "returned by ba.compare; its methods are listed one by one",
    "GateResult": "returned by ba.gate; its methods are listed one by one",
    "Adapter": "the base class users subclass: its methods are theirs to write, checked by validate_adapter",
    "BiasAuditError": "the exception family itself",
}
USER_BUILT = {"GateRules", "Modality"}


def _public_callables(module, prefix: str, *, user_built: set[str], not_called: dict[str, str], calls: dict,
                      no_methods: tuple[str, ...] = ()) -> set[str]:
    """The names a table must list for `module.__all__`: f"{prefix}.{function}", f"{prefix}.{class}" for the classes
    users build, and f"{class}.{method}" for every public method of every class but those in `no_methods`."""
    found = set()
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            found.add(f"{prefix}.{name}")
        elif inspect.isclass(obj):
            if name in user_built:
                found.add(f"{prefix}.{name}")
            else:
                assert name in not_called or any(key.startswith(name + ".") for key in calls), f"{prefix}.{name} is neither listed nor excluded"
            if name not in no_methods:
                found |= {f"{name}.{attr}" for attr, value in vars(obj).items()
                          if not attr.startswith("_") and (inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)))}
    return found


def test_every_public_callable_is_covered_by_this_test():
    assert _public_callables(ba, "ba", user_built=USER_BUILT, not_called=NOT_CALLED, calls=CALLS,
                             no_methods=("Adapter", "BiasAuditError")) == set(CALLS)


def _signature_parameters(target: Callable) -> list[str]:
    return [p.name for p in inspect.signature(target).parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _parameters(name: str) -> list[str]:
    """The parameters a caller can get wrong: the signature's, and for ba.scan the ScanConfig settings it takes by name."""
    target = {"ba.scan": ba.scan, "ba.fix": ba.fix, "ba.leaderboard": ba.leaderboard, "ba.compare": ba.compare,
              "ba.gate": ba.gate, "ba.merge_leaderboard": ba.merge_leaderboard, "ba.scan_shard": ba.scan_shard, "ba.merge": ba.merge,
              "ba.demo": ba.demo, "ba.load_adapter": ba.load_adapter, "ba.log": ba.log, "ba.open_tracker": ba.open_tracker}.get(name)
    if name in ("ba.GateRules", "ba.Modality"):
        return [f.name for f in dataclasses.fields(getattr(ba, name[3:]))]
    if target is None:
        cls, method = name.split(".")
        target = getattr(getattr(ba, cls), method)
    names = _signature_parameters(target)
    if name == "ba.scan":
        from biasaudit.api import _settings

        names += sorted(_settings())
    return names


PARAMETERS = [(call, parameter) for call in CALLS for parameter in _parameters(call)]


def _no_work(monkeypatch) -> None:
    """A check that comes after the scan or the training started fails the test instead of running it."""
    def started(*args, **kwargs):
        raise AssertionError("work began before the arguments were checked")

    import biasaudit.training.fix_outputs  # noqa: F401  imported unpatched: it binds fix_model when first imported

    monkeypatch.setattr("biasaudit.scanning.audit.scan_model", started)
    monkeypatch.setattr("biasaudit.training.fix.fix_model", started)
    monkeypatch.setattr("biasaudit.training.fix_outputs.fix_model", started)


@pytest.mark.parametrize("call,parameter", PARAMETERS, ids=[f"{c}({p}=Alien())" for c, p in PARAMETERS])
def test_a_wrong_type_is_a_type_error_naming_the_parameter(call, parameter, world, monkeypatch):
    _no_work(monkeypatch)
    function, arguments = CALLS[call](world)
    _assert_a_type_error_naming(function, arguments, parameter, re.escape(f"'{parameter}'"))


def _assert_a_type_error_naming(function: Callable, arguments: dict[str, Any], parameter: str, name: str) -> None:
    with pytest.raises(ArgumentTypeError) as raised:
        function(**{**arguments, parameter: Alien()})
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, BiasAuditError)
    assert re.search(name, str(raised.value)) and str(raised.value).count(". ") <= 3, str(raised.value)


def _directory(w: World) -> Path:
    return w.tmp


def _below_a_file(w: World) -> Path:
    (w.tmp / "plain").write_text("x")
    return w.tmp / "plain" / "out.html"


def _regular_file(w: World) -> Path:
    (w.tmp / "state-file").write_text("x")
    return w.tmp / "state-file"


def _other_split(w: World) -> dict[str, Any]:
    document = w.audit.to_dict()
    document["manifest"]["config"]["split"] = "ood"
    return document


# (call, parameter) -> a value of the right type that is wrong, from the world.
WRONG_VALUES: dict[tuple[str, str], Callable[[World], Any]] = {
    **{(call, "adapter"): (lambda w: OneModality()) for call in ("ba.scan", "ba.fix")},
    **{(call, "split"): (lambda w: "nosuch") for call in ("ba.scan", "ba.fix")},
    **{(call, "conditions"): (lambda w: "missing,nosuch") for call in ("ba.scan", "ba.fix")},
    **{(call, "seed"): (lambda w: -1) for call in ("ba.scan", "ba.fix")},
    **{(call, "device"): (lambda w: "nosuch") for call in ("ba.scan", "ba.fix")},
    **{(call, "batch_size"): (lambda w: 0) for call in ("ba.scan", "ba.fix")},
    ("ba.fix", "shuffle_buffer"): lambda w: 0,
    **{(call, "bootstrap"): (lambda w: 5) for call in ("ba.scan", "ba.fix")},
    **{(call, "projection"): (lambda w: "nosuch") for call in ("ba.scan", "ba.fix")},
    ("ba.scan", "unimodal_models"): lambda w: {"nosuch": nn.Linear(1, 2)},
    ("ba.scan", "embedding_points"): lambda w: 1, ("ba.scan", "min_wrong"): lambda w: 0,
    ("ba.scan", "gradient_batches"): lambda w: 0, ("ba.scan", "kmeans_k"): lambda w: 1,
    ("ba.scan", "mute"): lambda w: {"content": "nosuch"}, ("ba.scan", "min_group"): lambda w: 0,
    ("ba.scan", "group_by"): lambda w: "nosuch", ("ba.scan", "donor_pool"): lambda w: 0,
    ("ba.scan", "ceiling_per_class"): lambda w: 0, ("ba.scan", "interaction_donors"): lambda w: 0,
    ("ba.scan", "precision"): lambda w: "nosuch", ("ba.scan", "favoured_fraction"): lambda w: 1.5,
    ("ba.scan", "draws"): lambda w: 0,
    ("ba.fix", "method"): lambda w: "nosuch", ("ba.fix", "epochs"): lambda w: 0, ("ba.fix", "lr"): lambda w: -1.0,
    ("ba.fix", "optimizer"): lambda w: "nosuch", ("ba.fix", "weight_decay"): lambda w: -0.1,
    ("ba.fix", "momentum"): lambda w: 0.9,  # with the default optimizer, adam, which would ignore it
    ("ba.fix", "train_split"): lambda w: "nosuch", ("ba.fix", "options"): lambda w: {"nosuch": 1},
    ("ba.fix", "before"): lambda w: w.audit,  # taken with other settings (min_wrong=1, ...) than this fix's audits
    ("ba.fix", "state_dir"): _regular_file, ("ba.fix", "also_split"): lambda w: "nosuch",
    ("ba.fix", "cache_dir"): _regular_file, ("ba.fix", "feature_cache"): lambda w: "nosuch",
    ("ba.fix", "cache_max_gb"): lambda w: -1.0,
    ("ba.leaderboard", "adapter"): lambda w: OneModality(), ("ba.leaderboard", "out"): _regular_file,
    ("ba.leaderboard", "methods"): lambda w: ("nosuch",), ("ba.leaderboard", "seeds"): lambda w: (0,),
    ("ba.leaderboard", "split"): lambda w: "nosuch", ("ba.leaderboard", "epochs"): lambda w: 0,
    ("ba.leaderboard", "lr"): lambda w: -1.0, ("ba.leaderboard", "batch_size"): lambda w: 0,
    ("ba.leaderboard", "precision"): lambda w: "fp8",
    ("ba.leaderboard", "optimizer"): lambda w: "nosuch", ("ba.leaderboard", "bootstrap"): lambda w: 5,
    ("ba.leaderboard", "primary"): lambda w: "nosuch", ("ba.leaderboard", "max_full_drop"): lambda w: -1.0,
    ("ba.leaderboard", "keep"): lambda w: "nosuch", ("ba.leaderboard", "device"): lambda w: "nosuch",
    ("ba.leaderboard", "grids"): lambda w: {"ogm_ge": (0.0, 0.3)}, ("ba.fix", "scan_batch_size"): lambda w: 0, ("ba.leaderboard", "shard"): lambda w: "2/2",
    ("ba.merge_leaderboard", "folders"): lambda w: [w.tmp], ("ba.merge_leaderboard", "out"): _regular_file,
    ("ba.leaderboard", "jobs"): lambda w: 10**6,  # more than this machine's cores
    ("ba.compare", "before"): lambda w: w.other_seed, ("ba.compare", "after"): lambda w: w.other_seed,
    ("ba.gate", "rules"): lambda w: ba.GateRules(), ("ba.gate", "baseline"): lambda w: w.other_seed,
    ("ba.gate", "current"): lambda w: w.other_seed,
    ("ba.GateRules", "max_gap"): lambda w: {"nosuch": 1}, ("ba.GateRules", "max_gap_increase"): lambda w: -1,
    ("ba.GateRules", "min_accuracy"): lambda w: {"full": 150}, ("ba.GateRules", "min_worst_group"): lambda w: {"full": -1},
    ("ba.GateRules", "max_worst_group_drop"): lambda w: -1, ("ba.GateRules", "max_bias_follow_increase"): lambda w: -1,
    ("ba.GateRules", "max_jsd_drop"): lambda w: -0.5, ("ba.GateRules", "jsd"): lambda w: "nosuch",
    ("ba.Modality", "name"): lambda w: " ", ("ba.Modality", "value_range"): lambda w: (1.0, 0.0),
    ("ba.Modality", "pad_id"): lambda w: -1, ("ba.Modality", "padding_side"): lambda w: "middle",
    ("Audit.read", "path"): lambda w: w.tmp, ("Audit.from_dict", "document"): lambda w: {"schema": "biasaudit.audit"},
    ("Audit.condition", "name"): lambda w: "missing:nosuch",
    ("Audit.to_json", "path"): _directory, ("Audit.to_html", "path"): _below_a_file,
    ("Comparison.from_dict", "document"): lambda w: {"verdict": "x"}, ("Comparison.to_json", "path"): _directory,
    ("GateResult.from_dict", "document"): lambda w: {"status": "PASS"},
    **{(call, "out"): _regular_file for call in ("ba.scan", "ba.fix", "ba.compare", "ba.scan_shard", "ba.merge", "ba.demo")},
    ("ba.fix", "selection_min_group"): lambda w: 0, ("ba.fix", "resume"): lambda w: True,  # with nothing to resume
    ("ba.gate", "junit"): _directory, ("ba.gate", "summary_md"): lambda w: w.tmp / "nosuch" / "summary.md",
    ("ba.compare", "train_log"): lambda w: w.tmp / "nosuch.json",
    ("ba.scan_shard", "checkpoint"): lambda w: w.tmp / "nosuch.pt", ("ba.scan_shard", "adapter"): lambda w: OneModality(),
    ("ba.scan_shard", "shard"): lambda w: "2/2", ("ba.scan_shard", "split"): lambda w: "nosuch",
    ("ba.scan_shard", "conditions"): lambda w: "missing,nosuch", ("ba.scan_shard", "seed"): lambda w: -1,
    ("ba.scan_shard", "device"): lambda w: "nosuch", ("ba.scan_shard", "batch_size"): lambda w: 0,
    ("ba.scan_shard", "bootstrap"): lambda w: 5, ("ba.scan_shard", "projection"): lambda w: "nosuch",
    ("ba.scan_shard", "unimodal_models"): lambda w: {"nosuch": w.tmp / "model.pt"},
    ("ba.merge", "parts"): lambda w: [w.tmp / "nosuch.pt"], ("ba.demo", "seed"): lambda w: -1,
    **{(call, "to"): (lambda w: "nosuch") for call in ("ba.log", "ba.open_tracker")},
    **{(call, name): (lambda w: " ") for call in ("ba.log", "ba.open_tracker") for name in ("experiment", "run_name", "tracking_uri")},
    **{(call, "files"): (lambda w: [w.tmp / "nosuch.json"]) for call in ("ba.log", "Tracker.log")},
    ("ba.demo", "split"): lambda w: "nosuch", ("ba.load_adapter", "spec"): lambda w: "nosuch",
}

# (call, parameter) -> why every value of the right type is a valid one.
EVERY_VALUE_FITS = {
    **{(call, "model"): "any nn.Module; one the adapter's inputs do not fit fails at its first forward, with the adapter named "
       "(tests/test_bad_inputs.py)" for call in ("ba.scan", "ba.fix", "ba.leaderboard")},
    **{(call, "progress"): "any callable; one of the wrong arity is adapted (biasaudit/_core/progress.py)"
       for call in ("ba.scan", "ba.fix", "ba.leaderboard")},
    ("ba.scan", "distributed"): "True or False: both are valid anywhere (outside a process group True scans alone; False, the default, scans alone inside one)",
    ("ba.fix", "distributed"): "True or False: whether a value is right depends on the process group, not the value (True "
       "outside one and False inside one are refused: tests/test_fix_data_parallel.py)",
    ("ba.scan", "mute_compare"): "True or False", ("ba.fix", "inplace"): "True or False",
    ("ba.fix", "from_scratch"): "True or False (a post-hoc method refuses True: tests/test_fix_plan.py)",
    ("ba.GateRules", "significant"): "True or False",
    **{(call, "result"): "any result of the five types the annotation names (Audit, FixResult, Comparison, GateResult, "
       "LeaderboardResult); each is logged" for call in ("ba.log", "Tracker.log")},
    **{(call, "trust_checkpoint"): "True or False (a checkpoint the adapter's model cannot load is named then)"
       for call in ("ba.scan", "ba.fix", "ba.leaderboard", "ba.scan_shard")},
    **{(call, "provenance"): "any mapping: recorded as the manifest's settings" for call in ("ba.scan", "ba.scan_shard")},
    **{(call, "progress"): "any callable; one of the wrong arity is adapted (biasaudit/_core/progress.py)"
       for call in ("ba.scan_shard", "ba.demo")},
    ("ba.leaderboard", "on_run"): "any callable, told of every run",
    ("ba.gate", "current_name"): "any name for the audit in the verdicts", ("ba.gate", "baseline_name"): "any name for the baseline",
    ("ba.GateRules", "labels"): "names the options in messages; any names are valid",
    ("ba.Modality", "kind"): "checked where an adapter enters, against the impairments registered then (users may add kinds later)",
    ("ba.Modality", "key"): "any batch key", ("ba.Modality", "mask_key"): "any batch key",
    ("ba.Modality", "special_ids"): "any token ids", ("ba.Modality", "missing"): "checked against the kind's impairments where the adapter enters",
}


def test_every_parameter_has_a_wrong_value_or_a_reason_why_none_exists():
    assert {key for key in PARAMETERS} == set(WRONG_VALUES) | set(EVERY_VALUE_FITS)
    assert not set(WRONG_VALUES) & set(EVERY_VALUE_FITS)


VALUED = sorted(WRONG_VALUES)


@pytest.mark.parametrize("call,parameter", VALUED, ids=[f"{c}({p})" for c, p in VALUED])
def test_a_wrong_value_is_a_value_error_before_any_work(call, parameter, world, monkeypatch):
    _no_work(monkeypatch)
    function, arguments = CALLS[call](world)
    _assert_a_value_error_naming(function, arguments, parameter, WRONG_VALUES[(call, parameter)](world))


def _assert_a_value_error_naming(function: Callable, arguments: dict[str, Any], parameter: str, value: Any) -> None:
    with pytest.raises(InputError) as raised:
        function(**{**arguments, parameter: value})
    message = str(raised.value)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, BiasAuditError)
    assert "\n" not in message and "Traceback" not in message
    # The message names the parameter (a plural by its singular: "Unknown condition 'nosuch'"), or the value given.
    assert parameter.lower().removesuffix("s") in message.lower() or str(value) in message or repr(value) in message or \
        (isinstance(value, Path) and str(value) in message), message


def test_a_keyword_a_call_does_not_take_lists_the_ones_it_does(world):
    for call in CALLS:
        function, arguments = CALLS[call](world)
        with pytest.raises(ArgumentTypeError, match=r"has no parameter 'nosuch'\. Available: "):
            function(**arguments, nosuch=1)


def test_the_mistakes_users_made_read_as_sentences_that_say_what_to_do(world):
    """The cases of the issue, with the remedy each sentence gives."""
    adapter, model = world.adapter, world.model
    cases = [
        (lambda: ba.scan("model.pt", adapter), CheckpointError, r"model\.pt does not exist"),  # a path is a checkpoint to load
        (lambda: ba.scan(model.state_dict(), adapter), ArgumentTypeError, "That looks like a state dict"),
        (lambda: ba.scan(model, type(adapter)), ArgumentTypeError, r"got the class ShortcutAdapter\. Pass an instance, e\.g\. ShortcutAdapter\(\)"),
        (lambda: ba.scan(model, adapter, mute="image=mean"), ArgumentTypeError, r"'mute' parameter of ba\.scan must be a mapping .*\{'image': 'mean'\}"),
        (lambda: ba.scan(model, adapter, progress=1), ArgumentTypeError, r"'progress' parameter of ba\.scan must be a callable"),
        (lambda: ba.gate(world.audit, rules=None), ArgumentTypeError, r"e\.g\. ba\.GateRules\(max_gap=5\)"),
        (lambda: ba.gate("audit.json", rules={"max_gap": 5}), ArgumentTypeError, r"Read the file first: ba\.Audit\.read\(path\)"),
        (lambda: ba.gate(world.audit, rules={"max_gapp": 5}), ArgumentTypeError, r"has no parameter 'max_gapp'\. Available: max_gap, "),
        (lambda: ba.GateRules(max_gapp=2), ArgumentTypeError, r"ba\.GateRules has no parameter 'max_gapp'\. Available: max_gap, "),
        (lambda: ba.GateRules(max_gap="5"), ArgumentTypeError, r"'max_gap' parameter of ba\.GateRules must be .* got str '5'"),
        (lambda: ba.GateRules(min_accuracy=["full=80"]), ArgumentTypeError, r"'min_accuracy' parameter of ba\.GateRules must be a mapping"),
        (lambda: ba.Audit.read(b"audit.json"), ArgumentTypeError, r"'path' parameter of Audit\.read must be a path"),
        (lambda: world.audit.to_json("/proc/x.json"), InputError, r"Audit\.to_json's 'path' /proc/x\.json cannot be written"),
        (lambda: ba.gate(world.audit, rules={"max_gap_increase": 1}), InputError, r"compare against a baseline audit; pass baseline="),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()


def test_a_list_of_conditions_is_read_as_the_same_names_joined_by_commas(world):
    """The documented rule: conditions=["missing", "noisy"] scans what conditions="missing,noisy" does, and records the
    same manifest, so the two audits compare and gate as one."""
    listed = ba.scan(world.model, world.adapter, conditions=["missing", "ratio"], **FAST)
    joined = ba.scan(world.model, world.adapter, conditions="missing,ratio", **FAST)
    assert listed.manifest["config"]["conditions"] == "missing,ratio"
    assert [c.name for c in listed.conditions] == [c.name for c in joined.conditions]
    assert [c.accuracy for c in listed.conditions] == [c.accuracy for c in joined.conditions]


def test_a_mute_mapping_is_recorded_as_the_command_lines_pairs(world):
    audit = ba.scan(world.model, world.adapter, conditions="missing", mute={"content": "mean"}, **FAST)
    assert [list(pair) for pair in audit.manifest["config"]["mute"]] == [["content", "mean"]]


def test_nothing_is_left_behind_when_an_output_path_is_refused(world):
    target = world.tmp / "kept"
    target.mkdir()
    (target / "earlier.json").write_text("{}")
    with pytest.raises(InputError):
        world.audit.to_json(target)
    assert sorted(p.name for p in target.iterdir()) == ["earlier.json"]


def test_a_torch_device_and_numpy_numbers_are_read_as_the_values_they_hold(world):
    """torch.device(f"cuda:{rank}") is how a DDP job names each process's GPU, and numpy numbers come from configs
    and sweeps: refusing them would break working code, and keeping them would put np.int64 into audit.json."""
    import numpy as np

    audit = ba.scan(world.model, world.adapter, device=torch.device("cpu"), seed=np.int64(3), conditions="missing",
                    **{**FAST, "batch_size": np.int32(32)})
    config = audit.manifest["config"]
    assert config["device"] == "cpu" and type(config["seed"]) is int and config["seed"] == 3 and type(config["batch_size"]) is int
    rules = ba.GateRules(max_gap=np.float32(5), significant=np.bool_(True))
    assert rules.max_gap == {"*": 5.0} and rules.significant is True
    modality = ba.Modality("x", "image", value_range=(np.float32(0), np.int64(255)))
    assert modality.value_range == (0.0, 255) and all(type(v) in (int, float) for v in modality.value_range)


@pytest.mark.parametrize("call, pattern", [
    (lambda w: ba.scan(w.model, w.adapter, mute=["content=mean"]), r"'mute' parameter of ba\.scan must be a mapping of modality to "
     r"muting impairment, e\.g\. \{'image': 'mean'\}; got list \['content=mean'\]\."),
    (lambda w: ba.scan(w.model, w.adapter, unimodal_models={"content": 3}),
     r"got dict with keys 'content', whose 'content' is int 3\."),
    (lambda w: ba.scan(w.model, w.adapter, unimodal_models=[w.model]), r"got list of 1 \(ShortcutModel\)\.$"),
    (lambda w: ba.Modality("x", "image", value_range=(0, "1")), r"must be a tuple of 2 numbers; got tuple \(0, '1'\)\."),
])
def test_a_wrong_type_inside_a_container_is_named_in_one_line(call, pattern, world):
    with pytest.raises(ArgumentTypeError, match=pattern) as raised:
        call(world)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("call, document", [
    ("Audit.from_dict", {"summary": {}, "conditions": []}), ("Audit.from_dict", {"summary": [], "conditions": []}),
    ("Audit.from_dict", {"summary": {"full": {"accuracy": 1}}, "conditions": [1]}),
    ("Comparison.from_dict", {"summary": {}, "verdict": "x", "paired": True}),
    ("GateResult.from_dict", {"status": "PASS", "exit_code": "x", "rules": []}),
    ("GateResult.from_dict", {"status": "PASS", "exit_code": 0, "rules": [{}]}),
])
def test_a_document_with_a_section_of_the_wrong_shape_is_one_sentence_naming_it(call, document, world):
    function, _ = CALLS[call](world)
    with pytest.raises(InputError, match=rf"The 'document' parameter of {re.escape(call)} is not an? \w+ document \("):
        function(document)


def test_an_adapter_that_is_not_an_adapter_subclass_is_named_for_the_part_it_lacks(world):
    """Duck-typed adapters lack the base class's defaults; without this check the scan failed with an AttributeError
    on label_key deep inside."""
    from biasaudit.errors import AdapterError

    class Duck:
        modalities, num_classes, splits, bias_key = world.adapter.modalities, 3, ("train", "test"), "k"
        build_model, data, prepare = world.adapter.build_model, world.adapter.data, world.adapter.prepare

    with pytest.raises(AdapterError, match=r"is not a biasaudit\.Adapter and has no label_key; subclass biasaudit\.Adapter"):
        ba.scan(world.model, Duck(), **FAST)


def test_python_errors_of_mute_and_device_name_the_python_parameter(world):
    with pytest.raises(InputError, match=r"^The 'mute' parameter of ba\.scan names modality 'nope'\. Available: bias_cue, content\.$"):
        ba.scan(world.model, world.adapter, mute={"nope": "mean"})
    with pytest.raises(InputError, match=r"^The 'device' parameter of ba\.scan 'nosuch' is not a torch device name"):
        ba.scan(world.model, world.adapter, device="nosuch")


# ---- biasaudit.methods: the fix methods as components of a user's own loop ----------------------------------------------
# The same enumeration over `biasaudit.methods.__all__`: the classes users build ("methods.OGMGE"), the functions
# ("methods.group_ids") and every public method ("OGMGE.after_backward"), each from fresh objects (a call may write
# gradients or move a method's state).
A, B = torch.arange(24.0).reshape(6, 4) / 10, torch.arange(12.0).reshape(6, 2) / 5
LABELS, BIAS = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 0, 1])


def _model() -> TwoBranch:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TwoBranch(unimodal="ogm_split")


def _branches(model: TwoBranch) -> dict[str, nn.Module]:
    return {"image": model.vision, "text": model.text}


def _after_backward() -> tuple[Callable, dict[str, Any]]:
    model = _model()
    fused, unimodal = model(A, B)
    F.cross_entropy(fused, LABELS).backward(retain_graph=True)
    return bm.OGMGE(_branches(model)).after_backward, dict(unimodal_logits=unimodal, labels=LABELS)


def _mmpareto_backward() -> tuple[Callable, dict[str, Any]]:
    model = _model()
    fused, unimodal = model(A, B)
    return bm.MMPareto(_branches(model)).backward, dict(fused_loss=F.cross_entropy(fused, LABELS),
                                                        unimodal_losses={m: F.cross_entropy(o, LABELS) for m, o in unimodal.items()})


def _balgrad_backward() -> tuple[Callable, dict[str, Any]]:
    model = _model()
    heads = bm.UnimodalHeads(model, _branches(model), mode="ogm_split", classifier=model.head)
    with heads.capture():
        fused, _ = model(A, B)
    return bm.BalGrad(_branches(model)).backward, dict(fused_loss=F.cross_entropy(fused, LABELS), labels=LABELS, step=0,
                                                       unimodal_logits=heads.logits(lambda: model(A, B)[0]), total_steps=2, loss_scale=1.0)


def _heads(captured: bool = False) -> tuple[TwoBranch, bm.UnimodalHeads]:
    model = _model()
    heads = bm.UnimodalHeads(model, _branches(model), mode="ogm_split", classifier=model.head)
    if captured:
        with heads.capture():
            model(A, B)
    return model, heads


def _jtt(finished: bool) -> bm.JTT:
    jtt = bm.JTT()
    jtt.record(torch.arange(6), torch.eye(3)[[0, 0, 2, 1, 1, 2]], LABELS)
    if finished:
        jtt.finish()
    return jtt


def _dfr_data() -> dict[str, torch.Tensor]:
    """40 rows of 3 features, labels alternating and groups label * 2 + bias (a group is one (label, bias) pair)."""
    labels = torch.arange(40) % 2
    return dict(features=torch.linspace(-1, 1, 120).reshape(40, 3).sin(), labels=labels, groups=labels * 2 + (torch.arange(40) // 2) % 2)


def _dfr_result() -> bm.DFRResult:
    return bm.DFR(c_grid=(1.0,), subsets=1).fit(**_dfr_data())


def _epoch_end() -> tuple[Callable, dict[str, Any]]:
    features = {"image": torch.arange(30.0).reshape(10, 3).cos(), "text": torch.arange(30.0).reshape(10, 3).sin()}
    labels = torch.arange(10) % 2
    return bm.DandR(_branches(_model()), every=1).epoch_end, dict(epoch=0, train_features=features, train_labels=labels,
                                                                 val_features=features, val_labels=labels)


def _table() -> bm.MarginTable:
    return bm.margin_table(LABELS, BIAS, num_classes=3, num_bias=2)


def _mmdb() -> bm.MMDB:
    return bm.MMDB(_model().head, _table())


def _with_model(build: Callable[[TwoBranch], tuple[Callable, dict[str, Any]]]) -> Callable[[], tuple[Callable, dict[str, Any]]]:
    return lambda: build(_model())


# name -> a function building (the callable, right keyword arguments for every parameter) from fresh objects.
METHOD_CALLS: dict[str, Callable[[], tuple[Callable, dict[str, Any]]]] = {
    "methods.OGMGE": lambda: (bm.OGMGE, dict(branches=_branches(_model()), alpha=0.3, ge=True, seed=0, modulation_epochs=(0, 2))),
    "OGMGE.set_epoch": lambda: (bm.OGMGE(_branches(_model())).set_epoch, dict(epoch=1)),
    "OGMGE.modulating": lambda: (bm.OGMGE(_branches(_model())).modulating, {}),
    "OGMGE.after_backward": _after_backward,
    "OGMGE.state_dict": lambda: (bm.OGMGE(_branches(_model())).state_dict, {}),
    "OGMGE.load_state_dict": lambda: (bm.OGMGE(_branches(_model())).load_state_dict, dict(state=bm.OGMGE(_branches(_model())).state_dict())),
    "methods.MMPareto": lambda: (bm.MMPareto, dict(branches=_branches(_model()), gamma=1.5)),
    "MMPareto.backward": _mmpareto_backward,
    "MMPareto.state_dict": lambda: (bm.MMPareto(_branches(_model())).state_dict, {}),
    "MMPareto.load_state_dict": lambda: (bm.MMPareto(_branches(_model())).load_state_dict, dict(state={})),
    "methods.GroupDRO": lambda: (bm.GroupDRO, dict(num_groups=3, eta=0.1, present=[True, True, False])),
    "GroupDRO.from_train_groups": lambda: (bm.GroupDRO.from_train_groups, dict(train_groups=torch.tensor([0, 1, 1]), num_groups=3, eta=0.1)),
    "GroupDRO.loss": lambda: (bm.GroupDRO(3).loss, dict(per_sample_losses=torch.ones(3, requires_grad=True), groups=torch.tensor([0, 1, 1]))),
    "GroupDRO.state_dict": lambda: (bm.GroupDRO(3).state_dict, {}),
    "GroupDRO.load_state_dict": lambda: (bm.GroupDRO(3).load_state_dict, dict(state_dict=bm.GroupDRO(3).state_dict())),
    "methods.group_ids": lambda: (bm.group_ids, dict(labels=LABELS, bias=BIAS, num_bias=2)),
    "methods.JTT": lambda: (bm.JTT, dict(upweight=5.0, fraction=0.5)),
    "JTT.stage_one_epochs": lambda: (bm.JTT().stage_one_epochs, dict(epochs=10)),
    "JTT.record": lambda: (bm.JTT().record, dict(indices=torch.arange(6), logits=torch.zeros(6, 3), labels=LABELS)),
    "JTT.finish": lambda: (_jtt(finished=False).finish, {}),
    "JTT.weights": lambda: (_jtt(finished=True).weights, dict(indices=torch.arange(6))),
    "JTT.loss": lambda: (_jtt(finished=True).loss, dict(per_sample_losses=torch.ones(6, requires_grad=True), indices=torch.arange(6))),
    "JTT.state_dict": lambda: (bm.JTT().state_dict, {}),
    "JTT.load_state_dict": lambda: (bm.JTT().load_state_dict, dict(state_dict=_jtt(finished=True).state_dict())),
    "methods.DandR": lambda: (bm.DandR, dict(branches=_branches(_model()), every=2, max_times=3, seed=0)),
    "DandR.due": lambda: (bm.DandR(_branches(_model())).due, dict(epoch=3)),
    "DandR.epoch_end": _epoch_end,
    "DandR.state_dict": lambda: (bm.DandR(_branches(_model())).state_dict, {}),
    "DandR.load_state_dict": lambda: (bm.DandR(_branches(_model())).load_state_dict, dict(state_dict=bm.DandR(_branches(_model())).state_dict())),
    "methods.DFR": lambda: (bm.DFR, dict(c_grid=(1.0, 3.0), subsets=2, tune_subsets=1, seed=0, max_iter=100)),
    "DFR.fit": lambda: (bm.DFR(c_grid=(1.0,), subsets=1).fit, dict(**_dfr_data(), num_classes=2, split="val")),
    "DFRResult.logits": lambda: (_dfr_result().logits, dict(features=torch.zeros(2, 3))),
    "DFRResult.write_into": lambda: (_dfr_result().write_into, dict(classifier=nn.Linear(3, 2))),
    "DFRResult.to_dict": lambda: (_dfr_result().to_dict, {}),
    "methods.classifier_inputs": _with_model(lambda m: (bm.classifier_inputs, dict(model=m, classifier=m.head, batches=[(A, B)],
                                                                                   forward=lambda model, batch: model(*batch)))),
    "methods.holdout_indices": lambda: (bm.holdout_indices, dict(num_samples=10, fraction=0.2, seed=0)),
    "methods.BalGrad": _with_model(lambda m: (bm.BalGrad, dict(branches=_branches(m), lambda_initial=0.1, schedule="linear", beta=1.0,
                                                               kl_mode="mutual", projection="global", weights="batch", model=m))),
    "BalGrad.backward": _balgrad_backward,
    "BalGrad.state_dict": lambda: (bm.BalGrad(_branches(_model())).state_dict, {}),
    "BalGrad.load_state_dict": lambda: (bm.BalGrad(_branches(_model())).load_state_dict, dict(state=bm.BalGrad(_branches(_model())).state_dict())),
    "BalGradStep.to_dict": lambda: (bm.BalGradStep(1.0, 1.0, 1.0, 0.5, 0.5, 0.1, 0.0, 0.0, False).to_dict, {}),
    "methods.UnimodalHeads": _with_model(lambda m: (bm.UnimodalHeads, dict(model=m, branches=_branches(m), mode="separate", classifier=None,
                                                                           num_classes=3, widths={"image": 3, "text": 3}, seed=0))),
    "UnimodalHeads.capture": lambda: (_heads()[1].capture, {}),
    "UnimodalHeads.branch_outputs": lambda: (_heads(captured=True)[1].branch_outputs, {}),
    "UnimodalHeads.output_problems": lambda: (_heads(captured=True)[1].output_problems, {}),
    "UnimodalHeads.logits": lambda: ((pair := _heads(captured=True))[1].logits, dict(rerun=lambda: pair[0](A, B)[0])),
    "UnimodalHeads.parameters": lambda: (_heads()[1].parameters, {}),
    "UnimodalHeads.state_dict": lambda: (_heads()[1].state_dict, {}),
    "UnimodalHeads.load_state_dict": lambda: (_heads()[1].load_state_dict, dict(state=_heads()[1].state_dict())),
    "methods.branch_widths": _with_model(lambda m: (bm.branch_widths, dict(model=m, branches=_branches(m), run=lambda: m(A, B)))),
    "methods.MMDB": lambda: (bm.MMDB, dict(classifier=_model().head, margins=_table(), scale=4.0)),
    "MMDB.capture": lambda: (_mmdb().capture, {}),
    "MMDB.cosines": lambda: (_mmdb().cosines, dict(features=torch.ones(6, 6))),
    "MMDB.loss": lambda: (_mmdb().loss, dict(features=torch.ones(6, 6, requires_grad=True), labels=LABELS, bias=BIAS)),
    "MMDB.inference_logits": lambda: (_mmdb().inference_logits, dict(features=torch.ones(6, 6))),
    "MMDB.export": lambda: (_mmdb().export, dict(classifier=nn.Linear(6, 3))),
    "MMDB.state_dict": lambda: (_mmdb().state_dict, {}),
    "MMDB.load_state_dict": lambda: (_mmdb().load_state_dict, dict(state=_mmdb().state_dict())),
    "MarginTable.to_dict": lambda: (_table().to_dict, {}),
    "methods.margin_table": lambda: (bm.margin_table, dict(labels=LABELS, bias=BIAS, num_classes=3, num_bias=2, min_count=0, entropy_gate=0.5)),
}

# Classes in biasaudit.methods that users do not construct, and why.
METHOD_NOT_CALLED = {
    "DFRResult": "returned by DFR.fit; its methods are listed one by one",
    "BalGradStep": "a record returned by BalGrad.backward; its method is listed",
    "MarginTable": "returned by margin_table; its method is listed",
}
METHOD_USER_BUILT = {"OGMGE", "MMPareto", "GroupDRO", "JTT", "DandR", "DFR", "BalGrad", "UnimodalHeads", "MMDB"}


def test_every_public_callable_of_the_methods_is_covered_by_this_test():
    assert _public_callables(bm, "methods", user_built=METHOD_USER_BUILT, not_called=METHOD_NOT_CALLED, calls=METHOD_CALLS) == set(METHOD_CALLS)


def _method_parameters(name: str) -> list[str]:
    owner, attr = name.split(".")
    return _signature_parameters(getattr(bm, attr) if owner == "methods" else getattr(getattr(bm, owner), attr))


METHOD_PARAMETERS = [(call, parameter) for call in METHOD_CALLS for parameter in _method_parameters(call)]


@pytest.mark.parametrize("call,parameter", METHOD_PARAMETERS, ids=[f"{c}({p}=Alien())" for c, p in METHOD_PARAMETERS])
def test_a_wrong_type_given_to_a_method_is_a_type_error_naming_the_parameter(call, parameter):
    function, arguments = METHOD_CALLS[call]()
    _assert_a_type_error_naming(function, arguments, parameter, re.escape(f"'{parameter}'"))


@dataclasses.dataclass
class Alongside:
    """A value that is wrong only together with other arguments: a classifier only matters in the ogm_split mode."""

    value: Any
    others: dict[str, Any]


# (call, parameter) -> a value of the right type that is wrong (or an Alongside).
METHOD_WRONG_VALUES: dict[tuple[str, str], Callable[[], Any]] = {
    **{(call, "branches"): (lambda: {"image": nn.Linear(4, 3)}) for call in ("methods.OGMGE", "methods.MMPareto", "methods.BalGrad",
                                                                             "methods.UnimodalHeads")},
    ("methods.DandR", "branches"): lambda: {},  # D&R takes one branch or more
    **{(call, "seed"): (lambda: -1) for call in ("methods.OGMGE", "methods.DandR", "methods.DFR", "methods.holdout_indices",
                                                 "methods.UnimodalHeads")},
    **{(call, "state"): (lambda: {"wrong": 1}) for call in ("OGMGE.load_state_dict", "MMPareto.load_state_dict",
                                                            "BalGrad.load_state_dict", "UnimodalHeads.load_state_dict", "MMDB.load_state_dict")},
    **{(call, "state_dict"): (lambda: {"wrong": torch.ones(1)}) for call in ("GroupDRO.load_state_dict", "JTT.load_state_dict",
                                                                            "DandR.load_state_dict")},
    ("methods.OGMGE", "alpha"): lambda: 0.0, ("methods.OGMGE", "modulation_epochs"): lambda: (3, 3),
    ("OGMGE.set_epoch", "epoch"): lambda: -1,
    ("OGMGE.after_backward", "unimodal_logits"): lambda: {"image": torch.zeros(6, 3)},
    ("OGMGE.after_backward", "labels"): lambda: torch.zeros(6),  # float, not class indices
    ("methods.MMPareto", "gamma"): lambda: -1.0,
    ("MMPareto.backward", "fused_loss"): lambda: torch.zeros(3),  # not a scalar loss
    ("MMPareto.backward", "unimodal_losses"): lambda: {"image": torch.tensor(1.0, requires_grad=True)},
    ("methods.GroupDRO", "num_groups"): lambda: 0, ("methods.GroupDRO", "eta"): lambda: -1.0,
    ("methods.GroupDRO", "present"): lambda: [True],  # one flag for three groups
    ("GroupDRO.from_train_groups", "train_groups"): lambda: torch.tensor([0, 5]),  # group 5 of 3
    ("GroupDRO.from_train_groups", "num_groups"): lambda: 0, ("GroupDRO.from_train_groups", "eta"): lambda: -1.0,
    ("GroupDRO.loss", "per_sample_losses"): lambda: torch.ones(2, requires_grad=True),  # 2 losses for 3 group ids
    ("GroupDRO.loss", "groups"): lambda: torch.tensor([0, 1, 7]),
    ("methods.group_ids", "labels"): lambda: torch.tensor([0, 1]), ("methods.group_ids", "bias"): lambda: torch.tensor([0, 1, 5, 0, 1, 0]),
    ("methods.group_ids", "num_bias"): lambda: 0,
    ("methods.JTT", "upweight"): lambda: -1.0, ("methods.JTT", "fraction"): lambda: 1.5,
    ("JTT.stage_one_epochs", "epochs"): lambda: 0,
    ("JTT.record", "indices"): lambda: torch.tensor([-1, 1, 2, 3, 4, 5]), ("JTT.record", "logits"): lambda: torch.zeros(6),
    ("JTT.record", "labels"): lambda: torch.tensor([0, 1]),
    ("JTT.weights", "indices"): lambda: torch.tensor([0.5]),
    ("JTT.loss", "per_sample_losses"): lambda: torch.ones(2, requires_grad=True), ("JTT.loss", "indices"): lambda: torch.tensor([0.5]),
    ("methods.DandR", "every"): lambda: 0, ("methods.DandR", "max_times"): lambda: -1,
    ("DandR.due", "epoch"): lambda: -1, ("DandR.epoch_end", "epoch"): lambda: -1,
    **{("DandR.epoch_end", f"{split}_features"): (lambda: {"image": torch.zeros(10, 3)}) for split in ("train", "val")},
    **{("DandR.epoch_end", f"{split}_labels"): (lambda: torch.zeros(3, dtype=torch.long)) for split in ("train", "val")},
    ("methods.DFR", "c_grid"): lambda: (-1.0,), ("methods.DFR", "subsets"): lambda: 0, ("methods.DFR", "tune_subsets"): lambda: 0,
    ("methods.DFR", "max_iter"): lambda: 0,
    ("DFR.fit", "features"): lambda: torch.zeros(3, 3), ("DFR.fit", "labels"): lambda: torch.zeros(3, dtype=torch.long),
    ("DFR.fit", "groups"): lambda: torch.zeros(3, dtype=torch.long), ("DFR.fit", "num_classes"): lambda: 1,
    ("DFRResult.logits", "features"): lambda: torch.zeros(2, 5), ("DFRResult.write_into", "classifier"): lambda: nn.Linear(5, 2),
    ("methods.classifier_inputs", "model"): lambda: nn.Linear(1, 1),  # its classifier is not part of it
    ("methods.classifier_inputs", "classifier"): lambda: nn.Linear(6, 3), ("methods.classifier_inputs", "batches"): lambda: [],
    ("methods.classifier_inputs", "forward"): lambda: (lambda model, batch: None),
    ("methods.holdout_indices", "num_samples"): lambda: 0, ("methods.holdout_indices", "fraction"): lambda: 1.5,
    ("methods.BalGrad", "lambda_initial"): lambda: 1.5, ("methods.BalGrad", "beta"): lambda: -1.0,
    **{("methods.BalGrad", option): (lambda: "nosuch") for option in ("schedule", "kl_mode", "projection", "weights")},
    ("methods.BalGrad", "model"): lambda: nn.Linear(1, 1),  # the branches are not part of it
    ("BalGrad.backward", "fused_loss"): lambda: torch.zeros(3), ("BalGrad.backward", "unimodal_logits"): lambda: {"image": torch.zeros(6, 3)},
    ("BalGrad.backward", "labels"): lambda: torch.zeros(2, dtype=torch.long), ("BalGrad.backward", "step"): lambda: -1,
    ("BalGrad.backward", "total_steps"): lambda: 0, ("BalGrad.backward", "loss_scale"): lambda: 0.0,
    ("methods.UnimodalHeads", "model"): lambda: nn.Linear(1, 1), ("methods.UnimodalHeads", "mode"): lambda: "nosuch",
    ("methods.UnimodalHeads", "classifier"): lambda: Alongside(nn.Linear(6, 3), {"mode": "ogm_split", "num_classes": None, "widths": None}),
    ("methods.UnimodalHeads", "num_classes"): lambda: 0, ("methods.UnimodalHeads", "widths"): lambda: {"image": 3},
    ("UnimodalHeads.logits", "rerun"): lambda: None,  # the ogm_split mode runs the forward again
    ("methods.branch_widths", "branches"): lambda: {"image": nn.Linear(1, 1)},
    ("methods.branch_widths", "model"): lambda: nn.Linear(1, 1),  # it does not hold the branches
    ("methods.branch_widths", "run"): lambda: (lambda: None),  # it runs no forward
    ("methods.MMDB", "classifier"): lambda: nn.Linear(6, 5), ("methods.MMDB", "margins"): lambda: torch.zeros(2, 2),
    ("methods.MMDB", "scale"): lambda: 0.0,
    **{(call, "features"): (lambda: torch.zeros(6, 2)) for call in ("MMDB.cosines", "MMDB.loss", "MMDB.inference_logits")},
    ("MMDB.loss", "labels"): lambda: torch.tensor([0, 1]), ("MMDB.loss", "bias"): lambda: torch.tensor([0, 1, 0, 1, 0, 9]),
    ("MMDB.export", "classifier"): lambda: nn.Linear(2, 2),
    ("methods.margin_table", "labels"): lambda: torch.tensor([0, 1, 2, 0, 1, 9]), ("methods.margin_table", "bias"): lambda: torch.tensor([0, 1, 0, 1, 0, 9]),
    ("methods.margin_table", "num_classes"): lambda: 0, ("methods.margin_table", "num_bias"): lambda: 0,
    ("methods.margin_table", "min_count"): lambda: -1, ("methods.margin_table", "entropy_gate"): lambda: -1.0,
}

# (call, parameter) -> why every value of the right type is a valid one.
METHOD_EVERY_VALUE_FITS = {
    ("methods.OGMGE", "ge"): "True or False",
    ("DFR.fit", "split"): "names the data's source in the result; any name is valid",
}


def test_every_method_parameter_has_a_wrong_value_or_a_reason_why_none_exists():
    assert set(METHOD_PARAMETERS) == set(METHOD_WRONG_VALUES) | set(METHOD_EVERY_VALUE_FITS)
    assert not set(METHOD_WRONG_VALUES) & set(METHOD_EVERY_VALUE_FITS)


METHOD_VALUED = sorted(METHOD_WRONG_VALUES)


@pytest.mark.parametrize("call,parameter", METHOD_VALUED, ids=[f"{c}({p})" for c, p in METHOD_VALUED])
def test_a_wrong_value_given_to_a_method_is_a_value_error_naming_it(call, parameter):
    function, arguments = METHOD_CALLS[call]()
    value = METHOD_WRONG_VALUES[(call, parameter)]()
    if isinstance(value, Alongside):
        arguments, value = {**arguments, **value.others}, value.value
    _assert_a_value_error_naming(function, arguments, parameter, value)


def test_a_keyword_a_method_does_not_take_lists_the_ones_it_does():
    for call in sorted(METHOD_CALLS):
        function, arguments = METHOD_CALLS[call]()
        with pytest.raises(ArgumentTypeError, match=r"has no parameter 'nosuch'\. Available: "):
            function(**arguments, nosuch=1)


def test_a_wrong_call_of_a_per_step_method_is_one_sentence_listing_its_parameters():
    """The methods a training step calls (a loss, a backward, an after-backward hook) check their call's shape without
    `checked`'s binding (biasaudit._core.arguments.checked_keywords), and still name a missing or extra argument."""
    for call in ("OGMGE.after_backward", "MMPareto.backward", "BalGrad.backward", "GroupDRO.loss", "JTT.loss", "MMDB.loss"):
        function, arguments = METHOD_CALLS[call]()
        first = next(iter(arguments))
        with pytest.raises(ArgumentTypeError, match=rf"^{re.escape(call)}: missing a required argument: '{first}'\. Its parameters: "):
            function(**{k: v for k, v in arguments.items() if k != first})
        with pytest.raises(ArgumentTypeError, match=rf"^{re.escape(call)}: multiple values for argument '{first}'"):
            function(arguments[first], **arguments)


@pytest.mark.parametrize("call, parameter, value, pattern", [
    ("MMDB.loss", "labels", torch.tensor([0, 1, 2, 0, 1, 9]),
     r"^The 'labels' parameter of MMDB\.loss holds class 9; expected class indices from 0 to 2"),
    ("MMDB.loss", "labels", torch.tensor([0, 1, 2, 0, 1, -1]), r"^The 'labels' parameter of MMDB\.loss holds class -1;"),
    ("JTT.record", "labels", torch.tensor([0, 1, 2, 0, 1, 3]),
     r"^The 'labels' parameter of JTT\.record holds class 3; expected class indices from 0 to 2, the columns of 'logits'\.$"),
    ("methods.branch_widths", "run", lambda: None, r"^The 'run' parameter of branch_widths ran no forward through any of the branches"),
])
def test_a_value_outside_what_the_other_arguments_allow_is_named(call, parameter, value, pattern):
    """Class indices beyond the logits' classes (a raw IndexError from the cross-entropy, or a device assert on a GPU,
    before), and a run that calls no forward (named as UnimodalHeads' branches, before)."""
    function, arguments = METHOD_CALLS[call]()
    with pytest.raises(InputError, match=pattern):
        function(**{**arguments, parameter: value})


@pytest.mark.parametrize("mode, parameter, user", [
    ("shared_zero", "classifier", "ogm_split"), ("separate", "classifier", "ogm_split"),
    ("shared_zero", "num_classes", "separate"), ("ogm_split", "num_classes", "separate"),
    ("shared_zero", "widths", "separate"), ("ogm_split", "widths", "separate"),
])
def test_a_head_argument_the_mode_does_not_use_is_refused_naming_the_mode_that_does(mode, parameter, user):
    """A silently ignored argument hides a mistake: a classifier given for ogm_split with the mode left at shared_zero
    would train other unimodal logits than the user meant."""
    model = _model()
    given = {"classifier": model.head, "num_classes": 3, "widths": {"image": 3, "text": 3}}
    needed = {"ogm_split": {"classifier": model.head}, "separate": {"num_classes": 3, "widths": {"image": 3, "text": 3}}}.get(mode, {})
    with pytest.raises(InputError, match=rf"^The '{parameter}' parameter of UnimodalHeads is .*, which the {mode} mode does not use; "
                                         rf"expected None, or mode='{user}', the mode that uses it\.$"):
        bm.UnimodalHeads(model, _branches(model), mode=mode, **{**needed, parameter: given[parameter]})
