"""The Lightning and Hugging Face integrations (issue 21, item 2): a method applied by the framework's callback or
Trainer subclass gives the same weights as the plain loop calling the same component on the same batches; the
method's state reaches the checkpoint; biasaudit imports without the frameworks; the examples run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from biasaudit.errors import InputError
from biasaudit.methods import OGMGE, DandR, GroupDRO, MMPareto, group_ids

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, EPOCHS, LR = 48, 12, 2, 0.2


class Net(nn.Module):
    """Two branches into one linear head; the unimodal logits are the head's weight slices (ogm_split)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.image, self.text = nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Sequential(nn.Linear(3, 4), nn.Tanh())
            self.head = nn.Linear(8, 3)

    def forward(self, image, text, labels=None):
        fi, ft = self.image(image), self.text(text)
        w, b = self.head.weight, self.head.bias
        unimodal = {"image": F.linear(fi, w[:, :4], b / 2), "text": F.linear(ft, w[:, 4:], b / 2)}
        return {"logits": self.head(torch.cat([fi, ft], dim=1)), "unimodal_logits": unimodal}


def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (N,), generator=generator)
    bias = torch.where(torch.rand(N, generator=generator) < 0.8, y, torch.randint(0, 3, (N,), generator=generator))
    image = torch.randn(N, 5, generator=generator) + 0.5 * y[:, None]
    text = F.one_hot(bias, 3).float() + 0.1 * torch.randn(N, 3, generator=generator)
    return TensorDataset(image, text, y, group_ids(y, bias, num_bias=3))


def ogm_for(net: Net) -> OGMGE:
    return OGMGE({"image": net.image, "text": net.text}, alpha=0.5, seed=3)


def gdro_for(train: TensorDataset) -> GroupDRO:
    return GroupDRO.from_train_groups(train.tensors[3], num_groups=9, eta=0.5)


def plain(method: str, batches: list[tuple[torch.Tensor, ...]], epochs: int = EPOCHS) -> tuple[Net, object]:
    """The plain loop of the methods' docstrings, SGD, the given batches in order every epoch."""
    net = Net()
    component = ogm_for(net) if method == "ogm" else gdro_for(data())
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    for epoch in range(epochs):
        for image, text, y, g in batches:
            optimizer.zero_grad()
            out = net(image, text)
            if method == "ogm":
                F.cross_entropy(out["logits"], y).backward()
                component.after_backward(out["unimodal_logits"], y)
            else:
                component.loss(F.cross_entropy(out["logits"], y, reduction="none"), g).backward()
            optimizer.step()
    return net, component


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def batches_of(train: TensorDataset, size: int = BATCH) -> list[tuple[torch.Tensor, ...]]:
    return list(DataLoader(train, batch_size=size, shuffle=False))


# ---- Lightning ----

import lightning  # noqa: E402  # the test extra installs it: a missing framework must fail the suite, not skip it

from biasaudit.integrations.lightning import BiasFixCallback as LightningCallback, scale_as_loss  # noqa: E402


class Module(lightning.LightningModule):
    def __init__(self, method: str, gdro: GroupDRO | None = None) -> None:
        super().__init__()
        self.net, self.method, self.gdro = Net(), method, gdro

    def training_step(self, batch, batch_idx):
        image, text, y, g = batch
        out = self.net(image, text)
        if self.method == "ogm":
            self.biasaudit_outputs = {"unimodal_logits": out["unimodal_logits"], "labels": y}
            return F.cross_entropy(out["logits"], y)
        return self.gdro.loss(F.cross_entropy(out["logits"], y, reduction="none"), g)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def fit(module: Module, callback: LightningCallback, tmp_path: Path) -> lightning.Trainer:
    trainer = lightning.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, deterministic=True, callbacks=[callback],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data(), batch_size=BATCH, shuffle=False))
    return trainer


def test_lightning_ogm_ge_callback_equals_the_plain_loop(tmp_path):
    module = Module("ogm")
    ogm = ogm_for(module.net)
    fit(module, LightningCallback(ogm), tmp_path)
    net, reference = plain("ogm", batches_of(data()))
    assert_same_weights(module.net, net)
    assert ogm.last.coefficients == pytest.approx(reference.last.coefficients, abs=1e-6)
    assert ogm.last.noise and min(ogm.last.coefficients.values()) < 1.0  # the test exercises modulation and noise


def test_lightning_group_dro_in_training_step_equals_the_plain_loop_and_q_is_checkpointed(tmp_path):
    gdro = gdro_for(data())
    module = Module("gdro", gdro)
    trainer = fit(module, LightningCallback(gdro), tmp_path)
    net, reference = plain("gdro", batches_of(data()))
    assert_same_weights(module.net, net)
    torch.testing.assert_close(gdro.q, reference.q, atol=1e-6, rtol=0)

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    key = next(k for k in saved if "GroupDRO" in k)
    fresh = gdro_for(data())
    LightningCallback(fresh).load_state_dict(saved[key])
    torch.testing.assert_close(fresh.q, gdro.q)


