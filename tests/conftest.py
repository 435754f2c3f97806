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
