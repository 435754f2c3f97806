"""`biasaudit fix` trains the weights a user's own loop trains (issue: "a plain PyTorch loop, a Lightning Trainer and a
Hugging Face Trainer with the same method and seed give the same weights as biasaudit fix").

What a user would see go wrong without these tests: the checkpoint `fix --method M` writes is not the one their own
training code gets with `biasaudit.methods.M` on the same data, so the README's "the same method in your loop" is
false. Here fix's loop (`train` with `make_method`, what `biasaudit fix` runs) and the three user loops start from the
same tiny two-branch model, see the same batches in the same order (a sampler that replays fix's own shuffle), step the
same SGD and must end within 1e-6 of each other, for BalGrad, OGM-GE, Group DRO and MMPareto. Then fix's ogm_ge and
mmpareto on the demo equal the plain-loop use of the components, an interrupted ogm_ge resumes exactly (its GE noise
generator is saved), and what these methods cannot train is refused in one sentence.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

import biasaudit as ba
from biasaudit import Adapter, Modality
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import AdapterError
from biasaudit.methods import OGMGE, BalGrad, GroupDRO, MMPareto, UnimodalHeads, branch_widths, group_ids
from biasaudit.training.epoch_batches import SAMPLE_INDEX, shuffled_batches
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

N, BATCH, EPOCHS, LR, SEED = 44, 12, 2, 0.2, 3  # 4 steps per epoch, the last one of 8 rows
OPTIONS = {"balgrad": {}, "ogm_ge": {"alpha": 0.5}, "groupdro": {"eta": 0.5}, "mmpareto": {}}
CONFIG = TrainConfig(epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=SEED, optimizer="sgd")


class Net(nn.Module):
    """Two branches into one linear head on their concatenation. It returns what every loop reads: the fused logits,
    each modality's logits as the head's weight slice on its features (OGM-GE's split, fix's ogm_split head mode) and,
    given labels, the loss a Hugging Face Trainer takes."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.image, self.text = nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Sequential(nn.Linear(3, 4), nn.Tanh())
            self.head = nn.Linear(8, 3)

    def forward(self, image, text, labels=None):
        fi, ft = self.image(image), self.text(text)
        w, b = self.head.weight, self.head.bias
        out = {"logits": self.head(torch.cat([fi, ft], dim=1)),
               "unimodal_logits": {"image": F.linear(fi, w[:, :4], b / 2), "text": F.linear(ft, w[:, 4:], b / 2)}}
        return out if labels is None else {"loss": F.cross_entropy(out["logits"], labels), **out}


def rows(n: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=generator)
    bias = torch.where(torch.rand(n, generator=generator) < 0.8, label, torch.randint(0, 3, (n,), generator=generator))
    image = torch.randn(n, 5, generator=generator) * 0.5 + 0.3 * label[:, None]
    text = F.one_hot(bias, 3).float() + 0.1 * torch.randn(n, 3, generator=generator)  # the shortcut
    return {"image": image, "text": text, "label": label, "bias": bias}


class Pairs(Adapter):
    """Net's adapter: fixed rows in a fixed order, the bias value (the caption-like shortcut) under `bias`."""

    modalities = (Modality("image", "tensor", key="image"), Modality("text", "tensor", key="text"))
    num_classes, label_key, bias_key, bias_names = 3, "label", "bias", ("b0", "b1", "b2")
    splits = ("train", "test")

    def __init__(self) -> None:
        self.rows = {"train": rows(N, 1), "test": rows(30, 2)}

    def build_model(self) -> nn.Module:
        return Net()

    def data(self, split, *, batch_size):
        part = self.rows[split]
        for start in range(0, len(part["label"]), batch_size):
            yield {key: value[start:start + batch_size] for key, value in part.items()}

    def prepare(self, batch, *, device):
        return batch["image"].to(device), batch["text"].to(device)

    def classifier(self, model):
        return model.head

    def branches(self, model):
        return {"image": model.image, "text": model.text}


PAIRS = Pairs()


class Rows(Dataset):
    """The train split as the frameworks take it: dict rows with `labels` and each sample's Group DRO group."""

    def __init__(self) -> None:
        part = PAIRS.rows["train"]
        self.part, self.groups = part, group_ids(part["label"], part["bias"], num_bias=3)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return {"image": self.part["image"][i], "text": self.part["text"][i], "labels": self.part["label"][i],
                "groups": self.groups[i]}


