"""Mixed precision in fix's training loop (`--precision bf16|fp16`, biasaudit/training/precision.py), on the CPU, whose
autocast takes bfloat16 and float16. If this broke, a user training in fp16 would get wrong gradients from a method
that mis-scales its losses (a step 65536 times too small, or an overflow skipped at every step), a skipped step would
go unnoticed in the train log, a resumed fp16 run would restart its gradient scaler and train differently from the
uninterrupted one, and `biasaudit fix --precision bf16` on a machine without CUDA would start work it cannot finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter
from biasaudit.errors import CheckpointError, InputError
from biasaudit.training import precision as precision_module
from biasaudit.training import rng_states
from biasaudit.training.driver import method_parameters
from biasaudit.training.epoch_batches import epoch_shape, process_batches
from biasaudit.training.loop import train
from biasaudit.training.methods import make_method
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.training_view import training_view

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from fix_ddp import ADAPTER, OPTIONS  # noqa: E402

sys.path.pop(0)

LOOP_METHODS = [name for name in OPTIONS if name != "dfr"]  # DFR refits post hoc: no training loop
CPU = torch.device("cpu")
# SGD with momentum: its update is proportional to the gradients, so the weights' gap measures the gradients' error.
# Adam divides each gradient by its own running size, so a parameter whose gradient is rounding noise moves by a full
# step either way, and its gap says little about the method's arithmetic.
SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}
# 8 steps: 40% of the demo's 989 training rows (the rest held out) in batches of 101, over the two epochs JTT and D&R need.
CONFIG = TrainConfig(epochs=2, batch_size=101, seed=3, holdout=0.6, **SGD)
# The relative gap of the update, ||Δw − Δw_fp32|| / ||Δw_fp32||, after those steps. Measured (torch 2.13, CPU): fp16
# at most 0.056 (JTT, whose error set is a count of argmax mistakes; the others 0.0003-0.018), bf16 at most 0.064 (MMDB,
# whose cosine logits times s = 16 amplify bf16's 8-bit mantissa; the others 0.007-0.03). The bounds are about twice
# those. A driver that ignored the fp16 loss scale would leave updates 65536 times too small (a gap of about 1), and one
# that scaled twice would overflow and skip every step (a gap of 1).
TOLERANCE = {"fp16": 0.1, "bf16": 0.15}
STEPS = epoch_shape(ADAPTER, config=CONFIG).steps  # per epoch


@pytest.fixture(scope="module")
def start() -> dict[str, torch.Tensor]:
    with rng_states.seeded_run(0):
        return ADAPTER.build_model().state_dict()


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.reshape(-1).float() for value in state.values() if value.is_floating_point()])


def run(method: str, start: dict, config: TrainConfig, **kwargs) -> tuple[dict[str, torch.Tensor], list[dict]]:
    model = ADAPTER.build_model()
    model.load_state_dict(start)
    log = train(model, ADAPTER, make_method(method, **OPTIONS[method]), config=config, **kwargs)
    return model.state_dict(), log


def forced_scaler(monkeypatch, *, backoff: float, growth_interval: int = 2000) -> None:
    """Every GradScaler starts at 2^127, where any loss times the scale overflows even float32."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(
        torch.amp,
        "GradScaler",
        lambda device: real(device, init_scale=2.0**127, backoff_factor=backoff, growth_interval=growth_interval),
    )


@pytest.mark.parametrize("method", LOOP_METHODS)
def test_every_method_trains_in_bf16_and_fp16_to_about_the_weights_of_fp32(method, start):
    w0 = flat(start)
    reference = flat(run(method, start, CONFIG)[0]) - w0
    assert float(reference.norm()) > 0.1, "the run must move the weights for the comparison to mean anything"
    for name, tolerance in TOLERANCE.items():
        state, log = run(method, start, TrainConfig(**{**CONFIG.to_dict(), "precision": name}))
        assert not any(entry.get("skipped") for entry in log), f"{method} {name}: a step overflowed at the default scale"
        gap = float((flat(state) - w0 - reference).norm() / reference.norm())
        assert gap <= tolerance, f"{method} in {name}: the update is {gap:.3f} away from fp32's (relative)"
        assert all(isinstance(entry["loss"], float) and 0 < entry["loss"] < 10 for entry in log), "logged losses unscaled"


