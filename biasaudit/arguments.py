"""The public API's arguments, checked at its edge before any work, as scikit-learn checks its parameters.

A public function or result method declares its types in its annotations; `checked` binds a call to the signature,
then compares every argument with its annotation and with the function's own value rules. A keyword the function
does not take lists the ones it does; a wrong type is an ArgumentTypeError (also a TypeError) and a wrong value an
InputError (also a ValueError), each one sentence naming the parameter as the caller spelled it, what it got and
what it expects, so that a mistake never surfaces as an AttributeError from deep inside a scan. Annotation forms
this module does not read (there are none in the public API today) are left to the function.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import numbers
import os
import types
import typing
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, TypeVar

from biasaudit.errors import ArgumentTypeError, InputError

F = TypeVar("F", bound=Callable[..., Any])
# A value rule: None when the value is acceptable, else what was expected ("a positive integer").
ValueRule = Callable[[Any], "str | None"]


# numpy's scalars count as the Python numbers they hold (np.int64 as an int, np.float32 as a number, np.bool_ as a
# bool), and `plain` turns them into those numbers at the edge, so results and manifests hold plain JSON values.
def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool" and type(value).__module__ == "numpy"


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


def _adapter_like(value: Any) -> bool:
    # Adapters are duck-typed (validate_adapter checks the contract); a class has the methods but no instance state.
    return not inspect.isclass(value) and all(callable(getattr(value, part, None)) for part in ("build_model", "data", "prepare"))


@functools.cache
def _special_types() -> dict[Any, tuple[Callable[[Any], bool], str]]:
    """Types checked by a rule of their own, and how an expectation of them reads."""
    from torch import nn

    from biasaudit.adapter import Adapter
    from biasaudit.progress import Progress

    return {
        int: (_is_int, "an int"), float: (_is_number, "a number"), bool: (_is_bool, "True or False"),
        str: (lambda v: isinstance(v, str), "a str"), os.PathLike: (lambda v: isinstance(v, os.PathLike), "an os.PathLike"),
        type(None): (lambda v: v is None, "None"), Any: (lambda v: True, "any value"),
        nn.Module: (lambda v: isinstance(v, nn.Module), "a torch.nn.Module"),
        Adapter: (_adapter_like, "an adapter (an instance of a ba.Adapter subclass)"),
        Progress: (callable, "a callable progress(stage, done, total)"),
    }


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
        return isinstance(value, collections.abc.Mapping) and all(conforms(k, key) and conforms(v, item) for k, v in value.items())
    if origin in (collections.abc.Sequence, list):
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0] if args else Any) for v in value)
    if origin is collections.abc.Callable:
        return callable(value)
    if origin is collections.abc.Iterable:
        # Read without iterating (a generator or a DataLoader would be consumed or run): a list or tuple's items are
        # checked, a str counts only where the items may be str.
        item = args[0] if args else Any
        if not isinstance(value, collections.abc.Iterable) or isinstance(value, (str, bytes)) and not conforms("", item):
            return False
        return not isinstance(value, (list, tuple)) or all(conforms(v, item) for v in value)
    if origin is tuple:
        # A list where a tuple is annotated is accepted: the fields read it by position, as the README's examples do.
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
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
        if set(arms) == {str, os.PathLike}:
            words = "a path (str or os.PathLike)"
        else:
            words = " or ".join(describe(arm) for arm in arms)
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
        prefix = "ba." if module.startswith("biasaudit") else "torch.nn." if module.startswith("torch.nn.modules.") else module + "."
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


def _remedy(value: Any, hint: Any) -> str:
    """A sentence on what to do instead, for the mistakes users make (a path or state dict for a model, ...)."""
    from torch import nn

    from biasaudit.adapter import Adapter
    from biasaudit.gating import GateRules
    from biasaudit.results.audit import Audit

    wanted = _classes(hint)
    if inspect.isclass(value) and (Adapter in wanted or any(isinstance(w, type) and issubclass(value, w) for w in wanted)):
        return f" Pass an instance, e.g. {value.__name__}(), not the class."
    if nn.Module in wanted and isinstance(value, (str, os.PathLike)):
        return (" To scan a checkpoint file, load it with adapter.build_model() and load_state_dict, or use the command "
                "line (biasaudit scan).")
    if nn.Module in wanted and isinstance(value, collections.abc.Mapping):
        return " That looks like a state dict: build the model (adapter.build_model()) and load it with load_state_dict."
    if Audit in wanted and isinstance(value, (str, os.PathLike)):
        return " Read the file first: ba.Audit.read(path)."
    if Audit in wanted and isinstance(value, collections.abc.Mapping):
        return " Wrap an audit document with ba.Audit.from_dict(document)."
    if Adapter in wanted and isinstance(value, str):
        return " To load an adapter from a file, use biasaudit.adapter.load_adapter('path/to/file.py:NAME')."
    if GateRules in wanted and value is None:
        return " Give the rules to judge by, e.g. ba.GateRules(max_gap=5)."
    return ""


def _classes(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_classes(arm) for arm in args))
    return {hint}


def check_argument(value: Any, hint: Any, *, parameter: str, where: str, rule: ValueRule | None = None) -> None:
    """One argument against its annotation, then its value rule; raises naming `parameter` of `where`."""
    if not conforms(value, hint):
        raise ArgumentTypeError(f"The {parameter!r} parameter of {where} must be {describe(hint)}; got {shown(value)}{_entry(value, hint)}."
                                f"{_remedy(value, hint)}")
    expected = rule(value) if rule is not None else None
    if expected is not None:
        raise InputError(f"The {parameter!r} parameter of {where} is {shown(value)}; expected {expected}.")


def check_keywords(given: collections.abc.Iterable[str], accepted: collections.abc.Iterable[str], *, where: str) -> None:
    unknown = [name for name in given if name not in set(accepted)]
    if unknown:
        raise ArgumentTypeError(f"{where} has no parameter {unknown[0]!r}. Available: {', '.join(accepted)}.")


def checked(where: str, **rules: ValueRule) -> Callable[[F], F]:
    """Check every call of the decorated function or method before its body runs (see the module docstring).
    `where` is the name the caller knows it by ("ba.scan", "Audit.to_json"); `rules` are value rules by parameter."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        parameters = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
        named = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        open_keywords = any(p.kind is p.VAR_KEYWORD for p in parameters)
        resolved: dict[str, Any] = {}  # the annotations, read at the first call (they name classes imported later)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not open_keywords:
                check_keywords(kwargs, named, where=where)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:  # too many positional arguments, a required one missing
                raise ArgumentTypeError(f"{where}: {exc}. {_its_parameters(named)}") from None
            if not resolved:
                resolved.update(typing.get_type_hints(function))
            for name, value in bound.arguments.items():
                if name in named:
                    check_argument(value, resolved.get(name, Any), parameter=name, where=where, rule=rules.get(name))
                    bound.arguments[name] = plain(value)
            return function(*bound.args, **bound.kwargs)

        return typing.cast(F, call)

    return decorate


