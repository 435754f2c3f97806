"""Every random number generator a training run draws from: seeded for the run, saved with each epoch, restored on
`--resume`, and handed back to the caller as it was.

The loop itself draws only from its own seeded generators and from torch's (dropout: the CPU generator, or the
CUDA generator of each device the model runs on). A user's data code may also draw from numpy's or Python's
global generators (augmentation). All four are seeded from the run seed when training starts, so a `fix` is
reproducible whatever ran before it, saved in the training state (as plain tensors, lists and ints, so that
torch.load(weights_only=True) reads them back), and the caller's own states are put back when training ends:
library code does not leave the user's global generators changed.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator, Mapping

import numpy as np
import torch


def capture() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Only once CUDA is in use: asking earlier would start a context on every visible GPU for a CPU run.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def restore(states: Mapping[str, Any]) -> None:
    """Put back what `capture` saved. CUDA states are restored when the run has as many CUDA devices as saved them;
    a state saved on a CPU-only machine has none."""
    torch.set_rng_state(states["torch"])
    cuda = list(states.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        # Device by device, as far as both runs have devices (CUDA_VISIBLE_DEVICES may differ between them).
        for index, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device=index)
    numpy_state = states.get("numpy")
    if numpy_state is not None:
        np.random.set_state(
            (
                numpy_state["kind"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
    python_state = states.get("python")
    if python_state is not None:
        random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))


@contextmanager
def seeded_run(seed: int) -> Iterator[None]:
    """Seed torch (CPU and every CUDA device), numpy's and Python's global generators from `seed` for the block;
    afterwards restore the caller's states."""
    callers = capture()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        restore(callers)