class FixOrder(Sampler[int]):
    """Each epoch's sample order of fix's loop, read from fix's own shuffled_batches (their SAMPLE_INDEX column), so
    that a DataLoader with batch_size=BATCH and this sampler yields fix's batches. The frameworks call set_epoch."""

    def __init__(self) -> None:
        self.orders = [torch.cat([b[SAMPLE_INDEX] for b in shuffled_batches(PAIRS, config=CONFIG, epoch=e, index=True)]).tolist()
                       for e in range(EPOCHS)]
        self.epoch, self.served = 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.served.append(self.epoch)
        return iter(self.orders[self.epoch])

    def __len__(self) -> int:
        return N


class Parts:
    """The lines a user adds for `method` to any loop: the components over Net's branches, a forward that returns the
    loss to minimise and what the method's backward reads, the backward, and OGM-GE's after-backward."""

    def __init__(self, method: str, net: Net) -> None:
        self.method, branches = method, {"image": net.image, "text": net.text}
        self.heads, self.extra, self.ks = None, [], []
        if method == "ogm_ge":
            self.component = OGMGE(branches, seed=SEED, **OPTIONS[method])
        elif method == "groupdro":
            part = PAIRS.rows["train"]
            self.component = GroupDRO.from_train_groups(group_ids(part["label"], part["bias"], num_bias=3), num_groups=9,
                                                        **OPTIONS[method])
        elif method == "balgrad":
            self.heads, self.component = UnimodalHeads(net, branches), BalGrad(branches)  # shared_zero heads: fix's default
        else:  # mmpareto: fix's default separate heads, seeded by the run seed, trained with the model
            part = PAIRS.rows["train"]
            widths = branch_widths(net, branches, lambda: net(part["image"][:2], part["text"][:2]))
            self.heads = UnimodalHeads(net, branches, mode="separate", num_classes=3, widths=widths, seed=SEED)
            self.component, self.extra = MMPareto(branches), self.heads.parameters()
        self.replaces_backward = method in ("balgrad", "mmpareto")

    def forward(self, net: Net, batch) -> tuple[torch.Tensor, object]:
        image, text, y = batch["image"], batch["text"], batch["labels"]
        if self.heads is None:
            out = net(image, text)
            if self.method == "groupdro":
                return self.component.loss(F.cross_entropy(out["logits"], y, reduction="none"), batch["groups"]), None
            return F.cross_entropy(out["logits"], y), (out["unimodal_logits"], y)
        with self.heads.capture():
            logits = net(image, text)["logits"]
        unimodal = self.heads.logits(lambda: net(image, text)["logits"])
        if self.method == "mmpareto":
            return F.cross_entropy(logits, y), {m: F.cross_entropy(o, y) for m, o in unimodal.items()}
        return F.cross_entropy(logits, y), (unimodal, y)

    def backward(self, loss: torch.Tensor, pending, *, step: int, total: int) -> None:
        if self.method == "balgrad":
            self.component.backward(loss, *pending, step=step, total_steps=total)
        elif self.method == "mmpareto":
            self.component.backward(loss, pending)
        else:
            loss.backward()


def fix_loop(method: str) -> tuple[Net, object]:
    """What `biasaudit fix --method M --optimizer sgd` runs."""
    net, fixer = Net(), make_method(method, **OPTIONS[method])
    train(net, PAIRS, fixer, config=CONFIG)
    return net, fixer


def plain_loop(method: str) -> tuple[Net, Parts, FixOrder]:
    net = Net()
    parts, order = Parts(method, net), FixOrder()
    optimizer = torch.optim.SGD(list(net.parameters()) + parts.extra, lr=LR)
    loader = DataLoader(Rows(), batch_size=BATCH, sampler=order)
    step, total = 0, EPOCHS * len(loader)
    for epoch in range(EPOCHS):
        order.set_epoch(epoch)
        for batch in loader:
            optimizer.zero_grad()
            loss, pending = parts.forward(net, batch)
            parts.backward(loss, pending, step=step, total=total)
            if parts.method == "ogm_ge":
                parts.ks += parts.component.after_backward(*pending).coefficients.values()
            optimizer.step()
            step += 1
    return net, parts, order


def assert_same_weights(a: nn.Module, b: nn.Module, tolerance: float = 1e-6) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=tolerance, rtol=0, msg=name)


