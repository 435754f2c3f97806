"""How a value compares with a type annotation, and how both read in a sentence (biasaudit._core.arguments' checks)."""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
import types
import typing
from typing import Any
from collections.abc import Callable


# numpy's scalars count as the Python numbers they hold (np.int64 as an int, np.float32 as a number, np.bool_ as a
# bool), and `plain` turns them into those numbers at the edge, so results and manifests hold plain JSON values.
def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or (type(value).__name__ == "bool" and type(value).__module__ == "numpy")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value)


def plain(value: Any) -> Any:
    """`value` with numpy scalars, inside tuples, lists and dicts too, as Python's own bool, int and float."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# Types read by a rule of their own rather than isinstance, and how an expectation of each reads. The domain classes
# (ba.Adapter, ...) register themselves where they are defined (register_type), so that this layer imports none of them.
_TYPE_RULES: dict[Any, tuple[Callable[[Any], bool], str]] = {
    int: (_is_int, "an int"),
    float: (_is_number, "a number"),
    bool: (_is_bool, "True or False"),
    str: (lambda v: isinstance(v, str), "a str"),
    os.PathLike: (lambda v: isinstance(v, os.PathLike), "an os.PathLike"),
    type(None): (lambda v: v is None, "None"),
    Any: (lambda v: True, "any value"),
}
# Sentences on what to do instead, for the mistakes users make (a path or a state dict for a model, ...): each takes
# the value and the classes the annotation allows and returns a sentence, or "" when it does not apply.
Remedy = Callable[[Any, "set[Any]"], str]
_REMEDIES: list[Remedy] = []


def register_type(cls: Any, rule: Callable[[Any], bool], words: str) -> None:
    """Check an annotation of `cls` with `rule` instead of isinstance; `words` is how the expectation reads."""
    _TYPE_RULES[cls] = (rule, words)


def register_remedy(remedy: Remedy) -> None:
    _REMEDIES.append(remedy)


def _special_types() -> dict[Any, tuple[Callable[[Any], bool], str]]:
    if "torch.nn" not in _registered_lazily:  # torch is imported on first use, not when this module loads
        from torch import nn

        _TYPE_RULES[nn.Module] = (lambda v: isinstance(v, nn.Module), "a torch.nn.Module")
        _registered_lazily.add("torch.nn")
    return _TYPE_RULES


_registered_lazily: set[str] = set()


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type `hint` (unions, None, mappings, tuples and classes are read)."""
    special = _special_types()
    if hint in special:
        return special[hint][0](value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arm) for arm in args)
    if origin in (collections.abc.Mapping, dict):
        key, item = args or (Any, Any)
        return isinstance(value, collections.abc.Mapping) and all(
            conforms(k, key) and conforms(v, item) for k, v in value.items()
        )
    if origin in (collections.abc.Sequence, list):
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0] if args else Any) for v in value)
    if origin is collections.abc.Callable:
        return callable(value)
    if origin is collections.abc.Iterable:
        # Read without iterating (a generator or a DataLoader would be consumed or run): a list or tuple's items are
        # checked, a str counts only where the items may be str.
        item = args[0] if args else Any
        if not isinstance(value, collections.abc.Iterable) or (isinstance(value, (str, bytes)) and not conforms("", item)):
            return False
        return not isinstance(value, (list, tuple)) or all(conforms(v, item) for v in value)
    if origin is tuple:
        # A list where a tuple is annotated is accepted: the fields read it by position, as the README's examples do.
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """How an expectation of `hint` reads in a sentence ("a str or None")."""
    special = _special_types()
    if hint in special:
        return special[hint][1]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        words = "a path (str or os.PathLike)" if set(arms) == {str, os.PathLike} else " or ".join(describe(arm) for arm in arms)
        return words + (" or None" if len(arms) < len(args) else "")
    if origin in (collections.abc.Mapping, dict):
        key, item = args or (Any, Any)
        return f"a mapping (dict) of {_bare(describe(key))} to {_bare(describe(item))}"
    if origin in (collections.abc.Sequence, list):
        return f"a list of {_bare(describe(args[0] if args else Any))}"
    if origin is collections.abc.Callable:
        if not args or args[0] is Ellipsis:
            return "a callable"
        return f"a callable taking {len(args[0]) or 'no'} argument{'s' * (len(args[0]) != 1)}"
    if origin is collections.abc.Iterable:
        return "an iterable" if not args or args[0] is Any else f"an iterable of {_plural(describe(args[0]))}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_plural(describe(args[0]))}"
        if len(set(args)) == 1:
            return f"a tuple of {len(args)} {_plural(describe(args[0]))}"
        return f"a tuple ({', '.join(_bare(describe(a)) for a in args)})"
    if isinstance(hint, type):
        module = hint.__module__
        # Classes by the path users write: ba.Audit, torch.nn.Linear (not torch.nn.modules.linear.Linear).
        prefix = (
            "ba." if module.startswith("biasaudit") else "torch.nn." if module.startswith("torch.nn.modules.") else module + "."
        )
        return f"a {prefix}{hint.__qualname__}"
    return str(hint)


