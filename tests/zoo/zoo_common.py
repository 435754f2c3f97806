"""What every zoo model shares: seeded synthetic data with a planted shortcut, a word-level tokenizer, and a
baseline trainer.

The facts are known by construction. Three classes, balanced. Each sample has a *bias value* (a colour word)
that equals its label with probability BIAS_AGREEMENT (0.9) in train and test, and is a uniformly random
other class otherwise. The colour word is visible only through the caption (the text modality); the image
shows the label as a striped texture (horizontal, vertical, checkerboard) under heavy noise, so it is the
harder modality. A model trained with plain cross-entropy therefore leans on the caption: muting the text
flips far more predictions than muting the image. The optional tabular features carry a weak copy of the
label and nothing of the bias.

Captions have a variable number of words (3-8 words, 5-10 tokens with [CLS] and [SEP]); long ones are rare, so
per-batch padding (the Hugging Face variants) gives batches of different widths, as a DataCollatorWithPadding
does, and left- and right-padding give different id tensors for the same texts. The word-token models pad to a
fixed width instead (MAX_TOKENS, like padding="max_length").

This module is imported by the zoo's adapter files as a sibling module (biasaudit puts an adapter file's
directory on sys.path while it imports it), and by tests/test_zoo.py the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit import Adapter, Modality

CLASSES = 3
COLOURS = ("red", "green", "blue")  # bias value k is COLOURS[k]
SIZES = {"train": 96, "test": 48}
SEEDS = {"train": 11, "test": 22}
BIAS_AGREEMENT = 0.9
IMAGE_SHAPE = (3, 8, 8)
TAB_FEATURES = 4
MAX_TOKENS = 12  # the word-token models' fixed padded width (captions have at most 10 tokens)
PATTERN_AMPLITUDE = 0.05
NOISE = 0.45

NOUNS = ("square", "shape", "tile", "patch")
FILLERS = ("small", "large", "old", "new", "bright", "dark", "plain", "simple")
TAILS = (("on", "the", "table"), ("near", "a", "window"), ("in", "the", "box"), ())
ARTICLES = ("a", "the", "one")
WORDS = tuple(sorted(set(COLOURS + NOUNS + FILLERS + ARTICLES + tuple(w for t in TAILS for w in t))))

# The word-level tokenizer of the non-Hugging-Face models: [PAD] 0, [CLS] 1, [SEP] 2, words from 3.
PAD, CLS, SEP = 0, 1, 2
WORD_IDS = {w: i + 3 for i, w in enumerate(WORDS)}
VOCAB_SIZE = len(WORD_IDS) + 3

ZOO = Path(__file__).resolve().parent
BERT_VOCAB = ZOO / "vocab.txt"  # [PAD] [UNK] [CLS] [SEP] [MASK], then WORDS in order


def _patterns() -> torch.Tensor:
    rows = torch.arange(IMAGE_SHAPE[1])[:, None].expand(IMAGE_SHAPE[1:])
    cols = torch.arange(IMAGE_SHAPE[2])[None, :].expand(IMAGE_SHAPE[1:])
    horizontal, vertical, checker = (rows % 2).float(), (cols % 2).float(), ((rows + cols) % 2).float()
    return torch.stack([horizontal, vertical, checker]) * 2 - 1  # [CLASSES, H, W] in {-1, 1}


@dataclass(frozen=True)
class Split:
    image: torch.Tensor     # float [n, 3, 8, 8], raw pixels in [0, 1]
    captions: list[str]
    tab: torch.Tensor       # float [n, TAB_FEATURES]
    label: torch.Tensor     # long [n]
    bias: torch.Tensor      # long [n]


_CACHE: dict[str, Split] = {}


def split_data(split: str) -> Split:
    """The split's samples, the same on every call (seeded per split)."""
    if split not in SIZES:
        raise KeyError(f"unknown split {split!r}")
    if split not in _CACHE:
        _CACHE[split] = _make(split)
    return _CACHE[split]


