"""Audits during training in a Hugging Face `Trainer` (pip install "biasaudit[hf]"): `AuditCallback` scans a split of
the adapter at every `every_n`-th evaluation and logs the bias measures through the Trainer::

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    audits = AuditCallback(adapter, split="test", model="net", out="audits").attach(trainer)
    trainer.train()

Why `attach` (transformers 5.x). The Trainer logs an evaluation's metrics (`self.log(metrics)`: log_history and every
`report_to` integration's on_log) BEFORE it calls the callbacks' on_evaluate, and gives callbacks no handle on itself.
So on_evaluate adds the measures to the `metrics` dict, which `evaluate()` returns and `metric_for_best_model`,
`load_best_model_at_end` and EarlyStoppingCallback read, and logs them as an entry of their own with `trainer.log`,
which reaches log_history and every integration; `attach(trainer)` adds the callback, first, so that the other
callbacks read the audit in the metrics and the integrations receive the end-of-training audit before their own
on_train_end, and gives it that handle. A
callback passed in `callbacks=[...]` without attach appends the entry to `state.log_history` itself (saved with every
checkpoint's trainer_state.json), but no `report_to` integration sees it.

Keys follow the Trainer's evaluation convention: `eval_` + the trackers' key (eval_biasaudit/full/accuracy, ...), so
`metric_for_best_model="biasaudit/bias/worst_group/full"` (the Trainer adds `eval_`) and W&B's eval/ section work.

An evaluation is audited when it is the every_n-th, or (`at_end`) when it is at the last step (`state.max_steps`), so
that the final evaluation's metrics carry the audit. When training ends on weights no evaluation audited (early
stopping, every_n, no evaluation at the last step), `at_end` audits them in on_train_end and logs them as an entry of
their own (trainer.log when attached, else state.log_history). A Trainer that never evaluates (eval_strategy "no") is
refused when training begins. Under DDP every rank runs on_evaluate and on_train_end: the scan is sharded over the
ranks, every rank gets the same figures, and rank 0 alone writes the files; the integrations log on the main process
only. A failing gate with on_fail="stop" sets `control.should_training_stop`; with "mark" or "stop", on_save writes
`biasaudit_gate.json` into the checkpoint folder.
"""

from __future__ import annotations

import json
import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:  # one sentence, naming the extra
    raise ImportError(
        'biasaudit.integrations.hf_audit needs transformers, which is not installed; pip install "biasaudit[hf]".'
    ) from None

from biasaudit.errors import InputError
from biasaudit.integrations.training_audit import AuditCallbackBase

MARK_FILE = "biasaudit_gate.json"  # written into a checkpoint folder saved after a judged audit


