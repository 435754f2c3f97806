"""Reading ahead in a background thread (biasaudit/_core/prefetch.py). If it reordered batches, a scan's per-batch sums
would be added to the wrong samples; if it swallowed an error, a bad batch would go unreported; if it kept running
after the scan stopped, a failed scan would leave a thread reading the user's data."""

from __future__ import annotations

import threading
import time

import pytest

from biasaudit.errors import DataError
from biasaudit._core.prefetch import prefetched


def test_items_come_back_in_order_computed_by_another_thread():
    threads = set()

    def work(item):
        threads.add(threading.current_thread().name)
        time.sleep(0.001 * (item % 3))  # uneven work must not reorder
        return item * item

    assert list(prefetched(range(50), work)) == [i * i for i in range(50)]
    assert threads == {"biasaudit-prefetch"}


def test_an_error_while_reading_is_raised_at_its_batch_after_the_ones_before_it():
    def work(item):
        if item == 3:
            raise DataError("batch 3 is bad")
        return item

    seen = []
    with pytest.raises(DataError, match="batch 3 is bad"):
        for value in prefetched(range(10), work):
            seen.append(value)
    assert seen == [0, 1, 2]


def test_leaving_the_loop_early_stops_the_reading_thread():
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield i
            i += 1

    loop = prefetched(endless(), lambda item: item)
    assert [next(loop) for _ in range(3)] == [0, 1, 2]
    loop.close()
    assert not any(t.name == "biasaudit-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(read) <= 3 + 2 + 2  # what was handed over, what the queue held, and the one in hand


def test_the_reading_thread_sees_the_callers_grad_mode_and_context_and_can_be_turned_off():
    """A thread starts with gradients on and an empty context: reading under the scan's no_grad would silently build
    autograd graphs in a user's data(), and the run's shared reads (a context variable) would be missed."""
    import contextvars

    import torch

    marker = contextvars.ContextVar("marker", default="unset")
    marker.set("the caller's")

    def seen(item):
        return threading.current_thread().name, torch.is_grad_enabled(), marker.get()

    with torch.no_grad():
        assert set(prefetched(range(3), seen)) == {("biasaudit-prefetch", False, "the caller's")}
        # Adapter.read_ahead = False: data() must not run beside the forwards; everything is read in line.
        assert set(prefetched(range(3), seen, ahead=False)) == {(threading.current_thread().name, False, "the caller's")}
