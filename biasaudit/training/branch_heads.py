"""The unimodal heads of fix's per-modality methods (balgrad, ogm_ge, mmpareto), bound to an adapter: the branches
come from its branches(model) hook, the ogm_split layer from its classifier(model) hook, the separate heads are sized
by one eval-mode forward of the first train batch and seeded by the run seed. The heads themselves are
biasaudit.methods.heads.UnimodalHeads, the same object a user's own loop builds.

These methods need one module per modality. An early-fusion model (one encoder over all inputs) has none; the
errors here say so and name the methods that need no branches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.errors import AdapterError, CheckpointError, DataError
from biasaudit.methods.heads import UnimodalHeads, branch_widths

PROBE_SPLIT = "train"  # the split whose first batch tells the separate heads their input widths
NO_BRANCHES = (
    "an early-fusion model, whose one encoder reads every modality, has none: train it with --method ce, mmdb, "
    "groupdro, jtt or dfr, which need no branches"
)


def split_parameters(
    model: nn.Module, branches: dict[str, nn.Module], *, method: str = "BalGrad"
) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """(θ_T, {m: θ_m}): trainable parameters of each branch module, and every other trainable one; an AdapterError
    naming the branch when one has none, is not the model's or shares parameters with another."""
    owned = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for name, module in branches.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise AdapterError(
                f"The branch {name!r} named by the adapter's branches() has no trainable "
                f"parameters; {method} needs a trainable embedding layer per modality."
            )
        for p in params:
            if id(p) not in owned:
                raise AdapterError(f"The branch {name!r} from branches() is not part of the model.")
            if id(p) in seen:
                raise AdapterError(
                    f"The branch {name!r} from branches() shares parameters with another branch; each modality needs its own."
                )
            seen.add(id(p))
        groups[name] = params
    task = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return task, groups


class BranchHeads:
    """One method's unimodal heads in fix's loop. `method` names it in errors (BalGrad, OGM-GE, MMPareto);
    `exactly_two` for a method defined for two modalities only."""

    def __init__(self, method: str, head_mode: str, *, exactly_two: bool = False) -> None:
        self.method, self.head_mode, self.exactly_two = method, head_mode, exactly_two
        self.heads: UnimodalHeads | None = None

    def check(self, model: nn.Module, adapter: Adapter) -> dict[str, nn.Module]:
        """The branch modules, or the AdapterError that stops the run before any audit or training."""
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise AdapterError(
                f"{self.method} needs the model itself, not a {type(model).__name__} wrapper (its replicas would "
                "capture branch outputs on several devices); have build_model() return the bare module."
            )
        branches = optional_hook(adapter, "branches", model)
        if branches and self.exactly_two and len(branches) != 2:
            raise AdapterError(
                f"{self.method} is defined for exactly two modalities (methods.md section 7), but the adapter's "
                f"branches(model) names {len(branches)}: {', '.join(branches)}; use --method ce, mmdb, ogm_ge or "
                "mmpareto, or return two branches."
            )
        if branches and len(branches) < 2:
            raise AdapterError(
                f"{self.method} balances modalities against each other, but the adapter's branches(model) names "
                f"only {', '.join(branches)}; return one module per modality."
            )
        if not branches:
            raise AdapterError(
                f"{self.method} needs one module per modality: the adapter's branches(model) hook must return them, "
                f"e.g. {{'image': model.image_branch, 'text': model.text_branch}}; {NO_BRANCHES}."
            )
        split_parameters(model, dict(branches), method=self.method)
        if self.head_mode == "ogm_split":
            self._final_linear(model, adapter)
        return dict(branches)

    def _final_linear(self, model: nn.Module, adapter: Adapter) -> nn.Linear:
        linear = optional_hook(adapter, "classifier", model)
        if not isinstance(linear, nn.Linear):
            raise AdapterError(
                f"{self.method}'s ogm_split head mode needs the adapter's classifier(model) hook to return the "
                "model's final nn.Linear (the layer on the concatenated branch outputs)."
            )
        if not any(p is linear.weight for p in model.parameters()):
            raise AdapterError("The nn.Linear from the adapter's classifier(model) hook is not part of the model.")
        return linear

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> dict[str, nn.Module]:
        """Build the heads for this model and return its branches. The separate heads are initialised from a generator
        seeded by torch.initial_seed(), which the training loop sets to the run seed just before `prepare`."""
        branches = self.check(model, adapter)
        widths, classifier = None, None
        if self.head_mode == "ogm_split":
            classifier = self._final_linear(model, adapter)
        elif self.head_mode == "separate":
            batch = next(iter(adapter.data(PROBE_SPLIT, batch_size=2)), None)
            if batch is None:
                raise DataError(
                    f"Split {PROBE_SPLIT!r} is empty; {self.method}'s separate heads need one batch to size themselves."
                )
            widths = branch_widths(model, branches, lambda: adapter.forward(model, adapter.prepare(batch, device=device)))
        self.heads = UnimodalHeads(
            model,
            branches,
            mode=self.head_mode,
            classifier=classifier,
            num_classes=adapter.num_classes if widths else None,
            widths=widths,
            seed=torch.initial_seed(),
        )
        return branches

    def logits(
        self, model: nn.Module, adapter: Adapter, inputs: Any, *, track: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(fused logits, unimodal logits {m: o_m}) under the head mode; `track=False` when the unimodal logits are only
        read (OGM-GE's scores), so that their passes build no graph."""
        assert self.heads is not None, "prepare() first"
        with self.heads.capture():
            fused = adapter.forward(model, inputs)
        for name, problem in self.heads.output_problems().items():  # said in the adapter's terms: its hook named them
            raise AdapterError(
                f"{self.method} needs every module from the adapter's branches(model) hook to run in the forward "
                f"and output one tensor [batch, ...], but the branch {name!r} {problem}; name the module that ends "
                "the branch (e.g. its projection layer) instead."
            )
        with torch.set_grad_enabled(track and torch.is_grad_enabled()):
            return fused, self.heads.logits(lambda: adapter.forward(model, inputs))

    def parameters(self) -> list[nn.Parameter]:
        """Training-only parameters the optimizer must also update: the separate heads'."""
        return self.heads.parameters() if self.heads is not None else []

    def state(self) -> dict[str, Any]:
        return self.heads.state_dict()["heads"] if self.heads is not None else {}

    def load_state(self, heads: dict[str, Any]) -> None:
        assert self.heads is not None, "prepare() first"
        try:
            self.heads.load_state_dict({"mode": self.head_mode, "heads": heads})
        except ValueError as exc:  # biasaudit's InputError is a ValueError: a state of other heads
            raise CheckpointError(
                f"The training state to resume holds other {self.method} heads than this run builds ({exc}); "
                "resume with the same options."
            ) from exc

    def settings(self) -> dict[str, Any]:
        heads = self.heads.heads if self.heads is not None else {}
        return {
            "head_mode": self.head_mode,
            "head_inputs": {m: head.in_features for m, head in heads.items()} or None,
            "modalities": list(self.heads.branches) if self.heads is not None else None,
        }
