"""Unimodal logits for a user's multimodal model, with no Adapter: the head modes of methods.md section 7, step 1,
shared by the per-modality methods (BalGrad's o_v, o_l; OGM-GE's and MMPareto's unimodal outputs).

The fused pass is the model's own forward; forward hooks on the branch modules capture each branch's output z_m
(the model goes on with a copy, so an in-place operation after a branch, z += pos or relu_, cannot change the z_m
read here). Then, per mode:
  shared_zero  o_m = f_T(fuse(z_m, 0)): the part of the model after the branches run again, with the branch outputs
               replaced by forward hooks (z_m by the very tensor of the fused pass, every other branch's by zeros),
               on detached parameters and copied buffers, in eval mode. So o_m trains branch m only (through z_m),
               moves no BatchNorm statistics and draws no dropout (the classifier as it predicts, not a second noisy
               training pass), and the branches' own layers are not run twice: z_m is the fused pass's.
  ogm_split    o_m = W[:, slice_m]·z_m + b/M (OGM-GE's split of a linear head over M branches): the shared_zero pass
               minus (M − 1)/M of the bias of `classifier`. This equals the weight-slice form when that nn.Linear is
               the final layer and reads the plain concatenation of the branch outputs (late concat fusion); for any
               other fusion it is "shared_zero shifted by −(M − 1)/M·b", not a weight slice.
  separate     a new nn.Linear per modality on the flattened z_m of the fused pass (not detached: L_m trains the
               head and the branch). The heads are training-only parameters of this object, not of the model, so
               the model's state_dict keeps the user's architecture; give them to the optimizer (`parameters()`)
               and save them (`state_dict()`). They are drawn from nn.Linear's default distribution with a
               generator of their own, seeded by `seed`, never from the global one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords, one_of
from biasaudit._core.annotations import shown
from biasaudit.errors import InputError
from biasaudit.methods._modes import evaluation_modes
from biasaudit.methods._branches import branches_rule, keys_rule

WHERE = "UnimodalHeads"
HEAD_MODES = ("shared_zero", "ogm_split", "separate")
_HEAD_SEED_TAG = 17  # keeps the heads' generator apart from any other stream drawn from the same seed


class UnimodalHeads:
    """Each modality's logits alone, for a model whose branches (one module per modality) feed a fusion and a head.

    In a plain loop::

        heads = UnimodalHeads(model, {"image": model.vision, "text": model.text})       # shared_zero
        for x_img, x_txt, y in loader:
            optimizer.zero_grad()
            with heads.capture():
                logits = model(x_img, x_txt)                      # the fused pass, as before
            unimodal = heads.logits(lambda: model(x_img, x_txt))  # {"image": [B, C], "text": [B, C]}
            ...                                                   # a method's loss or backward reads them

    model: the bare module (under DDP the wrapped `ddp.module`; the fused pass may go through the wrapper, but the
    rerun callable must call the bare module). branches: its modules, one per modality, keyed by the names the audit
    uses. mode: shared_zero, ogm_split or separate (module docstring). classifier: for ogm_split, the model's final
    nn.Linear on the concatenated branch outputs. num_classes and widths: for separate, the heads' output size and
    each branch's flattened output width (`branch_widths` measures them with one forward). Each of these three is
    refused in a mode that does not use it (ignored, it would hide a mode left at its default). seed: the separate
    heads' initialisation.

    `logits(rerun)` needs the callable only in shared_zero and ogm_split: it reruns the model's forward on the same
    inputs (its branch outputs are replaced, so its inputs only have to reach the branch modules again).
    """

    @checked(WHERE, branches=branches_rule, mode=one_of(HEAD_MODES), seed=at_least(0))
    def __init__(
        self,
        model: nn.Module,
        branches: Mapping[str, nn.Module],
        *,
        mode: str = "shared_zero",
        classifier: nn.Linear | None = None,
        num_classes: int | None = None,
        widths: Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise InputError(
                f"The 'model' parameter of {WHERE} is a {type(model).__name__}; expected the bare module "
                f"(its .module): the unimodal passes run it on replaced parameters, outside the wrapper."
            )
        _check_inside(model, branches, where=WHERE)
        # An argument the mode does not read would be silently ignored, hiding a mistake (a mode left at its default).
        for parameter, value, user in (
            ("classifier", classifier, "ogm_split"),
            ("num_classes", num_classes, "separate"),
            ("widths", widths, "separate"),
        ):
            if value is not None and mode != user:
                raise InputError(
                    f"The {parameter!r} parameter of {WHERE} is {shown(value)}, which the {mode} mode does not use; "
                    f"expected None, or mode={user!r}, the mode that uses it."
                )
        self.model, self.branches, self.mode, self.seed = model, dict(branches), mode, seed
        self.classifier: nn.Linear | None = None
        self.heads: dict[str, nn.Linear] = {}
        if mode == "ogm_split":
            if classifier is None or not any(p is classifier.weight for p in model.parameters()):
                raise InputError(
                    f"The 'classifier' parameter of {WHERE} is "
                    f"{'None' if classifier is None else 'not part of model'}; expected, in the ogm_split mode, "
                    "the model's final nn.Linear on the concatenated branch outputs."
                )
            self.classifier = classifier
        elif mode == "separate":
            check_argument(num_classes, int, parameter="num_classes", where=WHERE, rule=at_least(2))
            check_argument(widths, Mapping[str, int], parameter="widths", where=WHERE, rule=keys_rule(self.branches))
            assert num_classes is not None and widths is not None  # check_argument has refused None for both
            if min(widths.values()) < 1:
                raise InputError(
                    f"The 'widths' parameter of {WHERE} is {dict(widths)}; expected each branch's flattened "
                    f"output width, a positive integer (branch_widths measures them)."
                )
            device = next(p for p in model.parameters()).device
            self.heads = _seeded_heads(
                {m: int(widths[m]) for m in self.branches}, num_classes=num_classes, seed=seed, device=device
            )
        self._outputs: dict[str, Any] | None = None

    @checked_keywords(f"{WHERE}.capture")  # this and the three below run at every training step: checked's cost is kept off
    @contextmanager
    def capture(self) -> Iterator[UnimodalHeads]:
        """While open, each branch's output is kept for `logits` (the last one, if a branch runs twice)."""
        outputs: dict[str, Any] = {}
        handles = [module.register_forward_hook(_CaptureOutput(outputs, name)) for name, module in self.branches.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._outputs = outputs

    @checked_keywords(f"{WHERE}.branch_outputs")
    def branch_outputs(self) -> dict[str, Tensor]:
        """z_m of the last capture, per branch in branch order; one sentence naming the branch that gave none."""
        if self._outputs is None:
            raise InputError(f"{WHERE}.logits was called before any forward pass inside `with heads.capture():`.")
        return _tensors(self._outputs, self.branches)

    @checked_keywords(f"{WHERE}.output_problems")
    def output_problems(self) -> dict[str, str]:
        """Per branch, what is wrong with its output in the last capture ({} when each gave one tensor [batch, ...])."""
        return _problems(self._outputs or {}, self.branches)

    @checked_keywords(f"{WHERE}.logits")
    def logits(self, rerun: Callable[[], Tensor] | None = None) -> dict[str, Tensor]:
        """The unimodal logits {m: o_m} of the last captured forward, in branch order (module docstring)."""
        if rerun is not None and not callable(rerun):  # a wrong type in every mode, even one that would not call it
            check_argument(rerun, Callable[[], Tensor] | None, parameter="rerun", where=f"{WHERE}.logits")
        outputs = self.branch_outputs()
        if self.mode == "separate":
            flat = {m: z.flatten(1) for m, z in outputs.items()}
            for m, x in flat.items():
                if x.shape[1] != self.heads[m].in_features:
                    raise InputError(
                        f"The separate head of {WHERE} for {m!r} takes {self.heads[m].in_features} features, "
                        f"but the branch gave {x.shape[1]} on this batch; separate heads need a branch output "
                        "whose size does not depend on the batch (e.g. pool over sequence positions)."
                    )
            return {m: self.heads[m](flat[m]) for m in self.branches}
        if rerun is None:
            raise InputError(
                f"The 'rerun' parameter of {WHERE}.logits is None; expected, in the {self.mode} "
                "mode, a callable that runs the model's forward again, e.g. lambda: model(x_img, x_txt)."
            )
        # Every parameter detached, once for all the passes: the branches' gradient comes through the injected z_kept
        # alone, and no graph is built through branch layers whose output the hooks replace.
        detached = {f"model.{name}": p.detach() for name, p in self.model.named_parameters()}
        unimodal = {m: self._zeroed(rerun, kept=m, outputs=outputs, parameters=detached) for m in self.branches}
        if self.mode == "ogm_split" and self.classifier is not None and self.classifier.bias is not None:
            # The zeroed pass carries all of b; each split head gets b/M.
            shift = self.classifier.bias.detach() * ((len(self.branches) - 1) / len(self.branches))
            unimodal = {m: o - shift for m, o in unimodal.items()}
        return unimodal

    def _zeroed(
        self, rerun: Callable[[], Tensor], *, kept: str, outputs: Mapping[str, Tensor], parameters: Mapping[str, Tensor]
    ) -> Tensor:
        """f_T(fuse(z_kept, 0)) on the detached `parameters` and copied buffers, in eval mode (module docstring)."""
        state = dict(parameters)
        state.update({f"model.{name}": b.clone() for name, b in self.model.named_buffers()})  # each pass its own copy
        handles = [
            module.register_forward_hook(_ReplaceOutput(outputs[m] if m == kept else torch.zeros_like(outputs[m])))
            for m, module in self.branches.items()
        ]
        try:
            with evaluation_modes(self.model):
                result = functional_call(_Rerun(self.model, rerun), state, ())
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(result, Tensor) or result.dim() != 2:
            raise InputError(
                f"The 'rerun' parameter of {WHERE}.logits returned {type(result).__name__}; expected the model's "
                "logits [batch, classes]."
            )
        return result

    @checked(f"{WHERE}.parameters")
    def parameters(self) -> list[nn.Parameter]:
        """The separate heads' parameters (weight, bias per branch, in branch order) for the optimizer; none otherwise."""
        return [p for head in self.heads.values() for p in head.parameters()]

    @checked(f"{WHERE}.state_dict")
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "heads": {m: head.state_dict() for m, head in self.heads.items()}}

    @checked(f"{WHERE}.load_state_dict")
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the separate heads of state_dict() (of the same mode and branches)."""
        where = f"{WHERE}.load_state_dict"
        check_argument(
            state,
            Mapping[str, Any],
            parameter="state",
            where=where,
            rule=lambda s: (
                None
                if s.get("mode") == self.mode and isinstance(s.get("heads"), Mapping) and set(s["heads"]) == set(self.heads)
                else f"a state of UnimodalHeads.state_dict() in the {self.mode} mode"
            ),
        )
        for m, head in self.heads.items():
            head.load_state_dict(state["heads"][m])


@checked("branch_widths", branches=lambda value: None if value else "at least one branch, one module per modality")
def branch_widths(model: nn.Module, branches: Mapping[str, nn.Module], run: Callable[[], Any]) -> dict[str, int]:
    """Each branch's flattened output width, from one forward `run()` in eval mode and without gradients (it moves no
    BatchNorm statistics and draws no dropout): the `widths` of UnimodalHeads' separate mode."""
    where = "branch_widths"
    _check_inside(model, branches, where=where)
    outputs: dict[str, Any] = {}
    handles = [module.register_forward_hook(_CaptureOutput(outputs, name)) for name, module in branches.items()]
    try:
        with evaluation_modes(model), torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    if not outputs:
        raise InputError(
            f"The 'run' parameter of {where} ran no forward through any of the branches "
            f"{', '.join(map(repr, branches))}; expected a callable that runs the model's forward on one batch, "
            "e.g. lambda: model(x_img, x_txt)."
        )
    return {name: int(output.flatten(1).shape[1]) for name, output in _tensors(outputs, branches, where=where).items()}


