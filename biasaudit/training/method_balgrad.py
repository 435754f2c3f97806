"""`balgrad`: gradient reweighting and projection (methods.md section 7), with the spec's switches.

The fused pass is the model's own forward in training mode; forward hooks capture each branch's output z_m.
Unimodal heads (`head_mode`, methods.md 7.1):
  shared_zero  o_v = f_T(fuse(z_v, 0)): the model run again with the branch outputs replaced by forward hooks,
               z_v by the very tensor of the fused pass and the other by zeros, on a detached copy of θ_T (every
               parameter outside the two branches) and copies of the buffers, in eval mode. So these passes
               train the branches only, move no BatchNorm statistics (after a step the running statistics are
               those of the one train-mode fused pass) and draw no dropout: our reading of "a detached copy of
               θ_T" is the classifier as it predicts, not a second noisy training pass. The branches' own
               layers are not run twice with fresh dropout either: z_v is the fused pass's.
  ogm_split    o_v = W[:, slice_v]·z_v + b/2 (OGM-GE's split of a linear head): the shared_zero pass
               minus half the bias of the adapter's `classifier(model)`. This equals the weight-slice
               form when that nn.Linear is the final layer and reads the plain concatenation of the
               branch outputs (late concat fusion); for any other fusion it is "shared_zero shifted by
               -b/2", not a weight slice.
  separate     a new nn.Linear per modality on the flattened z_m of the fused pass, trained by L_m; the KL is
               on these heads' outputs. The heads live on this object, not in the model, so
               model.state_dict() and the exported model.pt keep the user's architecture.
KL weights (`weights`, methods.md 7.4): `batch` from this batch's detached L_v, L_l; `running` from
their exponential moving averages (balgrad.RunningLosses, momentum 0.9).

The separate heads and the running averages are training state: the loop puts the heads in the
optimizer (`extra_parameters`) and saves/restores both with every epoch (`extra_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from biasaudit.adapter import Adapter, optional_hook
from biasaudit.errors import AdapterError, CheckpointError, DataError, InputError
from biasaudit.training import balgrad as bg
from biasaudit.training.method_ce import train_labels
from biasaudit.training.model_modes import evaluation_modes

HEAD_MODES = ("shared_zero", "ogm_split", "separate")
WEIGHT_MODES = ("batch", "running")
RUNNING_MOMENTUM = 0.9
PROBE_SPLIT = "train"  # the split whose first batch tells the separate heads their input widths
_HEAD_SEED_TAG = 17  # keeps the heads' generator apart from any other stream drawn from the run seed


class _CaptureOutput:
    def __init__(self, into: dict[str, Any], name: str) -> None:
        self.into, self.name = into, name

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        self.into[self.name] = output
        # The model goes on with a copy: an in-place operation after the branch (z += pos, relu_) must not change the
        # z_m that the unimodal passes and the separate heads read.
        return output.clone() if isinstance(output, torch.Tensor) else output


class _ReplaceOutput:
    """A forward hook that returns `value` instead of the module's own output."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        return self.value.clone()  # each pass gets its own copy, for the same reason as _CaptureOutput


class _AdapterForward(nn.Module):
    """adapter.forward(model, inputs) as a module, so torch.func.functional_call can run it on other tensors."""

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.model = model
        self._adapter = adapter

    def forward(self, inputs: Any) -> torch.Tensor:
        return self._adapter.forward(self.model, inputs)


def _choice(value: str, allowed: tuple[str, ...], *, what: str, flag: str) -> None:
    if value not in allowed:
        raise InputError(f"Unknown BalGrad {what} {value!r} ({flag}); available: {', '.join(allowed)}.")


