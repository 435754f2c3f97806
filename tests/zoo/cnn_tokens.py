"""Zoo: a CNN image branch with BatchNorm2d and dropout + a token text branch (embedding, masked mean), late
fusion by concatenation, one nn.Linear classifier. forward(image, tokens, mask) -> logits tensor.

BatchNorm keeps running statistics that a forward in train mode would move, and dropout makes a train-mode
forward random: an audit that forgot eval(), or left the model changed, shows here.
"""

from __future__ import annotations

import torch
from torch import nn

import zoo_common as zc


class CnnTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text_branch = zc.MaskedMeanEmbedding(zc.VOCAB_SIZE, 8)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(16, zc.CLASSES)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.image_branch(image), self.text_branch(tokens, mask)], dim=1)
        return self.classifier(self.dropout(fused))


class CnnTokensAdapter(zc.WordTokensAdapter):
    bias_names = zc.COLOURS
    class_names = ("horizontal", "vertical", "checker")

    def build_model(self) -> nn.Module:
        return CnnTokens()


adapter = CnnTokensAdapter()
