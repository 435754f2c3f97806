"""Which of a tokenizer's outputs reach the model: those its forward takes, or those the user named.

A tokenizer returns what its model family reads (BERT's: input_ids, token_type_ids, attention_mask), whatever the
user's model is, and prepare() has no model to ask. So the inputs biasaudit.adapters.tokenizing_prepare makes carry
which keys the tokenizer chose and which the user named, and the model call (Adapter.forward) keeps what the forward
takes: an output the tokenizer chose and the forward does not take is left out with one warning (the CLI does not
show the library's log, so a log record would reach no one), one the user named is an error.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from typing import Any
from collections.abc import Mapping

from torch import nn

from biasaudit.errors import AdapterError


def unwrapped(model: nn.Module) -> nn.Module:
    """The module whose forward does the work: wrappers (DataParallel / DDP, torch.compile) take (*args, **kwargs) for
    the module they hold."""
    while True:
        wrapped = (
            model.module
            if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
            else getattr(model, "_orig_mod", None)
        )
        if not isinstance(wrapped, nn.Module):
            return model
        model = wrapped


def forward_keywords(model: nn.Module) -> tuple[str, ...] | None:
    """The names the module's forward takes as keywords, in order; None when it takes any (**kwargs) or has no
    signature to read. Read once per class: a scan calls it for every batch and condition."""
    return _keywords_of(type(model).forward)


@functools.lru_cache(maxsize=256)
def _keywords_of(forward: Any) -> tuple[str, ...] | None:
    try:
        parameters = list(inspect.signature(forward).parameters.values())[1:]  # past self
    except (TypeError, ValueError):  # a builtin or C-implemented forward: nothing to check against
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_ONLY]
    if positional:
        raise AdapterError(
            f"{forward.__qualname__} takes {', '.join(positional)} positionally only, so the tokenizer's outputs "
            "cannot be passed by name; define the adapter's forward(model, inputs) to call it."
        )
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class TokenizerInputs(dict):
    """Keyword inputs for model(**inputs) of which `chosen` came from a tokenizer unasked and `named` the user named.
    `tokenizer` says whose outputs they are; `told` holds the warnings given, shared by every batch of one prepare so
    that a scan warns once."""

    def __init__(
        self, inputs: Mapping[str, Any], *, chosen: tuple[str, ...], named: tuple[str, ...], tokenizer: str, told: set[str]
    ) -> None:
        super().__init__(inputs)
        self.chosen, self.named, self.tokenizer, self.told = chosen, named, tokenizer, told

    def for_model(self, model: nn.Module) -> dict[str, Any]:
        """The entries the model's forward takes; AdapterError when it does not take a named one, or none of the
        tokenizer's outputs (the text would not reach it at all)."""
        inner = unwrapped(model)
        accepted = forward_keywords(inner)
        if accepted is None:
            return dict(self)
        forward = f"{type(inner).__name__}.forward"
        takes = ", ".join(accepted) or "nothing by keyword"
        for key in self.named:
            if key not in accepted:
                raise AdapterError(
                    f"tokenizing_prepare(keys=...) names {key!r}, which {forward} does not take; it takes: {takes}."
                )
        dropped = [key for key in self.chosen if key not in accepted]
        if dropped and len(dropped) == len(self.chosen):  # named ones are all taken by now
            raise AdapterError(
                f"{forward} takes none of the outputs of {self.tokenizer} ({', '.join(self.chosen)}); it takes: {takes}; "
                "write a prepare that passes the tokens under the names the forward uses."
            )
        if dropped:
            message = (
                f"{forward} does not take {', '.join(dropped)}, which {self.tokenizer} also returns, so tokenizing_prepare "
                f"leaves {'it' if len(dropped) == 1 else 'them'} out (the forward takes: {takes}; "
                "keys=(...) names the outputs to pass)."
            )
            if message not in self.told:
                self.told.add(message)
                # stacklevel=1 (the default): a forward runs deep inside a scan or training loop, with no caller's
                # frame a fixed number of levels up to point at.
                warnings.warn(message, UserWarning, stacklevel=1)
        return {key: value for key, value in self.items() if key not in dropped}

    def refused(self, error: TypeError) -> AdapterError | None:
        """The sentence for a forward that took **kwargs and passed a tokenizer output on to a module that does not
        take it (a TypeError from inside the model); None for any other TypeError."""
        found = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        if found is None or found.group(1) not in self.chosen:
            return None
        return AdapterError(
            f"The model passed {found.group(1)!r}, which {self.tokenizer} returns, on to a module that does not take "
            f"it ({error}); name the outputs to pass with tokenizing_prepare(keys=(...))."
        )
