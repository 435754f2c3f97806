"""Audits during training in a Hugging Face Trainer (issue 24, item 4): biasaudit.integrations.hf_audit.AuditCallback
on the zoo's CNN + tokens model (tests/zoo/cnn_tokens.py, dropout and BatchNorm included), trained for real on the CPU.

What a user would see go wrong otherwise: the measures missing from log_history (or, attached, from what the report_to
integrations receive: the same trainer.log call) at some evaluation, or not the audit of the weights evaluated (the
last must equal ba.scan of the final weights exactly: the Trainer logs Python floats); metric_for_best_model unable to
read them; a scan that changes training; a failing gate that does not stop training or leaves its checkpoint unmarked;
training stopped early (or ended on the best checkpoint) on weights no audit saw; the integrations missing the audit
of the end; a Trainer that never evaluates, or a wrong split, found only after training has started.

The Lightning callback, the argument checks and DDP are tested in tests/test_training_audits.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import biasaudit as ba
from biasaudit.errors import DataError, InputError
from biasaudit.integrations.tracking_keys import audit_metrics

import accelerate  # noqa: F401  # the test extra installs it: a missing framework must fail the suite, not skip it
import transformers

from biasaudit.integrations.hf_audit import MARK_FILE, AuditCallback

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ba.load_adapter(f"{ROOT / 'tests' / 'zoo' / 'cnn_tokens.py'}:adapter")
# min_group 2: the zoo's test split is small, and groups under min_group would leave worst-group accuracy unmeasured (blind).
SCAN = dict(conditions="missing,carrier", bootstrap=50, batch_size=16, embedding_points=50, gradient_batches=2, min_group=2)
EPOCHS, STEPS_PER_EPOCH = 3, 6  # 96 training samples in batches of 16


class Rows(Dataset):
    def __init__(self, split: str) -> None:
        self.whole = next(iter(ADAPTER.data(split, batch_size=10_000)))

    def __len__(self) -> int:
        return len(self.whole["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.whole["image"][i], "tokens": self.whole["tokens"][i], "mask": self.whole["mask"][i],
                "labels": self.whole["label"][i]}  # fmt: skip


class WithLoss(nn.Module):
    """The zoo network in `self.net`, returning the loss the Trainer minimises."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = ADAPTER.build_model()

    def forward(self, image, tokens, mask, labels):
        logits = self.net(*ADAPTER.prepare({"image": image, "tokens": tokens, "mask": mask}, device=image.device))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Reporter(transformers.TrainerCallback):
    """What a report_to integration (W&B, MLflow, TensorBoard) receives: every on_log."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def on_train_end(self, args, state, control, **kwargs):
        self.logs.append({"train_end": True})  # where MLflow's integration ends its run: nothing it logs after lands


def train(tmp_path: Path, callback: AuditCallback | None, *, attach: bool = True, evaluate: str = "epoch", others=(), **extra):
    model = WithLoss()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), num_train_epochs=EPOCHS, per_device_train_batch_size=16,
        per_device_eval_batch_size=16, learning_rate=1e-2, lr_scheduler_type="constant", report_to=[],
        eval_strategy=evaluate, logging_strategy="epoch", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
        seed=0, **{"save_strategy": "no", **extra})  # fmt: skip
    callbacks = [Reporter(), *others, *([callback] if callback is not None and not attach else [])]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows("train"), eval_dataset=Rows("test"), callbacks=callbacks)
    if callback is not None and attach:
        callback.attach(trainer)
    trainer.train()
    return model, trainer


def audit_entries(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "eval_biasaudit/full/accuracy" in entry]


def reported(trainer) -> list[dict]:
    reporter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Reporter))
    return [logs for logs in reporter.logs if "eval_biasaudit/full/accuracy" in logs]


def evaluation_metrics(net) -> dict[str, float]:
    audit = ba.scan(net, ADAPTER, split="test", projection="pca", **SCAN)
    return {"eval_" + key: value for key, value in audit_metrics(audit).items()}


@pytest.fixture(scope="module")
def attached_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("hf")
    callback = AuditCallback(ADAPTER, split="test", model="net", out=where / "audits", rules={"min_accuracy": {"full": 0}}, **SCAN)
    model, trainer = train(where, callback, save_strategy="epoch", metric_for_best_model="biasaudit/bias/worst_group/full")
    return where, callback, model, trainer


def test_the_measures_are_logged_at_every_evaluation_and_the_last_equal_a_scan_of_the_final_weights(attached_run):
    where, callback, model, trainer = attached_run
    entries = audit_entries(trainer)
    assert [(entry["epoch"], entry["step"]) for entry in entries] == [(e + 1.0, STEPS_PER_EPOCH * (e + 1)) for e in range(EPOCHS)]
    expected = evaluation_metrics(model.net)
    assert "eval_biasaudit/bias/worst_group/full" in expected and "eval_biasaudit/bias/follow_rate/text" in expected
    assert {key: entries[-1].get(key) for key in expected} == expected
    assert entries[-1]["eval_biasaudit/gate/failed"] == 0
    assert [logs["eval_biasaudit/full/accuracy"] for logs in reported(trainer)] == [
        entry["eval_biasaudit/full/accuracy"] for entry in entries]  # attached: what the integrations receive  # fmt: skip
    # The evaluation's own metrics carried them too: the Trainer chose its best checkpoint by one of them.
    assert trainer.state.best_metric == max(entry["eval_biasaudit/bias/worst_group/full"] for entry in entries)


def test_the_audits_are_kept_as_files_and_every_checkpoint_carries_its_gate_mark(attached_run):
    where, callback, model, trainer = attached_run
    index = json.loads((where / "audits" / "audits.json").read_text())
    assert [(entry["epoch"], entry["step"], entry["status"]) for entry in index["audits"]] == [
        (e + 1, STEPS_PER_EPOCH * (e + 1), "PASS") for e in range(EPOCHS)]  # fmt: skip
    for entry in index["audits"]:
        assert Path(entry["audit"]).is_file() and (Path(entry["audit"]).parent / "gate.json").is_file()
        mark = json.loads((where / "trainer" / f"checkpoint-{entry['step']}" / MARK_FILE).read_text())
        assert mark["status"] == "PASS" and mark["audit"] == entry["audit"]


def test_training_with_the_callback_ends_with_the_weights_it_ends_with_without_it(attached_run, tmp_path):
    _, _, audited, _ = attached_run
    plain, _ = train(tmp_path, None, save_strategy="epoch")
    for (name, a), (_, b) in zip(audited.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_failing_gate_with_on_fail_stop_stops_training_and_marks_its_checkpoint_without_attach(tmp_path):
    callback = AuditCallback(ADAPTER, split="test", model="net", on_fail="stop", rules={"min_accuracy": {"full": 100}}, **SCAN)
    model, trainer = train(tmp_path, callback, attach=False, save_strategy="epoch")
    assert trainer.state.global_step == STEPS_PER_EPOCH  # one epoch of three
    assert [a.status for a in callback.audits] == ["FAIL"]
    entries = audit_entries(trainer)  # appended to log_history by the callback itself
    assert len(entries) == 1 and entries[0]["eval_biasaudit/gate/failed"] == 1
    assert reported(trainer) == []  # not attached: the integrations do not see them (the docstring says so)
    assert {key: entries[0][key] for key in evaluation_metrics(model.net)} == evaluation_metrics(model.net)
    mark = json.loads((tmp_path / "trainer" / f"checkpoint-{STEPS_PER_EPOCH}" / MARK_FILE).read_text())
    assert mark["status"] == "FAIL" and "min_accuracy" in mark["failed"][0] and mark["audit"] is None  # no out: no file


def test_every_n_evaluations_and_the_last_step_are_audited(tmp_path):
    callback = AuditCallback(ADAPTER, split="test", model="net", every_n=2, **SCAN)
    model, trainer = train(tmp_path, callback)
    assert [a.step for a in callback.audits] == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]  # the 2nd, and the last
    assert {key: audit_entries(trainer)[-1].get(key) for key in evaluation_metrics(model.net)} == evaluation_metrics(model.net)


def test_training_stopped_early_on_weights_no_evaluation_audited_ends_with_their_audit(tmp_path):
    """EarlyStoppingCallback stops at the 2nd evaluation (its threshold counts no change as an improvement); with
    every_n=3 no evaluation was audited, and the last step (18) is never reached."""
    callback = AuditCallback(ADAPTER, split="test", model="net", every_n=3, **SCAN)
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9)
    model, trainer = train(tmp_path, callback, others=[stop], metric_for_best_model="loss")
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    assert [(a.step, a.at) for a in callback.audits] == [(2 * STEPS_PER_EPOCH, "end")]
    entries, expected = audit_entries(trainer), evaluation_metrics(model.net)
    assert len(entries) == 1 and entries[0]["step"] == 2 * STEPS_PER_EPOCH
    assert {key: entries[0].get(key) for key in expected} == expected
    # The integrations receive it, before their on_train_end: attach put the callback first, though it came last.
    reporter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Reporter))
    assert reported(trainer) == [{k: v for k, v in entries[0].items() if k != "step"}]
    assert reporter.logs.index(reported(trainer)[0]) < reporter.logs.index({"train_end": True})


def test_with_load_best_model_at_end_training_ends_with_an_audit_of_the_best_checkpoints_weights(tmp_path):
    """every_n=2 audits the 2nd evaluation (step 12), where early stopping ends training; the Trainer then loads the
    best checkpoint, the 1st evaluation's (the metric is the loss, greater is better), which no audit saw. Not
    attached: the callback appends the end's entry to log_history itself."""
    callback = AuditCallback(ADAPTER, split="test", model="net", every_n=2, out=tmp_path / "audits", **SCAN)
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9)
    model, trainer = train(tmp_path, callback, attach=False, others=[stop], metric_for_best_model="loss", greater_is_better=True,
                           load_best_model_at_end=True, save_strategy="epoch")  # fmt: skip
    assert Path(trainer.state.best_model_checkpoint).name == f"checkpoint-{STEPS_PER_EPOCH}"
    assert [(a.epoch, a.step, a.at) for a in callback.audits] == [
        (2, 2 * STEPS_PER_EPOCH, "evaluation"), (1, STEPS_PER_EPOCH, "end")]  # fmt: skip
    expected = evaluation_metrics(model.net)
    assert [entry["step"] for entry in audit_entries(trainer)] == [2 * STEPS_PER_EPOCH] * 2  # the end's logged at its end
    assert {key: audit_entries(trainer)[-1].get(key) for key in expected} == expected
    assert (tmp_path / "audits" / f"epoch-1-step-{STEPS_PER_EPOCH}" / "audit.json").is_file()


def test_a_trainer_that_never_evaluates_is_refused_before_the_first_step(tmp_path):
    callback = AuditCallback(ADAPTER, model="net", **SCAN)
    with pytest.raises(InputError, match=r"^AuditCallback audits at the Trainer's evaluations, but eval_strategy is 'no'; "):
        train(tmp_path, callback, evaluate="no")
    assert not callback.audits


def test_a_split_the_adapter_lacks_is_refused_when_the_callback_is_built():
    with pytest.raises(DataError, match=r"^Split 'val' is not offered by the adapter\. Available: train, test\.$"):
        AuditCallback(ADAPTER, split="val")
