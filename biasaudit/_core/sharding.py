"""Which batches of a split a process evaluates, when a scan is split over processes (methods.md section 10).

A shard is a set of whole batches: batch b (0 = the first the adapter yields) belongs to shard b mod N. Every
process reads the same batches in the same order at the same batch size, so each batch is exactly the batch one
process would evaluate: its draws, its forwards and its per-batch sums are identical, and the merged counts
(integers, exact sums, samples chosen by hash) equal the single-process ones to the last digit. No sample is
padded or repeated; a shard may be empty (more processes than batches) and merges as zero.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from biasaudit.errors import InputError

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int) and 0 <= self.index < self.count):
            raise InputError(f"Shard {self.index}/{self.count} is out of range; expected I/N with N >= 1 and I from 0 to N - 1.")

    def owns(self, ordinal: int) -> bool:
        return ordinal % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """'I/N' (shard I of N, counted from 0) as a Shard; an InputError naming the text otherwise."""
    match = _SHARD.fullmatch(text or "")
    if match is None:
        raise InputError(f"--shard is {text!r}; expected I/N, e.g. 0/4 for the first of four shards (I counts from 0).")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise InputError(
            f"--shard is {text!r}: there must be at least 1 shard (N >= 1)."
            if count < 1
            else f"--shard is {text!r}: shard index {index} is out of range for {count} shard(s); "
            f"expected I from 0 to {count - 1}."
        )
    return Shard(index, count)


def process_group_shard() -> Shard | None:
    """This process's shard when it runs in an initialised torch.distributed process group of more than one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Shard(dist.get_rank(), dist.get_world_size())


def under_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a launcher setting its environment) started."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) >= 2


def join_torchrun(device: str) -> tuple[Shard, str] | None:
    """Under torchrun (WORLD_SIZE > 1 in the environment): join the process group (gloo for CPU tensors, NCCL for
    CUDA ones) and return this process's shard and its device (`cuda` becomes this process's `cuda:LOCAL_RANK`)."""
    if not under_torchrun():
        return None
    from datetime import timedelta

    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    elif device.startswith("cuda:") and local > 1:
        raise InputError(
            f"--device {device} would put all {local} processes of this machine on one GPU; under torchrun give --device cuda "
            "and each process takes its own (cuda:LOCAL_RANK)."
        )
    if not dist.is_initialized():
        # A long timeout: the other ranks wait while rank 0 finishes the audit alone (for data without a bias key, a
        # whole second pass); torchrun still stops every process as soon as one fails.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(days=1))
    return Shard(dist.get_rank(), dist.get_world_size()), device


def leave_torchrun() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
