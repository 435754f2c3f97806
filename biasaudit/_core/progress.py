"""The progress callback that long work takes (library code never prints; the CLI draws the bars).

`progress(stage, done, total, status)`: `stage` names one bar, `done` of `total` (None when unknown)
is how far it is, and `status` is an optional short line shown next to it, e.g. live training
losses. A caller's callback may take only the first three: `with_status` adapts it, so a library user's
`lambda stage, done, total: ...` keeps working where the work has a status line to give.
"""

from __future__ import annotations

import inspect
from typing import Protocol
from collections.abc import Callable

from biasaudit._core.annotations import register_type


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None, status: str | None = None, /) -> None: ...


def silent(stage: str, done: int, total: int | None, status: str | None = None, /) -> None:
    """The callback used when the caller gives none."""


def _takes_status(callback: Callable) -> bool:
    try:
        parameters = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature: trust the Protocol
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters) >= 4


def with_status(callback: Callable | None) -> Progress:
    """`callback` as a four-argument Progress: the status is dropped for a three-argument one."""
    if callback is None:
        return silent
    if _takes_status(callback):
        return callback

    def without_status(stage: str, done: int, total: int | None, status: str | None = None, /) -> None:
        callback(stage, done, total)

    return without_status


register_type(Progress, callable, "a callable progress(stage, done, total)")