METHODS = ["balgrad", "ogm_ge", "groupdro", "mmpareto"]


def test_a_dataloader_with_fix_order_yields_fix_s_batches():
    order = FixOrder()
    loader = DataLoader(Rows(), batch_size=BATCH, sampler=order)
    for epoch in range(EPOCHS):
        order.set_epoch(epoch)
        fixes = list(shuffled_batches(PAIRS, config=CONFIG, epoch=epoch))
        ours = list(loader)
        assert [len(b["label"]) for b in fixes] == [12, 12, 12, 8] and len(ours) == len(fixes)
        for fix_batch, batch in zip(fixes, ours):
            assert torch.equal(fix_batch["image"], batch["image"]) and torch.equal(fix_batch["label"], batch["labels"])
    assert order.orders[0] != order.orders[1] != sorted(order.orders[1])  # fix shuffles, and per epoch


@pytest.mark.parametrize("method", METHODS)
def test_a_plain_pytorch_loop_trains_the_weights_fix_trains(method):
    fixed, fixer = fix_loop(method)
    net, parts, order = plain_loop(method)
    assert order.served == [0, 1]
    assert_same_weights(fixed, net)
    assert not torch.allclose(net.head.weight, Net().head.weight, atol=1e-3)  # it trained
    if method == "ogm_ge":  # k < 1 at some step and GE noise: else this would only check cross-entropy
        assert min(parts.ks) < 1.0 and parts.component.last.noise
        assert fixer._ogm.last.coefficients == pytest.approx(parts.component.last.coefficients, abs=1e-6)
    if method == "groupdro":
        torch.testing.assert_close(fixer.gdro.q, parts.component.q, atol=1e-6, rtol=0)
    if method == "mmpareto":  # the separate heads trained alike
        for a, b in zip(fixer.extra_parameters(), parts.extra, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ---- Lightning ----


def lightning_loop(method: str, tmp_path: Path) -> tuple[nn.Module, Parts, FixOrder]:
    import lightning  # the test extra installs it: a missing framework must fail the suite, not skip it

    from biasaudit.integrations.lightning import BiasFixCallback, scale_as_loss

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()
            self.parts = Parts(method, self.net)

        def training_step(self, batch, batch_idx):
            loss, self.pending = self.parts.forward(self.net, batch)
            if method == "ogm_ge":  # biasaudit: what the callback's after_backward reads
                unimodal, y = self.pending
                self.biasaudit_outputs = {"unimodal_logits": unimodal, "labels": y}
            return loss

        def backward(self, loss, *args, **kwargs):  # biasaudit: BalGrad and MMPareto replace loss.backward()
            if method == "mmpareto":
                self.pending = scale_as_loss(self, self.pending)
            if self.parts.replaces_backward:
                self.parts.backward(loss, self.pending, step=self.trainer.global_step,
                                    total=self.trainer.estimated_stepping_batches)
            else:
                loss.backward(*args, **kwargs)

        def configure_optimizers(self):
            return torch.optim.SGD(list(self.net.parameters()) + self.parts.extra, lr=LR)

    module, order = Module(), FixOrder()
    trainer = lightning.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, callbacks=[BiasFixCallback(module.parts.component)],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(Rows(), batch_size=BATCH, sampler=order))
    return module.net, module.parts, order


@pytest.mark.parametrize("method", METHODS)
def test_a_lightning_trainer_trains_the_weights_fix_trains(method, tmp_path):
    net, parts, order = lightning_loop(method, tmp_path)
    fixed, fixer = fix_loop(method)
    assert order.served == [0, 1]
    assert_same_weights(fixed, net)
    if method == "groupdro":
        torch.testing.assert_close(fixer.gdro.q, parts.component.q, atol=1e-6, rtol=0)


# ---- Hugging Face ----


