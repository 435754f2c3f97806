"""A scan must not change the model it audits (issue 10): a network with BatchNorm and dropout, left in train mode by
the user's loop, comes back with every parameter and buffer bit-identical and in train mode again, after every
diagnostic (gradient conflict, ceilings, carrier swaps) ran on it."""

from __future__ import annotations

import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.audit import audit_model
from biasaudit.cli import summary_table
from biasaudit.scan import ScanConfig

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