def _its_parameters(named: list[str]) -> str:
    return f"Its parameters: {', '.join(named)}." if named else "It takes no arguments."


def checked_keywords(where: str) -> Callable[[F], F]:
    """The part of `checked` that reads the call's shape alone: a keyword the function does not take lists the ones it
    does, a missing or extra argument is one sentence, and the types are left to the function. For a method called at
    every training step (a loss, a backward, an after-backward hook), where `checked`'s binding and annotation reading
    cost tens of microseconds: such a method tests its tensors itself, cheaply, and names a wrong one with
    check_argument. A right call costs a few set operations here; `checked`'s path runs only when they fail."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        every = list(signature.parameters.values())
        named = [p.name for p in every if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in every):
            return checked(where)(function)  # no fast path to keep for the open signatures (there are none in methods/)
        positional = [p.name for p in every if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        by_keyword = frozenset(p.name for p in every if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        required = [p.name for p in every if p.default is p.empty]
        # For k positional arguments: the required names a right call then gives by keyword, and those it must not.
        needed = [frozenset(name for name in required if name not in positional[:k]) for k in range(len(positional) + 1)]
        taken = [frozenset(positional[:k]) for k in range(len(positional) + 1)]
        complete = frozenset(k for k, names in enumerate(needed) if not names)  # counts of positional arguments alone that do

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            count = len(args)
            if not kwargs:
                if count in complete:
                    return function(*args)
            elif count < len(needed) and kwargs.keys() <= by_keyword and needed[count] <= kwargs.keys() and taken[count].isdisjoint(kwargs):
                return function(*args, **kwargs)
            check_keywords(kwargs, named, where=where)
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ArgumentTypeError(f"{where}: {exc}. {_its_parameters(named)}") from None
            return function(*args, **kwargs)

        return typing.cast(F, call)

    return decorate


def check_fields(instance: Any, *, where: str, skip: collections.abc.Container[str] = ()) -> None:
    """A frozen dataclass's fields against their annotations (for classes users construct, e.g. ba.GateRules)."""
    import dataclasses

    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        if field.name not in skip:
            value = getattr(instance, field.name)
            check_argument(value, hints[field.name], parameter=field.name, where=where)
            object.__setattr__(instance, field.name, plain(value))