def _make(split: str) -> Split:
    n = SIZES[split]
    rng = np.random.default_rng(SEEDS[split])
    label = rng.permutation(np.arange(n) % CLASSES)
    other = (label + 1 + rng.integers(0, CLASSES - 1, n)) % CLASSES
    bias = np.where(rng.random(n) < BIAS_AGREEMENT, label, other)
    pattern = _patterns()[torch.as_tensor(label)]  # [n, H, W]
    noise = torch.as_tensor(rng.normal(0.0, NOISE, (n, *IMAGE_SHAPE)), dtype=torch.float32)
    image = (0.5 + PATTERN_AMPLITUDE * pattern[:, None] + noise).clamp(0.0, 1.0)
    captions = []
    for i in range(n):
        words = [ARTICLES[rng.integers(len(ARTICLES))]]
        # Long captions are rare, so the longest caption of a batch of 16 differs between batches.
        fillers = rng.choice(3, p=(0.5, 0.4, 0.1))
        words += [FILLERS[j] for j in rng.choice(len(FILLERS), size=fillers, replace=False)]
        words += [COLOURS[bias[i]], NOUNS[rng.integers(len(NOUNS))]]
        if rng.random() < 0.3:
            words += list(TAILS[rng.integers(len(TAILS) - 1)])
        captions.append(" ".join(words))
    tab = F.one_hot(torch.as_tensor(label), CLASSES).float() * 0.6
    tab = torch.cat([tab, torch.zeros(n, TAB_FEATURES - CLASSES)], dim=1)
    tab = tab + torch.as_tensor(rng.normal(0.0, 0.8, (n, TAB_FEATURES)), dtype=torch.float32)
    return Split(image=image, captions=captions, tab=tab, label=torch.as_tensor(label, dtype=torch.long),
                 bias=torch.as_tensor(bias, dtype=torch.long))


def word_tokens(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP], right-padded with [PAD] to MAX_TOKENS (a fixed width, like padding="max_length");
    (ids, mask). The Hugging Face variants pad per batch instead."""
    rows = [[CLS, *(WORD_IDS[w] for w in c.split()), SEP] for c in captions]
    width = MAX_TOKENS
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def word_batches(split: str, batch_size: int, *, with_tab: bool = False) -> Iterator[dict[str, Any]]:
    """Batches for the word-token models: image, tokens + mask, (tab,) label, bias."""
    data = split_data(split)
    for lo in range(0, len(data.label), batch_size):
        hi = min(len(data.label), lo + batch_size)
        ids, mask = word_tokens(data.captions[lo:hi])
        batch = {"image": data.image[lo:hi], "tokens": ids, "mask": mask, "label": data.label[lo:hi], "bias": data.bias[lo:hi]}
        if with_tab:
            batch["tab"] = data.tab[lo:hi]
        yield batch


def normalise(image: torch.Tensor) -> torch.Tensor:
    """The adapters' preprocessing of raw [0, 1] pixels (in prepare, after any impairment)."""
    return (image - 0.5) / 0.25


class MaskedMeanEmbedding(nn.Module):
    """A token branch: embedding, then the mean over the positions the attention mask keeps."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=PAD)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(torch.float32).unsqueeze(-1)
        return (self.embedding(ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def logits_from(output: Any) -> torch.Tensor:
    """The logits of whatever a zoo model returns (tensor, dict, dataclass, Hugging Face ModelOutput);
    only for the baseline trainer below, which must not depend on biasaudit's own handling of outputs."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output["logits"]
    return output.logits


def call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def fit(adapter: Any, *, epochs: int = 15, lr: float = 1e-2, seed: int = 0, batch_size: int = 16) -> nn.Module:
    """Train adapter.build_model() with plain cross-entropy on the train split (seeded, shuffled); eval mode."""
    torch.manual_seed(seed)
    model = adapter.build_model()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = list(adapter.data("train", batch_size=batch_size))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(batches), generator=generator).tolist():
            batch = batches[index]
            optimizer.zero_grad()
            logits = logits_from(call(model, adapter.prepare(batch, device=torch.device("cpu"))))
            F.cross_entropy(logits, batch[adapter.label_key]).backward()
            optimizer.step()
    model.eval()
    return model


def accuracy(model: nn.Module, adapter: Any, split: str = "test") -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in adapter.data(split, batch_size=16):
            logits = logits_from(call(model, adapter.prepare(batch, device=torch.device("cpu"))))
            right += int((logits.argmax(1) == batch[adapter.label_key]).sum())
            total += len(batch[adapter.label_key])
    return 100.0 * right / total


class WordTokensAdapter(Adapter):
    """The word-token zoo models' adapter: an image (muted to mid-grey) and fixed-width right-padded word tokens;
    forward(image, tokens, mask); branches image_branch and text_branch, classifier `classifier`. Subclasses
    name the model."""

    modalities = [Modality("image", "image", key="image", missing="mean"),
                  Modality("text", "tokens", key="tokens", mask_key="mask", pad_id=PAD, special_ids=(CLS, SEP),
                           padding_side="right")]
    num_classes = CLASSES
    label_key = "label"
    bias_key = "bias"

    def data(self, split, *, batch_size):
        return word_batches(split, batch_size)

    def prepare(self, batch, *, device):
        return normalise(batch["image"]).to(device), batch["tokens"].to(device), batch["mask"].to(device)

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"image": model.image_branch, "text": model.text_branch}

