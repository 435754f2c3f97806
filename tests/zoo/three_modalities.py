"""Zoo: three modalities: an image (conv), token ids (embedding, masked mean) and tabular features (a generic
"tensor" modality, an MLP), concatenated into one nn.Linear classifier.

The tabular features carry a weak copy of the label and nothing of the bias; the caption still carries the
shortcut. BalGrad is defined for exactly two modalities, so `fix --method balgrad` must refuse this model
with one sentence (exit 2); every other command works on it.
"""

from __future__ import annotations

import torch
from torch import nn

import zoo_common as zc
from biasaudit import Adapter, Modality


class ThreeModalities(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text_branch = zc.MaskedMeanEmbedding(zc.VOCAB_SIZE, 8)
        self.tab_branch = nn.Sequential(nn.Linear(zc.TAB_FEATURES, 8), nn.ReLU())
        self.classifier = nn.Linear(24, zc.CLASSES)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.image_branch(image), self.text_branch(tokens, mask), self.tab_branch(tab)], dim=1))


class ThreeModalitiesAdapter(Adapter):
    modalities = [Modality("image", "image", key="image", missing="mean"),
                  Modality("text", "tokens", key="tokens", mask_key="mask", pad_id=zc.PAD, special_ids=(zc.CLS, zc.SEP),
                           padding_side="right"),
                  Modality("tab", "tensor", key="tab")]
    num_classes = zc.CLASSES
    label_key = "label"
    bias_key = "bias"

    def build_model(self) -> nn.Module:
        return ThreeModalities()

    def data(self, split, *, batch_size):
        return zc.word_batches(split, batch_size, with_tab=True)

    def prepare(self, batch, *, device):
        return (zc.normalise(batch["image"]).to(device), batch["tokens"].to(device), batch["mask"].to(device),
                batch["tab"].to(device))

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"image": model.image_branch, "text": model.text_branch, "tab": model.tab_branch}


adapter = ThreeModalitiesAdapter()
