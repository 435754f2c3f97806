"""Zoo: models whose forward returns a structure holding the logits, as many real models do: `DictOutput`
returns {"logits": ..., "features": ...}, `DataclassOutput` a dataclass with `.logits` and `.features`.
Both adapters leave `forward` to the default, which must take the logits out (biasaudit.data.adapter.logits_of).

The architecture: a conv + MLP image branch and a token branch (embedding, masked mean),
concatenated into a linear classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import zoo_common as zc


@dataclass
class Prediction:
    logits: torch.Tensor
    features: torch.Tensor


class _Late(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(8, 16), nn.ReLU())
        self.text_branch = zc.MaskedMeanEmbedding(zc.VOCAB_SIZE, 8)
        self.classifier = nn.Linear(24, zc.CLASSES)

    def fused(self, image: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.image_branch(image), self.text_branch(tokens, mask)], dim=1)


class DictOutput(_Late):
    def forward(self, image, tokens, mask) -> dict[str, torch.Tensor]:
        features = self.fused(image, tokens, mask)
        return {"logits": self.classifier(features), "features": features}


class DataclassOutput(_Late):
    def forward(self, image, tokens, mask) -> Prediction:
        features = self.fused(image, tokens, mask)
        return Prediction(logits=self.classifier(features), features=features)


class _OutputAdapter(zc.WordTokensAdapter):
    model_class: type[nn.Module] = DictOutput

    def build_model(self) -> nn.Module:
        return self.model_class()


class DictOutputAdapter(_OutputAdapter):
    model_class = DictOutput


class DataclassOutputAdapter(_OutputAdapter):
    model_class = DataclassOutput


dict_output = DictOutputAdapter()
dataclass_output = DataclassOutputAdapter()
