"""The adapter contract: what a user writes so biasaudit can drive their own model and data.

An adapter is one object (an instance of a subclass of `Adapter`, or the subclass itself) that
declares the modalities and batch keys and implements a handful of methods. Only `modalities`,
`num_classes`, `build_model`, `data` and `prepare` are required; every optional hook that is left
out disables just the analyses that need it, and the report says so.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from biasaudit._core.annotations import register_remedy, register_type
from biasaudit._core.input_paths import check_input_file
from biasaudit.errors import AdapterError, BiasAuditError
from biasaudit.data.forward_keywords import TokenizerInputs
from biasaudit.data.impairments import IMPAIRMENTS
from biasaudit.data.modality import Modality


class Adapter:
    """Base class for adapters. Subclass it and fill in the required parts.

    Batches are plain dicts: one key per modality (its raw input), `label_key` with a long tensor
    of labels in [0, num_classes), and optionally `bias_key` with a long tensor of bias values.
    """

    modalities: Sequence[Modality] = ()
    num_classes: int = 0
    label_key: str = "label"
    bias_key: str | None = None
    splits: Sequence[str] = ("train", "test")
    # Optional names of bias values and classes, used only to label reports.
    bias_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    # A prefix the checkpoint's keys carry and the model's do not (e.g. "model." for a Lightning module whose
    # network is `self.model`); the entries with it are loaded with it removed, the others ignored. None: the
    # wrappers' prefixes "module." (DataParallel/DDP), "_orig_mod." (torch.compile) and "model." are removed
    # when that is what makes the keys match, and the audit's manifest names what was removed.
    state_dict_prefix: str | None = None
    # A scan reads the next batches of data() in a background thread while it forwards this one. Set False when
    # data() must not run beside prepare() and forward(): it shares an object that is not thread-safe with them (a
    # Hugging Face fast tokenizer used in both), or it hands out one buffer that it refills for every batch.
    read_ahead: bool = True
    # True when data("train") yields the same inputs for the same sample on every pass (no random augmentation): what
    # lets `fix` cache the outputs of frozen encoders after one pass (training/feature_cache.py). False by default,
    # because a cache would freeze one draw of a random augmentation into every later epoch.
    deterministic_data: bool = False
    # Set only on a copy that reads the same data as the adapter it copies (scanning.config.with_mute_overrides): the
    # split reads are shared with that adapter's (data.batches.read_split_labels). Declared here, never set by default.
    reads_as: Adapter

    # ---- required -----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def data(self, split: str, *, batch_size: int) -> Iterable[Mapping[str, Any]]:
        """Batches of the split in a fixed order (no shuffling: results must be reproducible)."""
        raise NotImplementedError

    def prepare(self, batch: Mapping[str, Any], *, device: torch.device) -> Any:
        """Turn a raw (possibly impaired) batch into model inputs on `device`."""
        raise NotImplementedError

    # ---- with defaults ------------------------------------------------------------------------
    def load_state(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Load a checkpoint's state into the model; strict, so mismatches are reported."""
        model.load_state_dict(state, strict=True)

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Call the model on prepared inputs and return logits [B, C] (see `logits_of` for the outputs accepted)."""
        if isinstance(inputs, TokenizerInputs):  # a tokenizer's outputs that the model's forward does not take stay out
            try:
                return logits_of(model(**inputs.for_model(model)))
            except TypeError as exc:
                refused = inputs.refused(exc)
                if refused is None:
                    raise
                raise refused from exc
        if isinstance(inputs, Mapping):
            return logits_of(model(**inputs))
        if isinstance(inputs, (tuple, list)):
            return logits_of(model(*inputs))
        return logits_of(model(inputs))

    # ---- optional hooks (return None when not available) ---------------------------------------
    def classifier(self, model: nn.Module) -> nn.Linear | None:
        """The final linear classifier; its input is the fused feature (embeddings, MMDB)."""
        return None

    def branches(self, model: nn.Module) -> Mapping[str, nn.Module] | None:
        """Per-modality branch modules keyed by modality name (BalGrad, gradient conflict)."""
        return None


_REQUIRED = ("build_model", "data", "prepare")
# Every public part of the contract: what an adapter that does not subclass Adapter must define itself.
_CONTRACT = tuple(name for name in vars(Adapter) if not name.startswith("_"))


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the output itself when it is a tensor, else its `.logits` (a Hugging Face
    ModelOutput, a dataclass) or its "logits" entry (a dict)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    what = type(output).__name__
    if isinstance(output, Mapping):  # name the keys it has (never the values: they may be large tensors)
        keys = [str(k) for k in list(output)[:6]]
        what += f" with keys {', '.join(keys) or 'none'}" + (" and more" if len(output) > 6 else "")
    elif logits is not None:
        what += f" whose .logits is a {type(logits).__name__}"
    raise AdapterError(
        f"The model returned a {what}; expected a logits tensor [batch, classes], or an output with .logits "
        "(else define the adapter's forward(model, inputs) to return the logits)."
    )


def optional_hook(adapter: Any, name: str, model: nn.Module) -> Any:
    """Call an optional hook; a hook that is absent or set to None (e.g. `classifier = None`) gives None. What it
    returns is checked here, where it enters: classifier a module, branches a mapping of modality name to module."""
    hook = getattr(adapter, name, None)
    value = hook(model) if callable(hook) else None
    if value is None:
        return None
    if name == "classifier" and not isinstance(value, nn.Module):
        raise AdapterError(
            f"The adapter's classifier(model) hook returned a {type(value).__name__}; expected the final nn.Linear or None."
        )
    if name == "branches":
        names = [m.name for m in getattr(adapter, "modalities", ())]
        if not isinstance(value, Mapping):
            raise AdapterError(
                f"The adapter's branches(model) hook returned a {type(value).__name__}; expected a dict "
                "{modality name: branch module} or None."
            )
        for key, module in value.items():
            if names and key not in names:  # an adapter that declares its modalities (every validated one does)
                raise AdapterError(
                    f"The adapter's branches(model) hook names {key!r}, which is not a modality. Available: {', '.join(names)}."
                )
            if not isinstance(module, nn.Module):
                raise AdapterError(
                    f"The adapter's branches(model) hook gives a {type(module).__name__} for {key!r}; expected an nn.Module."
                )
    return value


def _defines(adapter: Any, method: str) -> bool:
    impl = getattr(type(adapter), method, None)
    return impl is not None and impl is not getattr(Adapter, method, None)


def validate_adapter(adapter: Any, *, source: str) -> Adapter:
    """Check that an adapter has every required part; name the first missing one."""
    for method in _REQUIRED:
        if not callable(getattr(adapter, method, None)) or (isinstance(adapter, Adapter) and not _defines(adapter, method)):
            raise AdapterError(
                f"Adapter {source} has no {method}() method; every adapter must define it (see README 'Writing an adapter')."
            )
    if not isinstance(adapter, Adapter):
        # An object that is not an Adapter lacks the base class's defaults, which the scan reads (label_key, forward, ...).
        missing = [name for name in _CONTRACT if not hasattr(adapter, name)]
        if missing:
            raise AdapterError(
                f"Adapter {source} is not a biasaudit.Adapter and has no {missing[0]}; subclass biasaudit.Adapter to "
                "get its defaults, or define every part of the contract."
            )
    modalities = list(getattr(adapter, "modalities", ()) or ())
    if len(modalities) < 2:
        raise AdapterError(
            f"Adapter {source} declares {len(modalities)} modalities; "
            "expected at least two Modality(...) entries in `modalities`."
        )
    for modality in modalities:
        if not isinstance(modality, Modality):
            raise AdapterError(f"Adapter {source} lists {modality!r} in `modalities`; expected biasaudit.Modality objects.")
        if modality.kind not in IMPAIRMENTS:  # kinds users registered count too
            raise AdapterError(
                f"Adapter {source}: modality {modality.name!r} has kind {modality.kind!r}; expected one of: "
                f"{', '.join(IMPAIRMENTS)} (or register impairments for it first)."
            )
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
        raise AdapterError(f"Adapter {source} declares modality names {names}; names must be unique.")
    num_classes = getattr(adapter, "num_classes", 0)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise AdapterError(f"Adapter {source} has num_classes={num_classes!r}; expected an integer of at least 2.")
    class_names = getattr(adapter, "class_names", None)
    if class_names is not None and len(class_names) != num_classes:
        raise AdapterError(f"Adapter {source}: class_names has {len(class_names)} names; expected {num_classes}, one per class.")
    return adapter


def load_adapter(spec: str) -> Adapter:
    """Load 'path/to/file.py:NAME' or 'package.module:NAME'. NAME may be an instance or a class."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise AdapterError(f"Adapter {spec!r} is not of the form 'path/to/file.py:NAME' or 'package.module:NAME'.")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        check_input_file(
            path, named=f"Adapter file {where}", expected="a Python file that defines the adapter", error=AdapterError
        )
        module_name = "biasaudit_user_adapter_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise AdapterError(f"Adapter file {where} cannot be imported as Python.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        # Let an adapter import helper modules that sit next to it.
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except BiasAuditError as exc:  # e.g. a LoaderAdapter refusing a shuffling loader: already one sentence
            raise AdapterError(f"Adapter file {where}: {exc}") from exc
        except SystemExit as exc:  # an adapter script run as a module: its exit must not end biasaudit silently
            raise AdapterError(
                f"Adapter file {where} called sys.exit({exc.code}) while being imported; an adapter file must define "
                'the adapter, not run a program (put that under `if __name__ == "__main__":`).'
            ) from None
        except Exception as exc:  # the user's code failed; say where, keep the cause
            raise AdapterError(f"Adapter file {where} raised {type(exc).__name__} while importing: {exc}") from exc
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise AdapterError(f"Adapter module {where!r} cannot be imported: {exc}.") from exc
    if not hasattr(module, name):
        # Adapter classes defined in the module (not ones it imports, such as LoaderAdapter) and adapter instances.
        available = sorted(
            k
            for k, v in vars(module).items()
            if isinstance(v, Adapter) or (inspect.isclass(v) and issubclass(v, Adapter) and v.__module__ == module.__name__)
        )
        raise AdapterError(f"Adapter {spec!r}: {where} has no attribute {name!r}. Available: {', '.join(available) or 'none'}.")
    obj = getattr(module, name)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except BiasAuditError as exc:  # the class refused what it was built from, in a sentence of its own
            raise AdapterError(f"Adapter {spec!r}: {exc}") from exc
        except Exception as exc:
            raise AdapterError(f"Adapter class {spec!r} could not be created without arguments: {exc}") from exc
    return validate_adapter(obj, source=spec)


def modality_by_name(adapter: Adapter, name: str) -> Modality:
    for modality in adapter.modalities:
        if modality.name == name:
            return modality
    raise AdapterError(f"Unknown modality {name!r}. Available: {', '.join(m.name for m in adapter.modalities)}.")


def _adapter_like(value: Any) -> bool:
    # Adapters are duck-typed (validate_adapter checks the contract); a class has the methods but no instance state.
    return not inspect.isclass(value) and all(callable(getattr(value, part, None)) for part in ("build_model", "data", "prepare"))


def _adapter_remedy(value: Any, wanted: set[Any]) -> str:
    if Adapter not in wanted:
        return ""
    if inspect.isclass(value):
        return f" Pass an instance, e.g. {value.__name__}(), not the class."
    if isinstance(value, str):
        return " To load an adapter from a file, use biasaudit.data.adapter.load_adapter('path/to/file.py:NAME')."
    return ""


register_type(Adapter, _adapter_like, "an adapter (an instance of a ba.Adapter subclass)")
register_remedy(_adapter_remedy)