def one_step_gradients(method: str, start: dict, *, loss_scale: float, stage_two: bool = False) -> torch.Tensor:
    """The driver's gradients of one batch (fp32, no autocast) divided by `loss_scale`, as the loop's unscale_ does:
    a fresh driver each time, prepared from the same seed, so that its state (OGM-GE's noise generator, Group DRO's
    q) is the same in every call."""
    model = ADAPTER.build_model()
    model.load_state_dict(start)
    with rng_states.seeded_run(CONFIG.seed):
        driver = make_method(method, **OPTIONS[method])
        view = training_view(ADAPTER, CONFIG)
        driver.prepare(model, view, device=CPU)
        if stage_two:  # JTT: its error set recorded and the model put back, as at the end of stage 1
            driver.epoch_end(model, view, epoch=0, epochs=2, device=CPU)
        indexed = bool(getattr(driver, "sample_index", False))
        batch = next(iter(process_batches(ADAPTER, config=CONFIG, epoch=0, index=indexed))).batch
        model.train()
        driver.gradients(model, ADAPTER, batch, step=3, total_steps=20, device=CPU, loss_scale=loss_scale)
    parameters = [p for p in model.parameters() if p.requires_grad] + method_parameters(driver)
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) / loss_scale for p in parameters])


@pytest.mark.parametrize("method", [*LOOP_METHODS, "jtt stage 2"])
def test_every_driver_scales_its_gradients_by_exactly_the_loss_scale(method, start):
    """What makes fp16 correct: S times the losses gives S times the gradients, so the scaler's unscale_ gives the
    unscaled ones, through BalGrad's projection, MMPareto's weights and OGM-GE's modulation and noise too. A power of
    two (every GradScaler scale) commutes with every rounding: bit for bit. Another factor (share times a scale in a
    data-parallel step) rounds: measured at most 2e-7, relative."""
    name, stage_two = method.split()[0], method.endswith("stage 2")
    unscaled = one_step_gradients(name, start, loss_scale=1.0, stage_two=stage_two)
    assert float(unscaled.norm()) > 0
    scaled = one_step_gradients(name, start, loss_scale=1024.0, stage_two=stage_two)
    assert torch.equal(scaled, unscaled), f"{method}: gradients at loss_scale=1024, unscaled, differ from loss_scale=1"
    rounded = one_step_gradients(name, start, loss_scale=3.0, stage_two=stage_two)
    gap = float((rounded - unscaled).norm() / unscaled.norm())
    assert gap <= 1e-6, f"{method}: gradients at loss_scale=3, unscaled, differ by {gap:.1e} (relative)"


@pytest.mark.parametrize("method", ["ce", "mmdb", "balgrad", "ogm_ge", "mmpareto", "groupdro"])
def test_a_step_whose_gradients_overflow_is_skipped_leaving_the_weights_and_the_log_says_so(method, start, monkeypatch):
    forced_scaler(monkeypatch, backoff=0.5)  # 2^127 halved per skip: every step of one epoch overflows
    state, log = run(method, start, TrainConfig(**{**CONFIG.to_dict(), "epochs": 1, "precision": "fp16"}))
    assert len(log) == STEPS and all(entry.get("skipped") is True for entry in log)
    assert [entry["loss_scale"] for entry in log[:2]] == [2.0**127, 2.0**126], "the scale is lowered after each skip"
    for key, value in start.items():
        assert torch.equal(state[key], value), f"{method}: {key} changed in a skipped step"


def test_a_resumed_fp16_run_continues_its_scaler_and_gives_the_uninterrupted_weights(start, monkeypatch, tmp_path):
    # 2^127, 2^87, 2^47 overflow (steps 0-2 are skipped), then 2^7, doubled after every two good steps: a run that
    # restarted the scaler on resume would skip three more steps in the second epoch.
    forced_scaler(monkeypatch, backoff=2.0**-40, growth_interval=2)
    config = TrainConfig(**{**CONFIG.to_dict(), "precision": "fp16"})
    whole, whole_log = run("ce", start, config)
    assert STEPS >= 4 and [entry["step"] for entry in whole_log if entry.get("skipped")] == [0, 1, 2]

    def interrupt(stage: str, done: int, total: int, status: str = "") -> None:
        if done == STEPS + 2:  # in the second epoch, after the state of the first was saved
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("ce", start, config, state_dir=tmp_path, progress=interrupt)
    resumed, resumed_log = run("ce", start, config, state_dir=tmp_path, resume=True)
    assert resumed_log == whole_log
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), f"{key} differs from the uninterrupted run's"
    with pytest.raises(CheckpointError, match=r"--precision 'fp16' -> 'fp32'"):
        run("ce", start, CONFIG, state_dir=tmp_path, resume=True)


