"""MMDB (Guo et al., TOMM 2023; methods.md section 6) as a loss for any PyTorch loop: cosine logits against the rows
of the model's own final nn.Linear, minus a margin per (label, bias value) from the training split's counts.

    cos θ_i = ⟨W_i/‖W_i‖, x/‖x‖⟩          x: the classifier's input (flattened), W: its weight; its bias is unused
    z_i     = s·(cos θ_i − m_i^{k(x)})     for every class i, k(x) the sample's bias value
    loss    = CE(z, y)                     (class indices or soft targets)
    m_i^k   = 1 − (n_i^k + ε)/(Σ_j n_j^k + ε), n_i^k = training samples of label i with bias value k (`margin_table`)
At test time the logits are s·cos θ (no margin, no bias value needed). Export writes normalised rows and a zero bias
into the nn.Linear, so the user's own architecture predicts argmax cos θ, the same labels (its logits are ‖x‖·cos θ).
The math is methods/_mmdb_math.py, shared with biasaudit's own loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords, positive_finite
from biasaudit.errors import InputError
from biasaudit.methods._mmdb_math import NORM_EPS, MarginTable, bias_margins, inference_logits, mmdb_loss

WHERE = "MMDB"

__all__ = ["MMDB", "MarginTable", "margin_table"]


def _gate_rule(value: float | None) -> str | None:
    return None if value is None or 0 < value < float("inf") else "None or a positive, finite number of bits"


@checked("margin_table", num_classes=at_least(2), num_bias=at_least(1), min_count=at_least(0), entropy_gate=_gate_rule)
def margin_table(
    labels: Tensor | np.ndarray,
    bias: Tensor | np.ndarray,
    *,
    num_classes: int,
    num_bias: int,
    min_count: int = 0,
    entropy_gate: float | None = None,
) -> MarginTable:
    """The margins m_i^k from the TRAINING split's labels and bias values (1-D integer arrays or tensors of one
    length): `MarginTable.margins` [num_bias, num_classes] for MMDB, with the counts, smoothed frequencies and entropy
    gate for the record (`to_dict()`). min_count: a label with fewer samples under a bias value counts as unseen
    there. entropy_gate: a bias value whose label entropy reaches this many bits gets zero margins (4.5 in VQA)."""
    arrays = {}
    for name, values, upper in (("labels", labels, num_classes), ("bias", bias, num_bias)):
        array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
        if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(
                f"The {name!r} parameter of margin_table has dtype {array.dtype} and shape {array.shape}; "
                "expected a non-empty 1-D array of integers."
            )
        if array.min() < 0 or array.max() >= upper:
            raise InputError(
                f"The {name!r} parameter of margin_table holds values from {array.min()} to {array.max()}; "
                f"expected values from 0 to {upper - 1}."
            )
        arrays[name] = array
    if arrays["labels"].shape != arrays["bias"].shape:
        raise InputError(
            f"The 'bias' parameter of margin_table has {arrays['bias'].size} values and 'labels' "
            f"{arrays['labels'].size}; expected one bias value per label."
        )
    return bias_margins(
        arrays["labels"],
        arrays["bias"],
        num_classes=num_classes,
        num_bias=num_bias,
        min_count=min_count,
        entropy_gate=entropy_gate,
    )


def export_cosine_classifier(classifier: nn.Linear) -> None:
    """Normalised rows, zero bias, in place: the layer then predicts argmax cos θ (methods.md section 6, export)."""
    with torch.no_grad():
        classifier.weight.copy_(F.normalize(classifier.weight, dim=1, eps=NORM_EPS))
        if classifier.bias is not None:
            classifier.bias.zero_()


class MMDB:
    """MMDB's adaptive-margin cosine loss for any PyTorch loop, in place of the cross-entropy.

    A plain loop::

        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()

    becomes (k: each sample's integer bias value, e.g. the colour word of a caption)::

        mmdb = MMDB(model.classifier, margin_table(train_labels, train_bias, num_classes=10, num_bias=10), scale=4.0)
        for x, y, k in loader:
            optimizer.zero_grad()
            with mmdb.capture():
                model(x)                                  # its own logits are not used
            loss = mmdb.loss(mmdb.features, y, k)
            loss.backward()
            optimizer.step()
        mmdb.export()                                     # model.classifier now predicts argmax cos θ

    and at evaluation `mmdb.inference_logits(features)` (s·cos θ) or plainly the exported model.

    classifier: the model's final nn.Linear (its weight rows are the class prototypes; its bias is unused while
    training and zeroed by export). margins: a MarginTable (`margin_table`) or a tensor [num_bias, classes] of
    m_i^k. scale: s (methods.md section 6: too large an s under-fits on a strong bias; the released code uses 32).

    No state between steps (state_dict() is empty); it never calls optimizer.step() or zero_grad(). Mixed precision
    and DDP need nothing: it is a loss (under autocast the cosines are computed in the features' dtype and the
    cross-entropy in float32; DDP averages its gradients like any loss's).
    """

    @checked(WHERE, scale=positive_finite)
    def __init__(self, classifier: nn.Linear, margins: MarginTable | Tensor, *, scale: float = 4.0) -> None:
        table = margins.margins if isinstance(margins, MarginTable) else margins
        if table.dim() != 2 or table.shape[1] != classifier.out_features or not torch.isfinite(table).all():
            raise InputError(
                f"The 'margins' parameter of {WHERE} has shape {tuple(table.shape)}; expected finite margins "
                f"[num_bias, {classifier.out_features}], one column per output of 'classifier'."
            )
        self.classifier, self.margins, self.scale = classifier, table.detach(), float(scale)
        self.table = margins if isinstance(margins, MarginTable) else None
        self._features: Tensor | None = None

    @checked_keywords(f"{WHERE}.capture")  # capture, cosines, loss and inference_logits run at every step or batch
    @contextmanager
    def capture(self) -> Iterator[MMDB]:
        """While open, the classifier's input of each forward is kept as `features` (the last one)."""

        def tap(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._features = args[0]

        handle = self.classifier.register_forward_pre_hook(tap)
        try:
            yield self
        finally:
            handle.remove()

    @property
    def features(self) -> Tensor:
        """The classifier's input of the last forward inside `capture()`."""
        if self._features is None:
            raise InputError(
                f"{WHERE}.features was read before any forward pass inside `with mmdb.capture():` reached 'classifier'."
            )
        return self._features

    @checked_keywords(f"{WHERE}.cosines")
    def cosines(self, features: Tensor) -> Tensor:
        """cos θ [B, classes] of the classifier's inputs (a zero feature or row gives 0, not nan)."""
        return self._cosines(features, where=f"{WHERE}.cosines")

    def _cosines(self, features: Tensor, *, where: str) -> Tensor:
        check_argument(features, Tensor, parameter="features", where=where, rule=self._features_rule)
        normalised = F.normalize(features.flatten(1), dim=1, eps=NORM_EPS)
        return normalised @ F.normalize(self.classifier.weight, dim=1, eps=NORM_EPS).T

    @checked_keywords(f"{WHERE}.loss")
    def loss(self, features: Tensor, labels: Tensor, bias: Tensor | np.ndarray) -> Tensor:
        """The mean cross-entropy of s·(cos θ − m^{k}) (module docstring). labels: class indices [B] or soft targets
        [B, classes]; bias: the integer bias value of each sample [B], from 0 to num_bias − 1."""
        where = f"{WHERE}.loss"
        cosines = self._cosines(features, where=where)
        batch, classes = cosines.shape
        if not isinstance(labels, Tensor):  # the full check for its sentence only: a training step passes tensors
            check_argument(labels, Tensor, parameter="labels", where=where)
        if not isinstance(bias, (Tensor, np.ndarray)):
            check_argument(bias, Tensor | np.ndarray, parameter="bias", where=where)
        indices = not labels.is_floating_point()
        if (
            indices == (labels.dim() == 2)
            or labels.shape[0] != batch
            or labels.dtype == torch.bool
            or (labels.dim() == 2 and labels.shape[1] != classes)
            or labels.dim() not in (1, 2)
        ):
            raise InputError(
                f"The 'labels' parameter of {where} is a {labels.dtype} tensor of shape {tuple(labels.shape)}; "
                f"expected class indices [{batch}] or soft targets [{batch}, {classes}]."
            )
        bias = torch.as_tensor(bias)
        if bias.dim() != 1 or bias.shape[0] != batch or bias.is_floating_point() or bias.dtype == torch.bool:
            raise InputError(
                f"The 'bias' parameter of {where} is a {bias.dtype} tensor of shape {tuple(bias.shape)}; "
                f"expected one integer bias value per sample [{batch}]."
            )
        bias = bias.to(cosines.device)
        if batch:  # the ranges of the bias values and class indices, read with one synchronisation
            ranges = [*torch.aminmax(bias)] + ([*torch.aminmax(labels.to(cosines.device))] if indices else [])
            low, high, *label_range = torch.stack([v.long() for v in ranges]).tolist()
            if low < 0 or high >= self.margins.shape[0]:
                raise InputError(
                    f"The 'bias' parameter of {where} holds {low if low < 0 else high}; expected bias values from 0 "
                    f"to {self.margins.shape[0] - 1} (the rows of 'margins')."
                )
            if label_range and (label_range[0] < 0 or label_range[1] >= classes):
                bad = label_range[0] if label_range[0] < 0 else label_range[1]
                raise InputError(
                    f"The 'labels' parameter of {where} holds class {bad}; "
                    f"expected class indices from 0 to {classes - 1} (the outputs of 'classifier')."
                )
        return mmdb_loss(cosines, labels, bias, self.margins, scale=self.scale)

    @checked_keywords(f"{WHERE}.inference_logits")
    def inference_logits(self, features: Tensor) -> Tensor:
        """s·cos θ: the logits MMDB trained for, at test time (no margin)."""
        return inference_logits(self._cosines(features, where=f"{WHERE}.inference_logits"), scale=self.scale)

    @checked(f"{WHERE}.export")
    def export(self, classifier: nn.Linear | None = None) -> None:
        """Write normalised rows and a zero bias into `classifier` (default: the one trained), in place."""
        target = self.classifier if classifier is None else classifier
        check_argument(
            target,
            nn.Linear,
            parameter="classifier",
            where=f"{WHERE}.export",
            rule=lambda c: (
                None
                if c.weight.shape == self.classifier.weight.shape
                else f"an nn.Linear of the trained classifier's shape {tuple(self.classifier.weight.shape)}"
            ),
        )
        if target is not self.classifier:
            with torch.no_grad():
                target.weight.copy_(self.classifier.weight)
        export_cosine_classifier(target)

    @checked(f"{WHERE}.state_dict")
    def state_dict(self) -> dict[str, Any]:
        """Empty: MMDB keeps nothing between steps (the margins are given at construction)."""
        return {}

    @checked(f"{WHERE}.load_state_dict")
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_argument(
            state,
            Mapping[str, Any],
            parameter="state",
            where=f"{WHERE}.load_state_dict",
            rule=lambda value: None if not value else "the empty state of MMDB.state_dict()",
        )

    def _features_rule(self, features: Tensor) -> str | None:
        if features.dim() >= 2 and features[0].numel() == self.classifier.in_features:
            return None
        return f"the classifier's inputs [batch, {self.classifier.in_features}] (captured with `with mmdb.capture():`)"