class AuditCallback(AuditCallbackBase, TrainerCallback):
    """Audits `adapter`'s `split` at the Trainer's evaluations and logs the bias measures (see the module docstring).

    `adapter`: the Adapter that feeds the network (its model is the one being trained). `split`: the split to scan
    (default "test"); a split the adapter lacks is refused here, before any training. `every_n`: audit every n-th
    evaluation (1: each). `at_end`: also audit the evaluation at the last step, and the weights training ends with when
    no evaluation audited them. `out`: a directory; rank 0 writes
    `epoch-<E>-step-<S>/audit.json` there per audit (with `html`, audit.html too; with rules, gate.json) and the index
    `audits.json`. `rules`: gate rules judged on each audit, a ba.GateRules or a mapping such as
    {"min_worst_group": {"full": 60}} (rules that need a baseline audit are refused). `on_fail`: what a failing gate
    does: "mark" (default: checkpoint folders saved after it get biasaudit_gate.json with status FAIL), "stop" (mark,
    and stop training) or "none" (only record it). `model`: the network the adapter calls: None (the Trainer's model),
    the name of the model's attribute holding it, or a function of the model returning it. `prefix`: put before every
    key (default "eval_", the Trainer's evaluation prefix). `settings`: any setting of ba.scan by name (conditions,
    seed, batch_size, bootstrap, projection, mute, ...; projection defaults to "pca"); the audit runs on the device
    the model is on.

    `audits` lists every audit taken (AuditRecord: epoch, step, metrics, gate status, folder, the Audit)."""

    def __init__(self, adapter: Any, *, prefix: str = "eval_", **options: Any) -> None:
        super().__init__(adapter, **options)  # the options both callbacks take (training_audit.AuditCallbackBase)
        if not isinstance(prefix, str):
            raise InputError(
                f"The 'prefix' parameter of {self.where} is a {type(prefix).__name__}; expected a str such as 'eval_'."
            )
        self.prefix = prefix
        self._trainer: Any = None

    def attach(self, trainer: Any) -> AuditCallback:
        """Add this callback to `trainer` and log through `trainer.log`, which every report_to integration sees."""
        callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", None)
        if not callable(getattr(trainer, "log", None)) or not isinstance(callbacks, list):
            raise InputError(f"AuditCallback.attach was given a {type(trainer).__name__}; expected a transformers Trainer.")
        # First in the list, not last as add_callback puts it: the other callbacks' on_evaluate (EarlyStoppingCallback)
        # then read the audit in the metrics, and the end-of-training audit is logged before the integrations' on_train_end
        # closes their runs (MLflow's would otherwise log it into a new run).
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self._trainer = trainer
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        strategy = getattr(args, "eval_strategy", getattr(args, "evaluation_strategy", None))  # the name before 4.41
        if str(getattr(strategy, "value", strategy)) == "no":
            raise InputError(
                "AuditCallback audits at the Trainer's evaluations, but eval_strategy is 'no'; set "
                "TrainingArguments(eval_strategy='epoch') (or 'steps') and give the Trainer an eval_dataset."
            )
        self._auditor.begin(self._network(model))

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        due = self._auditor.due(step)
        again = self._auditor.audited(step)
        if again:  # another evaluation of the same weights (several eval sets, evaluate() after train()): no new scan
            record = self._auditor.last
        elif due or (self._auditor.at_end and step >= state.max_steps):
            record = self._auditor.audit(self._network(model), epoch=int(state.epoch or 0), step=step)
        else:
            return
        assert record is not None
        logged = {self.prefix + key: value for key, value in record.logged().items()}
        if isinstance(metrics, dict):
            metrics.update(logged)
        if again:
            return
        self._log(logged, state)
        if self._auditor.should_stop(record):
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Audit the weights training ends with when no evaluation audited them: early stopping (EarlyStoppingCallback,
        another callback's stop) or `every_n` past the last evaluation, or a Trainer that does not evaluate at the last
        step (eval_strategy "steps" in older transformers). With load_best_model_at_end they are the best
        checkpoint's: audited already when the evaluation that chose it was."""
        if not self._auditor.at_end:
            return
        best = state.best_model_checkpoint if getattr(args, "load_best_model_at_end", False) else None
        weights_of = (_checkpoint_step(best) if best else None) or state.global_step
        if any(record.step == weights_of for record in self.audits):
            return
        # The record names the weights' own step (and epoch), as the evaluations' records do.
        epoch = next((e["epoch"] for e in state.log_history if e.get("step") == weights_of and "epoch" in e), state.epoch)
        record = self._auditor.audit(self._network(model), epoch=int(epoch or 0), step=weights_of, at="end")
        self._log({self.prefix + key: value for key, value in record.logged().items()}, state)

    def _log(self, logged: dict[str, float], state: Any) -> None:
        if self._trainer is not None:
            self._trainer.log(dict(logged))
        else:
            state.log_history.append({**logged, "epoch": state.epoch, "step": state.global_step})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        last = self._auditor.last
        if self._auditor.on_fail == "none" or last is None or last.status is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            from biasaudit._core.files import atomic_write_bytes

            atomic_write_bytes(json.dumps(last.mark(), indent=2).encode("utf-8"), os.path.join(folder, MARK_FILE))


def _checkpoint_step(folder: str) -> int | None:
    """The optimizer step of a Trainer checkpoint folder (checkpoint-<step>); None for a name not of that form."""
    tail = os.path.basename(os.path.normpath(folder)).rpartition("-")[2]
    return int(tail) if tail.isdigit() else None