def hf_loop(method: str, tmp_path: Path) -> tuple[nn.Module, Parts, FixOrder]:
    import accelerate  # noqa: F401  # the test extra installs it: a missing framework must fail the suite, not skip it
    import transformers

    from biasaudit.integrations.hf import BiasFixCallback, BiasFixTrainer

    net, order = Net(), FixOrder()
    parts = Parts(method, net)

    class InFixOrder:  # the Trainer's own sampler shuffles; this one replays fix's order
        def _get_train_sampler(self, train_dataset=None):
            return order

    class BackwardTrainer(InFixOrder, transformers.Trainer):  # biasaudit: BalGrad and MMPareto own the backward
        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            for p in parts.extra:  # separate heads live outside the model, and the Trainer calls model.zero_grad()
                p.grad = None
            inputs = self._prepare_inputs(inputs)
            loss, pending = parts.forward(model, inputs)
            parts.backward(loss, pending, step=self.state.global_step, total=self.state.max_steps)
            return loss.detach()

    # No clipping, a constant rate and the user's SGD: the Trainer's defaults (max_grad_norm=1, a linear decay,
    # AdamW) would train other weights than fix's loop, as they would than a plain loop.
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, max_grad_norm=0.0,
        lr_scheduler_type="constant", report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=SEED)
    common = {"model": net, "args": args, "train_dataset": Rows(),
              "optimizers": (torch.optim.SGD(list(net.parameters()) + parts.extra, lr=LR), None)}
    if method == "groupdro":
        type("T", (InFixOrder, BiasFixTrainer), {})(**common, method=parts.component, column="groups").train()
    elif method == "ogm_ge":
        type("T", (InFixOrder, transformers.Trainer), {})(**common, callbacks=[BiasFixCallback(parts.component)]).train()
    else:
        BackwardTrainer(**common, callbacks=[BiasFixCallback(parts.component)]).train()
    return net, parts, order