def _check_inside(model: nn.Module, branches: Mapping[str, nn.Module], *, where: str) -> None:
    """Every branch is a part of `model` (its parameters are the model's): a module from elsewhere would never run."""
    owned = {id(p) for p in model.parameters()}
    for name, module in branches.items():
        if not all(id(p) in owned for p in module.parameters()):
            raise InputError(
                f"The 'branches' parameter of {where} has a branch {name!r} that is not part of "
                f"'model'; give the model's own submodules (e.g. model.vision)."
            )


def _problems(outputs: Mapping[str, Any], branches: Mapping[str, nn.Module]) -> dict[str, str]:
    """What is wrong with each branch's captured output ("took no part in the forward pass", "gave tuple"); {} if
    every branch gave one tensor [batch, ...]."""
    problems = {}
    for name in branches:
        output = outputs.get(name)
        if output is None:
            problems[name] = "took no part in the forward pass"
        elif not isinstance(output, Tensor) or output.dim() < 2:
            shape = f" of shape {tuple(output.shape)}" if isinstance(output, Tensor) else ""
            problems[name] = f"gave {type(output).__name__}" + shape
    return problems


def _tensors(outputs: Mapping[str, Any], branches: Mapping[str, nn.Module], *, where: str = WHERE) -> dict[str, Tensor]:
    for name, problem in _problems(outputs, branches).items():
        raise InputError(
            f"The 'branches' parameter of {where} has a branch {name!r} that {problem}; expected a module that "
            f"runs in the forward and outputs one tensor [batch, ...] (name the module that ends the branch)."
        )
    return {name: outputs[name] for name in branches}


