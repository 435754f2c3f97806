"""Fix methods inside a Hugging Face `Trainer` (pip install "biasaudit[hf]"; the Trainer also needs accelerate).

    after-backward (OGMGE)   BiasFixCallback: a forward hook on the model collects the unimodal logits the model
                             returns (`outputs.unimodal_logits`) and the `labels` it was called with;
                             on_pre_optimizer_step calls method.after_backward
    epoch-end (DandR)        BiasFixCallback: on_epoch_end calls method.epoch_end with features(model) when due
    loss (GroupDRO, JTT)     BiasFixTrainer(method=..., column="groups"): compute_loss takes the per-sample
                             cross-entropy of `outputs.logits` and returns method.loss(per_sample, inputs[column])
    backward (MMPareto,      not wrapped: the Trainer's training_step owns the backward; override it (see the README)
      BalGrad)

The model exposes its unimodal logits by returning them with its logits, e.g.
`return ModelOutput(logits=fused, unimodal_logits={"image": o_image, "text": o_text})` (a dict output works too).

Why these hooks (transformers 5.x): on_pre_optimizer_step runs once per optimizer step, after the last micro-batch's
backward and after the Trainer's gradient-norm pass (`_clip_grad_norm` or `_get_grad_norm`, which always calls
accelerate's clip_grad_norm_ and so unscales fp16 gradients: GradScaler.unscale_), so an after-backward method sees
the final, unscaled gradients. Unlike Lightning, the Trainer clips (max_grad_norm, 1.0 by default) BEFORE this hook,
so the method modulates the clipped gradients; set max_grad_norm=0 to get exactly the plain loop's order.

State. The Trainer's own callback state (TrainerState.stateful_callbacks) is JSON, which the methods' tensors (q
weights, generator states, initial weights) are not; so the callback writes method.state_dict() to
`biasaudit_<Method>.pt` in every checkpoint folder the Trainer saves, and `load_checkpoint(folder)` reads it back: call
it before `trainer.train(resume_from_checkpoint=folder)`.
"""

from __future__ import annotations

import inspect
import os
from typing import Any
from collections.abc import Mapping

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # one sentence, naming the extra
    raise ImportError(
        'biasaudit.integrations.hf needs transformers, which is not installed; pip install "biasaudit[hf]".'
    ) from None
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.errors import InputError
from biasaudit.integrations._kinds import Features, Pending, entry_points, evaluated

HOW = 'return them from the model: ModelOutput(logits=..., unimodal_logits={"image": ..., "text": ...})'


def _field(outputs: Any, key: str) -> Any:
    """outputs[key] of a ModelOutput or a dict; None when absent (a ModelOutput drops None fields)."""
    if isinstance(outputs, Mapping):
        return outputs.get(key)
    return getattr(outputs, key, None)


