"""A scan must not change the model it audits (issue 10): a network with BatchNorm and dropout, left in train mode by
the user's loop, comes back with every parameter and buffer bit-identical and in train mode again, after every
diagnostic (gradient conflict, ceilings, carrier swaps) ran on it. And `fix` moves BatchNorm statistics only as
training on the full input does: not on BalGrad's half-zeroed unimodal passes, never in a frozen encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.scanning.audit import audit_model
from biasaudit.cli import summary_table
from biasaudit.scanning.config import ScanConfig
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.method_balgrad import BalGrad
from biasaudit.training.methods import make_method

CLASSES = 3


class ConvWithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.tab_branch = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        self.classifier = nn.Linear(8, CLASSES)

    def forward(self, image, tab):
        return self.classifier(torch.cat([self.image_branch(image), self.tab_branch(tab)], dim=1))


class BatchNormAdapter(Adapter):
    modalities = [Modality("image", "image"), Modality("tab", "tensor")]
    num_classes = CLASSES
    bias_key = "k"
    splits = ("train", "test")

    def build_model(self) -> nn.Module:
        return ConvWithBatchNorm()

    def data(self, split: str, *, batch_size: int):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 60
        labels = torch.arange(n) % CLASSES
        bias = torch.where(torch.rand(n, generator=generator) < 0.8, labels, (labels + 1) % CLASSES)
        image = torch.rand(n, 1, 4, 4, generator=generator) * 0.5 + 0.5 * (labels[:, None, None, None] == 0)
        tab = nn.functional.one_hot(bias, CLASSES).float() + 0.1 * torch.randn(n, CLASSES, generator=generator)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            yield {"image": image[lo:hi], "tab": tab[lo:hi], "label": labels[lo:hi], "k": bias[lo:hi]}

    def prepare(self, batch, *, device):
        return batch["image"].to(device), batch["tab"].to(device)

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"image": model.image_branch, "tab": model.tab_branch}


def test_a_scan_leaves_batchnorm_statistics_weights_and_train_mode_as_they_were():
    adapter = BatchNormAdapter()
    model = adapter.build_model()
    model.train()
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        for batch in adapter.data("train", batch_size=20):
            model(batch["image"], batch["tab"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = ScanConfig(split="test", conditions="default,shapley,interaction", batch_size=16, bootstrap_replicates=50,
                        projection="pca", gradient_batches=2, min_wrong=1, min_group=1)
    audit = audit_model(model, adapter, config=config, checkpoint=None)
    assert audit["gradient_conflict"]["available"] and audit["ceilings"]["available"] and audit["carrier"]["available"]
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"the scan changed {changed}"
    assert model.training and all(m.training for m in model.modules()), "the scan left the model in eval mode"


def test_the_console_table_shows_no_interval_instead_of_crashing():
    audit = {"dataset": {"split": "test", "n": 1},
             "conditions": [{"name": "full", "group": "full", "accuracy": 100.0, "accuracy_ci": None, "flip_rate": 0.0}],
             "summary": {"missing": {"avg": 50.0, "gap": 100.0, "gap_ci": None, "dominant": "a"}},
             "carrier": {"available": True, "carrier": None,
                         "modalities": {"a": {"bias_swap": {"excess_follow_rate": 0.0, "excess_follow_rate_ci": None}}}},
             "groups": {"conditions": {"full": {"worst_group": 100.0, "worst_group_ci": None, "bias_balanced": 100.0}}}}
    table = summary_table(audit)
    assert table.row_count == 4
    assert "no interval" in str(table.columns[2]._cells)


# ---- fix: training moves BatchNorm statistics exactly as training on the full input does ---------------

class HeadDropout(ConvWithBatchNorm):
    """Dropout between the fusion and the classifier: the unimodal passes must not draw it."""

    def __init__(self) -> None:
        super().__init__()
        self.fusion_dropout = nn.Dropout(0.5)

    def forward(self, image, tab):
        return self.classifier(self.fusion_dropout(torch.cat([self.image_branch(image), self.tab_branch(tab)], dim=1)))


class HeadDropoutAdapter(BatchNormAdapter):
    def build_model(self) -> nn.Module:
        return HeadDropout()


def _batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


METHOD_OPTIONS = [("ce", {}), ("mmdb", {"scale": 4.0}), ("balgrad", {"head_mode": "shared_zero"}),
                  ("balgrad", {"head_mode": "ogm_split"}), ("balgrad", {"head_mode": "separate"})]


@pytest.mark.parametrize("method_name,options", METHOD_OPTIONS, ids=[f"{m}-{o.get('head_mode', '')}" for m, o in METHOD_OPTIONS])
def test_one_fix_step_moves_batchnorm_statistics_like_one_train_mode_forward_of_the_full_input(method_name, options):
    # If the unimodal passes ran the live model in train mode, the branches' BatchNorm layers would see the batch
    # three times (num_batches_tracked 3, running means pulled further): a fixed model with corrupted statistics.
    adapter = HeadDropoutAdapter()
    model = adapter.build_model().train()
    reference = copy.deepcopy(model)
    batch = next(iter(adapter.data("train", batch_size=20)))
    with torch.no_grad():
        reference(batch["image"], batch["tab"])
    method = make_method(method_name, **options)
    method.prepare(model, adapter, device=torch.device("cpu"))
    method.gradients(model, adapter, batch, step=0, total_steps=1, device=torch.device("cpu"))
    expected, got = _batchnorm_buffers(reference), _batchnorm_buffers(model)
    assert all(torch.equal(expected[k], got[k]) for k in expected), \
        {k: (expected[k].tolist(), got[k].tolist()) for k in expected if not torch.equal(expected[k], got[k])}


@pytest.mark.parametrize("head_mode", ["shared_zero", "ogm_split"])
def test_balgrad_unimodal_passes_draw_no_dropout_and_read_the_fused_passes_branch_outputs(head_mode):
    adapter = HeadDropoutAdapter()
    model = adapter.build_model().train()
    batch = next(iter(adapter.data("train", batch_size=20)))
    method = BalGrad(head_mode=head_mode)
    method.prepare(model, adapter, device=torch.device("cpu"))
    captured = {}
    hooks = [model.image_branch.register_forward_hook(lambda m, a, o: captured.setdefault("image", o)),
             model.tab_branch.register_forward_hook(lambda m, a, o: captured.setdefault("tab", o))]
    _, unimodal = method.logits(model, adapter, adapter.prepare(batch, device=torch.device("cpu")))
    for hook in hooks:
        hook.remove()
    shift = model.classifier.bias / 2 if head_mode == "ogm_split" else 0.0
    z_image, z_tab = captured["image"], captured["tab"]  # the fused pass's outputs, dropout masks included
    expected_image = model.classifier(torch.cat([z_image, torch.zeros_like(z_tab)], 1)) - shift
    expected_tab = model.classifier(torch.cat([torch.zeros_like(z_image), z_tab], 1)) - shift
    assert torch.allclose(unimodal["image"], expected_image, atol=1e-6)
    assert torch.allclose(unimodal["tab"], expected_tab, atol=1e-6)
    assert model.training and model.fusion_dropout.training, "the unimodal passes left the model in eval mode"


class FrozenEncoder(nn.Module):
    """A pretrained image encoder (conv + BatchNorm), frozen, under a trainable projection: linear probing."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten()).requires_grad_(False)
        self.image_branch = nn.Linear(4, 4)
        self.tab_branch = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.classifier = nn.Linear(8, CLASSES)

    def forward(self, image, tab):
        return self.classifier(torch.cat([self.image_branch(self.encoder(image)), self.tab_branch(tab)], dim=1))


class FrozenEncoderAdapter(BatchNormAdapter):
    def build_model(self) -> nn.Module:
        return FrozenEncoder()


@pytest.mark.parametrize("method_name,options", METHOD_OPTIONS, ids=[f"{m}-{o.get('head_mode', '')}" for m, o in METHOD_OPTIONS])
def test_fix_leaves_a_frozen_encoders_batchnorm_statistics_as_loaded(method_name, options):
    adapter = FrozenEncoderAdapter()
    model = adapter.build_model()
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainable = model.tab_branch[1].running_mean.clone()
    train(model, adapter, make_method(method_name, **options), config=TrainConfig(epochs=1, batch_size=20))
    assert all(torch.equal(frozen[k], v) for k, v in model.encoder.state_dict().items()), "a frozen encoder's statistics moved"
    assert not torch.equal(trainable, model.tab_branch[1].running_mean), "the trainable branch's statistics should move"
