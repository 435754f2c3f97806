"""TEMPLATE: an adapter for your own image+text model (Hugging Face style, token-id input).

Copy this file, then replace the three toy parts marked REPLACE with your own:
  1. the tokenizer   (e.g. transformers.AutoTokenizer.from_pretrained(...)),
  2. the model       (e.g. your CLIP/ViLT/BLIP-based classifier),
  3. the data        (your dataset of images, captions and labels).
As it stands the file is a runnable toy (a tiny whitespace tokenizer, a tiny model and seeded
synthetic data), so you can try the tool on it before touching anything:

    biasaudit scan my_checkpoint.pt --adapter examples/my_model_adapter.py:adapter

Key rule: batches hold *raw* inputs (pixels in their natural range, token ids with their
attention mask) and `prepare` does the rest (normalisation, moving to the device). biasaudit
impairs the raw inputs, so "missing image" is a black image and "missing text" is what your
tokenizer gives for the empty string: only its special tokens ([CLS] [SEP]), the rest padding.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.errors import DataError

# ---- 1. tokenizer (REPLACE with your tokenizer) -------------------------------------------------
# What biasaudit needs to know about it: the pad id and the ids of the special tokens that the
# tokenizer adds to every text, even an empty one (for BERT: tokenizer.pad_token_id and
# tokenizer.all_special_ids). They go into the "tokens" Modality below.
PAD, CLS, SEP, UNK = 0, 1, 2, 3
CLASS_NAMES = ("cat", "dog", "bird")
FILLER_WORDS = ("a", "photo", "of", "the", "small", "large", "picture", "showing", "my")
WORDS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]") + FILLER_WORDS + CLASS_NAMES
MAX_LENGTH = 12


class WhitespaceTokenizer:
    """Toy stand-in for a Hugging Face tokenizer: [CLS] words [SEP], padded to max_length."""

    def __init__(self, words: Sequence[str] = WORDS) -> None:
        self.ids = {word: i for i, word in enumerate(words)}

    def __call__(self, texts: Sequence[str], *, max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
        input_ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            words = [self.ids.get(w, UNK) for w in text.lower().split()][: max_length - 2]
            ids = [CLS] + words + [SEP]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


# ---- 2. model (REPLACE with your model) ---------------------------------------------------------
# biasaudit only needs forward(**prepare(batch)) -> logits [B, num_classes] (or an output object
# with .logits). The optional hooks below name the final nn.Linear and the per-modality branches.
class TinyImageTextModel(nn.Module):
    def __init__(self, *, vocab_size: int = len(WORDS), hidden: int = 16, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.vision = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), nn.ReLU())
        self.text_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        # Mean over the real tokens only; the clamp keeps an all-padding row finite.
        text = (self.text_embeddings(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(torch.cat([self.vision(pixel_values), text], dim=1))


# ---- 3. data (REPLACE with your dataset) --------------------------------------------------------
def synthetic_split(split: str, *, size: int = 48, seed: int = 0) -> dict[str, Any]:
    """Random-but-seeded images in [0, 1] and captions that name the class."""
    generator = torch.Generator().manual_seed(seed * 1000 + ("train", "test").index(split))
    labels = torch.randint(0, len(CLASS_NAMES), (size,), generator=generator)
    images = torch.rand(size, 3, 8, 8, generator=generator)
    images[torch.arange(size), labels] *= 0.5  # a weak class signal: one darker colour channel
    fillers = torch.randint(0, len(FILLER_WORDS), (size, 3), generator=generator)
    captions = [" ".join(FILLER_WORDS[int(i)] for i in row) + " " + CLASS_NAMES[int(y)] for row, y in zip(fillers, labels)]
    return {"images": images, "captions": captions, "labels": labels}


# The normalisation your image processor applies (e.g. CLIP's mean/std). Applied in prepare(),
# never in data(), so that impairments see raw pixels.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class MyModelAdapter(Adapter):
    modalities = (
        # Raw pixels in [0, 1] under batch key "pixel_values".
        Modality("image", "image", key="pixel_values", value_range=(0.0, 1.0)),
        # Token ids under "input_ids", their mask under "attention_mask". Deleted tokens become
        # pad_id with the mask off; special_ids survive every text impairment.
        Modality("text", "tokens", key="input_ids", mask_key="attention_mask", pad_id=PAD, special_ids=(CLS, SEP)),
    )
    num_classes = len(CLASS_NAMES)
    label_key = "label"
    bias_key = None  # set to a batch key holding a discrete bias value (e.g. a keyword id) if you have one
    class_names = CLASS_NAMES
    splits = ("train", "test")  # add "val" and "ood" if you have them

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.tokenizer = WhitespaceTokenizer()

    def build_model(self) -> nn.Module:
        # The architecture only; biasaudit loads your checkpoint's state dict into it (load_state).
        return TinyImageTextModel()

    def data(self, split: str, *, batch_size: int) -> Iterator[dict[str, Any]]:
        # Fixed order, no shuffling: scans must be reproducible.
        if split not in self.splits:
            raise DataError(f"Unknown split {split!r}. Available: {', '.join(self.splits)}.")
        part = synthetic_split(split, seed=self.seed)
        for start in range(0, len(part["labels"]), batch_size):
            stop = start + batch_size
            tokens = self.tokenizer(part["captions"][start:stop])
            yield {
                "pixel_values": part["images"][start:stop],
                "input_ids": tokens["input_ids"],
                "attention_mask": tokens["attention_mask"],
                "label": part["labels"][start:stop],
            }

    def prepare(self, batch: Mapping[str, Any], *, device: torch.device) -> dict[str, torch.Tensor]:
        # Keyword arguments of model.forward, on the device.
        return {
            "pixel_values": ((batch["pixel_values"] - PIXEL_MEAN) / PIXEL_STD).to(device),
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }

    # forward(model, inputs) is inherited: model(**inputs), then the logits of the output, which may be a tensor or,
    # as Hugging Face models return, an output object with .logits. Override it for anything else.

    # Optional hooks: leave them out and only the analyses that need them are skipped.
    def classifier(self, model: nn.Module) -> nn.Linear:
        return model.classifier  # the final nn.Linear whose input is the fused feature

    def branches(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"image": model.vision, "text": model.text_embeddings}


adapter = MyModelAdapter()
