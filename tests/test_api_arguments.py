"""Mistakes made from Python at the public API's edge (issue 20). Every public function, user-built class and result
method checks its arguments before any work: a wrong type raises ArgumentTypeError (a BiasAuditError and a
TypeError), a wrong value InputError (a BiasAuditError and a ValueError), each one sentence naming the parameter. If
this broke, a notebook user would meet an AttributeError from deep inside a scan, a setting half-read into an audit
of the wrong conditions, or a FileExistsError naming a temporary file, instead of a sentence saying what to change.

The enumeration is the test's own guard: every public callable found on `biasaudit` must have an entry in CALLS, and
every one of its parameters a wrong value in WRONG_VALUES or a reason in EVERY_VALUE_FITS, so a parameter added
later without a check fails here until it has one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import biasaudit as ba
from biasaudit.errors import ArgumentTypeError, BiasAuditError, InputError

FIXTURES = Path(__file__).parent / "fixtures"
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


# name -> (the callable, right keyword arguments for every parameter the test varies), from the world.
CALLS: dict[str, Callable[[World], tuple[Callable, dict[str, Any]]]] = {
    "ba.scan": lambda w: (ba.scan, dict(model=w.model, adapter=w.adapter, **FAST)),
    "ba.fix": lambda w: (ba.fix, dict(model=w.model, adapter=w.trainable, method="ce", epochs=1, projection="pca", bootstrap=50)),
    "ba.compare": lambda w: (ba.compare, dict(before=w.audit, after=w.audit)),
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
}

# Classes on `biasaudit` that users do not construct or call methods of, and why.
NOT_CALLED = {
    "Summary": "a typed record inside an Audit, built by Audit.from_dict",
    "GapSummary": "a typed record inside an Audit, built by Audit.from_dict",
    "ConditionResult": "a typed record inside an Audit, built by Audit.from_dict",
    "Change": "a typed record inside a Comparison, built by Comparison.from_dict",
    "RuleResult": "a typed record inside a GateResult, built by GateResult.from_dict",
    "FixResult": "returned by ba.fix; it has no methods",
    "Audit": "returned by ba.scan and Audit.read; its methods are listed one by one",
    "Comparison": "returned by ba.compare; its methods are listed one by one",
    "GateResult": "returned by ba.gate; its methods are listed one by one",
    "Adapter": "the base class users subclass: its methods are theirs to write, checked by validate_adapter",
    "BiasAuditError": "the exception family itself",
}
USER_BUILT = {"GateRules", "Modality"}


def _public_callables() -> set[str]:
    found = set()
    for name in ba.__all__:
        obj = getattr(ba, name)
        if inspect.isfunction(obj):
            found.add(f"ba.{name}")
        elif inspect.isclass(obj):
            if name in USER_BUILT:
                found.add(f"ba.{name}")
            else:
                assert name in NOT_CALLED or any(key.startswith(name + ".") for key in CALLS), f"ba.{name} is neither listed nor excluded"
            if name not in ("Adapter", "BiasAuditError"):
                found |= {f"{name}.{attr}" for attr, value in vars(obj).items()
                          if not attr.startswith("_") and (inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)))}
    return found


def test_every_public_callable_is_covered_by_this_test():
    assert _public_callables() == set(CALLS)


def _parameters(name: str) -> list[str]:
    """The parameters a caller can get wrong: the signature's, and for ba.scan the ScanConfig settings it takes by name."""
    target = {"ba.scan": ba.scan, "ba.fix": ba.fix, "ba.compare": ba.compare, "ba.gate": ba.gate}.get(name)
    if name in ("ba.GateRules", "ba.Modality"):
        return [f.name for f in dataclasses.fields(getattr(ba, name[3:]))]
    if target is None:
        cls, method = name.split(".")
        target = getattr(getattr(ba, cls), method)
    names = [p.name for p in inspect.signature(target).parameters.values()
             if p.name not in ("self", "cls") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if name == "ba.scan":
        from biasaudit.api import _settings

        names += sorted(_settings())
    return names


PARAMETERS = [(call, parameter) for call in CALLS for parameter in _parameters(call)]


def _no_work(monkeypatch) -> None:
    """A check that comes after the scan or the training started fails the test instead of running it."""
    def started(*args, **kwargs):
        raise AssertionError("work began before the arguments were checked")

    monkeypatch.setattr("biasaudit.audit.scan_model", started)
    monkeypatch.setattr("biasaudit.fixing.fix_model", started)


@pytest.mark.parametrize("call,parameter", PARAMETERS, ids=[f"{c}({p}=Alien())" for c, p in PARAMETERS])
def test_a_wrong_type_is_a_type_error_naming_the_parameter(call, parameter, world, monkeypatch):
    _no_work(monkeypatch)
    function, arguments = CALLS[call](world)
    with pytest.raises(ArgumentTypeError) as raised:
        function(**{**arguments, parameter: Alien()})
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, BiasAuditError)
    assert f"'{parameter}'" in str(raised.value) and str(raised.value).count(". ") <= 3, str(raised.value)


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
    ("ba.fix", "state_dir"): _regular_file,
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
}

# (call, parameter) -> why every value of the right type is a valid one.
EVERY_VALUE_FITS = {
    **{(call, "model"): "any nn.Module; one the adapter's inputs do not fit fails at its first forward, with the adapter named "
       "(tests/test_bad_inputs.py)" for call in ("ba.scan", "ba.fix")},
    **{(call, "progress"): "any callable; one of the wrong arity is adapted (biasaudit/progress.py)" for call in ("ba.scan", "ba.fix")},
    ("ba.scan", "distributed"): "True or False: both are valid anywhere (outside a process group True scans alone)",
    ("ba.scan", "mute_compare"): "True or False", ("ba.fix", "inplace"): "True or False",
    ("ba.GateRules", "significant"): "True or False",
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
    value = WRONG_VALUES[(call, parameter)](world)
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
        (lambda: ba.scan("model.pt", adapter), ArgumentTypeError, r"The 'model' parameter of ba\.scan must be a torch\.nn\.Module; "
         r"got str 'model\.pt'\. To scan a checkpoint file, load it with adapter\.build_model\(\)"),
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
    (lambda w: ba.scan(w.model, w.adapter, unimodal_models={"content": "content.pt"}),
     r"must be a mapping \(dict\) of str to torch\.nn\.Module or None; got dict with keys 'content', whose 'content' is str 'content\.pt'\."),
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
