"""Fix methods inside a Lightning `Trainer` (pip install "biasaudit[lightning]").

One callback, `BiasFixCallback(method)`, for every method of `biasaudit.methods`; what it does follows the method's
entry points (methods.md section 8):

    after-backward (OGMGE)   on_after_backward collects the step's unimodal logits and labels from
                             `pl_module.biasaudit_outputs`; on_before_optimizer_step calls method.after_backward
    epoch-end (DandR)        on_train_epoch_end calls method.epoch_end with features(pl_module) when it is due
    loss (GroupDRO, JTT,     the LightningModule calls method.loss in training_step; the callback only saves the
      MMDB)                  method's state (q weights, ...) in the checkpoint
    backward (MMPareto,      the LightningModule overrides `backward(loss)` and calls method.backward, with the
      BalGrad)               unimodal losses passed through `scale_as_loss` (see below)

and in every case the method's state_dict() goes into Lightning's checkpoints and is restored on resume
(`Trainer.fit(ckpt_path=...)`), under a key naming the method's class.

The module exposes a step's unimodal logits by setting one attribute in training_step::

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, unimodal = self(x)                     # unimodal: {"image": [B, C], "text": [B, C]}
        self.biasaudit_outputs = {"unimodal_logits": unimodal, "labels": y}
        return F.cross_entropy(logits, y)

    trainer = L.Trainer(callbacks=[BiasFixCallback(OGMGE({"image": model.vision, "text": model.text}))])

Why these hooks (Lightning 2.x): on_before_optimizer_step runs after the closure's backward and, under
`precision="16-mixed"`, after the GradScaler's unscale_ (lightning/pytorch/plugins/precision/amp.py: "unscale happens
after the closure is executed, but before the on_before_optimizer_step hook") and before gradient clipping, so an
after-backward method sees the final, unscaled gradients of the step, as in a plain loop with `scaler.unscale_`.
With `accumulate_grad_batches` it runs once per optimizer step, so the logits of every micro-batch are collected in
on_after_backward (which runs after each backward) and passed to after_backward together. Under DDP every rank runs
the hooks with its own logits, and the method sums its statistics across the processes.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

try:
    import lightning.pytorch as pl
except ImportError:  # one sentence, naming the extra
    raise ImportError(
        'biasaudit.integrations.lightning needs Lightning, which is not installed; pip install "biasaudit[lightning]".'
    ) from None
from torch import Tensor

from biasaudit.errors import InputError
from biasaudit.integrations._kinds import Features, Pending, entry_points, evaluated

OUTPUTS = "biasaudit_outputs"  # the LightningModule attribute an after-backward method reads
HOW = f'set self.{OUTPUTS} = {{"unimodal_logits": ..., "labels": ...}} in training_step'


def scale_as_loss(pl_module: pl.LightningModule, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The unimodal losses scaled as Lightning scaled the loss it passes to `LightningModule.backward`: divided by
    `accumulate_grad_batches` (automatic optimization) and multiplied by the AMP GradScaler's scale when there is one.
    A backward method (MMPareto, BalGrad) must get its losses on one scale::

        def backward(self, loss, *args, **kwargs):         # replaces Lightning's loss.backward()
            self.mmp.backward(loss, scale_as_loss(self, self.unimodal_losses))
    """
    trainer = pl_module.trainer
    divisor = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    scaled = {}
    for name, loss in losses.items():
        loss = loss / divisor if divisor != 1 else loss
        scaled[name] = scaler.scale(loss) if scaler is not None else loss
    return scaled


class BiasFixCallback(pl.Callback):
    """Applies `method` (any class of biasaudit.methods) in a Lightning Trainer and checkpoints its state; see the
    module docstring for what it does per kind of method.

    method: the method object, built over the LightningModule's branch modules (e.g.
    `OGMGE({"image": model.vision, "text": model.text})`); the module keeps using it (a loss or backward method).
    features: for an epoch-end method (DandR) only, features(pl_module) -> (train_features, train_labels,
    val_features, val_labels), called only at the epochs the method is due (dicts of [N, D] tensors keyed like the
    branches; under DDP the full sets on every rank); it runs with the module in eval mode and gradients off.

    Several callbacks may be used at once if their methods are of different classes (the checkpoint key is the
    class name)."""

    def __init__(self, method: Any, *, features: Features | None = None) -> None:
        self._after, self._epoch_features = entry_points(method, features, where="BiasFixCallback")
        self.method = method
        self.features = features
        self._pending = Pending()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=type(self.method).__name__)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_epoch = getattr(self.method, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(trainer.current_epoch)
        self._pending.clear()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._after:
            return
        outputs = getattr(pl_module, OUTPUTS, None)
        if not isinstance(outputs, Mapping) or "unimodal_logits" not in outputs or "labels" not in outputs:
            raise InputError(
                f"The LightningModule {type(pl_module).__name__} set no unimodal logits for this step, which "
                f"{type(self.method).__name__} needs; {HOW}."
            )
        self._pending.add(outputs["unimodal_logits"], outputs["labels"], where=f"self.{OUTPUTS}", how=HOW)
        setattr(pl_module, OUTPUTS, None)  # a step that forgets to set it is caught, and the tensors are let go

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._after and self._pending:  # empty: no backward this step (training_step returned None)
            self.method.after_backward(*self._pending.take())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        features = self._epoch_features
        if features is not None and self.method.due(epoch):
            train_features, train_labels, val_features, val_labels = evaluated(features, pl_module)
            self.method.epoch_end(epoch, train_features, train_labels, val_features, val_labels)

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.method.load_state_dict(state_dict)