class BiasFixCallback(TrainerCallback):
    """Applies `method` (any class of biasaudit.methods) in a Hugging Face Trainer and saves its state with every
    checkpoint; see the module docstring.

    method: the method object, built over the model's branch modules. features: for an epoch-end method (DandR)
    only, features(model) -> (train_features, train_labels, val_features, val_labels), run in eval mode without
    gradients at the epochs the method is due. logits_key, labels_key: the model output field holding the unimodal
    logits, and the model input holding the labels."""

    def __init__(
        self, method: Any, *, features: Features | None = None, logits_key: str = "unimodal_logits", labels_key: str = "labels"
    ) -> None:
        self._after, self._epoch_features = entry_points(method, features, where="BiasFixCallback")
        self.method = method
        self.features = features
        self.logits_key, self.labels_key = logits_key, labels_key
        self._pending = Pending()
        self._handle: Any = None
        self._epoch = 0

    @property
    def filename(self) -> str:
        return f"biasaudit_{type(self.method).__name__}.pt"

    def _collect(self, module: nn.Module, args: tuple, kwargs: dict, outputs: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):  # an evaluation or prediction pass
            return
        unimodal = _field(outputs, self.logits_key)
        if unimodal is None:
            raise InputError(
                f"The model {type(module).__name__} returned no {self.logits_key!r}, which "
                f"{type(self.method).__name__} needs; {HOW}."
            )
        labels = kwargs.get(self.labels_key)
        if labels is None:
            raise InputError(
                f"The model {type(module).__name__} was called without {self.labels_key!r}, which "
                f"{type(self.method).__name__} needs; give the batches a {self.labels_key!r} column."
            )
        self._pending.add(unimodal, labels, where=f"the model's {self.logits_key!r} output", how=HOW)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if self._after and self._handle is None and model is not None:
            self._handle = model.register_forward_hook(self._collect, with_kwargs=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._pending.clear()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch = int(state.epoch or 0)  # a float; whole at an epoch's start (fractional only when resumed mid-epoch)
        set_epoch = getattr(self.method, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self._epoch)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._pending.clear()  # the first micro-batch of an optimizer step

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._after and self._pending:
            self.method.after_backward(*self._pending.take())

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        features = self._epoch_features
        if features is not None and model is not None and self.method.due(self._epoch):
            train_features, train_labels, val_features, val_labels = evaluated(features, model)
            self.method.epoch_end(self._epoch, train_features, train_labels, val_features, val_labels)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            torch.save(self.method.state_dict(), os.path.join(folder, self.filename))

    def load_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        """Restore the method's state from a checkpoint folder the Trainer saved with this callback."""
        path = os.path.join(folder, self.filename)
        if not os.path.isfile(path):
            raise InputError(
                f"The checkpoint folder {os.fspath(folder)!r} holds no {self.filename}; expected a folder "
                "saved by a Trainer with this BiasFixCallback."
            )
        self.method.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class BiasFixTrainer(Trainer):
    """A Trainer whose loss is a loss method's (GroupDRO, JTT) on the per-sample cross-entropy of `outputs.logits`;
    any other method is applied by the BiasFixCallback it adds (which also checkpoints the method's state).

        trainer = BiasFixTrainer(model=model, args=args, train_dataset=train, method=gdro, column="groups")

    column: the batch column whose values the loss takes with the per-sample losses: each sample's group for
    GroupDRO (`group_ids`), its index in the training set for JTT. It is taken out of the inputs before the forward
    (and kept by remove_unused_columns). An evaluation batch without it gets the plain mean cross-entropy.
    features: as for BiasFixCallback (DandR). The other arguments are the Trainer's."""

    def __init__(self, *args: Any, method: Any, column: str = "groups", features: Features | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loss = getattr(method, "loss", None)
        self._method_loss = callable(loss) and next(iter(inspect.signature(loss).parameters), None) == "per_sample_losses"
        if callable(loss) and not self._method_loss:
            raise InputError(
                f"The 'method' parameter of BiasFixTrainer is a {type(method).__name__}, whose loss does not "
                "take per-sample losses; override compute_loss and call its loss there (see the README)."
            )
        self.method, self.column = method, column
        self.add_callback(BiasFixCallback(method, features=features))
        if self._method_loss:
            self.model_accepts_loss_kwargs = False  # the loss is a batch mean: the Trainer divides it for accumulation

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = getattr(self, "_signature_columns", None)
        if isinstance(columns, list) and self.column not in columns:
            columns.append(self.column)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not self._method_loss:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        values = inputs.pop(self.column, None)
        labels = inputs.get("labels")
        if labels is None or (values is None and torch.is_grad_enabled()):
            missing = "labels" if labels is None else self.column
            raise InputError(
                f"A training batch of BiasFixTrainer has no {missing!r} column, which "
                f"{type(self.method).__name__}.loss needs; add it to the dataset."
            )
        outputs = model(**inputs)
        logits = _field(outputs, "logits")
        if logits is None:
            raise InputError(
                f"The model {type(model).__name__} returned no 'logits'; expected a ModelOutput or dict "
                "with the fused logits [batch, classes] under 'logits'."
            )
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        loss = self.method.loss(per_sample, values) if values is not None else per_sample.mean()
        return (loss, outputs) if return_outputs else loss
