"""OGM-GE, MMPareto and Group DRO in a plain PyTorch loop, no framework: a tiny two-branch model on random data, CPU,
a couple of seconds. The lines biasaudit adds are marked `# biasaudit`; everything else is an ordinary loop.

    python examples/own_loop_plain.py

OGM-GE adds one line after `loss.backward()`, MMPareto replaces `loss.backward()`, Group DRO replaces the mean
cross-entropy. tests/test_fix_equivalence.py checks that such a loop trains the weights `biasaudit fix` trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from biasaudit.methods import OGMGE, GroupDRO, MMPareto, group_ids

EPOCHS = 2


class TwoBranch(nn.Module):
    """An image and a text branch, concatenated into one linear head. Each modality's logits are the head's weight
    slice applied to that modality's features (the ogm_split head mode): what OGM-GE and MMPareto read."""

    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = nn.Sequential(nn.Linear(8, 6), nn.ReLU()), nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(12, 3)

    def forward(self, image, text):
        fi, ft = self.image(image), self.text(text)
        w, b = self.head.weight, self.head.bias
        unimodal = {"image": F.linear(fi, w[:, :6], b / 2), "text": F.linear(ft, w[:, 6:], b / 2)}
        return self.head(torch.cat([fi, ft], dim=1)), unimodal


def data(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=generator)
    bias = torch.where(torch.rand(n, generator=generator) < 0.9, y, torch.randint(0, 3, (n,), generator=generator))
    image = torch.randn(n, 8, generator=generator) + y[:, None] * 0.3
    text = F.one_hot(bias, 4).float() + 0.1 * torch.randn(n, 4, generator=generator)  # the shortcut
    return TensorDataset(image, text, y, group_ids(y, bias, num_bias=3))


def loader(train: TensorDataset) -> DataLoader:
    return DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def with_ogm_ge(train: TensorDataset) -> None:
    model = TwoBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ogm = OGMGE({"image": model.image, "text": model.text}, alpha=0.3)                  # biasaudit
    for epoch in range(EPOCHS):
        for image, text, y, _ in loader(train):
            optimizer.zero_grad()
            logits, unimodal = model(image, text)
            F.cross_entropy(logits, y).backward()
            ogm.after_backward(unimodal, y)                                            # biasaudit: rescales .grad
            optimizer.step()
    print("OGM-GE: last step's k per branch", {m: round(k, 3) for m, k in ogm.last.coefficients.items()})


def with_mmpareto(train: TensorDataset) -> None:
    model = TwoBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mmp = MMPareto({"image": model.image, "text": model.text})                          # biasaudit
    for epoch in range(EPOCHS):
        for image, text, y, _ in loader(train):
            optimizer.zero_grad()
            logits, unimodal = model(image, text)
            unimodal_losses = {m: F.cross_entropy(o, y) for m, o in unimodal.items()}  # biasaudit
            mmp.backward(F.cross_entropy(logits, y), unimodal_losses)                  # biasaudit: replaces loss.backward()
            optimizer.step()
    print("MMPareto: last step's cosine per branch", {m: round(c, 3) for m, c in mmp.last.cosines.items()})


def with_group_dro(train: TensorDataset) -> None:
    model = TwoBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gdro = GroupDRO.from_train_groups(train.tensors[3], num_groups=9)                    # biasaudit: q over (label, bias)
    for epoch in range(EPOCHS):
        for image, text, y, groups in loader(train):
            optimizer.zero_grad()
            logits, _ = model(image, text)
            loss = gdro.loss(F.cross_entropy(logits, y, reduction="none"), groups)     # biasaudit: replaces the mean
            loss.backward()
            optimizer.step()
    print("Group DRO: q", [round(q, 3) for q in gdro.q.tolist()])


def main() -> None:
    torch.manual_seed(0)
    train = data()
    with_ogm_ge(train)
    with_mmpareto(train)
    with_group_dro(train)


if __name__ == "__main__":
    main()
