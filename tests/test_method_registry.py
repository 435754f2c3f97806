"""The fix methods' one registry (biasaudit/training/methods.py): a name and where its driver lives, resolved on first
use. Adding a method is its driver file and one registry line; the command line, option selection and `ba.fix` read the
rest from there. If this broke, a method could be listed by `--help` and fail to load, or a new method would need
edits in places the README does not name."""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import biasaudit as ba
from biasaudit.errors import InputError
from biasaudit.training import methods as registry
from biasaudit.training.methods import METHODS, make_method, method_class

FIXTURES = Path(__file__).parent / "fixtures"
PROTOCOL = ("prepare", "export", "settings")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registry_entry_resolves_to_a_driver_of_the_loops_interface(name):
    driver = method_class(name)
    assert inspect.isclass(driver), METHODS[name]
    assert driver.name == name, f"{METHODS[name]} is named {driver.name!r}"
    for hook in PROTOCOL:
        assert callable(getattr(driver, hook, None)), f"{name}'s driver lacks {hook}()"
    if getattr(driver, "post_hoc", False):
        assert callable(getattr(driver, "refit", None)), f"{name} is post hoc but has no refit()"
    else:
        assert callable(getattr(driver, "gradients", None)), f"{name}'s driver lacks gradients()"
    grid = getattr(driver, "option_grid", None)
    if grid is not None:
        option, values = grid
        default = inspect.signature(driver).parameters[option].default
        assert isinstance(default, float) and values and all(isinstance(v, float) and v > 0 for v in values), (name, grid)


def test_the_option_grids_are_the_drivers_own_in_registry_order():
    from biasaudit.training.selection import OPTION_GRIDS

    expected = {name: method_class(name).option_grid for name in METHODS if hasattr(method_class(name), "option_grid")}
    assert OPTION_GRIDS == expected and list(OPTION_GRIDS) == [n for n in METHODS if n in expected]


def test_the_command_lines_method_choices_are_the_registry():
    from biasaudit.cli.choices import Method

    assert [choice.value for choice in Method] == list(METHODS)


def test_each_method_says_what_it_acts_on_and_the_warnings_read_it():
    """fix's treatment warnings (training/diagnosis.py) come from the registry: a method registered as acting on
    reliance is warned about when the carrier is not the dominant modality, whatever its name."""
    from biasaudit.training.diagnosis import treatment_warnings

    assert {entry.acts_on for entry in METHODS.values()} == {"reliance", "bias", "neither"}
    before = {"carrier": {"available": True, "carrier": "text"}, "summary": {"missing": {"dominant": "image"}}}
    warned = {name for name in METHODS if treatment_warnings(name, before)}
    assert warned == {name for name, entry in METHODS.items() if entry.acts_on == "reliance"} == {"balgrad", "ogm_ge", "mmpareto"}


def test_an_unknown_method_names_the_available_ones():
    with pytest.raises(InputError, match=r"Unknown method 'nope'\. Available: ce, mmdb, .*dfr\."):
        make_method("nope")
    with pytest.raises(InputError, match=r"Method 'ce' does not take these options"):
        make_method("ce", bogus=1)


class ToyCrossEntropy:
    """A new method as a user would add one: plain cross-entropy under another name, one driver class."""

    name = "toy_ce"

    def prepare(self, model, adapter, *, device) -> None:
        pass

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict:
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        labels = torch.as_tensor(batch[adapter.label_key]).to(device)
        loss = F.cross_entropy(logits, labels)
        (loss * (share * loss_scale)).backward()  # share: data-parallel; loss_scale: fp16's gradient scaler
        return {"loss": float(loss.detach())}

    def export(self, model, adapter) -> None:
        pass

    def settings(self) -> dict:
        return {}


@pytest.fixture
def toy_registered(monkeypatch):
    """ToyCrossEntropy registered by one registry line, its module importable as the registry imports every driver."""
    module = types.ModuleType("toy_fix_method")
    module.ToyCrossEntropy = ToyCrossEntropy
    monkeypatch.setitem(sys.modules, "toy_fix_method", module)
    monkeypatch.setitem(registry.METHODS, "toy_ce", registry.Registered("toy_fix_method:ToyCrossEntropy", "neither"))


def test_a_method_added_by_one_registry_line_trains_through_ba_fix(toy_registered, shortcut_checkpoint):
    import importlib.util

    spec = importlib.util.spec_from_file_location("shortcut_for_registry", FIXTURES / "shortcut_adapter.py")
    shortcut = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shortcut)
    adapter = shortcut.TrainableShortcutAdapter()
    model = adapter.build_model()
    model.load_state_dict(torch.load(shortcut_checkpoint, weights_only=True))
    quick = dict(epochs=1, projection="pca", bootstrap=50, conditions="missing", also_split=None)

    toy = ba.fix(model, adapter, method="toy_ce", **quick)
    control = ba.fix(model, adapter, method="ce", **quick)
    assert toy.train_log["training"]["method"] == "toy_ce"
    assert toy.train_log["steps"] and all(step["loss"] >= 0 for step in toy.train_log["steps"])
    # The same loss as ce under the same loop and seed: the toy trained exactly as a built-in method does.
    assert [s["loss"] for s in toy.train_log["steps"]] == [s["loss"] for s in control.train_log["steps"]]
    assert all(torch.equal(v, control.model.state_dict()[k]) for k, v in toy.model.state_dict().items())
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in toy.model.state_dict().items())
