"""Exact sums of floats, so that a sharded scan merges to the last digit (methods.md section 10).

A float64 sum depends on the order of its terms; a scan split over processes adds its batches in another
order than one process does. Every float64 is an integer multiple of 2**-1126 (the smallest subnormal is
2**-1074, and a 53-bit mantissa shifted by the exponent stays whole at that scale), so each term is turned
into that integer exactly and the integers are added: their total does not depend on the order, and it is
rounded to a float once, correctly, when read (Python's int / int is correctly rounded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biasaudit.errors import DataError

_SCALE_BITS = 1126
_SCALE = 1 << _SCALE_BITS


def exact_integers(values: np.ndarray) -> list[int]:
    """Each finite float64 of `values` (flattened) as the integer value * 2**1126, exactly."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise DataError("An exact sum was given a NaN or infinite value.")
    mantissa, exponent = np.frexp(array)
    whole = (mantissa * float(1 << 53)).astype(np.int64)  # exact: a mantissa has 53 bits
    shifts = (exponent.astype(np.int64) - 53 + _SCALE_BITS).tolist()
    return [m << s for m, s in zip(whole.tolist(), shifts, strict=True)]


class ExactSum:
    """A vector of exact running sums of float64 values, merged by adding integers."""

    def __init__(self, size: int) -> None:
        self.totals = [0] * int(size)

    def add(self, values: np.ndarray) -> None:
        terms = exact_integers(values)
        if len(terms) != len(self.totals):
            raise ValueError(f"an exact sum of {len(self.totals)} values was given {len(terms)}")
        self.totals = [t + v for t, v in zip(self.totals, terms, strict=True)]

    def merge(self, other: ExactSum) -> None:
        self.add_integers(other.totals)

    def add_integers(self, totals: Sequence[int]) -> None:
        self.totals = [t + v for t, v in zip(self.totals, totals, strict=True)]

    def value(self) -> np.ndarray:
        """The sums, each rounded once to the nearest float64."""
        return np.array([_rounded(t) for t in self.totals], dtype=np.float64)


def _rounded(total: int) -> float:
    try:
        return total / _SCALE
    except OverflowError:  # beyond the largest float, as a float sum would have become
        return float("inf") if total > 0 else float("-inf")
