"""`fix` data-parallel: two gloo processes training with every method in fix's loop take the steps of one process on
the same global batches (to 1e-5 after 20 steps of Adam, with unequal shares of most batches), both processes end with
the same weights, a run stopped and resumed under two processes gives the uninterrupted weights, and the process
count a state was written with is the one it resumes with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from biasaudit.errors import CheckpointError, InputError
from biasaudit.training.data_parallel import Processes, check_data_parallel
from biasaudit.training.epoch_batches import SAMPLE_INDEX, epoch_shape, process_batches
from biasaudit.training.loop import train
from biasaudit.training.methods import make_method
from biasaudit.training.train_config import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from fix_ddp import ADAPTER, CONFIG, OPTIONS, trained  # noqa: E402

sys.path.pop(0)

METHODS = list(OPTIONS)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[dict, Path]:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = ADAPTER.build_model()
    torch.random.set_rng_state(generator_state)
    path = tmp_path_factory.mktemp("start") / "start.pt"
    torch.save(model.state_dict(), path)
    return model.state_dict(), path


def assert_close(a: dict, b: dict, *, tolerance: float, what: str) -> None:
    for key, value in a.items():
        if value.is_floating_point():
            gap = float((value - b[key]).abs().max()) if value.numel() else 0.0
            assert gap <= tolerance, f"{what}: {key} differs by {gap:.2e}"
        else:
            assert torch.equal(value, b[key]), f"{what}: {key}"


def test_the_processes_split_each_global_batch_by_position_without_padding_or_repeats():
    config = TrainConfig(epochs=1, batch_size=101, seed=3)
    whole = [part.batch[SAMPLE_INDEX] for part in process_batches(ADAPTER, config=config, epoch=0, index=True)]
    parts = [list(process_batches(ADAPTER, config=config, epoch=0, index=True, rank=r, world=2)) for r in (0, 1)]
    for step, (first, second) in enumerate(zip(*parts, strict=True)):
        assert first.size == second.size == whole[step].numel()
        joined = torch.cat([first.batch[SAMPLE_INDEX], second.batch[SAMPLE_INDEX]])
        assert torch.equal(joined, whole[step]), f"step {step}: the two parts are not the global batch in order"
        assert abs(first.batch[SAMPLE_INDEX].numel() - second.batch[SAMPLE_INDEX].numel()) <= 1
    assert sum(w.numel() for w in whole) == len(set(torch.cat(whole).tolist())) == 989


def test_a_batch_with_fewer_rows_than_processes_is_refused_before_training():
    shape = epoch_shape(ADAPTER, config=TrainConfig(epochs=1, batch_size=494))  # 989 = 2 x 494 + 1
    assert shape.smallest == 1
    with pytest.raises(InputError, match="needs at least 2 rows .* the last batch of each epoch holds 1 \(--batch-size 494\)"):
        check_data_parallel(Processes(rank=0, world=2), smallest=shape.smallest, batch_size=494)


def test_training_inside_a_process_group_without_distributed_is_refused(gloo_ranks, tmp_path):
    script = tmp_path / "alone.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "from biasaudit.training.data_parallel import training_processes\n"
        "dist.init_process_group('gloo')\n"
        "try:\n    training_processes(False)\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
        "dist.destroy_process_group()\n"
    )
    for result in gloo_ranks.run([[script]] * 2):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("InputError") and "distributed=True" in result.stdout


def test_every_method_on_two_processes_takes_the_one_process_steps(gloo_ranks, start, tmp_path):
    weights, path = start
    gloo_ranks.run_ok([[FIXTURES / "fix_ddp.py", tmp_path, path, ",".join(METHODS)]] * 2, timeout=400)
    for method in METHODS:
        alone = trained(method, weights, distributed=False).state_dict()
        ranks = [torch.load(tmp_path / f"{method}.{rank}.pt") for rank in (0, 1)]
        assert_close(ranks[0], ranks[1], tolerance=0.0, what=f"{method}: rank 1 ended with other weights than rank 0")
        assert_close(ranks[0], alone, tolerance=1e-5, what=f"{method}: two processes against one")
        moved = max(float((alone[k] - weights[k]).abs().max()) for k in alone if alone[k].is_floating_point())
        assert moved > 1e-3, f"{method} did not train (the comparison would prove nothing)"


@pytest.mark.parametrize("method", ["balgrad", "jtt"])
def test_a_run_resumed_under_two_processes_gives_the_uninterrupted_weights(gloo_ranks, start, tmp_path, method):
    weights, path = start
    gloo_ranks.run_ok([[FIXTURES / "fix_ddp.py", tmp_path, path, method, "13"]] * 2, timeout=300)  # in epoch 1
    resumed = torch.load(tmp_path / f"{method}.0.pt")
    straight = trained(method, weights, distributed=False).state_dict()
    assert_close(resumed, straight, tolerance=1e-5, what=f"{method}: stopped after epoch 1 and resumed")
    model = ADAPTER.build_model()
    with pytest.raises(CheckpointError, match=r"over 2 process\(es\), not 1.*Resume with 2"):
        train(model, ADAPTER, make_method(method, **OPTIONS[method]), config=CONFIG, state_dir=tmp_path / f"{method}-state",
              resume=True)


def test_ba_fix_distributed_outside_a_process_group_is_refused_before_any_audit(monkeypatch):
    import biasaudit as ba

    def audited(*args, **kwargs):
        raise AssertionError("the before-audit ran before the refusal")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", audited)
    with pytest.raises(InputError, match="distributed=True trains over the processes of a torch.distributed process group"):
        ba.fix(ADAPTER.build_model(), ADAPTER, method="ce", epochs=1, distributed=True)


BUFFERS = """
import json, torch, torch.distributed as dist
from torch import nn
from biasaudit.training.data_parallel import Processes, average_buffers
dist.init_process_group("gloo")
rank = dist.get_rank()
model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
model[0].eval()  # a frozen part: its statistics are not the processes' to average
for layer in model:
    layer.running_mean.fill_(0.1 + rank)
average_buffers(model, Processes(rank=rank, world=2))
print(json.dumps([model[0].running_mean.tolist(), model[1].running_mean.tolist()]))
dist.destroy_process_group()
"""


def test_epoch_end_averages_the_statistics_of_training_layers_and_leaves_frozen_ones_bit_for_bit(gloo_ranks, tmp_path):
    script = tmp_path / "buffers.py"
    script.write_text(BUFFERS)
    for rank, result in enumerate(gloo_ranks.run([[script]] * 2)):
        assert result.returncode == 0, result.stderr[-2000:]
        frozen, trained = json.loads(result.stdout)
        assert frozen == [float(torch.tensor(0.1 + rank))] * 3, f"rank {rank}: a frozen layer's statistics were averaged"
        assert trained == pytest.approx([0.6] * 3), f"rank {rank}: the training layer's statistics were not averaged"
