"""Hugging Face tokenizers: a "tokens" Modality read off a tokenizer, and a prepare that tokenises raw text.

transformers stays optional: it is imported only when one of these helpers is called (pip install 'biasaudit[hf]').
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping, Sequence

import torch

from biasaudit.adapters.loader import model_inputs
from biasaudit.errors import AdapterError
from biasaudit.data.forward_keywords import TokenizerInputs
from biasaudit.data.modality import Modality


def require_transformers(helper: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise AdapterError(
            f"{helper} needs the transformers package, which is not installed; pip install 'biasaudit[hf]'."
        ) from None
    return transformers


def _called(tokenizer: Any) -> str:
    source = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}" + (f" ({source})" if source else "")


def empty_text_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids a tokenizer gives for the empty string (BERT: [CLS] [SEP]): what "missing text" leaves. Not all of
    its special ids: [UNK] or [MASK] in a text are content, which muting must remove."""
    ids = tokenizer("")["input_ids"]
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return tuple(int(i) for i in ids)


def token_modality(
    name: str,
    tokenizer: Any,
    *,
    key: str = "input_ids",
    mask_key: str = "attention_mask",
    special_ids: Sequence[int] | None = None,
    missing: str | None = None,
) -> Modality:
    """A "tokens" Modality for ids made by a Hugging Face tokenizer: pad_id = tokenizer.pad_token_id, special_ids =
    the ids it puts around an empty string (give `special_ids` for a tokenizer that puts none, e.g. GPT-2's), and
    padding_side = tokenizer.padding_side."""
    require_transformers("token_modality")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise AdapterError(
            f"Tokenizer {_called(tokenizer)} has no pad token; set tokenizer.pad_token = ... (e.g. tokenizer.eos_token) "
            f"before building modality {name!r}, so that deleted tokens can become padding."
        )
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    if special and len(tokenizer) <= len(special):
        # transformers 5 builds BertTokenizerFast(vocab_file=...) with the special tokens alone (it reads `vocab=`):
        # every word becomes [UNK], and an audit of such ids measures nothing.
        raise AdapterError(
            f"Tokenizer {_called(tokenizer)} has only its {len(tokenizer)} special tokens in its vocabulary, so every word "
            f"becomes {getattr(tokenizer, 'unk_token', None) or 'unknown'}; load its vocabulary (with transformers 5, "
            "BertTokenizerFast(vocab=PATH) rather than vocab_file=PATH) before building modality "
            f"{name!r}."
        )
    ids = tuple(int(i) for i in special_ids) if special_ids is not None else empty_text_ids(tokenizer)
    if not ids:
        raise AdapterError(
            f"Tokenizer {_called(tokenizer)} puts no tokens around an empty string, so a muted text would be all padding; "
            f"pass special_ids=(...) to token_modality({name!r}, ...): the ids your model should see for an empty text "
            "(e.g. its BOS id)."
        )
    side = getattr(tokenizer, "padding_side", None)
    return Modality(
        name,
        "tokens",
        key=key,
        mask_key=mask_key,
        pad_id=int(pad_id),
        special_ids=ids,
        missing=missing,
        padding_side=side if side in ("left", "right") else None,
    )


def tokenizing_prepare(
    tokenizer: Any,
    modalities: Sequence[Modality],
    *,
    text: str | None = None,
    keys: Sequence[str] | None = None,
    **tokenizer_options: Any,
) -> Callable[[Mapping[str, Any], torch.device], dict[str, Any]]:
    """A prepare(batch, device) for a "text" modality of raw strings: the other modalities' entries as they are
    (biasaudit.adapters.model_inputs), and in place of the strings what `tokenizer(text=strings, padding=True,
    truncation=True, return_tensors="pt", **tokenizer_options)` returns (input_ids, attention_mask, ...), on the
    device. The strings are tokenised after impairment, so "missing text" is the tokenizer's own empty string.
    `tokenizer` may be a processor that takes text=. `text`: the modality's name when there are several text ones.
    `keys`: the tokenizer outputs to pass, each of which the model's forward must take; by default all of them, less
    those the forward does not take (BERT's token_type_ids for a model without them), with one warning
    (biasaudit/data/forward_keywords.py)."""
    require_transformers("tokenizing_prepare")
    candidates = [m for m in modalities if m.kind == "text" and (text is None or m.name == text)]
    if len(candidates) != 1:
        available = ", ".join(m.name for m in modalities if m.kind == "text") or "none"
        wanted = f"text modality {text!r}" if text is not None else "exactly one text modality (or text=NAME)"
        raise AdapterError(f"tokenizing_prepare needs {wanted}; the text modalities are: {available}.")
    if isinstance(keys, str) or (keys is not None and not keys):
        raise AdapterError(
            f"tokenizing_prepare got keys={keys!r}; expected the names of the tokenizer outputs to pass, "
            "e.g. keys=('input_ids', 'attention_mask')."
        )
    named = tuple(keys) if keys is not None else ()
    modality = candidates[0]
    others = [m for m in modalities if m is not modality]
    options = {"padding": True, "truncation": True, "return_tensors": "pt", **tokenizer_options}
    told: set[str] = set()  # the warnings given, once per prepare rather than once per batch

    def prepare(batch: Mapping[str, Any], device: torch.device) -> TokenizerInputs:
        inputs = model_inputs(batch, others, device)
        encoded = tokenizer(text=list(batch[modality.batch_key]), **options)
        for key in named:
            if key not in encoded:
                raise AdapterError(
                    f"tokenizing_prepare(keys=...) names {key!r}, which {_called(tokenizer)} does not return; "
                    f"it returns: {', '.join(encoded)}."
                )
        passed = named or tuple(encoded)
        inputs.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encoded.items() if k in passed})
        return TokenizerInputs(inputs, chosen=() if named else passed, named=named, tokenizer=_called(tokenizer), told=told)

    return prepare