class _CaptureOutput:
    def __init__(self, into: dict[str, Any], name: str) -> None:
        self.into, self.name = into, name

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        self.into[self.name] = output
        # The model goes on with a copy (module docstring).
        return output.clone() if isinstance(output, Tensor) else output


class _ReplaceOutput:
    """A forward hook that returns `value` instead of the module's own output."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor:
        return self.value.clone()  # each pass gets its own copy, for the same reason as _CaptureOutput


class _Rerun(nn.Module):
    """The user's forward callable as a module holding the model, so torch.func.functional_call can run it on other
    tensors (the callable reaches the model's parameters through the model, which functional_call swaps)."""

    def __init__(self, model: nn.Module, rerun: Callable[[], Tensor]) -> None:
        super().__init__()
        self.model = model
        self._rerun = rerun

    def forward(self) -> Tensor:
        return self._rerun()


def _seeded_heads(widths: Mapping[str, int], *, num_classes: int, seed: int, device: torch.device) -> dict[str, nn.Linear]:
    """One nn.Linear(width, num_classes) per modality, drawn from nn.Linear's default distribution
    (U(±1/sqrt(width)) for weight and bias) with a generator of their own."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _HEAD_SEED_TAG]).generate_state(1)[0]))
    heads = {}
    for name, width in widths.items():
        head: nn.Linear = nn.utils.skip_init(nn.Linear, width, num_classes)  # leaves the global RNG untouched
        bound = 1 / math.sqrt(width)
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=generator))
        heads[name] = head.to(device)
    return heads
