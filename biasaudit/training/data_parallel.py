"""Data-parallel training in biasaudit's loop (loop.py) over the processes of a torch.distributed group (torchrun: gloo
on CPU, nccl on CUDA).

Every process draws the same global batches and trains on its contiguous part of each (epoch_batches.py), with no row
padded or repeated, so a K-process run takes the steps of the one-process run on the same global batches. A process's
part may hold one row more than another's, so a method's mean loss over its rows is scaled by `share` = K·n_local /
n_global before the gradients are averaged over the processes (one all-reduce of one flat buffer, after the method's
backward, as DistributedDataParallel's reducer does): the average is then the gradient of the global batch's mean.
The components of biasaudit.methods that act on gradients between the backward and the step (BalGrad, MMPareto,
OGM-GE) average what they need themselves, on the same convention, and say so with `synchronised = True`.

The loop does not wrap the model in DistributedDataParallel: the methods' autograd.grad passes (BalGrad, MMPareto)
are invisible to its reducer, and the adapters' hooks (branches, classifier) need the bare module. What DDP would add
is done here: rank 0's parameters and buffers are broadcast before training, and the floating-point buffers
(BatchNorm's running statistics) are averaged at each epoch's end, before a method's epoch_end and the saved state.
BatchNorm normalises each process's rows with their own batch statistics, as under DDP (convert the model with
torch.nn.SyncBatchNorm.convert_sync_batchnorm for global ones on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable

import torch
from torch import nn

from biasaudit.errors import InputError
from biasaudit.methods._distributed import average, world_size


@dataclass(frozen=True)
class Processes:
    """This process's `rank` among `world` training processes (0 of 1 without a process group)."""

    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes files and logs (rank 0 alone)."""
        return self.rank == 0

    def share(self, rows: int, size: int) -> float:
        """The factor on a mean loss over this process's `rows` of a global batch of `size` (see the module)."""
        return self.world * rows / size


ONE_PROCESS = Processes()


def training_processes(distributed: bool) -> Processes:
    """The processes of the initialised default group when `distributed`, else one; an InputError when asked to
    train data-parallel with no process group (start the run with torchrun)."""
    import torch.distributed as dist

    if not distributed:
        if world_size() > 1:  # the methods' statistics would be summed over processes that train other models
            raise InputError(
                f"Training runs inside a torch.distributed process group of {world_size()} processes but was not asked "
                "to train over them; pass distributed=True (biasaudit fix under torchrun does), or train outside the group."
            )
        return ONE_PROCESS

    if not (dist.is_available() and dist.is_initialized()):
        raise InputError(
            "distributed=True trains over the processes of a torch.distributed process group, but none is initialised; "
            "start the run with torchrun (biasaudit fix under torchrun joins the group itself)."
        )
    return Processes(rank=dist.get_rank(), world=dist.get_world_size())


def check_data_parallel(processes: Processes, *, smallest: int, batch_size: int) -> None:
    """Refuse, before any work, a run in which some global batch holds fewer rows than there are processes: a process
    with no rows cannot take part in the step."""
    if processes.world > 1 and smallest < processes.world:
        which = "every batch" if smallest == batch_size else "the last batch of each epoch"
        raise InputError(
            f"Data-parallel training over {processes.world} processes needs at least {processes.world} rows (one per "
            f"process) in every batch, but {which} holds {smallest} (--batch-size {batch_size}); choose a batch size "
            f"that leaves every batch at least {processes.world} rows, or fewer processes."
        )


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Each gradient replaced by its mean over the processes of the default group (parameters without a gradient
    stay without: every process runs the same graph, so the same ones have none); nothing in one process."""
    if world_size() == 1:
        return
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return
    for parameter, averaged in zip(with_grad, average([[p.grad for p in with_grad]])[0], strict=True):  # type: ignore[misc]
        parameter.grad.copy_(averaged)  # type: ignore[union-attr]


def broadcast_start(tensors: Iterable[torch.Tensor], processes: Processes) -> None:
    """Rank 0's values of `tensors` (a model's parameters and buffers, a method's own parameters) on every process, as
    DDP does when it wraps a model."""
    if processes.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in tensors:
            if tensor.device.type == "cpu" or "nccl" in str(dist.get_backend()):  # "cpu:gloo,cuda:nccl" too
                dist.broadcast(tensor.data, src=0)
            else:
                staged = tensor.data.cpu()
                dist.broadcast(staged, src=0)
                tensor.data.copy_(staged)


def average_buffers(model: nn.Module, processes: Processes) -> None:
    """The floating-point buffers (BatchNorm's running statistics) of the modules that train (in training mode)
    averaged over the processes, so that every process holds, and rank 0 saves, the same model. A frozen part (in eval
    mode) keeps its buffers bit for bit: a mean of K equal values need not round back to the value."""
    if processes.world == 1:
        return
    floats = [b for m in model.modules() if m.training for b in m.buffers(recurse=False) if b.is_floating_point()]
    if not floats:
        return
    with torch.no_grad():
        for buffer, averaged in zip(floats, average([floats])[0], strict=True):
            buffer.copy_(averaged)


def gathered(value: Any, processes: Processes) -> list[Any]:
    """Every process's `value` in rank order (picklable objects, e.g. random generator states); [value] in one."""
    if processes.world == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * processes.world
    dist.all_gather_object(out, value)
    return out
