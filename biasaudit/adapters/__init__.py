"""Adapters from what users already have: DataLoaders + an nn.Module (LoaderAdapter), Hugging Face tokenizers
(token_modality, tokenizing_prepare). Prefixed and Lightning checkpoints load through Adapter.state_dict_prefix
(biasaudit.data.checkpoint)."""

from biasaudit.data.adapter import logits_of
from biasaudit.adapters.dataloaders import rebatched, shuffling_sampler
from biasaudit.adapters.hf import empty_text_ids, token_modality, tokenizing_prepare
from biasaudit.adapters.loader import LoaderAdapter, model_inputs
from biasaudit.adapters.submodules import submodule

__all__ = [
    "LoaderAdapter",
    "empty_text_ids",
    "logits_of",
    "model_inputs",
    "rebatched",
    "shuffling_sampler",
    "submodule",
    "token_modality",
    "tokenizing_prepare",
]
