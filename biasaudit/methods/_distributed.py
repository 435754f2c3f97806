"""The process-group helpers the methods share under DDP: the world size, sums over the processes, decisions every
rank takes alike, and the device a collective's tensors must live on."""

from __future__ import annotations

import torch
from torch import Tensor


def world_size() -> int:
    """The number of processes of the initialised default process group (1 outside torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sums `tensor` in place over the processes of the default group (a no-op in one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree(flags: list[float], *, device: torch.device) -> list[float]:
    """The maximum of each flag over the processes, so that every rank takes the same branch of a decision (and all
    raise together rather than one raising while the others wait in a collective)."""
    if world_size() == 1:
        return flags
    import torch.distributed as dist

    tensor = torch.tensor(flags, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def collective_device() -> torch.device:
    """Where a collective's tensors must live: CUDA for NCCL, the CPU otherwise."""
    import torch.distributed as dist

    if world_size() > 1 and "nccl" in str(dist.get_backend()):  # "nccl", or torchrun's "cpu:gloo,cuda:nccl"
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average(groups: list[list[Tensor]]) -> list[list[Tensor]]:
    """Each tensor averaged over the processes, in one all-reduce of one flat buffer (the same groups back, each
    tensor in its own device and dtype); the tensors themselves in one process."""
    if world_size() == 1:
        return groups
    import torch.distributed as dist

    tensors = [t for group in groups for t in group]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    buffer = torch.cat([t.reshape(-1).to(device=collective_device(), dtype=dtype) for t in tensors])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    buffer /= world_size()
    out, start, result = [], 0, []
    for t in tensors:
        out.append(buffer[start : start + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype))
        start += t.numel()
    for group in groups:
        result.append(out[: len(group)])
        out = out[len(group) :]
    return result
