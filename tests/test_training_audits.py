"""Audits during training in Lightning (issue 24, item 4): biasaudit.integrations.lightning_audit.AuditCallback on a
zoo model (tests/zoo/cnn_tokens.py: a CNN with BatchNorm and dropout + a token branch, the text carrying a planted
shortcut), trained for real on the CPU.

What a user would see go wrong otherwise: bias measures missing from the logger at some validation, or logged values
that are not the audit of the weights they were logged for (checked against ba.scan of the final weights, to float32,
the precision Lightning logs in); a scan that changes training (dropout draws, BatchNorm statistics, eval mode left on:
the final weights then differ from a run without the callback); a failing gate that does not stop training or leaves
its checkpoint unmarked; a wrong argument found only after an epoch of training; under DDP, an audit that is not the
single-process one, or files written by every rank.

The Hugging Face Trainer's callback is tested in tests/test_training_audits_hf.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import biasaudit as ba
from biasaudit.errors import DataError, InputError
from biasaudit.integrations.tracking_keys import audit_metrics
from biasaudit.results import to_jsonable

import lightning  # the test extra installs it: a missing framework must fail the suite, not skip it
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from biasaudit.integrations.lightning_audit import MARK, AuditCallback

ROOT = Path(__file__).resolve().parents[1]
SPEC = f"{ROOT / 'tests' / 'zoo' / 'cnn_tokens.py'}:adapter"
# min_group 2: the zoo's test split is small, and groups under min_group would leave worst-group accuracy unmeasured (blind).
SCAN = dict(conditions="missing,carrier", bootstrap=50, batch_size=16, embedding_points=50, gradient_batches=2, min_group=2)
EPOCHS, STEPS_PER_EPOCH = 3, 6  # 96 training samples in batches of 16
ADAPTER = ba.load_adapter(SPEC)


def rows(split: str) -> list[dict[str, torch.Tensor]]:
    whole = next(iter(ADAPTER.data(split, batch_size=10_000)))
    return [{key: value[i] for key, value in whole.items()} for i in range(len(whole["label"]))]


class Module(lightning.LightningModule):
    """The zoo network in `self.net`, trained with cross-entropy; its validation loss makes a validation loop."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = ADAPTER.build_model()
        self.steps = 0

    def loss(self, batch):
        return F.cross_entropy(self.net(*ADAPTER.prepare(batch, device=self.device)), batch["label"])

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(tmp_path: Path, callbacks: list, *, epochs: int = EPOCHS, checkpoints: bool = False):
    module = Module()
    if checkpoints:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)]
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path / "logs", name="run"),
        callbacks=callbacks, enable_checkpointing=checkpoints, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path)  # fmt: skip
    torch.manual_seed(1)  # the dropout draws of training
    trainer.fit(module, DataLoader(rows("train"), batch_size=16), DataLoader(rows("test"), batch_size=16))
    return module, trainer


def logged_rows(trainer) -> list[dict[str, float]]:
    """The CSV logger's rows that hold the audit's figures, as numbers."""
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        found = [row for row in csv.DictReader(handle) if row.get("biasaudit/full/accuracy")]
    return [{key: float(value) for key, value in row.items() if value != ""} for row in found]


def as_logged(metrics: dict[str, float]) -> dict[str, float]:
    """Lightning logs a Python float as a float32 tensor."""
    return {key: float(torch.tensor(value, dtype=torch.float32)) for key, value in metrics.items()}


def scan_of(net) -> ba.Audit:
    return ba.scan(net, ADAPTER, split="test", projection="pca", **SCAN)


def without_manifest(document: dict) -> dict:
    return json.loads(json.dumps(to_jsonable({k: v for k, v in document.items() if k != "manifest"})))


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    """Three epochs with an audit at every validation, a rule that passes, checkpoints every epoch."""
    where = tmp_path_factory.mktemp("lightning")
    callback = AuditCallback(ADAPTER, split="test", model="net", out=where / "audits", rules={"min_accuracy": {"full": 0}}, **SCAN)
    module, trainer = fit(where, [callback], checkpoints=True)
    return where, callback, module, trainer