@dataclass
class BalGrad:
    lambda_initial: float = 0.1
    schedule: str = "linear"
    beta: float = 1.0
    kl_mode: str = "mutual"
    projection: str = "global"
    head_mode: str = "shared_zero"
    weights: str = "batch"
    name: str = "balgrad"

    def __post_init__(self) -> None:
        """Refuse bad options before any audit or training runs."""
        _choice(self.schedule, bg.SCHEDULES, what="λ schedule", flag="--lambda-schedule")
        _choice(self.kl_mode, bg.KL_MODES, what="KL mode", flag="--kl-mode")
        _choice(self.projection, bg.PROJECTIONS, what="projection", flag="--projection")
        _choice(self.head_mode, HEAD_MODES, what="head mode", flag="--head-mode")
        _choice(self.weights, WEIGHT_MODES, what="KL weights", flag="--balgrad-weights")
        if not (isinstance(self.lambda_initial, (int, float)) and math.isfinite(self.lambda_initial)
                and 0 <= self.lambda_initial <= 1):
            raise InputError(f"BalGrad's initial λ (--lambda-initial) is {self.lambda_initial!r}; expected a number between 0 and 1.")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(f"BalGrad's β (--beta) is {self.beta!r}; expected a finite number >= 0.")
        self._heads: dict[str, nn.Linear] = {}
        self._running = bg.RunningLosses(momentum=RUNNING_MOMENTUM)

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        """Split the parameters and build the head mode's parts.

        The separate heads are initialised from a generator seeded by torch.initial_seed(), which the
        training loop sets to the run seed just before calling this.
        """
        self._branches = self.check(model, adapter)
        self._task_params, self._branch_params = bg.split_parameters(model, self._branches)
        self._running = bg.RunningLosses(momentum=RUNNING_MOMENTUM)
        self._heads = {}
        if self.head_mode == "ogm_split":
            self._classifier = self._final_linear(model, adapter)
        elif self.head_mode == "separate":
            widths = self._branch_widths(model, adapter, device=device)
            self._heads = _seeded_heads(widths, num_classes=adapter.num_classes, seed=torch.initial_seed(), device=device)

    def check(self, model: nn.Module, adapter: Adapter) -> dict[str, nn.Module]:
        """The two branch modules, or the AdapterError that stops the run before any audit or training."""
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise AdapterError(f"BalGrad needs the model itself, not a {type(model).__name__} wrapper (its replicas would capture "
                               "branch outputs on several devices); have build_model() return the bare module.")
        branches = optional_hook(adapter, "branches", model)
        if branches and len(branches) != 2:
            raise AdapterError(f"BalGrad is defined for exactly two modalities (methods.md section 7), but the adapter's branches(model) "
                               f"names {len(branches)}: {', '.join(branches)}; use --method ce or mmdb, or return two branches.")
        if not branches:
            raise AdapterError("BalGrad needs the adapter's branches(model) hook to return the two per-modality branch modules, "
                               "e.g. {'image': model.image_branch, 'text': model.text_branch}.")
        bg.split_parameters(model, dict(branches))  # branches without trainable parameters, shared or foreign ones
        if self.head_mode == "ogm_split":
            self._final_linear(model, adapter)
        return dict(branches)

    def _final_linear(self, model: nn.Module, adapter: Adapter) -> nn.Linear:
        linear = optional_hook(adapter, "classifier", model)
        if not isinstance(linear, nn.Linear):
            raise AdapterError("BalGrad's ogm_split head mode needs the adapter's classifier(model) hook to return the model's "
                               "final nn.Linear (the layer on the concatenated branch outputs).")
        if not any(p is linear.weight for p in model.parameters()):
            raise AdapterError("The nn.Linear from the adapter's classifier(model) hook is not part of the model.")
        return linear

    def _branch_widths(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> dict[str, int]:
        """Each branch's flattened output width, from one eval-mode forward of the first train batch
        (eval mode and no_grad: the probe moves no batch-norm statistics and draws no dropout)."""
        batch = next(iter(adapter.data(PROBE_SPLIT, batch_size=2)), None)
        if batch is None:
            raise DataError(f"Split {PROBE_SPLIT!r} is empty; BalGrad's separate heads need one batch to size themselves.")
        outputs: dict[str, Any] = {}
        handles = [module.register_forward_hook(_CaptureOutput(outputs, name)) for name, module in self._branches.items()]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                adapter.forward(model, adapter.prepare(batch, device=device))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        widths = {name: int(output.flatten(1).shape[1]) for name, output in self._branch_tensors(outputs).items()}
        return widths

    def _branch_tensors(self, captured: dict[str, Any]) -> dict[str, torch.Tensor]:
        for name in self._branches:
            output = captured.get(name)
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                raise AdapterError(f"BalGrad needs the branch {name!r} from branches(model) to output one tensor [batch, ...] "
                                   f"during forward; it gave {type(output).__name__}. Name the module that ends the branch "
                                   "(e.g. its projection layer) instead.")
        return {name: captured[name] for name in self._branches}

    def _zeroed_logits(self, model: nn.Module, adapter: Adapter, inputs: Any, *, kept: str,
                       embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """f_T(fuse(z_kept, 0)) on a detached θ_T and copied buffers, in eval mode (module docstring)."""
        # Every parameter detached: the branches' gradient comes through the injected z_kept alone, and no graph is
        # built through branch layers whose output the hooks replace.
        state = {f"model.{name}": p.detach() for name, p in model.named_parameters()}
        state.update({f"model.{name}": b.clone() for name, b in model.named_buffers()})
        handles = [module.register_forward_hook(_ReplaceOutput(embeddings[m] if m == kept else torch.zeros_like(embeddings[m])))
                   for m, module in self._branches.items()]
        try:
            with evaluation_modes(model):
                return functional_call(_AdapterForward(model, adapter), state, (inputs,))
        finally:
            for handle in handles:
                handle.remove()

    def logits(self, model, adapter, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(fused logits, unimodal logits {v: o_v, l: o_l}) under the head mode."""
        v, l = list(self._branches)
        captured: dict[str, Any] = {}
        handles = [module.register_forward_hook(_CaptureOutput(captured, name)) for name, module in self._branches.items()]
        try:
            fused = adapter.forward(model, inputs)
        finally:
            for handle in handles:
                handle.remove()
        embeddings = self._branch_tensors(captured)
        if self.head_mode == "separate":
            flat = {m: embeddings[m].flatten(1) for m in (v, l)}
            for m, x in flat.items():
                if x.shape[1] != self._heads[m].in_features:
                    raise AdapterError(f"BalGrad's separate head for {m!r} was sized for {self._heads[m].in_features} features from the "
                                       f"first train batch, but the branch gave {x.shape[1]} on this batch; separate heads need a "
                                       "branch output whose size does not depend on the batch (e.g. pool over sequence positions).")
            return fused, {m: self._heads[m](flat[m]) for m in (v, l)}
        unimodal = {m: self._zeroed_logits(model, adapter, inputs, kept=m, embeddings=embeddings) for m in (v, l)}
        if self.head_mode == "ogm_split" and self._classifier.bias is not None:
            half_bias = self._classifier.bias.detach() / 2  # the zeroed pass carries all of b; each split head gets half
            unimodal = {m: o - half_bias for m, o in unimodal.items()}
        return fused, unimodal

    def gradients(self, model, adapter, batch, *, step, total_steps, device) -> dict[str, Any]:
        labels = train_labels(batch, adapter, device)
        logits, unimodal = self.logits(model, adapter, adapter.prepare(batch, device=device))
        task_loss = F.cross_entropy(logits, labels)
        unimodal_losses = {m: F.cross_entropy(o, labels) for m, o in unimodal.items()}
        kl_terms = bg.mutual_kl(unimodal, mode=self.kl_mode)
        lam = bg.LambdaSchedule(kind=self.schedule, initial=self.lambda_initial, total_steps=total_steps).at(step)
        weights = None
        if self.weights == "running":
            weights = bg.kl_weights(*self._running.update(*(float(loss.detach()) for loss in unimodal_losses.values())))
        for m, head in self._heads.items():  # the separate heads learn their modality's label only: ∇L_m, no KL
            params = list(head.parameters())
            for p, g in zip(params, torch.autograd.grad(unimodal_losses[m], params, retain_graph=True)):
                p.grad = g
        record = bg.balgrad_step(task_loss, unimodal_losses, kl_terms, task_params=self._task_params,
                                 branch_params=self._branch_params, lam=lam, beta=self.beta, projection=self.projection,
                                 weights=weights)
        return {"loss": record.loss_task, **record.to_dict()}

    def extra_parameters(self) -> list[nn.Parameter]:
        """Training-only parameters the optimizer must also update: the separate heads'."""
        return [p for head in self._heads.values() for p in head.parameters()]

    def extra_state(self) -> dict[str, Any]:
        return {"head_mode": self.head_mode, "weights": self.weights,
                "heads": {m: head.state_dict() for m, head in self._heads.items()},
                "running": list(self._running.values) if self._running.values is not None else None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the heads and running averages of an interrupted run (after `prepare`)."""
        # A state without the method section was written before head modes existed: the defaults.
        recorded = (state.get("head_mode", "shared_zero"), state.get("weights", "batch"))
        if recorded != (self.head_mode, self.weights):
            raise CheckpointError(f"The training state to resume was written with BalGrad head mode {recorded[0]!r} and "
                                  f"weights {recorded[1]!r}, not {self.head_mode!r} and {self.weights!r}; resume with the same options.")
        for m, head in self._heads.items():
            head.load_state_dict(state.get("heads", {})[m])
        running = state.get("running")
        self._running.values = (float(running[0]), float(running[1])) if running is not None else None

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass  # the unimodal heads are training-only and never were part of the model

    def settings(self) -> dict[str, Any]:
        return {"lambda_initial": self.lambda_initial, "schedule": self.schedule, "beta": self.beta,
                "kl_mode": self.kl_mode, "projection": self.projection, "head_mode": self.head_mode,
                "weights": self.weights, "weights_momentum": RUNNING_MOMENTUM if self.weights == "running" else None,
                "head_inputs": {m: head.in_features for m, head in self._heads.items()} or None,
                "modalities": list(getattr(self, "_branches", {})) or None}  # v, l of the logs, in this order


def _seeded_heads(widths: dict[str, int], *, num_classes: int, seed: int, device: torch.device) -> dict[str, nn.Linear]:
    """One nn.Linear(width, num_classes) per modality, drawn from nn.Linear's default distribution
    (U(±1/sqrt(width)) for weight and bias) with a generator of their own."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _HEAD_SEED_TAG]).generate_state(1)[0]))
    heads = {}
    for name, width in widths.items():
        head = nn.utils.skip_init(nn.Linear, width, num_classes)  # leaves the global RNG untouched
        bound = 1 / math.sqrt(width)
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=generator))
        heads[name] = head.to(device)
    return heads
