"""The one exception family of biasaudit. Only the CLI catches it and turns it into an exit code."""

from __future__ import annotations


class BiasAuditError(Exception):
    """Base of every error biasaudit raises on purpose. Exit code 3 unless a subclass says otherwise."""

    exit_code = 3


class InputError(BiasAuditError, ValueError):
    """The user gave something we cannot use: a path, an option, a checkpoint, data. Exit code 2. Also a ValueError,
    so that a caller's `except ValueError` around a public call keeps working."""

    exit_code = 2


class ArgumentTypeError(InputError, TypeError):
    """A public function or method was given an argument of the wrong type, or a keyword it does not take. Also a
    TypeError, as Python's own would be."""


class AdapterError(InputError):
    """The adapter could not be found, or lacks a required part, or returned the wrong thing."""


class CheckpointError(InputError):
    """The checkpoint is missing, unreadable, unsafe to load, or does not match the model."""


class ConditionError(InputError):
    """An unknown condition or impairment, or a severity outside its range."""


class DataError(InputError):
    """A split is empty or its labels or bias values are not what the adapter declared."""
