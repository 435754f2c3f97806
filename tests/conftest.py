"""Shared test helpers (pytest runs in importlib mode, so helpers are fixtures, not imports)."""

from __future__ import annotations

import pytest


class Interrupt(Exception):
    """Raised by `interrupt_at` callbacks, standing in for a crash or Ctrl-C in the middle of training."""


class Interrupter:
    Interrupt = Interrupt

    @staticmethod
    def at(step: int):
        """progress(stage, done, total[, status]) that raises Interrupt once `done` reaches `step`."""
        def progress(stage, done, total, status=None):
            if done == step:
                raise Interrupt

        return progress


@pytest.fixture
def interrupter() -> Interrupter:
    return Interrupter()


@pytest.fixture(scope="session")
def shortcut_checkpoint(tmp_path_factory):
    """A state dict of tests/fixtures/shortcut_adapter.py's model, whose answers are fixed by construction (its only
    entry, `scale`, is a buffer there and a parameter in TrainableShortcutAdapter's model, so `fix` can train it)."""
    import sys
    from pathlib import Path

    import torch

    path = tmp_path_factory.mktemp("shortcut") / "model.pt"
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    try:
        import shortcut_adapter
    finally:
        sys.path.pop(0)
    torch.save(shortcut_adapter.ShortcutModel().state_dict(), path)
    return path


def _damaged(document: dict, path: tuple, how: str) -> dict:
    """A copy of a JSON result with one field deleted ("delete"), a number turned into a string or a string or section
    into a number ("retyped"), or a value replaced by an object or an object by a number ("object")."""
    import copy

    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    elif how == "retyped":
        parent[path[-1]] = 12.5 if isinstance(parent[path[-1]], (str, dict, list)) else "12.5"
    elif how == "object":
        parent[path[-1]] = {"x": 1} if not isinstance(parent[path[-1]], dict) else 7
    else:
        raise ValueError(how)
    return document


@pytest.fixture
def damaged():
    return _damaged
