"""A leaderboard's runs in parallel processes (`jobs`): each (method, seed) run is independent (its own seed, its own
folder, its own set of files), so K processes train K of them at once. On CPU the cores are shared out (torch's
threads per process: the cores // K); on CUDA process k trains on GPU k % (the GPUs).

Processes are spawned, not forked (a forked process would inherit torch's threads and CUDA state); the model and the
adapter are sent to them pickled, so an adapter must be importable by its module (a class defined at a module's top
level, as `--adapter path.py:NAME` loads it)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError


def available_workers(device: str) -> int:
    """How many runs can train at once: one per CPU core, or one per GPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def check_jobs(jobs: int, device: str) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"--jobs is {jobs!r}; expected a whole number of parallel runs, 1 or more.")
    most = available_workers(device)
    if jobs > most:
        where = f"{most} GPU(s)" if str(device).startswith("cuda") else f"{most} CPU core(s)"
        raise InputError(f"--jobs {jobs} asks for more parallel runs than this machine has {where}; use at most {most}.")


def check_picklable(adapter: Adapter, jobs: int) -> None:
    """Parallel runs receive the adapter pickled: one that cannot be is refused before any work."""
    if jobs <= 1:
        return
    try:
        pickle.dumps(adapter)
    except Exception as exc:  # any reason pickle gives: a lambda, an open file, a class defined inside a function
        raise InputError(
            f"--jobs {jobs} sends the adapter to other processes, but it cannot be pickled ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); run with --jobs 1, or keep only picklable "
            "attributes on the adapter."
        ) from exc


def _device_of(job: int, device: str) -> str:
    if str(device).startswith("cuda"):
        return f"cuda:{job % torch.cuda.device_count()}"
    return device


def _run_in_worker(arguments: tuple) -> dict[str, Any]:
    from biasaudit.choosing.runs import run_one

    model, adapter, out, settings, method, seed, before, also_before, device, also_split, threads = arguments
    if threads:
        torch.set_num_threads(threads)
    return run_one(
        model,
        adapter,
        Path(out),
        settings,
        method,
        seed,
        before=before,
        device=device,
        progress=None,
        also_split=also_split,
        also_before=also_before,
    )


def run_parallel(
    model: nn.Module,
    adapter: Adapter,
    out: Path,
    settings: Any,
    pending: Iterable[tuple[str, int]],
    *,
    befores: dict[int, dict[str, Any]],
    also_befores: dict[int, dict[str, Any]],
    device: str,
    also_split: str | None,
    jobs: int,
    done: Callable[[str, int, dict[str, Any]], None],
) -> None:
    """Train the `pending` (method, seed) runs in `jobs` spawned processes; `done(method, seed, run)` as each ends."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if not str(device).startswith("cuda") else 0
    work = [(method, seed) for method, seed in pending]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(
                _run_in_worker,
                (
                    model,
                    adapter,
                    str(out),
                    settings,
                    method,
                    seed,
                    befores[seed],
                    also_befores.get(seed),
                    _device_of(index, device),
                    also_split,
                    threads,
                ),
            ): (method, seed)
            for index, (method, seed) in enumerate(work)
        }
        for future in futures:  # in submission order: the same order of `done` calls as one process
            method, seed = futures[future]
            done(method, seed, future.result())
