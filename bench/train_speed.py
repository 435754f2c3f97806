"""What fix's training costs at scale (issue 25): frozen-encoder feature caching, data-parallel processes, bounded memory.

Prints, measured in this one run on this machine (ratios of runs taken here, never absolute targets):

1. Feature cache. fix's loop (`ce`) on a model whose frozen conv encoder dominates the forward (tests/fixtures/
   frozen_encoder.py, linear heads trainable), with `--feature-cache on`: the mean of epochs 2+ against the first epoch
   (which includes filling the cache); also against an epoch without the cache, and the weights of the two runs
   (identical, torch.equal).                                                       target: epochs 2+ <= 0.1x the first
2. Data-parallel. The same loop (`balgrad`, cache off, so the encoder's cost is in every step; dropout off, since each
   process draws the masks of its own rows) in one process against two gloo processes (started as torchrun starts them, one thread each, on this machine's cores): the time per step
   of each (one process with one thread, and with two), the speed-up, and the largest weight difference of the two
   runs (the one-process steps on the same global batches).                       target: equality to 1e-5
3. Memory. Peak resident memory of a process that trains one epoch on N and on 10N samples generated on the fly by a
   map-style dataset (so the data take no memory): shuffled by index, and through the shuffle buffer of data that
   cannot be read by index (a generator over the same samples).                   target: index path <= 1.1x at 10N

    python bench/train_speed.py                 # the figures quoted in README.md (about 3 minutes on 2 cores)
    python bench/train_speed.py --quick         # smaller sizes, a smoke run
    python bench/train_speed.py --device cuda   # parts 1 and 3 on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from frozen_encoder import FrozenEncoderAdapter  # noqa: E402

from biasaudit import Adapter, Modality  # noqa: E402
from biasaudit.training.feature_cache import CacheSettings  # noqa: E402
from biasaudit.training.loop import train  # noqa: E402
from biasaudit.training.methods import make_method  # noqa: E402
from biasaudit.training.train_config import TrainConfig  # noqa: E402


def epoch_times(adapter: Adapter, method: str, config: TrainConfig, *, cache: str, device: str = "cpu"):
    """(seconds of each epoch, the first including the cache's fill; the trained weights)."""
    torch.manual_seed(0)
    model = adapter.build_model()
    marks: list[float] = []
    steps_per_epoch: list[int] = []

    def progress(stage: str, done: int, total: int, status: str = "") -> None:
        if not steps_per_epoch:
            steps_per_epoch.append(total // config.epochs)
        if done % steps_per_epoch[0] == 0:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    train(model, adapter, make_method(method), config=config, progress=progress, cache=CacheSettings(mode=cache))
    bounds = [start, *marks]
    return [b - a for a, b in zip(bounds, bounds[1:])], model.state_dict()


def part_cache(args: argparse.Namespace) -> dict:
    adapter = FrozenEncoderAdapter(args.samples, width=args.width, size=args.size, hidden=16)
    config = TrainConfig(epochs=args.epochs, batch_size=64, seed=0, device=args.device)
    epoch_times(FrozenEncoderAdapter(64, width=args.width, size=args.size, hidden=16), "ce", config, cache="on")  # warm-up
    cached, with_cache = epoch_times(adapter, "ce", config, cache="on", device=args.device)
    plain, without = epoch_times(adapter, "ce", config, cache="off", device=args.device)
    later = sum(cached[1:]) / len(cached[1:])
    same = all(torch.equal(value, without[key]) for key, value in with_cache.items())
    return {
        "samples": args.samples,
        "epochs": args.epochs,
        "first_epoch_with_cache_s": round(cached[0], 3),
        "later_epochs_with_cache_s": round(later, 3),
        "epoch_without_cache_s": round(sum(plain) / len(plain), 3),
        "later_over_first": round(later / cached[0], 3),
        "later_over_uncached": round(later / (sum(plain) / len(plain)), 3),
        "identical_weights": same,
    }


WORKER = r"""
import json, sys, time, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from frozen_encoder import FrozenEncoderAdapter
from biasaudit.training.loop import train
from biasaudit.training.methods import make_method
from biasaudit.training.train_config import TrainConfig
torch.set_num_threads(int(sys.argv[4]))
distributed = sys.argv[5] == "2"
if distributed:
    dist.init_process_group("gloo")
samples, width, size, epochs = (int(v) for v in sys.argv[6:10])
adapter = FrozenEncoderAdapter(samples, width=width, size=size, hidden=16)
torch.manual_seed(0)
model = adapter.build_model()
model.dropout.p = 0.0  # each process draws the dropout masks of its own rows: equal runs need none
config = TrainConfig(epochs=epochs, batch_size=64, seed=0)
steps = []
start = time.perf_counter()
train(model, adapter, make_method("balgrad"), config=config, distributed=distributed,
      progress=lambda stage, done, total, status="": steps.append(total))
seconds = time.perf_counter() - start
rank = dist.get_rank() if distributed else 0
if rank == 0:
    torch.save(model.state_dict(), sys.argv[2])
    json.dump({"seconds": seconds, "steps": steps[0]}, open(sys.argv[3], "w"))
if distributed:
    dist.destroy_process_group()
"""


def _run_worker(script: Path, out: Path, *, threads: int, processes: int, args: argparse.Namespace) -> dict:
    sizes = [str(args.samples), str(args.width), str(args.size), str(args.epochs)]
    common = [str(ROOT / "tests" / "fixtures"), str(out / f"w{processes}-{threads}.pt"), str(out / f"t{processes}-{threads}.json"),
              str(threads), str(processes), *sizes]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    if processes == 1:
        subprocess.run([sys.executable, str(script), *common], env=env, check=True)
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        subprocess.run([*launcher, str(script), *common], env=env, check=True, capture_output=True)
    timing = json.loads((out / f"t{processes}-{threads}.json").read_text())
    return {**timing, "weights": torch.load(out / f"w{processes}-{threads}.pt")}


def part_data_parallel(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        script = out / "worker.py"
        script.write_text(WORKER)
        one = _run_worker(script, out, threads=1, processes=1, args=args)
        one_two_threads = _run_worker(script, out, threads=2, processes=1, args=args)
        two = _run_worker(script, out, threads=1, processes=2, args=args)
    per_step = {name: run["seconds"] / run["steps"] for name, run in (("one", one), ("one_2_threads", one_two_threads), ("two", two))}
    gap = max(float((value - two["weights"][key]).abs().max()) for key, value in one["weights"].items() if value.is_floating_point())
    return {
        "step_s_one_process_1_thread": round(per_step["one"], 4),
        "step_s_one_process_2_threads": round(per_step["one_2_threads"], 4),
        "step_s_two_processes_1_thread_each": round(per_step["two"], 4),
        "speedup_vs_1_thread": round(per_step["one"] / per_step["two"], 2),
        "speedup_vs_2_threads": round(per_step["one_2_threads"] / per_step["two"], 2),
        "largest_weight_difference": gap,
    }


class Generated(Dataset):
    """n samples computed from their index (3x32x32 images, 8 text features): nothing stored."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        generator = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 32, 32, generator=generator), "text": torch.rand(8, generator=generator),
                "label": torch.tensor(i % 4)}


class GeneratedAdapter(Adapter):
    modalities = (Modality("image", "image", key="image"), Modality("text", "tensor", key="text"))
    num_classes = 4
    splits = ("train",)

    def __init__(self, n: int, indexed: bool) -> None:
        self.n, self.indexed = n, indexed

    def build_model(self) -> torch.nn.Module:
        return Small()

    def data(self, split: str, *, batch_size: int):
        loader = DataLoader(Generated(self.n), batch_size=batch_size)
        return loader if self.indexed else (batch for batch in loader)  # a generator: read in order, through the buffer

    def prepare(self, batch, *, device):
        return batch["image"].to(device), batch["text"].to(device)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = torch.nn.Linear(3 * 32 * 32, 16), torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image(image.flatten(1)), self.text(text)], dim=1))


def _peak_memory(n: int, indexed: bool) -> int:
    code = (
        "import resource, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        "from train_speed import GeneratedAdapter\n"
        "from biasaudit.training.loop import train\n"
        "from biasaudit.training.methods import make_method\n"
        "from biasaudit.training.train_config import TrainConfig\n"
        f"adapter = GeneratedAdapter({n}, {indexed})\n"
        "torch.manual_seed(0)\n"
        "train(adapter.build_model(), adapter, make_method('ce'), config=TrainConfig(epochs=1, batch_size=256))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) * 1024


def part_memory(args: argparse.Namespace) -> dict:
    n = args.memory_samples
    figures = {}
    for name, indexed in (("by_index", True), ("shuffle_buffer", False)):
        small, large = _peak_memory(n, indexed), _peak_memory(10 * n, indexed)
        figures[name] = {"peak_mb_n": round(small / 2**20), "peak_mb_10n": round(large / 2**20), "ratio": round(large / small, 3)}
    return {"samples_n": n, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.samples, args.width, args.size, args.epochs = (256, 16, 24, 3) if args.quick else (1024, 48, 48, 4)
    args.memory_samples = 1000 if args.quick else 4000
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    results = {"cache": part_cache(args)}
    print("feature cache:", json.dumps(results["cache"]), flush=True)
    if args.device == "cpu":
        results["data_parallel"] = part_data_parallel(args)
        print("data-parallel:", json.dumps(results["data_parallel"]), flush=True)
    results["memory"] = part_memory(args)
    print("memory:", json.dumps(results["memory"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