def test_an_unknown_precision_is_refused_naming_the_available_ones():
    with pytest.raises(InputError, match=r"^precision is 'fp8', which is unknown\. Available: fp32, bf16, fp16\.$"):
        TrainConfig(precision="fp8")


class Unscaled:
    """A user's driver written before mixed precision: its gradients() takes no loss_scale."""

    name = "unscaled"

    def prepare(self, model, adapter, *, device) -> None:
        pass

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0) -> dict:
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        loss = F.cross_entropy(logits, torch.as_tensor(batch[adapter.label_key]).to(device))
        (loss * share).backward()
        return {"loss": float(loss.detach())}

    def export(self, model, adapter) -> None:
        pass

    def settings(self) -> dict:
        return {}


def test_a_driver_without_loss_scale_trains_in_bf16_and_is_refused_in_fp16_before_any_step(start):
    model = ADAPTER.build_model()
    model.load_state_dict(start)
    one_epoch = {**CONFIG.to_dict(), "epochs": 1}
    assert len(train(model, ADAPTER, Unscaled(), config=TrainConfig(**{**one_epoch, "precision": "bf16"}))) == STEPS
    model.load_state_dict(start)
    with pytest.raises(InputError, match=r"method 'unscaled'.s gradients\(\) takes no loss_scale keyword"):
        train(model, ADAPTER, Unscaled(), config=TrainConfig(**{**one_epoch, "precision": "fp16"}))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in start.items())
    assert precision_module.takes_loss_scale(make_method("ce"))


def test_ba_fix_trains_in_the_precision_of_its_audits(start, monkeypatch):
    """ba.fix's `precision` setting is the training's too (the CUDA check of the audits is lifted here: the training
    config is caught before any audit)."""
    import biasaudit as ba
    import biasaudit.scanning.config as scan_config
    import biasaudit.training.fix as fix_module

    seen = {}

    class Caught(Exception):
        pass

    def fix_model(model, adapter, *, train_config, scan_config, **kwargs):
        seen["train"], seen["scan"] = train_config.precision, scan_config.precision
        raise Caught

    monkeypatch.setattr(scan_config, "check_precision", lambda precision, device: None)
    monkeypatch.setattr(fix_module, "fix_model", fix_model)
    model = ADAPTER.build_model()
    model.load_state_dict(start)
    with pytest.raises(Caught):
        ba.fix(model, ADAPTER, method="ce", precision="bf16")
    assert seen == {"train": "bf16", "scan": "bf16"}


def test_ba_fix_in_16_bits_on_the_cpu_is_refused_before_any_work(start):
    import biasaudit as ba

    model = ADAPTER.build_model()
    with pytest.raises(InputError, match=r"precision is 'fp16', which needs a CUDA device"):
        ba.fix(model, ADAPTER, method="ce", precision="fp16")


def test_fix_precision_bf16_on_the_cpu_exits_2_with_one_sentence_and_writes_nothing(start, tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(start, checkpoint)
    adapter = f"{Path(__file__).parents[1] / 'examples' / 'digits_captions_adapter.py'}:adapter"
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "biasaudit"
    result = subprocess.run(
        [str(script), "fix", str(checkpoint), "--adapter", adapter, "--method", "ce", "--precision", "bf16", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "'bf16', which needs a CUDA device" in message and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_a_leaderboard_trains_and_audits_in_its_precision_and_refuses_16_bits_on_the_cpu(tmp_path):
    from typer.testing import CliRunner

    from biasaudit.choosing.runs import LeaderboardSettings
    from biasaudit.cli import app

    settings = LeaderboardSettings(methods=("ce",), seeds=(0, 1), precision="bf16")
    assert settings.train_config(0, "cuda").precision == settings.scan_config(0, "cuda").precision == "bf16"
    checkpoint = tmp_path / "model.pt"
    torch.save(DigitsCaptionsAdapter().build_model().state_dict(), checkpoint)
    adapter = str(Path(__file__).resolve().parents[1] / "examples" / "digits_captions_adapter.py") + ":adapter"
    result = CliRunner().invoke(app, ["leaderboard", str(checkpoint), "--adapter", adapter, "--precision", "bf16",
                                      "--out", str(tmp_path / "board")])
    assert result.exit_code == 2 and "needs a CUDA device" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "board").exists()