@pytest.mark.parametrize("method", METHODS)
def test_a_hugging_face_trainer_trains_the_weights_fix_trains(method, tmp_path):
    """(MMPareto failed here until its training_step cleared the separate heads' .grad: the Trainer zeroes with
    model.zero_grad(), which does not reach parameters outside the model, so they summed every step's gradient.)"""
    net, parts, order = hf_loop(method, tmp_path)
    fixed, fixer = fix_loop(method)
    assert order.served == [0, 1]
    assert_same_weights(fixed, net)
    if method == "groupdro":
        torch.testing.assert_close(fixer.gdro.q, parts.component.q, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:The before-audit finds no clear reliance")  # the untrained Net leans on neither input
def test_ba_fix_end_to_end_writes_the_plain_loop_s_weights():
    """The public entry point (audit, train, audit again) around the same loop: its model is the plain loop's."""
    result = ba.fix(Net(), PAIRS, method="ogm_ge", options=OPTIONS["ogm_ge"], epochs=EPOCHS, lr=LR, batch_size=BATCH,
                    optimizer="sgd", seed=SEED, conditions="missing", bootstrap=10, projection="pca")
    net, _, _ = plain_loop("ogm_ge")
    assert_same_weights(result.model, net)
    assert result.train_log["training"]["method"] == "ogm_ge" and len(result.train_log["steps"]) == EPOCHS * 4


# ---- fix's ogm_ge and mmpareto on the demo: the components of biasaudit.methods in a plain loop ----

DEMO = DigitsCaptionsAdapter()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def baseline():
    return train_baseline(DEMO, seed=0, epochs=3)  # trained enough that one branch dominates: OGM-GE's k < 1


def demo_plain_loop(model, config, method):
    """A user's loop over fix's batches of the demo with Adam (fix's default optimizer) and the method's component, seeded
with fix's seed (OGM-GE's noise, the separate heads)."""
    branches = DEMO.branches(model)
    if method == "ogm_ge":
        heads = UnimodalHeads(model, branches, mode="ogm_split", classifier=model.classifier)
        component = OGMGE(branches, seed=config.seed)
    else:
        first = DEMO.prepare(next(DEMO.data("train", batch_size=2)), device=CPU)
        heads = UnimodalHeads(model, branches, mode="separate", num_classes=10, seed=config.seed,
                              widths=branch_widths(model, branches, lambda: model(*first)))
        component = MMPareto(branches)
    optimizer = torch.optim.Adam(list(model.parameters()) + heads.parameters(), lr=config.lr)
    for epoch in range(config.epochs):
        model.train()
        for batch in shuffled_batches(DEMO, config=config, epoch=epoch):
            optimizer.zero_grad(set_to_none=True)
            inputs, y = DEMO.prepare(batch, device=CPU), torch.as_tensor(batch["label"]).long()
            with heads.capture():
                logits = model(*inputs)
            if method == "ogm_ge":
                with torch.no_grad():
                    unimodal = heads.logits(lambda: model(*inputs))
                F.cross_entropy(logits, y).backward()
                component.after_backward(unimodal, y)
            else:
                unimodal = heads.logits()
                component.backward(F.cross_entropy(logits, y), {m: F.cross_entropy(o, y) for m, o in unimodal.items()})
            optimizer.step()
    return model, component


@pytest.mark.parametrize("method", ["ogm_ge", "mmpareto"])
def test_fix_on_the_demo_is_the_component_in_a_plain_loop(method, baseline):
    config = TrainConfig(epochs=1, seed=1, batch_size=128)
    by_hand, component = demo_plain_loop(copy.deepcopy(baseline), config, method)
    looped, fixer = copy.deepcopy(baseline), make_method(method)
    log = train(looped, DEMO, fixer, config=config)
    assert_same_weights(looped, by_hand)
    if method == "ogm_ge":
        assert fixer._ogm.state_dict()["generators"]["cpu"].equal(component.state_dict()["generators"]["cpu"])
        assert {"k_image", "k_text", "rho_image", "rho_text"} <= set(log[-1]) \
            and min(min(e["k_image"], e["k_text"]) for e in log) < 1.0  # it modulated
    else:
        assert {"cos_image", "cos_text", "conflicted", "loss_image"} <= set(log[-1])


def test_ogm_ge_resume_after_an_interrupted_epoch_gives_the_uninterrupted_weights(baseline, tmp_path, interrupter):
    """The GE noise of epoch 1 must continue the generator, not replay epoch 0's draws from a fresh seed."""
    config = TrainConfig(epochs=2, seed=3, batch_size=128)
    straight, first = copy.deepcopy(baseline), make_method("ogm_ge")
    train(straight, DEMO, first, config=config, state_dir=tmp_path / "a")
    steps_per_epoch = -(-len(DEMO.split_data("train")) // config.batch_size)
    with pytest.raises(interrupter.Interrupt):
        train(copy.deepcopy(baseline), DEMO, make_method("ogm_ge"), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(steps_per_epoch + 2))
    resumed, again = copy.deepcopy(baseline), make_method("ogm_ge")
    log = train(resumed, DEMO, again, config=config, state_dir=tmp_path / "b", resume=True)
    assert [e["step"] for e in log] == list(range(2 * steps_per_epoch)) and again._ogm.last.noise
    assert_same_weights(resumed, straight, tolerance=0)
    assert again._ogm.state_dict()["generators"]["cpu"].equal(first._ogm.state_dict()["generators"]["cpu"])


# ---- what these methods cannot train, refused in one sentence ----

SCRIPT = Path(sys.executable).parent / "biasaudit"
CLI_ADAPTER = f"{Path(__file__).parents[1] / 'examples' / 'digits_captions_adapter.py'}:adapter"


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and message.replace("e.g.", "eg").count(". ") == 0


def test_fix_ogm_ge_with_separate_heads_exits_2_in_one_sentence(baseline, tmp_path):
    checkpoint = tmp_path / "baseline.pt"
    torch.save(baseline.state_dict(), checkpoint)
    result = subprocess.run([str(SCRIPT), "fix", str(checkpoint), "--adapter", CLI_ADAPTER, "--method", "ogm_ge", "--head-mode",
                             "separate", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    said = " ".join(result.stderr.replace("│", " ").split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "OGM-GE's --head-mode is 'separate'; expected ogm_split or shared_zero" in said, said
    assert not (tmp_path / "out").exists()


class NoBranches(DigitsCaptionsAdapter):
    def branches(self, model):
        return None


@pytest.mark.parametrize("method, who", [("ogm_ge", "OGM-GE"), ("mmpareto", "MMPareto"), ("balgrad", "BalGrad")])
def test_an_adapter_without_branches_is_told_the_early_fusion_alternative_before_any_audit(method, who, baseline, monkeypatch):
    def no_audit(*args, **kwargs):
        raise AssertionError("audited before refusing")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", no_audit)
    with pytest.raises(AdapterError) as caught:
        ba.fix(baseline, NoBranches(), method=method, epochs=1, conditions="missing", bootstrap=10, split="ood")
    message = str(caught.value)
    assert message.startswith(f"{who} needs one module per modality") and one_sentence(message), message
    assert "early-fusion model" in message and "--method ce, mmdb, groupdro, jtt or dfr" in message
