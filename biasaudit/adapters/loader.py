"""LoaderAdapter: an adapter from what a PyTorch user already has, a model factory and DataLoaders of dict batches."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from biasaudit.data.adapter import Adapter, logits_of
from biasaudit.adapters.dataloaders import DictBatches, check_loader, rebatched
from biasaudit.adapters.submodules import linear_classifier, submodule
from biasaudit.errors import AdapterError, DataError
from biasaudit.data.modality import Modality

Prepare = Callable[[Mapping[str, Any], torch.device], Any]
Forward = Callable[[nn.Module, Any], Any]


def model_inputs(batch: Mapping[str, Any], modalities: Sequence[Modality], device: torch.device) -> dict[str, Any]:
    """The batch entries of the modalities (each one's key and mask key), tensors moved to `device`: the keyword
    arguments of the model. Labels, bias values and any other key stay out."""
    inputs: dict[str, Any] = {}
    for modality in modalities:
        for key in (modality.key, modality.mask_key):
            if key is not None:
                value = batch[key]
                inputs[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return inputs


class LoaderAdapter(Adapter):
    """An adapter built from an nn.Module factory and DataLoaders keyed by split name.

    model_fn: builds the architecture, untrained (the checkpoint is loaded into it).
    loaders: {"train": loader, "test": loader, ...}; each yields dict batches (raw inputs under the modalities'
      keys, the label under label_key) in a fixed order: a loader that shuffles is refused. Batches are re-cut at
      the batch size biasaudit asks for (biasaudit.adapters.dataloaders says why).
    prepare(batch, device) -> model inputs: default, the modalities' entries (key and mask key) as keyword
      arguments, tensors on the device. Give your own to normalise pixels or tokenise raw text
      (biasaudit.adapters.tokenizing_prepare): impairments act on the raw batch before it.
    forward(model, inputs) -> output: default model(**inputs); the logits are read from the output by
      biasaudit.data.adapter.logits_of (a tensor, an output with .logits, or a dict with "logits").
    classifier: dotted path of the final nn.Linear (e.g. "head"); enables embedding plots and MMDB.
    branches: {modality name: dotted path of its branch} (e.g. {"image": "vision.encoder"}); enables BalGrad,
      the ceilings' probes and bias discovery.
    state_dict_prefix: see Adapter.state_dict_prefix.
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        *,
        loaders: Mapping[str, DataLoader],
        modalities: Sequence[Modality],
        num_classes: int,
        label_key: str = "label",
        bias_key: str | None = None,
        prepare: Prepare | None = None,
        forward: Forward | None = None,
        classifier: str | None = None,
        branches: Mapping[str, str] | None = None,
        class_names: Sequence[str] | None = None,
        bias_names: Sequence[str] | None = None,
        state_dict_prefix: str | None = None,
    ) -> None:
        if not callable(model_fn):
            raise AdapterError(
                f"LoaderAdapter's model_fn is a {type(model_fn).__name__}; expected a callable that builds the nn.Module."
            )
        if not isinstance(loaders, Mapping) or not loaders:
            raise AdapterError(
                "LoaderAdapter needs loaders={split name: DataLoader}, e.g. {'train': train_loader, 'test': test_loader}."
            )
        for name, hook in (("prepare", prepare), ("forward", forward)):
            if hook is not None and not callable(hook):
                raise AdapterError(f"LoaderAdapter's {name} is a {type(hook).__name__}; expected a callable or None.")
        self.loaders = {str(split): check_loader(loader, str(split)) for split, loader in loaders.items()}
        self.splits = tuple(self.loaders)
        self.modalities = tuple(modalities)
        names = [m.name for m in self.modalities if isinstance(m, Modality)]
        if branches is not None:
            unknown = [name for name in branches if name not in names]
            if unknown:
                raise AdapterError(f"LoaderAdapter's branches name modality {unknown[0]!r}. Available: {', '.join(names)}.")
        self.model_fn = model_fn
        self.num_classes = num_classes
        self.label_key, self.bias_key = label_key, bias_key
        self.class_names, self.bias_names = class_names, bias_names
        self.state_dict_prefix = state_dict_prefix
        self.classifier_path = classifier
        self.branch_paths = dict(branches) if branches is not None else None
        self._prepare, self._forward = prepare, forward

    def build_model(self) -> nn.Module:
        model = self.model_fn()
        if not isinstance(model, nn.Module):
            raise AdapterError(f"LoaderAdapter's model_fn returned a {type(model).__name__}; expected a torch.nn.Module.")
        # Check the named parts now, before any work, rather than when an analysis first asks for them.
        self.classifier(model)
        self.branches(model)
        return model

    def data(self, split: str, *, batch_size: int) -> Iterable[Mapping[str, Any]]:
        if split not in self.loaders:
            raise DataError(f"Split {split!r} has no DataLoader. Available: {', '.join(self.loaders)}.")
        return DictBatches(rebatched(self.loaders[split], batch_size), split)

    def prepare(self, batch: Mapping[str, Any], *, device: torch.device) -> Any:
        if self._prepare is not None:
            return self._prepare(batch, device)
        return model_inputs(batch, self.modalities, device)

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        if self._forward is not None:
            return logits_of(self._forward(model, inputs))
        return super().forward(model, inputs)

    def classifier(self, model: nn.Module) -> nn.Linear | None:
        return linear_classifier(model, self.classifier_path) if self.classifier_path is not None else None

    def branches(self, model: nn.Module) -> Mapping[str, nn.Module] | None:
        if self.branch_paths is None:
            return None
        return {name: submodule(model, path, what=f"{name!r} branch") for name, path in self.branch_paths.items()}
