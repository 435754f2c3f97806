"""The progress callback that long work takes (library code never prints; the CLI draws the bars).

`progress(stage, done, total, status)`: `stage` names one bar, `done` of `total` (None when unknown)
is how far it is, and `status` is an optional short line shown next to it, e.g. live training
losses. Callers pass `status` only when they have one, so a three-argument callable still works for
stages without it.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None, status: str | None = None, /) -> None: ...


def silent(stage: str, done: int, total: int | None, status: str | None = None, /) -> None:
    """The callback used when the caller gives none."""
