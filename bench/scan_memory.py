"""Does a scan's memory stay flat as the dataset grows? (issue: "metrics are count-based accumulators, so
memory does not grow with the dataset; only the bounded embedding sample does").

Scans a synthetic two-modality model on N and on 8N samples, in one process, and prints the ratio of
peak traced Python/NumPy memory (tracemalloc) and of time per sample. A ratio near 1.0 for memory means
bounded accumulators; near 1.0 for time per sample means the one pass scales linearly.

    python bench/scan_memory.py            # N = 4000 and 32000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.scanning import ScanConfig, scan_model

CLASSES = 10


class LateFusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.text_branch = nn.Linear(CLASSES, 32)
        self.classifier = nn.Linear(64, CLASSES)

    def forward(self, pixels, words):
        return self.classifier(torch.cat([self.image_branch(pixels), self.text_branch(words)], dim=1))


class SyntheticAdapter(Adapter):
    modalities = [Modality("image", "image", key="image"), Modality("text", "text", key="caption")]
    num_classes = CLASSES
    bias_key = "colour"
    splits = ("train", "test")

    def __init__(self, n: int) -> None:
        self.n = n

    def build_model(self):
        torch.manual_seed(0)
        return LateFusion()

    def data(self, split, *, batch_size):
        n = 2000 if split == "train" else self.n
        generator = torch.Generator().manual_seed(1 if split == "train" else 2)
        for lo in range(0, n, batch_size):
            size = min(batch_size, n - lo)
            labels = torch.randint(0, CLASSES, (size,), generator=generator)
            colour = torch.where(torch.rand(size, generator=generator) < 0.9, labels, torch.randint(0, CLASSES, (size,), generator=generator))
            yield {"image": torch.rand(size, 1, 8, 8, generator=generator), "caption": [f"a c{int(c)} digit" for c in colour],
                   "label": labels, "colour": colour}

    def prepare(self, batch, *, device):
        words = torch.zeros(len(batch["caption"]), CLASSES)
        for row, caption in enumerate(batch["caption"]):
            for word in caption.split():
                if word.startswith("c") and word[1:].isdigit():
                    words[row, int(word[1:])] += 1
        return batch["image"].to(device), words.to(device)

    def classifier(self, model):
        return model.classifier


def measure(n: int) -> tuple[float, float]:
    config = ScanConfig(split="test", bootstrap_replicates=200, projection="pca", gradient_batches=2, embedding_points=2000)
    adapter = SyntheticAdapter(n)
    tracemalloc.start()
    start = time.perf_counter()
    scan_model(adapter.build_model(), adapter, config=config)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20, elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--factor", type=int, default=8)
    args = parser.parse_args()
    small_mem, small_time = measure(args.n)
    big_mem, big_time = measure(args.n * args.factor)
    print(f"samples            {args.n:>10} {args.n * args.factor:>10}   ratio")
    print(f"peak traced MiB    {small_mem:>10.1f} {big_mem:>10.1f}   {big_mem / small_mem:.2f}")
    print(f"ms per sample      {small_time * 1e3:>10.3f} {big_time * 1e3:>10.3f}   {big_time / small_time:.2f}")


if __name__ == "__main__":
    main()