def test_the_measures_are_logged_at_every_validation_and_the_last_equal_a_scan_of_the_final_weights(audited_run):
    where, callback, module, trainer = audited_run
    logged = logged_rows(trainer)
    assert [row["epoch"] for row in logged] == [0, 1, 2]  # each validation; the sanity check is not audited
    expected = audit_metrics(scan_of(module.net))
    assert "biasaudit/bias/worst_group/full" in expected and "biasaudit/bias/follow_rate/text" in expected
    assert {key: logged[-1].get(key) for key in expected} == as_logged(expected)
    assert logged[-1]["biasaudit/gate/failed"] == 0
    assert [(a.epoch, a.step, a.at, a.status) for a in callback.audits] == [
        (e, STEPS_PER_EPOCH * (e + 1), "evaluation", "PASS") for e in range(EPOCHS)]  # fmt: skip
    assert dict(callback.audits[-1].metrics) == expected
    ran = [row["name"] for row in callback.audits[-1].audit.to_dict()["conditions"]]
    assert ran == list(callback._auditor.conditions)  # what the rules' targets were checked against, when built


def test_the_audits_are_kept_as_files_and_every_checkpoint_carries_its_gate_mark(audited_run):
    where, callback, module, trainer = audited_run
    folders = [where / "audits" / f"epoch-{e}-step-{STEPS_PER_EPOCH * (e + 1)}" for e in range(EPOCHS)]
    assert all(sorted(p.name for p in folder.iterdir()) == ["audit.json", "gate.json"] for folder in folders)
    written = json.loads((folders[-1] / "audit.json").read_text())
    assert without_manifest(written) == without_manifest(scan_of(module.net).to_dict())
    assert json.loads((folders[-1] / "gate.json").read_text())["status"] == "PASS"
    index = json.loads((where / "audits" / "audits.json").read_text())
    assert [entry["audit"] for entry in index["audits"]] == [str(folder / "audit.json") for folder in folders]
    assert index["audits"][-1]["metrics"] == audit_metrics(scan_of(module.net))
    for epoch in range(EPOCHS):
        step = STEPS_PER_EPOCH * (epoch + 1)
        saved = torch.load(where / "ckpt" / f"epoch={epoch}-step={step}.ckpt", weights_only=True)
        assert saved[MARK]["status"] == "PASS" and saved[MARK]["step"] == step


