"""Zoo: a tiny Hugging Face model built from a config (no weights are downloaded): a `BertModel` text encoder
(hidden 16, 2 layers, 2 heads) + a conv image encoder, late fusion, a linear classifier; forward returns a
`transformers.modeling_outputs.SequenceClassifierOutput` whose `.logits` are the logits.

The captions are tokenised by a real `BertTokenizerFast` built from the local vocab file tests/zoo/vocab.txt,
per batch (padding to the batch's longest caption), in two variants: `left` (padding_side="left") and `right`.
The token modality takes pad_id, special_ids ([CLS], [SEP]) and padding_side from the tokenizer.

The text encoder is padding-side invariant by construction, as left-padding Hugging Face code makes it: the
position ids count real tokens only (cumsum of the attention mask), padded keys are masked out of attention,
and the sentence vector is the masked mean of the last hidden states. So the same weights give the same
predictions on left- and right-padded ids of the same texts, and an audit must not tell them apart.
"""

from __future__ import annotations

import inspect

import torch
import transformers
from torch import nn
from transformers import BertConfig, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput

import zoo_common as zc
from biasaudit import Adapter, Modality

WIDTH = 16


def tokenizer(padding_side: str) -> transformers.PreTrainedTokenizerBase:
    """BertTokenizerFast from the local vocab file. transformers 5 names the argument `vocab` and silently ignores
    `vocab_file` (every word becomes [UNK]); transformers 4 names it `vocab_file`."""
    parameters = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    key = "vocab" if "vocab" in parameters and "vocab_file" not in parameters else "vocab_file"
    tok = transformers.BertTokenizerFast(**{key: str(zc.BERT_VOCAB)}, padding_side=padding_side)
    expected = len(zc.BERT_VOCAB.read_text().split())
    if len(tok.get_vocab()) != expected:
        raise RuntimeError(f"the tokenizer read {len(tok.get_vocab())} entries of {zc.BERT_VOCAB}, expected {expected}")
    return tok


def bert_config() -> BertConfig:
    return BertConfig(vocab_size=len(zc.BERT_VOCAB.read_text().split()), hidden_size=WIDTH, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32, type_vocab_size=1,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


class BertTextEncoder(nn.Module):
    """BertModel + masked mean pooling: ids and mask -> [B, WIDTH]."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class BertConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(8, WIDTH), nn.ReLU())
        self.text_encoder = BertTextEncoder(bert_config())
        self.classifier = nn.Linear(2 * WIDTH, zc.CLASSES)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        fused = torch.cat([self.image_encoder(pixel_values), self.text_encoder(input_ids, attention_mask)], dim=1)
        return SequenceClassifierOutput(logits=self.classifier(fused))


class BertConvAdapter(Adapter):
    num_classes = zc.CLASSES
    label_key = "label"
    bias_key = "bias"
    bias_names = zc.COLOURS

    def __init__(self, padding_side: str = "right") -> None:
        self.tokenizer = tokenizer(padding_side)
        tok = self.tokenizer
        self.modalities = [Modality("image", "image", key="pixels", missing="mean"),
                           Modality("text", "tokens", key="input_ids", mask_key="attention_mask", pad_id=tok.pad_token_id,
                                    special_ids=(tok.cls_token_id, tok.sep_token_id), padding_side=tok.padding_side)]

    def build_model(self) -> nn.Module:
        return BertConv()

    def data(self, split, *, batch_size):
        data = zc.split_data(split)
        for lo in range(0, len(data.label), batch_size):
            hi = min(len(data.label), lo + batch_size)
            encoded = self.tokenizer(data.captions[lo:hi], padding=True, return_tensors="pt")
            yield {"pixels": data.image[lo:hi], "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                   "label": data.label[lo:hi], "bias": data.bias[lo:hi]}

    def prepare(self, batch, *, device):
        return {"pixel_values": zc.normalise(batch["pixels"]).to(device), "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device)}

    # forward: the default, which must take the logits out of the SequenceClassifierOutput.

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"image": model.image_encoder, "text": model.text_encoder}


left = BertConvAdapter("left")
right = BertConvAdapter("right")
