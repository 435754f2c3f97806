"""`dandr`: Diagnosing & Re-learning (methods.md section 8) in fix's loop, calling biasaudit.methods.DandR exactly
as a user's loop does: plain cross-entropy steps, and at the end of every `every`-th epoch (at most `max_times`
times) `dandr.epoch_end(epoch, train_features, train_labels, val_features, val_labels)`.

- Branches: the adapter's branches(model) modules; theta^init is their weights when prepare runs (the start of fix).
- Features: each branch's output (flattened per sample), captured with forward hooks while the model runs in eval
  mode without gradient, on the training split without held-out rows and on the validation data: the adapter's
  "val" split, else the held-out part of train (fix holds out a seeded 20% of train for D&R when there is no val,
  as --scale auto does: selection.selection_plan), which the run never trains on.
- No re-initialisation after the last epoch: nothing would re-learn from it, so the exported model would just be
  pulled back towards its starting weights. Such a due epoch is logged as skipped.
- k-means is seeded from the run seed. The component's state (theta^init, re-initialisations done) is saved with
  the training state every epoch."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import checked_labels
from biasaudit.errors import AdapterError, CheckpointError, InputError
from biasaudit.methods.dandr import DandR as DandRParts
from biasaudit.methods._modes import evaluation_modes
from biasaudit.training.driver import EpochEnd
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.method_ce import train_labels

FEATURE_BATCH_SIZE = 256


def require_branch_modules(model: nn.Module, adapter: Adapter, *, who: str) -> dict[str, nn.Module]:
    branches = optional_hook(adapter, "branches", model)
    if not branches:
        raise AdapterError(
            f"{who} needs one module per modality, but the adapter has no branches(model) hook; add one returning "
            "{modality name: branch module} (an early-fusion model without separate branches cannot use it)."
        )
    return dict(branches)


def branch_features(
    model: nn.Module,
    adapter: Any,
    branches: Mapping[str, nn.Module],
    batches: Iterable[Mapping[str, Any]],
    *,
    device: torch.device,
    split: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each branch's outputs [N, D] (flattened, float32, CPU) and the labels [N] over `batches`, in eval mode without
    gradient (each module's own mode restored afterwards)."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in branches}
    labels: list[torch.Tensor] = []

    def tap(name: str):
        return lambda module, args, output: captured[name].append(output.detach().flatten(1).float().cpu())

    handles = [module.register_forward_hook(tap(name)) for name, module in branches.items()]
    try:
        with evaluation_modes(model), torch.no_grad():
            for batch in batches:
                adapter.forward(model, adapter.prepare(batch, device=device))
                labels.append(torch.as_tensor(checked_labels(batch, adapter, split=split)))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}, torch.cat(labels).long()


def every_for(epochs: int, max_times: int) -> int:
    """The default R: max_times re-initialisations evenly over the run, each followed by R epochs to re-learn
    (20 epochs, 3 times: after epochs 5, 10 and 15)."""
    return max(1, epochs // (max_times + 1))


class DandR:
    name = "dandr"
    validates = True  # fix holds out part of train when the adapter has no val split

    def __init__(self, *, every: int | None = None, max_times: int = 3) -> None:
        for option, value, least in (("every", every, 1), ("max_times", max_times, 0)):
            if value is None and option == "every":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"{option} is {value!r}; expected an integer of at least {least}.")
        # None: spread the re-initialisations over the run (check_config), so that fix's default 20 epochs work; the
        # paper's R = 20 belongs to runs of 100+ epochs.
        self.every_option, self.every, self.max_times = every, every or 1, max_times
        self.parts: DandRParts | None = None
        self.validated_on: str | None = None

    def check(self, model: nn.Module, adapter: Adapter) -> None:
        branches = require_branch_modules(model, adapter, who="D&R")
        try:
            DandRParts(branches, every=self.every, max_times=self.max_times)
        except InputError as exc:
            expected = str(exc).split("; expected ", 1)[-1]
            raise AdapterError(
                f"D&R cannot re-initialise the modules of the adapter's branches(model) hook: it expects {expected}"
            ) from exc

    def check_config(self, config: TrainConfig) -> None:
        if self.every_option is None:
            self.every = every_for(config.epochs, self.max_times)
        if config.epochs < self.every + 1:
            raise InputError(
                f"D&R re-initialises after every {self.every} epochs and needs epochs after that to re-learn, but "
                f"--epochs is {config.epochs}; expected at least {self.every + 1} epochs or a smaller --dandr-every."
            )

    def prepare(self, model: nn.Module, adapter: Any, *, device: torch.device) -> None:
        self.validated_on = adapter.validation_source()
        if self.validated_on is None:
            raise InputError(
                "D&R compares each branch's features on train and on validation data, but the adapter offers no 'val' "
                "split and the run holds out no part of train; add a val split or train with a holdout fraction."
            )
        branches = require_branch_modules(model, adapter, who="D&R")
        self.parts = DandRParts(branches, every=self.every, max_times=self.max_times, seed=torch.initial_seed() % 2**32)

    def _prepared(self) -> DandRParts:
        """The component prepare() made (the loop prepares a method before any step, epoch end or resume)."""
        if self.parts is None:
            raise RuntimeError("D&R was used before prepare(model, adapter, device=...).")
        return self.parts

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        loss = F.cross_entropy(logits, train_labels(batch, adapter, device))
        (loss * (share * loss_scale)).backward()  # share: data_parallel.py; loss_scale: fp16's (precision.py)
        return {"loss": float(loss.detach())}

    def epoch_end(self, model: nn.Module, adapter: Any, *, epoch: int, epochs: int, device: torch.device) -> EpochEnd | None:
        parts = self._prepared()
        if not parts.due(epoch):
            return None
        if epoch + 1 >= epochs:
            return EpochEnd(figures={"dandr": {"skipped": "due after the last epoch, where nothing would re-learn"}})
        branches = parts.branches
        train, train_labels_ = branch_features(
            model, adapter, branches, adapter.data("train", batch_size=FEATURE_BATCH_SIZE), device=device, split="train"
        )
        val, val_labels = branch_features(
            model, adapter, branches, adapter.validation(batch_size=FEATURE_BATCH_SIZE), device=device, split="val"
        )
        done = parts.epoch_end(epoch, train, train_labels_, val, val_labels)
        if done is None:  # the component answers None only at an epoch that is not due, checked above
            raise RuntimeError(f"D&R's component did not re-initialise at due epoch {epoch}.")
        return EpochEnd(
            figures={
                "dandr": {
                    "purity_train": done.purity_train,
                    "purity_val": done.purity_val,
                    "gap": done.gap,
                    "alpha": done.alpha,
                    "validated_on": self.validated_on,
                }
            }
        )

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "every_from": "--dandr-every" if self.every_option else "epochs // (max_times + 1)",
            "max_times": self.max_times,
            "validated_on": self.validated_on,
            "branches": list(self.parts.branches) if self.parts is not None else None,
            "kmeans_seed": self.parts.seed if self.parts is not None else None,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"dandr": self._prepared().state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "dandr" not in state:
            raise CheckpointError("The training state to resume holds no D&R state; resume with the method that wrote it.")
        self._prepared().load_state_dict(state["dandr"])