def test_training_with_the_callback_ends_with_the_weights_it_ends_with_without_it(audited_run, tmp_path):
    _, _, audited, _ = audited_run
    plain, _ = fit(tmp_path, [])
    for (name, a), (_, b) in zip(audited.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name  # dropout draws, BatchNorm statistics and the data order all unchanged


def test_a_failing_gate_with_on_fail_stop_stops_training_at_that_validation_and_marks_its_checkpoint(tmp_path):
    callback = AuditCallback(ADAPTER, split="test", model="net", out=tmp_path / "audits", on_fail="stop",
                             rules={"min_accuracy": {"full": 100}}, **SCAN)  # fmt: skip
    module, trainer = fit(tmp_path, [callback], checkpoints=True)
    assert trainer.global_step == STEPS_PER_EPOCH and module.steps == STEPS_PER_EPOCH  # one epoch of three
    assert [(a.status, a.at) for a in callback.audits] == [("FAIL", "evaluation")]  # the end is that audit's weights
    assert "min_accuracy" in callback.audits[0].failed[0]
    saved = torch.load(tmp_path / "ckpt" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt", weights_only=True)
    assert saved[MARK]["status"] == "FAIL" and saved[MARK]["failed"] == list(callback.audits[0].failed)
    assert logged_rows(trainer)[-1]["biasaudit/gate/failed"] == 1


class ModeChecked(AuditCallback):
    """Checks every submodule's train/eval mode the moment an audit hook returns. Lightning puts train mode back after
    validation itself, so a scan that left eval mode on (dropout off, BatchNorm frozen for the rest of training) would
    not show in the module's mode once fit returns. The modes are set mixed first (the network in train mode, one
    BatchNorm frozen in eval, as a user may freeze one), so that a scan leaving every module in one mode shows."""

    checked = 0

    def _checked(self, hook, trainer, pl_module) -> None:
        before = {name: m.training for name, m in pl_module.named_modules()}
        pl_module.train()
        pl_module.net.image_branch[1].eval()
        mixed = {name: m.training for name, m in pl_module.named_modules()}
        audits = len(self.audits)
        hook(trainer, pl_module)
        assert {name: m.training for name, m in pl_module.named_modules()} == mixed
        self.checked += len(self.audits) - audits
        for name, m in pl_module.named_modules():
            m.training = before[name]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._checked(super().on_validation_epoch_end, trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._checked(super().on_train_end, trainer, pl_module)


def test_every_n_validations_and_the_weights_training_ends_with_are_audited_each_leaving_the_modes_as_found(tmp_path):
    callback = ModeChecked(ADAPTER, split="test", model="net", every_n=2, **SCAN)
    module, trainer = fit(tmp_path, [callback])
    assert [(a.step, a.at) for a in callback.audits] == [(2 * STEPS_PER_EPOCH, "evaluation"), (3 * STEPS_PER_EPOCH, "end")]
    assert callback.checked == 2  # both audits left every submodule's mode as they found it
    logged = logged_rows(trainer)
    assert [row["step"] for row in logged] == [2 * STEPS_PER_EPOCH - 1, 3 * STEPS_PER_EPOCH]
    expected = audit_metrics(scan_of(module.net))
    assert {key: logged[-1].get(key) for key in expected} == expected  # written by the loggers as Python floats


# ---- wrong arguments: one sentence, before any training ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"split": "val"}, DataError, r"^Split 'val' is not offered by the adapter\. Available: train, test\.$"),  # ba.scan's
        ({"every_n": 0}, InputError, r"^The 'every_n' parameter of AuditCallback is 0; expected a positive integer"),
        ({"rules": {"min_acc": 90}}, InputError, r"names no gate rule 'min_acc'; .*Available: max_gap, min_accuracy, min_worst_group\.$"),
        ({"rules": {"max_gap_increase": 1}}, InputError, r"names 'max_gap_increase', which compares against a baseline audit"),
        ({"rules": ba.GateRules(max_worst_group_drop=2)}, InputError, r"sets max_worst_group_drop, which compares against a baseline"),
        ({"rules": {"min_accuracy": {"full": 120}}}, InputError, r"rules' parameter of AuditCallback: min_accuracy .*not a percentage"),
        ({"on_fail": "stop"}, InputError, r"^The 'on_fail' parameter of AuditCallback is 'stop', but no rules are given, so no audit can fail;"),
        ({"html": "no"}, InputError, r"^The 'html' parameter of AuditCallback is 'no'; expected True or False\.$"),  # truthy
        ({"on_fail": "explode"}, InputError, r"^The 'on_fail' parameter of AuditCallback is 'explode'\. Available: mark, stop, none\.$"),
        ({"device": "cuda"}, InputError, r"takes no scan setting 'device' \(a training audit runs on the model's own device\)"),
        ({"bootstrapp": 50}, InputError, r"takes no scan setting 'bootstrapp'\. Available: conditions, batch_size, seed, bootstrap,"),
        ({"bootstrap": 5}, InputError, r"^bootstrap is 5; expected an integer of at least 10\.$"),
        ({"model": 3}, InputError, r"^The 'model' parameter of AuditCallback must be None .*; got int\.$"),
        # A rule's target the audits will not have: at the first audit, after an epoch, the gate would refuse it (or,
        # for max_gap, judge it ERROR, which counts as failed and stops training with on_fail="stop").
        ({"rules": {"min_worst_group": {"noisy:text": 50}}, **SCAN}, InputError,
         r"^The 'rules' parameter of AuditCallback: min_worst_group names condition 'noisy:text', which the audits will not "
         r"run with the 'conditions' setting \('missing,carrier'\); expected one they have\. Available: full, missing:image, "
         r"missing:text\.$"),
        ({"rules": {"max_gap": {"noisy": 30}}, **SCAN}, InputError,
         r"^The 'rules' parameter of AuditCallback: max_gap judges the 'noisy' Gap, but the 'conditions' setting "
         r"\('missing,carrier'\) measures only the missing Gap; expected a Gap the audits have \(missing or noisy on two"),
        ({"rules": ba.GateRules(max_gap=30), "conditions": "missing:image"}, InputError,
         r"^The 'rules' parameter of AuditCallback: max_gap judges every Gap, but the 'conditions' setting "
         r"\('missing:image'\) measures no Gap;"),
    ],
)  # fmt: skip
def test_a_wrong_argument_is_one_sentence_when_the_callback_is_built(options, error, message):
    with pytest.raises(error, match=message):
        AuditCallback(ADAPTER, **options)


def test_an_output_directory_that_is_a_file_is_refused_when_the_callback_is_built(tmp_path):
    (tmp_path / "audits").write_text("not a directory")
    with pytest.raises(InputError, match=r"^The 'out' parameter of AuditCallback .*audits exists and is not a directory"):
        AuditCallback(ADAPTER, out=tmp_path / "audits")


def test_a_network_the_module_lacks_is_refused_before_the_first_training_step(tmp_path):
    callback = AuditCallback(ADAPTER, model="network", **SCAN)
    module = Module()
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                                enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(InputError, match=r"^The 'model' parameter of AuditCallback names attribute 'network', which Module"):
        trainer.fit(module, DataLoader(rows("train"), batch_size=16))
    assert module.steps == 0


# ---- DDP: two processes over gloo under torchrun ----------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[3])
import torch, lightning
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from test_training_audits import ADAPTER, SCAN, Module, rows
from biasaudit.integrations.lightning_audit import AuditCallback

where, rank = sys.argv[1], int(os.environ["RANK"])
callback = AuditCallback(ADAPTER, split="test", model="net", out=f"{where}/audits-{rank}", **SCAN)
module = Module()
trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback],
                            logger=CSVLogger(f"{where}/logs", name="ddp"), enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
