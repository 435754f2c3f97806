"""What the integrations share: which entry points a method has, and how the unimodal outputs of the micro-batches of
one optimizer step are gathered for an after-backward method."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from biasaudit.errors import InputError

# features(model) -> (train_features, train_labels, val_features, val_labels), what DandR.epoch_end takes
Features = Callable[[Any], tuple[Mapping[str, Tensor], Tensor, Mapping[str, Tensor], Tensor]]


def entry_points(method: Any, features: Features | None, *, where: str) -> tuple[bool, Features | None]:
    """(after_backward, epoch_features): whether the callback runs the method's after-backward hook, and the features
    function its epoch-end step reads (None: the method has no epoch-end step). A method with neither (a loss or a
    backward method) is applied by the user's code; the callback then only saves and restores its state."""
    if not callable(getattr(method, "state_dict", None)) or not callable(getattr(method, "load_state_dict", None)):
        raise InputError(
            f"The 'method' parameter of {where} is a {type(method).__name__}; expected a method from "
            "biasaudit.methods (e.g. OGMGE, GroupDRO, DandR), which has state_dict() and load_state_dict()."
        )
    after = callable(getattr(method, "after_backward", None))
    epoch_end = callable(getattr(method, "epoch_end", None)) and callable(getattr(method, "due", None))
    if epoch_end and features is None:
        raise InputError(
            f"The 'features' parameter of {where} is missing; {type(method).__name__} has an epoch-end step, "
            "which needs features(model) -> (train_features, train_labels, val_features, val_labels)."
        )
    if features is not None and not epoch_end:
        raise InputError(
            f"The 'features' parameter of {where} was given, but {type(method).__name__} has no epoch-end "
            "step that reads it; leave it out."
        )
    if features is not None and not callable(features):
        raise InputError(
            f"The 'features' parameter of {where} is a {type(features).__name__}; expected a function of "
            "the model returning (train_features, train_labels, val_features, val_labels)."
        )
    return after, features if epoch_end else None


def evaluated(features: Features, model: Any) -> tuple[Mapping[str, Tensor], Tensor, Mapping[str, Tensor], Tensor]:
    """features(model) with the model in eval mode and gradients off, its training mode restored afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return features(model)
    finally:
        model.train(training)


class Pending:
    """The detached unimodal logits and labels of the micro-batches since the last optimizer step, concatenated for
    the one after_backward call of the step (what OGMGE asks for under gradient accumulation)."""

    def __init__(self) -> None:
        self.logits: list[Mapping[str, Tensor]] = []
        self.labels: list[Tensor] = []

    def add(self, unimodal_logits: Any, labels: Any, *, where: str, how: str) -> None:
        if not isinstance(unimodal_logits, Mapping) or not all(isinstance(v, Tensor) for v in unimodal_logits.values()):
            raise InputError(
                f"The unimodal logits {where} gave are a {type(unimodal_logits).__name__}; expected a dict "
                f"of [batch, classes] tensors keyed like the method's branches ({how})."
            )
        if not isinstance(labels, Tensor):
            raise InputError(
                f"The labels {where} gave are a {type(labels).__name__}; expected the [batch] tensor of class indices ({how})."
            )
        self.logits.append({name: logits.detach() for name, logits in unimodal_logits.items()})
        self.labels.append(labels.detach())

    def __bool__(self) -> bool:
        return bool(self.labels)

    def take(self) -> tuple[dict[str, Tensor], Tensor]:
        """The step's logits (keyed like the first micro-batch's) and labels, concatenated; empties the buffer."""
        names = list(self.logits[0])
        logits = {
            name: torch.cat([part[name] for part in self.logits]) if len(self.logits) > 1 else self.logits[0][name]
            for name in names
        }
        labels = torch.cat(self.labels) if len(self.labels) > 1 else self.labels[0]
        self.clear()
        return logits, labels

    def clear(self) -> None:
        self.logits.clear()
        self.labels.clear()
