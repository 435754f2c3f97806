"""`fix` trains with the optimiser the user names (issue 21: --optimizer adam|adamw|sgd, --weight-decay, --momentum).
If the loop ignored the choice, a team whose recipe is SGD with momentum would get a fixed model trained with Adam,
and a before/after comparison of a recipe they do not use."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from biasaudit.cli import app
from biasaudit.errors import CheckpointError, InputError
from biasaudit.training.epoch_batches import shuffled_batches
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.training_state import check_same_run, run_identity
from biasaudit.training.methods import make_method

FIXTURES = Path(__file__).parent / "fixtures"


def _adapter():
    spec = importlib.util.spec_from_file_location("shortcut_for_optimizers", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TrainableShortcutAdapter()


@pytest.mark.parametrize("optimizer, extra, build", [
    ("sgd", dict(momentum=0.9, weight_decay=0.01), lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.01)),
    ("adamw", dict(weight_decay=0.1), lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.1)),
    ("adam", {}, lambda p, lr: torch.optim.Adam(p, lr=lr)),
])
def test_the_loop_trains_with_the_named_optimizer_as_a_hand_written_loop_does(optimizer, extra, build):
    adapter = _adapter()
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16, optimizer=optimizer, **extra)
    model = adapter.build_model()
    by_hand = copy.deepcopy(model)
    train(model, adapter, make_method("ce"), config=config)
    torch_optimizer = build([p for p in by_hand.parameters() if p.requires_grad], config.lr)
    for epoch in range(config.epochs):
        for batch in shuffled_batches(adapter, config=config, epoch=epoch):
            torch_optimizer.zero_grad()
            F.cross_entropy(adapter.forward(by_hand, adapter.prepare(batch, device=torch.device("cpu"))), batch["label"]).backward()
            torch_optimizer.step()
    for (name, trained), expected in zip(model.state_dict().items(), by_hand.state_dict().values()):
        assert torch.allclose(trained, expected, atol=1e-6), name


def test_optimizers_differ_so_the_choice_reaches_the_loop():
    adapter = _adapter()
    trained = {}
    for optimizer in ("adam", "sgd"):
        model = adapter.build_model()
        train(model, adapter, make_method("ce"), config=TrainConfig(epochs=1, lr=0.05, batch_size=16, optimizer=optimizer))
        trained[optimizer] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(trained["adam"], trained["sgd"])


@pytest.mark.parametrize("settings, message", [
    (dict(optimizer="lbfgs"), "optimizer is 'lbfgs', which is unknown. Available: adam, adamw, sgd."),
    (dict(momentum=0.9), "momentum 0.9 applies to the sgd optimizer only; adam would ignore it."),
    (dict(optimizer="sgd", momentum=1.0), "momentum is 1.0; expected a number from 0 up to (not including) 1."),
    (dict(weight_decay=-0.1), "weight_decay is -0.1; expected a finite number >= 0."),
])
def test_an_optimizer_setting_that_would_be_ignored_or_diverge_is_refused(settings, message):
    """From Python the message names the setting as Python spells it (the command line names its flag: below)."""
    with pytest.raises(InputError) as raised:
        TrainConfig(**settings)
    assert str(raised.value).startswith(message)


def test_a_state_saved_before_the_optimizer_option_existed_resumes_as_adam_and_not_as_sgd():
    """A run interrupted under an older biasaudit trained with Adam: resuming it with the default continues it, and
    resuming it as SGD is refused naming the change."""
    saved = run_identity(make_method("ce"), TrainConfig())
    for key in ("optimizer", "weight_decay", "momentum"):
        del saved["config"][key]
    check_same_run(saved, run_identity(make_method("ce"), TrainConfig()))
    with pytest.raises(CheckpointError, match="--optimizer 'adam' -> 'sgd'"):
        check_same_run(saved, run_identity(make_method("ce"), TrainConfig(optimizer="sgd")))


def test_the_command_line_refuses_momentum_for_adam_before_any_work(shortcut_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["fix", str(shortcut_checkpoint), "--adapter", f"{FIXTURES / 'shortcut_adapter.py'}:TrainableShortcutAdapter",
                                      "--method", "ce", "--momentum", "0.9", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--momentum 0.9 applies to the sgd optimizer only" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--method", "ogm_ge", "--alpha", "0"], "--alpha is 0.0; expected a positive, finite number"),
    (["--method", "jtt", "--jtt-upweight", "0"], "--jtt-upweight is 0.0; expected a positive, finite number"),
    (["--method", "dandr", "--dandr-every", "0"], "--dandr-every is 0; expected an integer of at least 1"),
    (["--method", "balgrad", "--beta", "-1"], "--beta is -1.0; expected a finite number >= 0"),
    (["--method", "ce", "--weight-decay", "-1"], "--weight-decay is -1.0; expected a finite number >= 0"),
])
def test_a_refused_option_is_named_by_its_flag_on_the_command_line_and_by_its_keyword_from_python(shortcut_checkpoint, tmp_path,
                                                                                                   flags, message):
    """Errors raised from Python named command-line flags (`--kmeans-k is 1`): the library names the option, the
    command line translates it to the flag the user typed."""
    result = CliRunner().invoke(app, ["fix", str(shortcut_checkpoint), "--adapter", f"{FIXTURES / 'shortcut_adapter.py'}:TrainableShortcutAdapter",
                                      *flags, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output, result.output
    keyword = {"--jtt-upweight": "upweight", "--dandr-every": "every", "--weight-decay": "weight_decay"}.get(flags[2], flags[2][2:])
    with pytest.raises(InputError, match=rf"^{keyword} is "):
        if keyword == "weight_decay":
            TrainConfig(weight_decay=float(flags[3]))
        else:
            make_method(flags[1], **{keyword: float(flags[3]) if "." in flags[3] or flags[1] != "dandr" else int(flags[3])})
