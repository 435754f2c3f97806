"""Audits during training in a Lightning `Trainer` (pip install "biasaudit[lightning]"): `AuditCallback` scans a split
of the adapter at every `every_n`-th validation and logs the bias measures with `pl_module.log`, so every logger of
the Trainer (CSV, TensorBoard, MLflow, W&B) records them and a ModelCheckpoint or EarlyStopping can monitor them::

    audits = AuditCallback(adapter, split="test", model="net", out="audits", rules={"min_worst_group": {"full": 60}})
    trainer = L.Trainer(max_epochs=10, callbacks=[audits])

Hooks (Lightning 2.x). on_validation_epoch_end audits (not during the sanity check) and logs: a Callback may log
there, and it runs before on_validation_end, where ModelCheckpoint saves, so the checkpoint of that validation already
carries the audit's gate mark (on_save_checkpoint). on_train_end audits the weights training ended with when no
validation audited them (`at_end`); logging through pl_module.log is not allowed there, so those figures go to the
Trainer's loggers directly (logger.log_metrics at the last step). on_fit_start checks what needs the model, before the
first step.

Under DDP every rank runs the hooks; the scan is sharded over the ranks and every rank gets the same audit
(training_audit.py). The figures are logged on every rank with sync_dist and the `max` reduction, which leaves equal
values exactly as they are (a mean over three ranks would not) and keeps Lightning from warning about unsynced epoch
metrics; Lightning's loggers write on rank 0 only, and rank 0 alone writes the audit files.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # one sentence, naming the extra
    raise ImportError(
        'biasaudit.integrations.lightning_audit needs Lightning, which is not installed; pip install "biasaudit[lightning]".'
    ) from None

from biasaudit.integrations.training_audit import AuditCallbackBase

MARK = "biasaudit_gate"  # the checkpoint key of the gate mark


class AuditCallback(AuditCallbackBase, pl.Callback):
    """Audits `adapter`'s `split` during training and logs the bias measures (see the module docstring).

    `adapter`: the Adapter that feeds the network (its model is the one being trained). `split`: the split to scan
    (default "test"); a split the adapter lacks is refused here, before any training. `every_n`: audit every n-th
    validation (1: each). `at_end`: also audit the weights training ends with when no validation audited them.
    `out`: a directory; rank 0 writes `epoch-<E>-step-<S>/audit.json` there per audit (with `html`, audit.html too;
    with rules, gate.json) and the index `audits.json`. `rules`: gate rules judged on each audit, a ba.GateRules or
    a mapping such as {"min_worst_group": {"full": 60}, "max_gap": 30} (rules that need a baseline audit are refused).
    `on_fail`: what a failing gate does: "mark" (default: the checkpoints saved after it carry
    checkpoint["biasaudit_gate"] with status FAIL), "stop" (mark, and stop training), or "none" (only record it).
    `model`: the network the adapter calls: None (the LightningModule itself), the name of the LightningModule's
    attribute holding it (e.g. "net"), or a function of the LightningModule returning it. `settings`: any setting of
    ba.scan by name (conditions, seed, batch_size, bootstrap, projection, mute, min_group, ...; projection defaults to
    "pca"); the audit runs on the device the model is on.

    `audits` lists every audit taken (AuditRecord: epoch, step, metrics, gate status, folder, the Audit)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._auditor.begin(self._network(pl_module))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._auditor.due(trainer.global_step):
            return
        record = self._auditor.audit(self._network(pl_module), epoch=trainer.current_epoch, step=trainer.global_step)
        pl_module.log_dict(record.logged(), on_step=False, on_epoch=True, reduce_fx="max", sync_dist=trainer.world_size > 1)
        if self._auditor.should_stop(record):
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._auditor.at_end or self._auditor.audited(trainer.global_step):
            return
        record = self._auditor.audit(self._network(pl_module), epoch=trainer.current_epoch, step=trainer.global_step, at="end")
        for logger in trainer.loggers:  # each writes on rank 0 only
            logger.log_metrics(record.logged(), step=trainer.global_step)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        last = self._auditor.last
        if self._auditor.on_fail != "none" and last is not None and last.status is not None:
            checkpoint[MARK] = last.mark()
