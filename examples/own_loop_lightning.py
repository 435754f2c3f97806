"""OGM-GE and Group DRO inside a Lightning Trainer (pip install "biasaudit[lightning]"): a tiny two-branch model on
random data, CPU, a few seconds. The lines biasaudit adds are marked `# biasaudit`.

    python examples/own_loop_lightning.py
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from biasaudit.integrations.lightning import BiasFixCallback
from biasaudit.methods import OGMGE, GroupDRO, group_ids


class TwoBranch(L.LightningModule):
    """An image and a text branch, concatenated into one linear head; each modality's logits are the head's weight
    slice applied to that modality's features (the ogm_split head mode)."""

    def __init__(self, gdro: GroupDRO | None = None) -> None:
        super().__init__()
        self.image, self.text = nn.Sequential(nn.Linear(8, 6), nn.ReLU()), nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(12, 3)
        self.gdro = gdro

    def forward(self, image, text):
        fi, ft = self.image(image), self.text(text)
        w, b = self.head.weight, self.head.bias
        unimodal = {"image": F.linear(fi, w[:, :6], b / 2), "text": F.linear(ft, w[:, 6:], b / 2)}
        return self.head(torch.cat([fi, ft], dim=1)), unimodal

    def training_step(self, batch, batch_idx):
        image, text, y, g = batch
        logits, unimodal = self(image, text)
        self.biasaudit_outputs = {"unimodal_logits": unimodal, "labels": y}                 # biasaudit (OGM-GE)
        if self.gdro is not None:
            return self.gdro.loss(F.cross_entropy(logits, y, reduction="none"), g)         # biasaudit (Group DRO)
        return F.cross_entropy(logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=generator)
    bias = torch.where(torch.rand(n, generator=generator) < 0.9, y, torch.randint(0, 3, (n,), generator=generator))
    image = torch.randn(n, 8, generator=generator) + y[:, None] * 0.3
    text = torch.nn.functional.one_hot(bias, 4).float() + 0.1 * torch.randn(n, 4, generator=generator)  # the shortcut
    return TensorDataset(image, text, y, group_ids(y, bias, num_bias=3))


def trainer(callback: BiasFixCallback) -> L.Trainer:
    return L.Trainer(max_epochs=2, accelerator="cpu", callbacks=[callback], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, deterministic=True)


def main() -> None:
    torch.manual_seed(0)
    train = data()
    loader = DataLoader(train, batch_size=16)

    model = TwoBranch()
    ogm = OGMGE({"image": model.image, "text": model.text}, alpha=0.3)                      # biasaudit
    trainer(BiasFixCallback(ogm)).fit(model, loader)                                       # biasaudit: the callback
    print("OGM-GE: last step's k per branch", {m: round(k, 3) for m, k in ogm.last.coefficients.items()})

    gdro = GroupDRO.from_train_groups(train.tensors[3], num_groups=9)                       # biasaudit
    trainer(BiasFixCallback(gdro)).fit(TwoBranch(gdro), loader)                            # the callback saves q
    print("Group DRO: q", [round(q, 3) for q in gdro.q.tolist()])


if __name__ == "__main__":
    main()
