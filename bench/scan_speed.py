"""How much does a scan cost beyond the forwards it needs? (issue 12, methods.md section 10)

Prints, measured in this one run on this machine:

1. the scan's own work per sample: the wall time of a scan minus the time spent inside the adapter's
   prepare() and forward(), divided by the samples, for a small model on N samples (default grid:
   full, missing, noisy and the ratio sweep; 1,000 bootstrap replicates);          target <= 30 us
2. the scan against the bare loop of the forwards it needs (the same batches: whole batches for full, missing
   and noisy; the ratio sweep reuses the missing logits), for a model whose forward dominates (a wide MLP);
                                                                                    target <= 1.15x
3. today's scan against the scan of an earlier commit (--baseline REV, run from a git worktree in a
   subprocess on the same data) for the demo-size model;                            target <= 0.6x
4. peak traced memory (tracemalloc) of a scan of 10N samples against one of N.      target <= 1.1x
5. a scan whose data() is slow, reading ahead (a background thread) against reading in line (Adapter.read_ahead).

    python bench/scan_speed.py                      # N = 20000, baseline 0e901eb, best of 3 runs each
    python bench/scan_speed.py --device cuda        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

from biasaudit import Adapter, Modality

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
GRID = "missing,noisy,ratio"


class Fusion(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.text_branch = nn.Sequential(nn.Linear(32, width), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(2 * width, 2 * width), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * width, CLASSES)

    def forward(self, pixels, words):
        return self.classifier(self.trunk(torch.cat([self.image_branch(pixels), self.text_branch(words)], dim=1)))


class SyntheticAdapter(Adapter):
    """Tensors made once per split, so that reading data costs nothing: what is timed is the scan and the model."""

    modalities = [Modality("image", "image", key="image", value_range=(0.0, 1.0)), Modality("text", "tensor", key="words")]
    num_classes = CLASSES
    bias_key = "colour"
    splits = ("train", "test")

    def __init__(self, n: int, *, width: int, depth: int) -> None:
        self.n, self.width, self.depth = n, width, depth
        self._data = {split: self._make(2000 if split == "train" else n, seed) for split, seed in (("train", 1), ("test", 2))}

    @staticmethod
    def _make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, CLASSES, (n,), generator=g)
        colour = torch.where(torch.rand(n, generator=g) < 0.9, labels, torch.randint(0, CLASSES, (n,), generator=g))
        words = torch.nn.functional.one_hot(colour, 32).float() + 0.1 * torch.randn(n, 32, generator=g)
        return {"image": torch.rand(n, 1, 8, 8, generator=g), "words": words, "label": labels, "colour": colour}

    def build_model(self):
        torch.manual_seed(0)
        return Fusion(self.width, self.depth)

    def data(self, split, *, batch_size):
        data = self._data[split]
        n = len(data["label"])
        return ({k: v[lo: lo + batch_size] for k, v in data.items()} for lo in range(0, n, batch_size))

    def prepare(self, batch, *, device):
        return batch["image"].to(device), batch["words"].to(device)

    def classifier(self, model):
        return model.classifier


class Timed:
    """The adapter with its prepare() and forward() timed (synchronised on CUDA so the time lands in the right place)."""

    def __init__(self, adapter: Adapter, device: torch.device) -> None:
        self._adapter, self._device, self.seconds = adapter, device, 0.0

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def _timed(self, fn, *args, **kwargs):
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self.seconds += time.perf_counter() - start
        return out

    def prepare(self, batch, *, device):
        return self._timed(self._adapter.prepare, batch, device=device)

    def forward(self, model, inputs):
        return self._timed(self._adapter.forward, model, inputs)


def config(device: str, **extra):
    from biasaudit.scanning.config import ScanConfig

    return ScanConfig(split="test", conditions=GRID, bootstrap_replicates=1000, projection="pca", device=device, **extra)


def scan_seconds(adapter: Adapter, device: str) -> tuple[float, float, dict]:
    """(wall seconds of the scan, seconds inside prepare + forward, the audit's forwards per sample)."""
    from biasaudit.scanning.audit import audit_model

    model = adapter.build_model()
    timed = Timed(adapter, torch.device(device))
    start = time.perf_counter()
    audit = audit_model(model, timed, config=config(device), checkpoint=None)
    return time.perf_counter() - start, timed.seconds, audit["manifest"]["forwards_per_sample"]


def bare_loop_seconds(adapter: Adapter, device: str) -> float:
    """The passes the scan needs, and nothing else: whole batches for full, the two missing and the two noisy
    conditions (a ratio condition's muted rows take the missing condition's logits, so the sweep needs no forward of
    its own); and the gradient-conflict sample's forward and backward per modality on `gradient_batches` batches."""
    model = adapter.build_model().to(device).eval()
    batch_size = config(device).batch_size
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in adapter.data("test", batch_size=batch_size):
            for _ in range(1 + 2 * len(adapter.modalities)):
                adapter.forward(model, adapter.prepare(batch, device=device)).argmax(1)
        # The gradient-conflict sample: per sampled batch, one forward and one backward per modality.
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            for step, batch in enumerate(adapter.data("test", batch_size=batch_size)):
                if step == config(device).gradient_batches:
                    break
                for _ in adapter.modalities:
                    logits = adapter.forward(model, adapter.prepare(batch, device=device))
                    loss = torch.nn.functional.cross_entropy(logits, batch["label"].to(device))
                    torch.autograd.grad(loss, params)
    sync()
    return time.perf_counter() - start


BASELINE_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import scan_speed
adapter = scan_speed.demo_adapter()
model = scan_speed.demo_model(adapter)
from biasaudit.scanning.audit import audit_model
try:
    from biasaudit.scanning.config import ScanConfig
except ImportError:  # commits before the module was renamed
    from biasaudit.scan import ScanConfig
config = ScanConfig(split="ood", conditions=scan_speed.GRID, bootstrap_replicates=1000, projection="pca", device=sys.argv[2])
audit_model(model, adapter, config=config, checkpoint=None)  # warm-up
best = float("inf")
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    audit = audit_model(model, adapter, config=config, checkpoint=None)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "n": audit["dataset"]["n"]}))
"""


def demo_adapter():
    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter

    return DigitsCaptionsAdapter(seed=0)


def demo_model(adapter):
    from biasaudit.datasets.demo_model import train_baseline

    return train_baseline(adapter, seed=0)


def demo_scan_seconds(tree: Path, device: str, repeats: int) -> float:
    """A scan of the demo model on its ood split by the biasaudit in `tree`, in a fresh process (best of `repeats`)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT, str(Path(__file__).parent), device, str(repeats)], env=env,
                            capture_output=True, text=True, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise SystemExit(f"the scan of {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def peak_memory_mib(n: int, device: str) -> float:
    adapter = SyntheticAdapter(n, width=32, depth=0)
    tracemalloc.start()
    scan_seconds(adapter, device)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


class SlowReading(SyntheticAdapter):
    """Every batch of data() takes `delay` seconds to read, as decoding images from disk would (sleeping, like I/O,
    holds no lock). `read_ahead` is set per instance to compare reading ahead with reading in line."""

    def __init__(self, n: int, *, delay: float, read_ahead: bool) -> None:
        super().__init__(n, width=32, depth=0)
        self.delay, self.read_ahead = delay, read_ahead

    def data(self, split, *, batch_size):
        for batch in super().data(split, batch_size=batch_size):
            time.sleep(self.delay)
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="samples of the synthetic test split")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", default="0e901eb", help="the commit whose scan is 'today's scan' (empty: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="each timing is the best of this many runs")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    small = SyntheticAdapter(args.n, width=32, depth=0)
    scan_seconds(SyntheticAdapter(2000, width=32, depth=0), args.device)  # warm-up: first-call costs of torch and sklearn
    wall, inside, cost = min((scan_seconds(small, args.device) for _ in range(args.repeats)), key=lambda r: r[0] - r[1])
    own_us = (wall - inside) / args.n * 1e6
    print(f"1. own work per sample, small model, N={args.n}: {own_us:.1f} us (scan {wall:.2f} s, prepare+forward {inside:.2f} s, "
          f"{cost['conditions']:.2f} forwards per sample)   target <= 30 us")

    wide = SyntheticAdapter(args.n // 8, width=1024, depth=3)
    wall = min(scan_seconds(wide, args.device)[0] for _ in range(args.repeats))
    bare = min(bare_loop_seconds(wide, args.device) for _ in range(args.repeats))
    print(f"2. scan / bare loop of its forwards, wide MLP (2048 wide, 3 layers), N={args.n // 8}: {wall / bare:.3f}x "
          f"(scan {wall:.2f} s, bare loop {bare:.2f} s)   target <= 1.15x")

    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline], check=True, capture_output=True)
            try:
                old = demo_scan_seconds(tree, args.device, args.repeats)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        new = demo_scan_seconds(ROOT, args.device, args.repeats)
        print(f"3. demo model, ood split: this scan / the scan of {args.baseline}: {new / old:.3f}x (now {new:.2f} s, then {old:.2f} s)   "
              "target <= 0.6x")

    # 5. Reading overlapped with the forwards: a split read once ahead of the pass (donor pool, bias range) and once
    # by it; only the pass's read can overlap. The delay per batch is about what the pass spends on a batch.
    delay = 0.008
    ahead = min(scan_seconds(SlowReading(args.n, delay=delay, read_ahead=True), args.device)[0] for _ in range(args.repeats))
    inline = min(scan_seconds(SlowReading(args.n, delay=delay, read_ahead=False), args.device)[0] for _ in range(args.repeats))
    batches = -(-args.n // config(args.device).batch_size)
    print(f"5. data() taking {delay * 1e3:.0f} ms per batch ({batches} batches, {batches * delay:.2f} s per read): scan reading ahead / "
          f"in line: {ahead / inline:.3f}x (ahead {ahead:.2f} s, in line {inline:.2f} s)   no target: the pass's read hides behind its forwards")

    if not args.skip_memory:
        low, high = peak_memory_mib(args.n, args.device), peak_memory_mib(10 * args.n, args.device)
        print(f"4. peak traced memory, {10 * args.n} vs {args.n} samples: {high / low:.3f}x ({high:.1f} MiB vs {low:.1f} MiB)   target <= 1.1x")


if __name__ == "__main__":
    main()
