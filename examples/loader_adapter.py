"""Route 2: an adapter from the nn.Module and the DataLoaders you already have (no subclassing).

    python examples/loader_adapter.py model.pt        # trains the toy model for a few seconds, saves a state dict
    biasaudit scan model.pt --adapter examples/loader_adapter.py:adapter

Replace the toy model and dataset with yours. The rules: the Dataset returns dicts of *raw* inputs (pixels in
their natural range; normalise inside the model or in a `prepare`, never in the Dataset, so that a "missing
image" really is a black image), and the loaders you give biasaudit do not shuffle (train with your own
shuffling loader; `biasaudit fix` shuffles with its --seed).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from biasaudit import Modality
from biasaudit.adapters import LoaderAdapter

CLASSES = ("circle", "square", "cross")


class ImageTabularNet(nn.Module):  # REPLACE: your model; forward takes the batch keys of the modalities
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.tabular_branch = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(32 + 8, len(CLASSES))

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image_branch((image - 0.5) / 0.25), self.tabular_branch(tabular)], dim=1))


class ToyData(Dataset):  # REPLACE: your dataset; each item is a dict of raw inputs, the label, the bias value
    def __init__(self, split: str, size: int = 96) -> None:
        g = torch.Generator().manual_seed(("train", "test").index(split))
        self.label = torch.randint(0, len(CLASSES), (size,), generator=g)
        # A shortcut: the tabular features name a class, which is the label 90% of the time.
        self.bias = torch.where(torch.rand(size, generator=g) < 0.9, self.label, torch.randint(0, len(CLASSES), (size,), generator=g))
        self.tabular = nn.functional.one_hot(self.bias, 4).float() + 0.1 * torch.randn(size, 4, generator=g)
        self.image = (0.5 + 0.3 * torch.randn(size, 3, 8, 8, generator=g)).clamp(0, 1)
        self.image[torch.arange(size), self.label] *= 0.8  # the real signal: one darker colour channel

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "tabular": self.tabular[i], "label": self.label[i], "bias": self.bias[i]}


# ---- the adapter: modalities + loaders + names of the model's parts -------------------------------------------
adapter = LoaderAdapter(
    ImageTabularNet,
    loaders={split: DataLoader(ToyData(split), batch_size=32, shuffle=False) for split in ("train", "test")},
    modalities=[Modality("image", "image", key="image", value_range=(0.0, 1.0)), Modality("tabular", "tensor", key="tabular")],
    num_classes=len(CLASSES),
    label_key="label",
    bias_key="bias",            # optional: a discrete bias value per sample (enables the JSD and carrier tests)
    classifier="head",          # optional: the final nn.Linear, as a dotted path
    branches={"image": "image_branch", "tabular": "tabular_branch"},  # optional: each modality's branch
    class_names=CLASSES,
)


def train_and_save(path: str, epochs: int = 30) -> None:
    torch.manual_seed(0)
    model = adapter.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for batch in DataLoader(ToyData("train"), batch_size=32, shuffle=True):  # your own loader may shuffle
            loss = nn.functional.cross_entropy(adapter.forward(model, adapter.prepare(batch, device=torch.device("cpu"))), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    train_and_save(sys.argv[1] if len(sys.argv) > 1 else "model.pt")
