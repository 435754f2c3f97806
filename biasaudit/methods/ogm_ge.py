"""OGM-GE (Peng et al., CVPR 2022; methods.md section 8): on-the-fly gradient modulation with generalisation
enhancement, as an after-backward step that rescales each branch's `.grad` in place.

Per step, from the unimodal logits o_m of the batch (in the paper, each modality's share of the fused classifier):
    s_m = Σ_i softmax(o_m,i)[y_i]                   (summed over the global batch under DDP)
    ρ_m = s_m / s_other                             (more than two branches: s_m / mean of the other s_j)
    k_m = max(1 − tanh(α·ρ_m), 0) if ρ_m > 1 else 1 (the reference code's form: k jumps from 1 to 1 − tanh(α) at ρ = 1)
    g ← k_m·g (+ N(0, std(g)²) with GE)             for every trainable parameter tensor of branch m
The GE noise's standard deviation is that of the tensor's gradient before modulation (the paper's SGD-noise
covariance; the reference code reads it there too), over its elements (population std), and it is added to the
gradients of every branch inside the modulation window. The draws come from this object's own torch.Generator (one
per device the gradients live on, each seeded with `seed`), never from the global RNG, and their states are in
state_dict(), so a resumed run draws the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords, positive_finite
from biasaudit.errors import InputError
from biasaudit.methods._branches import BranchParameters, branches_rule, check_per_branch
from biasaudit.methods._distributed import all_reduce_sum_, collective_device, world_size

WHERE = "OGMGE"


@dataclass(frozen=True)
class OGMGEStep:
    """What one after_backward call did. scores: s_m (global batch); ratios: ρ_m; coefficients: the k_m applied
    (1.0 everywhere outside the modulation window); modulated: the epoch was inside the window; noise: GE noise was
    added."""

    scores: dict[str, float]
    ratios: dict[str, float]
    coefficients: dict[str, float]
    modulated: bool
    noise: bool


def _window_rule(window: tuple[int, int] | None) -> str | None:
    if window is None or 0 <= window[0] < window[1]:
        return None
    return "None (modulate in every epoch) or (start, end) with 0 <= start < end, the epochs range(start, end)"


def coefficient(ratio: float, alpha: float) -> float:
    """k for one branch: max(1 − tanh(α·ρ), 0) when ρ > 1, else 1."""
    return max(1.0 - math.tanh(alpha * ratio), 0.0) if ratio > 1.0 else 1.0


def ratios_of(scores: Mapping[str, float]) -> dict[str, float]:
    """ρ_m = s_m / mean of the other branches' s_j (the other one's, with two branches)."""
    total = sum(scores.values())
    ratios = {}
    for name, score in scores.items():
        other = (total - score) / (len(scores) - 1)
        ratios[name] = score / other if other > 0 else math.inf
    return ratios


class OGMGE:
    """On-the-fly gradient modulation (OGM-GE) for any PyTorch loop: after `loss.backward()`, before the step.

    A plain loop::

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()

    gains one object and one line (the model also returns each modality's logits, e.g. the fused classifier's
    weight slice applied to that modality's features, the `ogm_split` head mode)::

        ogm = OGMGE({"image": model.vision, "text": model.text}, alpha=0.3)
        for epoch in range(epochs):
            ogm.set_epoch(epoch)                                   # only needed with modulation_epochs
            for x, y in loader:
                optimizer.zero_grad()
                logits, unimodal = model(x)                        # unimodal: {"image": [B, C], "text": [B, C]}
                F.cross_entropy(logits, y).backward()
                ogm.after_backward(unimodal, y)                    # rescales the dominant branch's .grad
                optimizer.step()

    branches: one module per modality, keyed by the names the audit uses; their trainable parameters (read at each
    call) must not overlap. alpha: α of k = 1 − tanh(α·ρ) (the reference range is 0.1-0.8). ge: add the Gaussian
    noise of generalisation enhancement. seed: seeds the method's own generators. modulation_epochs: (start, end)
    modulates only in the epochs range(start, end), set with `set_epoch` (None: every epoch); outside the window
    after_backward still reports ρ but leaves `.grad` unchanged and draws no noise.

    The step's s_m, ρ_m and k_m are in the returned OGMGEStep, also kept as `ogm.last`. State (epoch, generator
    states) goes through state_dict() / load_state_dict(). It never calls optimizer.step() or zero_grad().

    Gradient accumulation: call after_backward once, after the last micro-batch's backward, with the unimodal logits
    and labels of all micro-batches concatenated (they are only read, detached).
    Mixed precision: under torch.autocast the logits may be half precision (s_m is computed in float32). With a
    GradScaler either call `scaler.unscale_(optimizer)` before after_backward, or leave the gradients scaled: the noise's
    std is the gradient's spread, so the scaled result is exactly S times the unscaled one (bit for bit with the
    scaler's powers of two), and `scaler.step(optimizer)` unscales it as usual (biasaudit fix does the latter).
    DDP: wrap the model as usual and call `loss.backward()` on it (DDP all-reduces the gradients), then
    after_backward on every rank with that rank's logits and labels: s_m is summed over the processes, so every rank
    applies the same k_m, and with the same `seed` on every rank the same noise, so the replicas stay identical and
    a K-process step equals the one-process step on the global batch. Every rank must call it at every step (it is
    a collective).
    """

    @checked(WHERE, branches=branches_rule, alpha=positive_finite, seed=at_least(0), modulation_epochs=_window_rule)
    def __init__(
        self,
        branches: Mapping[str, nn.Module],
        *,
        alpha: float = 0.3,
        ge: bool = True,
        seed: int = 0,
        modulation_epochs: tuple[int, int] | None = None,
    ) -> None:
        self.branches = dict(branches)
        self.alpha = float(alpha)
        self.ge = ge
        self.seed = seed
        self.modulation_epochs = None if modulation_epochs is None else (int(modulation_epochs[0]), int(modulation_epochs[1]))
        self.epoch = 0
        self.last: OGMGEStep | None = None
        self._generators: dict[str, torch.Generator] = {}
        self._branch_parameters = BranchParameters(self.branches)

    @checked(f"{WHERE}.set_epoch", epoch=at_least(0))
    def set_epoch(self, epoch: int) -> None:
        """The epoch the next steps belong to (read against modulation_epochs), as DistributedSampler.set_epoch."""
        self.epoch = epoch

    @checked_keywords(f"{WHERE}.modulating")  # read at every step, as after_backward is: checked's cost is kept off both
    def modulating(self) -> bool:
        """Whether the current epoch is inside the modulation window."""
        window = self.modulation_epochs
        return window is None or window[0] <= self.epoch < window[1]

    @checked_keywords(f"{WHERE}.after_backward")
    def after_backward(self, unimodal_logits: Mapping[str, Tensor], labels: Tensor) -> OGMGEStep:
        """Rescale each branch's `.grad` in place by its k_m (and add GE noise); returns the step's figures.

        unimodal_logits: per branch, the logits [B, C] of that modality alone; labels: the [B] class indices. Every
        argument and every branch's gradient is checked before any `.grad` changes."""
        where = f"{WHERE}.after_backward"
        check_per_branch(unimodal_logits, self.branches, parameter="unimodal_logits", where=where)
        check_argument(labels, Tensor, parameter="labels", where=where, rule=_labels_rule)
        batch = labels.shape[0]
        low, high = torch.stack(torch.aminmax(labels)).tolist()  # one synchronisation for both
        for name in self.branches:
            logits = unimodal_logits[name]
            if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] <= high or low < 0:
                raise InputError(
                    f"The 'unimodal_logits' parameter of {where} has {name!r} logits of shape "
                    f"{tuple(logits.shape)}; expected [batch, classes] = [{batch}, C] like 'labels' "
                    f"(whose class indices run from {low} to {high})."
                )
        parameters = self._branch_parameters(where=where)
        grads = {name: [p.grad for p in params if p.grad is not None] for name, params in parameters.items()}
        for name, branch_grads in grads.items():
            if not branch_grads:
                raise InputError(
                    f"The 'branches' parameter of {where} has a branch {name!r} whose parameters have "
                    f"no gradient: it took no part in the loss's forward pass, or after_backward ran "
                    f"before loss.backward()."
                )

        scores_t = torch.stack([_score(unimodal_logits[name], labels) for name in self.branches])
        if world_size() > 1:  # in one process the scores are read where they are: no copy to a collective's device
            scores_t = all_reduce_sum_(scores_t.to(collective_device()))
        scores = dict(zip(self.branches, scores_t.tolist(), strict=True))
        ratios = ratios_of(scores)
        modulated = self.modulating()
        coefficients = {name: coefficient(ratios[name], self.alpha) if modulated else 1.0 for name in self.branches}
        noise = modulated and self.ge
        if modulated:
            for name, branch_grads in grads.items():
                self._modulate(branch_grads, coefficients[name], noise)
        self.last = OGMGEStep(scores=scores, ratios=ratios, coefficients=coefficients, modulated=modulated, noise=noise)
        return self.last

    def _modulate(self, grads: list[Tensor], k: float, noise: bool) -> None:
        """One branch's gradients times k, plus GE's noise; list-wide (foreach) ops where the arithmetic allows."""
        # Before modulation: the gradient's own noise. Each tensor's std and draw stay its own, in parameter order,
        # so that the draws follow the generator as a per-tensor loop's would.
        spreads = [grad.float().std(correction=0) for grad in grads] if noise else None
        if k != 1.0:
            torch._foreach_mul_(grads, k)
        if spreads is not None:
            draws = [
                torch.randn(grad.shape, generator=self._generator(grad.device), device=grad.device, dtype=torch.float32)
                .mul_(spread)
                .to(grad.dtype)
                for grad, spread in zip(grads, spreads, strict=True)
            ]
            torch._foreach_add_(grads, draws)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[key] = generator
        return self._generators[key]

    @checked(f"{WHERE}.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """The epoch and the noise generators' states (one per device drawn on so far)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "generators": {key: generator.get_state() for key, generator in self._generators.items()},
        }

    @checked(f"{WHERE}.load_state_dict")
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict() gave, so that the next draws continue the saved run's."""
        where = f"{WHERE}.load_state_dict"
        check_argument(state, Mapping[str, Any], parameter="state", where=where, rule=_state_rule)
        generators = {}
        for key, saved in state["generators"].items():
            generator = torch.Generator(device=torch.device(key))
            generator.set_state(saved)
            generators[key] = generator
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._generators = generators


def _score(logits: Tensor, labels: Tensor) -> Tensor:
    """s_m = Σ_i softmax(o_i)[y_i], in float32 whatever the logits' precision (they are only read)."""
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    return probabilities.gather(1, labels.to(logits.device).long().unsqueeze(1)).sum()


def _labels_rule(labels: Tensor) -> str | None:
    if (
        labels.dim() == 1
        and labels.shape[0] > 0
        and not labels.is_floating_point()
        and not labels.is_complex()
        and labels.dtype != torch.bool
    ):
        return None
    return "a non-empty 1-D tensor of integer class indices [batch]"


def _state_rule(state: Mapping[str, Any]) -> str | None:
    ok = (
        isinstance(state.get("seed"), int)
        and isinstance(state.get("epoch"), int)
        and isinstance(state.get("generators"), Mapping)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state["generators"].items())
    )
    return None if ok else "a state from OGMGE.state_dict() (seed, epoch, generators)"
