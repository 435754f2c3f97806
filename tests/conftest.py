"""Shared test helpers (pytest runs in importlib mode, so helpers are fixtures, not imports)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config) -> None:
    # pytest-xdist runs one worker per core; torch's own intra-op threads on top oversubscribe the cores, and its
    # OpenMP threads then spin against each other (a small convolution took 200x longer with 2 threads than with 1 on
    # a busy 2-core machine). One thread per worker: the cores are already shared out. Tests that compare runs across
    # processes set their thread counts themselves.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


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


class GlooRanks:
    """Two processes started as torchrun starts them (its environment variables, one thread each, gloo on this
    machine's CPU), each with its own command line; a process still running after `timeout` fails the test as a hang.
    Started by hand rather than by torchrun, whose agent hides each process's exit code behind its own traceback."""

    ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def run(self, argv: list[list[str]], *, cwd: list | None = None, timeout: float = 120) -> list:
        """argv[r]: what follows `python` for rank r. Returns each rank's CompletedProcess (text stdout and stderr)."""
        import os
        import subprocess
        import sys

        base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        base.update(OMP_NUM_THREADS="1", PYTHONPATH=str(self.ROOT) + os.pathsep + base.get("PYTHONPATH", ""), MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(self._free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0")
        processes = [subprocess.Popen([sys.executable, *map(str, argv[rank])], cwd=cwd[rank] if cwd else None,
                                      env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
        results = []
        try:
            for process in processes:
                stdout, stderr = process.communicate(timeout=timeout)
                results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a rank still ran after {timeout} s: the processes hang instead of finishing together")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        return results

    def run_ok(self, argv: list[list[str]], **options) -> None:
        for rank, result in enumerate(self.run(argv, **options)):
            assert result.returncode == 0, f"rank {rank}: {result.stderr[-3000:]}"


@pytest.fixture
def gloo_ranks() -> GlooRanks:
    return GlooRanks()
