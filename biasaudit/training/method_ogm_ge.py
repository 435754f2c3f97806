"""`ogm_ge`: OGM-GE (methods.md section 8) in fix's loop, calling biasaudit.methods.OGMGE exactly as a user's loop
does: the cross-entropy's `loss.backward()`, then `ogm.after_backward(unimodal_logits, labels)` before the step.

The unimodal logits come from branch_heads (the adapter's branches(model), and for the default ogm_split head mode its
classifier(model)); OGM-GE only reads them, so their passes build no graph. Separate heads are refused: OGM-GE would
read untrained heads. The GE noise is drawn from the component's own generator, seeded by the run seed, and its state
is saved with every epoch, so --resume draws the noise the interrupted run would have drawn.

Under fp16 the gradients it modulates are the scaled ones, S·g (loss_scale, precision.py), and the loop unscales them
after this step. That is exact: k comes from the logits, and the GE noise is N(0, std(g)²) drawn as std(g)·z, so
k·(S·g) + std(S·g)·z = S·(k·g + std(g)·z) with the same draws z; with S a power of two (GradScaler's) even every
rounding is the same. Unscaling first would only add a pass over the gradients."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit._core.arguments import positive_finite
from biasaudit.errors import CheckpointError, InputError
from biasaudit.methods.ogm_ge import OGMGE as OGMGEComponent
from biasaudit.training.branch_heads import BranchHeads
from biasaudit.training.data_parallel import average_gradients
from biasaudit.training.method_ce import train_labels

HEAD_MODES = ("ogm_split", "shared_zero")


class OGMGE:
    name = "ogm_ge"
    # The gradients it leaves are the same on every process (it averages them): the loop adds no average.
    synchronised = True
    # "auto" chooses α on validation data from this grid (selection.py): the reference range 0.1-0.8.
    option_grid = ("alpha", (0.1, 0.3, 0.8))

    def __init__(self, *, alpha: float = 0.3, ge: bool = True, head_mode: str = "ogm_split") -> None:
        if head_mode not in HEAD_MODES:
            raise InputError(
                f"OGM-GE's --head-mode is {head_mode!r}; expected {' or '.join(HEAD_MODES)} (OGM-GE only reads the "
                "unimodal logits, so separate heads would never be trained)."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or positive_finite(alpha) is not None:
            raise InputError(f"alpha is {alpha!r}; expected a positive, finite number (OGM-GE's α in k = 1 − tanh(α·ρ)).")
        self.alpha, self.ge, self.head_mode = float(alpha), bool(ge), head_mode
        self._heads = BranchHeads("OGM-GE", head_mode)
        self._ogm: OGMGEComponent | None = None

    def check(self, model: nn.Module, adapter: Adapter) -> dict[str, nn.Module]:
        return self._heads.check(model, adapter)

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        branches = self._heads.prepare(model, adapter, device=device)
        self._ogm = OGMGEComponent(branches, alpha=self.alpha, ge=self.ge, seed=torch.initial_seed())

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        assert self._ogm is not None, "prepare() first"
        labels = train_labels(batch, adapter, device)
        logits, unimodal = self._heads.logits(model, adapter, adapter.prepare(batch, device=device), track=False)
        loss = F.cross_entropy(logits, labels)
        (loss * (share * loss_scale)).backward()  # share: data_parallel.py; loss_scale: fp16's (precision.py)
        # OGM-GE modulates the global gradient (as DDP leaves it after backward), so the processes average first.
        average_gradients(p for p in model.parameters() if p.requires_grad)
        done = self._ogm.after_backward(unimodal, labels)
        return {
            "loss": float(loss.detach()),
            **{f"k_{m}": k for m, k in done.coefficients.items()},
            **{f"rho_{m}": r for m, r in done.ratios.items()},
        }

    def extra_state(self) -> dict[str, Any]:
        return {"ogm_ge": self._ogm.state_dict() if self._ogm is not None else None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        assert self._ogm is not None, "prepare() first"
        if not state.get("ogm_ge"):
            raise CheckpointError(
                "The training state to resume holds no OGM-GE noise generators; resume with the method that wrote it."
            )
        self._ogm.load_state_dict(state["ogm_ge"])

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "ge": self.ge, "noise_seed": "the run seed", **self._heads.settings()}