def test_lightning_mmpareto_through_backward_equals_the_plain_loop(tmp_path):
    class ParetoModule(Module):
        def training_step(self, batch, batch_idx):
            image, text, y, g = batch
            out = self.net(image, text)
            self.unimodal_losses = {m: F.cross_entropy(o, y) for m, o in out["unimodal_logits"].items()}
            return F.cross_entropy(out["logits"], y)

        def backward(self, loss, *args, **kwargs):
            self.mmp.backward(loss, scale_as_loss(self, self.unimodal_losses))

    module = ParetoModule("mmp")
    module.mmp = MMPareto({"image": module.net.image, "text": module.net.text})
    fit(module, LightningCallback(module.mmp), tmp_path)
    net = Net()
    mmp = MMPareto({"image": net.image, "text": net.text})
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    for epoch in range(EPOCHS):
        for image, text, y, g in batches_of(data()):
            optimizer.zero_grad()
            out = net(image, text)
            mmp.backward(F.cross_entropy(out["logits"], y),
                         {m: F.cross_entropy(o, y) for m, o in out["unimodal_logits"].items()})
            optimizer.step()
    assert_same_weights(module.net, net)


def test_lightning_callback_says_what_the_module_must_set(tmp_path):
    class Forgetful(Module):
        def training_step(self, batch, batch_idx):
            image, text, y, g = batch
            return F.cross_entropy(self.net(image, text)["logits"], y)

    module = Forgetful("ogm")
    with pytest.raises(InputError, match="biasaudit_outputs"):
        fit(module, LightningCallback(ogm_for(module.net)), tmp_path)
    with pytest.raises(InputError, match="'features' parameter"):
        LightningCallback(DandR({"image": module.net.image}))
    with pytest.raises(InputError, match="biasaudit.methods"):
        LightningCallback(object())


# ---- Hugging Face ----

import accelerate  # noqa: E402, F401  # the test extra installs it: a missing framework must fail the suite, not skip it
import transformers  # noqa: E402

from biasaudit.integrations.hf import BiasFixCallback as HFCallback, BiasFixTrainer  # noqa: E402


class Rows(Dataset):
    def __init__(self, groups: bool = True) -> None:
        self.tensors, self.groups = data().tensors, groups

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, text, y, g = (t[i] for t in self.tensors)
        return {"image": image, "text": text, "labels": y, **({"groups": g} if self.groups else {})}


class LossNet(Net):
    def forward(self, image, text, labels=None):
        out = super().forward(image, text)
        return {"loss": F.cross_entropy(out["logits"], labels), **out}


def hf_train(trainer_class, model: Net, tmp_path: Path, *, groups: bool, **extra) -> None:
    # One batch holds the whole set, so the Trainer's shuffled order changes only float summation order.
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=EPOCHS, per_device_train_batch_size=N, max_grad_norm=0.0,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, remove_unused_columns=False, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer_class(model=model, args=args, train_dataset=Rows(groups), optimizers=(optimizer, None), **extra).train()


def test_hf_group_dro_trainer_equals_the_plain_loop(tmp_path):
    gdro = gdro_for(data())
    model = Net()
    hf_train(BiasFixTrainer, model, tmp_path, groups=True, method=gdro, column="groups")
    net, reference = plain("gdro", batches_of(data(), N))
    assert_same_weights(model, net)
    torch.testing.assert_close(gdro.q, reference.q, atol=1e-6, rtol=0)


def test_hf_ogm_ge_callback_equals_the_plain_loop_and_saves_its_state(tmp_path):
    model = LossNet()
    ogm = ogm_for(model)
    callback = HFCallback(ogm)
    hf_train(transformers.Trainer, model, tmp_path, groups=False, callbacks=[callback])
    net, reference = plain("ogm", batches_of(data(), N))
    assert_same_weights(model, net)
    assert min(ogm.last.coefficients.values()) < 1.0

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    state = transformers.TrainerState(global_step=2)
    callback.on_save(transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True), state, None)
    fresh = ogm_for(Net())
    HFCallback(fresh).load_checkpoint(folder)
    assert fresh.state_dict()["generators"]["cpu"].equal(ogm.state_dict()["generators"]["cpu"])


# ---- without the extras, and the examples ----

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate'):
            raise ImportError(f'No module named {name!r} (blocked)')
sys.meta_path.insert(0, Block())
import biasaudit, biasaudit.methods, biasaudit.integrations
assert not any(m.split('.')[0] in ('lightning', 'transformers') for m in sys.modules), 'a framework was imported'
for name, extra in (('lightning', 'lightning'), ('hf', 'hf'), ('lightning_audit', 'lightning'), ('hf_audit', 'hf')):
    try:
        __import__('biasaudit.integrations.' + name)
    except ImportError as error:
        assert f'pip install "biasaudit[{extra}]"' in str(error), error
    else:
        raise AssertionError(name + ' imported without its framework')
print('ok')
"""


def test_biasaudit_imports_without_the_frameworks_and_the_integrations_name_their_extra():
    result = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("example", ["own_loop_plain.py", "own_loop_lightning.py", "own_loop_hf.py"])
def test_examples_run(example):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "q [" in result.stdout and "k per branch" in result.stdout