def _bare(words: str) -> str:
    return words.removeprefix("an ").removeprefix("a ")


def _plural(words: str) -> str:
    bare = _bare(words)
    return bare if " " in bare else bare + "s"


def shown(value: Any) -> str:
    """What the caller gave, in a few words: its type and a short repr (never a large tensor or state dict)."""
    if inspect.isclass(value):
        return f"the class {value.__qualname__}"
    if isinstance(value, collections.abc.Mapping):
        keys = [repr(k) for k in list(value)[:3]]
        return f"{type(value).__name__} with keys {', '.join(keys) or 'none'}" + (" and more" if len(value) > 3 else "")
    if isinstance(value, (list, tuple)) and not all(_scalar(v) for v in value):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {len(value)} ({', '.join(kinds[:3])})"
    if _scalar(value) or isinstance(value, (list, tuple, os.PathLike)):
        text = repr(value)
        return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}" if value is not None else "None"
    return type(value).__name__


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bytes, numbers.Number)) or _is_bool(value)


def _entry(value: Any, hint: Any) -> str:
    """For a mapping that does not conform: which entry is wrong (", whose 'text' is str 'x.pt'")."""
    if not isinstance(value, collections.abc.Mapping):
        return ""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for arm in arms:
        if typing.get_origin(arm) in (collections.abc.Mapping, dict) and typing.get_args(arm):
            key, item = typing.get_args(arm)
            for k, v in value.items():
                if not conforms(k, key):
                    return f", whose key {shown(k)} is not {describe(key)}"
                if not conforms(v, item):
                    return f", whose {k!r} is {shown(v)}"
    return ""


def remedy(value: Any, hint: Any) -> str:
    """A sentence on what to do instead of passing `value` where `hint` is annotated ("" when none applies)."""
    wanted = _classes(hint)
    return next((words for words in (each(value, wanted) for each in (*_REMEDIES, _module_remedy)) if words), "")


def _module_remedy(value: Any, wanted: set[Any]) -> str:
    from torch import nn

    if inspect.isclass(value) and any(isinstance(w, type) and issubclass(value, w) for w in wanted):
        return f" Pass an instance, e.g. {value.__name__}(), not the class."
    if nn.Module in wanted and isinstance(value, (str, os.PathLike)):
        return (
            " To scan a checkpoint file, load it with adapter.build_model() and load_state_dict, or use the command "
            "line (biasaudit scan)."
        )
    if nn.Module in wanted and isinstance(value, collections.abc.Mapping):
        return " That looks like a state dict: build the model (adapter.build_model()) and load it with load_state_dict."
    return ""


def _classes(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_classes(arm) for arm in args))
    return {hint}
