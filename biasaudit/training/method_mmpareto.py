"""`mmpareto`: MMPareto (methods.md section 8) in fix's loop, calling biasaudit.methods.MMPareto exactly as a user's
loop does: `mmp.backward(fused_loss, unimodal_losses)` in place of `loss.backward()`.

The unimodal losses are the cross-entropy of each modality's logits from branch_heads; the default head mode is
`separate` (a new linear head per modality on its branch output, as in the MMPareto paper's models), whose heads are
training-only: the loop puts them in the optimizer and saves them with every epoch, and the written model.pt keeps
the user's architecture. MMPareto keeps no state of its own between steps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit._core.arguments import positive_finite
from biasaudit.errors import CheckpointError, InputError
from biasaudit.methods.heads import HEAD_MODES
from biasaudit.methods.mmpareto import MMPareto as MMParetoComponent
from biasaudit.training.branch_heads import BranchHeads
from biasaudit.training.method_ce import train_labels


class MMPareto:
    name = "mmpareto"
    # The gradients it leaves are the same on every process (it averages them): the loop adds no average.
    synchronised = True
    # "auto" chooses γ on validation data from this grid (selection.py): around the paper's 1.5.
    option_grid = ("gamma", (1.0, 1.5, 2.0))

    def __init__(self, *, gamma: float = 1.5, head_mode: str = "separate") -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or positive_finite(gamma) is not None:
            raise InputError(
                f"gamma is {gamma!r}; expected a positive, finite number (MMPareto's factor on each branch's "
                "integrated gradient)."
            )
        if head_mode not in HEAD_MODES:
            raise InputError(f"MMPareto's --head-mode is {head_mode!r}; available: {', '.join(HEAD_MODES)}.")
        self.gamma, self.head_mode = float(gamma), head_mode
        self._heads = BranchHeads("MMPareto", head_mode)
        self._mmp: MMParetoComponent | None = None

    def check(self, model: nn.Module, adapter: Adapter) -> dict[str, nn.Module]:
        return self._heads.check(model, adapter)

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        self._mmp = MMParetoComponent(self._heads.prepare(model, adapter, device=device), gamma=self.gamma)

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        assert self._mmp is not None, "prepare() first"
        labels = train_labels(batch, adapter, device)
        logits, unimodal = self._heads.logits(model, adapter, adapter.prepare(batch, device=device))
        fused = F.cross_entropy(logits, labels)
        losses = {m: F.cross_entropy(o, labels) for m, o in unimodal.items()}
        # share (data_parallel.py) and fp16's loss_scale (precision.py) scale every loss alike: the result is homogeneous
        # of degree one in that factor (the component's docstring). The component averages the gradients itself.
        factor = share * loss_scale
        done = self._mmp.backward(fused * factor, {m: loss * factor for m, loss in losses.items()})
        return {
            "loss": float(fused.detach()),
            **{f"loss_{m}": float(v.detach()) for m, v in losses.items()},
            **{f"cos_{m}": c for m, c in done.cosines.items()},
            "conflicted": float(any(done.conflicts.values())),
        }

    def extra_parameters(self) -> list[nn.Parameter]:
        """The separate heads', which the optimizer must also update (none in the other head modes)."""
        return self._heads.parameters()

    def extra_state(self) -> dict[str, Any]:
        return {"head_mode": self.head_mode, "heads": self._heads.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("head_mode") != self.head_mode:
            raise CheckpointError(
                f"The training state to resume was written with MMPareto head mode {state.get('head_mode')!r}, "
                f"not {self.head_mode!r}; resume with the same options."
            )
        self._heads.load_state(state.get("heads", {}))

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass  # the separate heads are training-only and never were part of the model

    def settings(self) -> dict[str, Any]:
        return {"gamma": self.gamma, **self._heads.settings()}
