"""Audits during training, shared by the Lightning and Hugging Face callbacks (lightning_audit.py, hf_audit.py): when
to audit, the scan itself, the files, the figures the frameworks log, and the gate.

`TrainingAuditor` holds the callbacks' options, checked when it is built (before any training work: the split, the scan
settings, the gate rules and the conditions, Gaps and modalities they name); `AuditCallbackBase` is what both
frameworks' AuditCallback share (their options, `audits`, the network to audit); the framework's callback tells the
auditor when an evaluation ends (`due`) and hands it the model (`audit`); the figures are logged under the
keys the experiment trackers use (tracking_keys.audit_metrics: biasaudit/full/accuracy, biasaudit/bias/worst_group/full,
...). An audit is the scan `ba.scan` runs
(biasaudit.scanning.audit.audit_model), with four differences that training needs:

- it runs on the device the model is on, and never moves it (the scan would move the model to its `device`, away from
  the optimizer's parameters);
- inside an initialised torch.distributed process group of two or more processes it is sharded over the ranks, as
  `ba.scan(distributed=True)` is: the framework calls the hook on every rank, each scans its shard, rank 0 merges, and
  every rank gets the same audit, so every rank logs the same figures and takes the same stop decision;
- it forks torch's random generators (CPU and the model's GPUs) and saves numpy's and Python's: whatever the scan or an
  adapter's data() draws, training's dropout, shuffling and augmentations draw what they would have drawn without it;
- gradients are enabled for it even inside the framework's no-grad or inference-mode evaluation (the gradient-conflict
  analysis needs them; it uses torch.autograd.grad, so no parameter's `.grad` is written).

Rank 0 alone writes `<out>/epoch-<E>-step-<S>/audit.json` (and audit.html with `html=True`, and gate.json when rules
are given) as one output set, and `<out>/audits.json`, the index of every audit so far with its figures and gate status.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biasaudit._core.output_paths import check_output_dir
from biasaudit.data.batches import check_split
from biasaudit.errors import InputError
from biasaudit.integrations.training_audit_checks import (
    check_model_choice,
    check_rule_targets,
    check_rules,
    module_to_audit,
    scan_config,
)
from biasaudit.integrations.tracking_keys import PREFIX, audit_metrics
from biasaudit.results.audit import Audit

ON_FAIL = ("mark", "stop", "none")  # what a failing gate does: mark the checkpoints, stop training, or only record it
FAILED = ("FAIL", "ERROR")  # a rule in ERROR cannot see what it judges (e.g. no bias key): the gate does not pass


@dataclass(frozen=True)
class AuditRecord:
    """One audit taken during training. `number` counts the audits from 1; `epoch` is the framework's epoch counter
    at the audit (Lightning's current_epoch, from 0; the Trainer's whole epochs done) and `step` the optimizer steps
    taken (by the weights audited: with the Trainer's load_best_model_at_end, the end's are the best checkpoint's);
    `at` is "evaluation" or "end" (weights no evaluation audited, when training ended); `metrics` the audit's
    figures under the trackers' keys (tracking_keys.audit_metrics); `status` the gate's overall PASS / WARN / FAIL /
    ERROR (None without rules) and `failed` the messages of the rules that failed; `folder` where rank 0 wrote it
    (None on other ranks, or without `out`); `audit` the Audit itself."""

    number: int
    epoch: int
    step: int
    at: str
    metrics: Mapping[str, float]
    status: str | None
    failed: tuple[str, ...]
    folder: Path | None
    audit: Audit

    @property
    def passed(self) -> bool:
        return self.status not in FAILED

    def mark(self) -> dict[str, Any]:
        """What a checkpoint saved after this audit carries, so that a team can tell the ones whose gate failed."""
        return {
            "status": self.status,
            "failed": list(self.failed),
            "epoch": self.epoch,
            "step": self.step,
            "audit": str(self.folder / "audit.json") if self.folder is not None else None,
        }

    def logged(self) -> dict[str, float]:
        """What the callbacks log: the metrics and, when rules are given, how many failed (biasaudit/gate/failed)."""
        gate = {f"{PREFIX}/gate/failed": float(len(self.failed))} if self.status is not None else {}
        return {**self.metrics, **gate}

    def index_entry(self) -> dict[str, Any]:
        return {"number": self.number, "at": self.at, **self.mark(), "metrics": dict(self.metrics)}


class TrainingAuditor:
    """The options of an audit callback, checked at once (`where` names the callback in errors), and the audits."""

    def __init__(
        self,
        adapter: Any,
        *,
        split: str,
        every_n: int,
        at_end: bool,
        out: str | Path | None,
        html: bool,
        rules: Any,
        on_fail: str,
        settings: Mapping[str, Any],
        where: str,
    ) -> None:
        from biasaudit.data.adapter import validate_adapter

        self.adapter = validate_adapter(adapter, source=f"given to {where} ({type(adapter).__name__})")
        check_split(self.adapter, split)  # ba.scan's check and sentence
        if isinstance(every_n, bool) or not isinstance(every_n, int) or every_n < 1:
            raise InputError(
                f"The 'every_n' parameter of {where} is {every_n!r}; expected a positive integer (1 audits every evaluation)."
            )
        if on_fail not in ON_FAIL:
            raise InputError(f"The 'on_fail' parameter of {where} is {on_fail!r}. Available: {', '.join(ON_FAIL)}.")
        for name, flag in (("at_end", at_end), ("html", html)):
            if not isinstance(flag, bool):  # html="no" would be truthy and write HTML nobody asked for
                raise InputError(f"The '{name}' parameter of {where} is {flag!r}; expected True or False.")
        self.out = check_output_dir(out, option=f"The 'out' parameter of {where}") if out is not None else None
        # The conditions the audits will run (name -> group), which the rules' targets are checked against.
        self.config, self.conditions = scan_config(self.adapter, split=split, settings=settings, where=where)
        self.rules = check_rules(rules, where=where)
        if on_fail == "stop" and self.rules is None:
            raise InputError(
                f"The 'on_fail' parameter of {where} is 'stop', but no rules are given, so no audit can fail; give rules "
                "(e.g. {'min_worst_group': {'full': 60}}) or leave on_fail at 'mark'."
            )
        modalities = [m.name for m in self.adapter.modalities]
        check_rule_targets(self.rules, self.conditions, modalities, spec=self.config.conditions, where=where)
        self.every_n, self.at_end, self.html, self.on_fail, self.where = every_n, at_end, html, on_fail, where
        self.evaluations = 0  # evaluations seen (every_n counts them)
        self._counted_step: int | None = None
        self.records: list[AuditRecord] = []

    def begin(self, model: Any) -> None:
        """The checks that need the model, made when training starts (before its first step)."""
        from biasaudit.scanning.config import check_precision

        if not isinstance(model, nn.Module):
            raise InputError(f"{self.where} was given a {type(model).__name__} to audit; expected a torch.nn.Module.")
        check_precision(self.config.precision, _device_of(model))

    def due(self, step: int) -> bool:
        """Called at the end of every evaluation, with the optimizer steps taken: whether it is audited (every
        `every_n`-th). Evaluations at one step (several evaluation sets) count once."""
        if step == self._counted_step:
            return False
        self._counted_step = step
        self.evaluations += 1
        return self.evaluations % self.every_n == 0

    @property
    def last(self) -> AuditRecord | None:
        return self.records[-1] if self.records else None

    def audited(self, step: int) -> bool:
        """Whether the weights of optimizer step `step` were audited already (the end of training after an evaluation)."""
        return self.last is not None and self.last.step == step

    def should_stop(self, record: AuditRecord) -> bool:
        return self.on_fail == "stop" and not record.passed

    def audit(self, model: nn.Module, *, epoch: int, step: int, at: str = "evaluation") -> AuditRecord:
        """Audit `model` as it is now; every rank of a process group must call this together."""
        from dataclasses import replace

        from biasaudit._core.sharding import process_group_shard
        from biasaudit.scanning.audit import audit_model

        group = process_group_shard()
        config = replace(self.config, device=str(_device_of(model)))
        with _apart_from_training(model):
            document = audit_model(model, self.adapter, config=config, checkpoint=None, distributed=group is not None)
        audit = Audit.from_dict(document)
        status, failed, gate = self._judge(document)
        writes = self.out is not None and (group is None or group.index == 0)
        folder = self.out / f"epoch-{epoch}-step-{step}" if writes and self.out is not None else None
        record = AuditRecord(len(self.records) + 1, epoch, step, at, dict(audit_metrics(audit)), status, failed, folder, audit)
        self.records.append(record)
        if folder is not None:
            self._write(document, gate, folder)
        return record

    def _judge(self, document: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], dict[str, Any] | None]:
        if self.rules is None:
            return None, (), None
        from biasaudit.gating import evaluate_gate

        gate = evaluate_gate(document, self.rules, current_name="audit.json")
        failed = tuple(f"{rule['rule']}: {rule['message']}" for rule in gate["rules"] if rule["status"] in FAILED)
        return gate["status"], failed, gate

    def _write(self, document: dict[str, Any], gate: dict[str, Any] | None, folder: Path) -> None:
        from biasaudit._core.output_set import OutputSet
        from biasaudit.results import write_json_atomic
        from biasaudit.scanning.audit import stage_audit

        others = (*(("audit.html",) if self.html else ()), *(("gate.json",) if gate is not None else ()))
        files = ("audit.json", *others)
        with OutputSet(folder, files=files, option=f"The 'out' parameter of {self.where}") as outputs:
            stage_audit(document, outputs, html_name="audit.html" if self.html else None)
            if gate is not None:
                write_json_atomic(gate, outputs.staged("gate.json"))
            outputs.commit((*others, "audit.json"))  # the JSON, which tools read, last
        assert self.out is not None
        write_json_atomic(
            {
                "schema": "biasaudit.training_audits",
                "split": self.config.split,
                "audits": [r.index_entry() for r in self.records],
            },
            self.out / "audits.json",
        )


class AuditCallbackBase:
    """What the Lightning and Hugging Face AuditCallbacks share (their docstrings say what each option does): the
    options, checked when the callback is built; `audits`, the audits taken; the network the adapter calls."""

    where = "AuditCallback"  # the callback, as errors name it

    def __init__(
        self,
        adapter: Any,
        *,
        split: str = "test",
        every_n: int = 1,
        at_end: bool = True,
        out: str | Path | None = None,
        html: bool = False,
        rules: Any = None,
        on_fail: str = "mark",
        model: str | Callable[[Any], nn.Module] | None = None,
        **settings: Any,
    ) -> None:
        self._auditor = TrainingAuditor(
            adapter,
            split=split,
            every_n=every_n,
            at_end=at_end,
            out=out,
            html=html,
            rules=rules,
            on_fail=on_fail,
            settings=settings,
            where=self.where,
        )
        check_model_choice(model, where=self.where)
        self.model = model

    @property
    def audits(self) -> list[AuditRecord]:
        return self._auditor.records

    def _network(self, trained: Any) -> nn.Module:
        """The network the adapter calls, from what the framework trains (the LightningModule, the Trainer's model)."""
        return module_to_audit(trained, self.model, where=self.where)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def _apart_from_training(model: nn.Module) -> Iterator[None]:
    """The scan with gradients on (a framework evaluates under no_grad or inference_mode) and training's random
    generators as they were: torch's forked (CPU and the model's GPUs), numpy's and Python's saved and put back."""
    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with ExitStack() as held:
        held.enter_context(torch.random.fork_rng(devices=gpus))
        held.enter_context(torch.inference_mode(False))
        held.enter_context(torch.enable_grad())
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
