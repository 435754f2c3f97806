"""Mixed precision in biasaudit's loop (loop.py): the precision of a training step and, for fp16, its gradient scaler.

The names are the scan's (scanning/config.py PRECISIONS): fp32, or torch.autocast to bfloat16 (bf16) or float16 (fp16).
The weights, their gradients and the optimizer stay float32; autocast runs the step's eligible operators (linear
layers, convolutions) in 16 bits. The whole `method.gradients(...)` call runs under autocast: a driver's forward and
its backward are one call, and autograd gives every gradient the dtype of the tensor it belongs to.

fp16 has too few exponent bits for small gradients, which flush to zero, so a step's losses are multiplied by the scale
S of a torch.amp.GradScaler before their backward (each driver multiplies what it backpropagates by `loss_scale` = S,
driver.py), its gradients are divided by S before the optimizer reads them (`unscale_`), and a step whose gradients
overflowed is skipped, with S halved, as GradScaler does in any loop. Every method's gradients are homogeneous of degree
one in the scale of its losses (BalGrad's weights and projection, MMPareto's weights and rescale, OGM-GE's k are ratios
of equally scaled quantities; OGM-GE's noise is proportional to the gradients' spread), and S is a power of two, so the
unscaled gradients equal those of the unscaled computation. bf16 has float32's exponent range: no scaler.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from biasaudit.errors import CheckpointError, InputError
from biasaudit.scanning.config import PRECISIONS

__all__ = ["PRECISIONS", "StepPrecision", "check_precision_name", "takes_loss_scale"]


def check_precision_name(precision: str) -> None:
    """InputError for a precision that is not one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise InputError(f"precision is {precision!r}, which is unknown. Available: {', '.join(PRECISIONS)}.")


def takes_loss_scale(method: Any) -> bool:
    """Whether the driver's gradients() takes `loss_scale` (by name or through **keywords)."""
    import inspect

    parameters = inspect.signature(method.gradients).parameters.values()
    return any(p.name == "loss_scale" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class StepPrecision:
    """The precision of every step of one run: `autocast()` around a step's gradients, `keywords()` for the driver,
    `step(optimizer)` in place of optimizer.step() (True when the scaler skipped it), and the scaler's state for the
    training state (None without a scaler)."""

    def __init__(self, precision: str, device: torch.device, *, trainable: list[nn.Parameter], method: Any) -> None:
        check_precision_name(precision)
        self.precision, self.device = precision, device
        self.dtype: torch.dtype | None = PRECISIONS[precision]
        self.scaler: torch.amp.GradScaler | None = None
        if precision == "fp16":
            halves = [p for p in trainable if p.dtype == torch.float16]
            if halves:  # GradScaler refuses to unscale float16 gradients: said here, before any step
                raise InputError(
                    f"precision 'fp16' trains float32 weights under autocast with a gradient scaler, but the model has "
                    f"{len(halves)} float16 trainable parameter(s); load the model in float32 (autocast computes in 16 bits)."
                )
            if not takes_loss_scale(method):  # it would backpropagate unscaled losses: refused before any step
                raise InputError(
                    f"precision 'fp16' scales every loss by a gradient scaler, but method {method.name!r}'s "
                    "gradients() takes no loss_scale keyword; add `loss_scale: float = 1.0` and multiply what it "
                    "backpropagates by it (biasaudit/training/driver.py), or train in fp32 or bf16."
                )
            self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self) -> AbstractContextManager[Any]:
        """The context a step's gradients are computed in: autocast to the precision's dtype, or nothing for fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def keywords(self) -> dict[str, float]:
        """What the driver's gradients() gets besides the step: `loss_scale` (the scaler's S) with a scaler, else
        nothing, so that a driver written before mixed precision still trains in fp32 and bf16."""
        if self.scaler is None:
            return {}
        # scale() of a one: S, through the call that also starts the scaler's state on its first step (get_scale()
        # would not, and unscale_ needs it).
        return {"loss_scale": float(self.scaler.scale(torch.ones((), device=self.device)))}

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step() on the unscaled gradients; True when the scaler skipped the step (non-finite gradients)."""
        if self.scaler is None:
            optimizer.step()
            return False
        before = self.scaler.get_scale()
        self.scaler.unscale_(optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()
        # update() lowers the scale only after an overflow, which is exactly when step() skipped the optimizer.
        return bool(self.scaler.get_scale() < before)

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """The scaler of the interrupted run; a state without one was written by a run without (the run identity
        already refused a change of precision)."""
        if self.scaler is None:
            return
        if not state:
            raise CheckpointError(
                "The training state to resume holds no gradient scaler, but this run trains in fp16; resume with the "
                "precision it was started with."
            )
        self.scaler.load_state_dict(state)
