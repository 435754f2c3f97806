"""Route 3: a Hugging Face text encoder + an image encoder, with its tokenizer, through DataLoaders.

    python examples/hf_adapter.py model.pt        # trains the toy model for a few seconds, saves a state dict
    biasaudit scan model.pt --adapter examples/hf_adapter.py:adapter

Needs transformers (pip install 'biasaudit[hf]'). The toy builds everything offline: a 1-layer BertModel from a
BertConfig and a word-level BertTokenizerFast from examples/tiny_vocab.txt. With yours, use
AutoTokenizer.from_pretrained(...) and your model; `token_modality` reads the pad id, the ids an empty text keeps
([CLS] [SEP]) and the padding side off the tokenizer. Raw strings instead of token ids: declare
Modality("text", "text", key="caption") and pass prepare=tokenizing_prepare(tokenizer, modalities).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertModel, BertTokenizerFast
from transformers.modeling_outputs import SequenceClassifierOutput

from biasaudit import Modality
from biasaudit.adapters import LoaderAdapter, token_modality

CLASSES = ("circle", "square", "cross")
COLOURS = ("red", "green", "blue")  # the shortcut: the caption's colour names the class 90% of the time
VOCAB = Path(__file__).resolve().parent / "tiny_vocab.txt"


def load_tokenizer() -> BertTokenizerFast:  # REPLACE: AutoTokenizer.from_pretrained("your-model")
    # transformers 5 reads a vocab file passed as `vocab`; 4.x reads `vocab_file` (which 5 silently ignores).
    name = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    return BertTokenizerFast(**{name: str(VOCAB)})


tokenizer = load_tokenizer()


class ImageTextClassifier(nn.Module):  # REPLACE: your model
    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        self.text_encoder = BertModel(config, add_pooling_layer=False)
        self.text_proj = nn.Linear(32, 16)
        self.vision = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16))
        self.head = nn.Linear(32, len(CLASSES))

    def forward(self, pixel_values, input_ids, attention_mask) -> SequenceClassifierOutput:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        text = self.text_proj((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))  # mean over the real tokens
        image = self.vision((pixel_values - 0.5) / 0.25)  # normalise here: impairments see raw pixels
        return SequenceClassifierOutput(logits=self.head(torch.cat([image, text], dim=1)))


class ToyCaptions(Dataset):  # REPLACE: your dataset of raw pixels, captions and labels
    def __init__(self, split: str, size: int = 96) -> None:
        g = torch.Generator().manual_seed(10 + ("train", "test").index(split))
        self.label = torch.randint(0, len(CLASSES), (size,), generator=g)
        self.colour = torch.where(torch.rand(size, generator=g) < 0.9, self.label, torch.randint(0, 3, (size,), generator=g))
        self.image = (0.5 + 0.3 * torch.randn(size, 3, 8, 8, generator=g)).clamp(0, 1)
        self.image[torch.arange(size), self.label] *= 0.8
        fillers = ("a photo of a", "the picture of a small", "a large bright", "the dark")
        self.captions = [f"{fillers[i % 4]} {COLOURS[int(c)]} shape" for i, c in enumerate(self.colour)]

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.image[i], "caption": self.captions[i], "label": self.label[i], "colour": self.colour[i]}


def collate(items: list[dict]) -> dict:
    tokens = tokenizer([item["caption"] for item in items], padding=True, return_tensors="pt")
    return {"pixel_values": torch.stack([item["pixel_values"] for item in items]), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "label": torch.stack([item["label"] for item in items]),
            "colour": torch.stack([item["colour"] for item in items])}


# ---- the adapter ------------------------------------------------------------------------------------------------
adapter = LoaderAdapter(
    ImageTextClassifier,
    loaders={split: DataLoader(ToyCaptions(split), batch_size=32, collate_fn=collate) for split in ("train", "test")},
    modalities=[Modality("image", "image", key="pixel_values"), token_modality("text", tokenizer)],
    num_classes=len(CLASSES), label_key="label", bias_key="colour", bias_names=COLOURS, class_names=CLASSES,
    classifier="head", branches={"image": "vision", "text": "text_proj"},
)  # forward: model(**inputs) returns a SequenceClassifierOutput; biasaudit reads its .logits


def train_and_save(path: str, epochs: int = 15) -> None:
    torch.manual_seed(0)
    model = adapter.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    for _ in range(epochs):
        for batch in DataLoader(ToyCaptions("train"), batch_size=16, shuffle=True, collate_fn=collate):
            loss = nn.functional.cross_entropy(adapter.forward(model, adapter.prepare(batch, device=torch.device("cpu"))), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    train_and_save(sys.argv[1] if len(sys.argv) > 1 else "model.pt")
