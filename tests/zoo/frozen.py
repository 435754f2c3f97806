"""Zoo: frozen encoders (requires_grad=False), as when a pretrained backbone is kept fixed: a frozen conv image
encoder and a frozen nn.EmbeddingBag text encoder (mean over the ids, padding excluded), each followed by a
trainable per-modality embedding layer (the branches), concatenated into a trainable nn.Linear classifier.

Training may change only the embedding layers and the classifier; the encoders' weights must come out of any
fix bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

import zoo_common as zc


class FrozenEncoders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text_encoder = nn.EmbeddingBag(zc.VOCAB_SIZE, 16, mode="mean", padding_idx=zc.PAD)
        for encoder in (self.image_encoder, self.text_encoder):
            encoder.requires_grad_(False)
        self.image_embedding = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.text_embedding = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.classifier = nn.Linear(16, zc.CLASSES)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image_features = self.image_embedding(self.image_encoder(image))
        text_features = self.text_embedding(self.text_encoder(tokens))
        return self.classifier(torch.cat([image_features, text_features], dim=1))


class FrozenAdapter(zc.WordTokensAdapter):
    def build_model(self) -> nn.Module:
        return FrozenEncoders()

    def prepare(self, batch, *, device):
        # EmbeddingBag skips padding_idx itself; the mask is the impairments' (deleted tokens become [PAD]).
        return zc.normalise(batch["image"]).to(device), batch["tokens"].to(device)

    def branches(self, model):
        return {"image": model.image_embedding, "text": model.text_embedding}


adapter = FrozenAdapter()