def refuse_unknown_fields(cls: type, args: tuple, kwargs: Mapping[str, Any], *, where: str) -> None:
    """For a dataclass's __new__: an unknown keyword lists the fields (the generated __init__ would not)."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if f.init]
    check_keywords(kwargs, names, where=where)
    if len(args) > len(names):
        raise ArgumentTypeError(f"{where} takes at most {len(names)} positional arguments ({', '.join(names)}); got {len(args)}.")


# ---- value rules -------------------------------------------------------------------------------------------------
def at_least(least: int) -> ValueRule:
    return lambda value: None if value >= least else ("a positive integer" if least == 1 else f"an integer of at least {least}")


def positive_finite(value: float) -> str | None:
    return None if 0 < value < float("inf") else "a positive, finite number"


def non_negative_finite(value: float) -> str | None:
    return None if 0 <= value < float("inf") else "a finite number >= 0"


def one_of(choices: collections.abc.Iterable[str]) -> ValueRule:
    names = tuple(choices)
    return lambda value: None if value in names else f"one of: {', '.join(names)}"


def not_empty(value: str) -> str | None:
    return None if value.strip() else "a non-empty name"


def document_with(*keys: str, what: str) -> ValueRule:
    """A result document: a mapping with the sections its typed view reads."""
    return lambda value: None if all(key in value for key in keys) else f"{what} (with {', '.join(keys)})"


@contextmanager
def reading_document(where: str, what: str) -> Iterator[None]:
    """A typed view built from a document the caller gave: a section of the wrong shape is one sentence naming the
    parameter, not a KeyError from inside the view."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"The 'document' parameter of {where} is not {what} ({type(exc).__name__}: {exc}); pass a document "
                         "as to_dict() returns it.") from None


def output_file(where: str) -> ValueRule:
    """A file the method will write: the CLI's checks (not a directory, a directory above it that can be written)."""
    from biasaudit.output_paths import check_output_file

    def rule(value: Any) -> None:
        check_output_file(value, option=f"{where}'s 'path'")

    return rule


def output_dir(where: str, parameter: str) -> ValueRule:
    from biasaudit.output_paths import check_output_dir

    def rule(value: Any) -> None:
        if value is not None:
            check_output_dir(value, option=f"{where}'s {parameter!r}")

    return rule
