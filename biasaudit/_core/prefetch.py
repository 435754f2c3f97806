"""Reading ahead: the next batches are read (and whatever needs only the batch is computed) in a background thread
while this one forwards the current batch (issue 12: data loading overlapped with compute).

What the thread does to a batch is finished before the batch is handed over, so no object is touched by two
threads at once, and the results are the same as reading in line. An error while reading is raised here, at the
batch where it happened, after the batches before it; leaving the loop early stops the thread.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import TypeVar
from collections.abc import Callable, Iterable, Iterator

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")

# Batches read ahead of the one being evaluated: enough to hide a slow read behind a fast forward, while holding only
# two batches' inputs in memory.
DEPTH = 2
JOIN_SECONDS = 1.0
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(
    items: Iterable[Item], work: Callable[[Item], Result], *, depth: int = DEPTH, ahead: bool = True
) -> Iterator[Result]:
    """work(item) for every item, in order, computed by a background thread up to `depth` items ahead; in line when
    not `ahead` (an adapter whose data() must not run beside its forwards, Adapter.read_ahead)."""
    if not ahead:
        yield from map(work, items)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(value: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with torch.set_grad_enabled(grad_enabled):  # the caller's grad mode: a thread starts with its own
                for item in items:
                    if stop.is_set() or not hand_over(work(item)):
                        return
            hand_over(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it where the loop is
            hand_over(_Failed(error))

    grad_enabled = torch.is_grad_enabled()
    # The caller's context variables too (a thread starts with an empty context): what the run shares stays shared.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="biasaudit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = ready.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.error
            yield value
    finally:
        stop.set()
        # The read in hand finishes on its own (a daemon thread, it never holds the process): an interrupted scan does
        # not wait for a slow read.
        thread.join(timeout=JOIN_SECONDS)