trainer.fit(module, DataLoader(rows("train"), batch_size=16), DataLoader(rows("test"), batch_size=16))
if rank == 0:
    torch.save(module.net.state_dict(), f"{where}/final.pt")
    with open(f"{where}/log_dir", "w") as handle:
        handle.write(trainer.logger.log_dir)
records = [{"metrics": dict(r.metrics), "folder": r.folder and str(r.folder), "document": r.audit.to_dict()} for r in callback.audits]
with open(f"{where}/rank{rank}.json", "w") as handle:
    json.dump(records, handle)
"""


def test_under_ddp_the_audit_is_sharded_equals_the_single_process_one_and_only_rank_zero_writes(tmp_path):
    (tmp_path / "script.py").write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(tmp_path / "script.py"),
         str(tmp_path), "unused", str(ROOT / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(records) for records in ranks] == [2, 2]  # one audit per validation, on both ranks
    assert all(r["document"]["manifest"]["shards"] == {"count": 2, "by": "torch.distributed"} for r in ranks[0])

    net = ADAPTER.build_model()
    net.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process has: CPU kernels may round differently on more threads
    try:
        single = scan_of(net).to_dict()
    finally:
        torch.set_num_threads(threads)
    assert without_manifest(ranks[0][-1]["document"]) == without_manifest(ranks[1][-1]["document"]) == without_manifest(single)
    expected = audit_metrics(ba.Audit.from_dict(single))
    assert ranks[0][-1]["metrics"] == ranks[1][-1]["metrics"] == expected

    with open(Path((tmp_path / "log_dir").read_text()) / "metrics.csv", newline="") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("biasaudit/full/accuracy")]
    assert len(logged) == 2 and {key: float(logged[-1][key]) for key in expected} == as_logged(expected)

    assert [r["folder"] for r in ranks[1]] == [None, None] and not (tmp_path / "audits-1").exists()
    written = json.loads((tmp_path / "audits-0" / "epoch-1-step-6" / "audit.json").read_text())
    assert without_manifest(written) == without_manifest(single)
