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
import typing
from contextlib import contextmanager
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping

from biasaudit._core.annotations import _entry, conforms, describe, plain, remedy, shown
from biasaudit.errors import ArgumentTypeError, InputError

F = TypeVar("F", bound=Callable[..., Any])
# A value rule: None when the value is acceptable, else what was expected ("a positive integer").
ValueRule = Callable[[Any], "str | None"]


def check_argument(value: Any, hint: Any, *, parameter: str, where: str, rule: ValueRule | None = None) -> None:
    """One argument against its annotation, then its value rule; raises naming `parameter` of `where`."""
    if not conforms(value, hint):
        raise ArgumentTypeError(
            f"The {parameter!r} parameter of {where} must be {describe(hint)}; got {shown(value)}{_entry(value, hint)}."
            f"{remedy(value, hint)}"
        )
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
            elif (
                count < len(needed)
                and kwargs.keys() <= by_keyword
                and needed[count] <= kwargs.keys()
                and taken[count].isdisjoint(kwargs)
            ):
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
        raise InputError(
            f"The 'document' parameter of {where} is not {what} ({type(exc).__name__}: {exc}); pass a document "
            "as to_dict() returns it."
        ) from None


def output_file(where: str) -> ValueRule:
    """A file the method will write: the CLI's checks (not a directory, a directory above it that can be written)."""
    from biasaudit._core.output_paths import check_output_file

    def rule(value: Any) -> None:
        check_output_file(value, option=f"{where}'s 'path'")

    return rule


def output_dir(where: str, parameter: str) -> ValueRule:
    from biasaudit._core.output_paths import check_output_dir

    def rule(value: Any) -> None:
        if value is not None:
            check_output_dir(value, option=f"{where}'s {parameter!r}")

    return rule
