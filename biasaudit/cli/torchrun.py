"""`biasaudit scan` under torchrun: join the process group, and check that every process was started alike (the same
flags, and the same contents of the checkpoint, adapter and unimodal files each one read) before ba.scan splits the
scan over them. These checks are about the command lines and files of the processes, which only the command line
knows; ba.scan(distributed=True) checks its own keywords among the ranks again.

It still reaches into the library's process-group and fingerprint helpers (tests/test_import_graph.py
test_cli_calls_the_api lists it as pending): the public call that replaces it is `ba.scan(..., distributed=True)`
joining a torchrun itself and comparing files, which would then name keywords, not flags."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

T = TypeVar("T")


def under_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a launcher setting its environment) started."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) >= 2


def scan_settings(v: Mapping[str, Any], flags: Mapping[str, str], unimodal: Mapping[str, Path]) -> dict[str, tuple[str, Any]]:
    """The scan's settings every process must share, by flag as typed. The device as given: the processes' own
    (cuda:LOCAL_RANK) differ by design. Unimodal checkpoints by modality here, by contents among the files."""
    from biasaudit.cli.config_file import SCAN_KEYS
    from biasaudit.scanning.agreement import option_settings

    compared = {key: v[key] for key in SCAN_KEYS if key not in ("device", "unimodal")}
    return {
        **option_settings({**compared, "device": v["device"]}, flags),
        "--unimodal": (" ".join(f"--unimodal {item}" for item in v["unimodal"]) or "no --unimodal", tuple(unimodal)),
    }


def torchrun_rank(
    held: ExitStack,
    *,
    adapter: str,
    device: str,
    settings: Mapping[str, tuple[str, Any]],
    checkpoint: Path,
    out: Path,
    rank_zero: Callable[[], T],
    unimodal: Mapping[str, Path] | None = None,
) -> tuple[int, str, T | None]:
    """Join the torchrun (left when `held` closes) and check that every process agrees; this process's rank and device,
    and what `rank_zero` returned on rank 0 (None on the others). `rank_zero` runs on rank 0 alone, after its own checks
    and within the same stop-together block, so that its refusal (e.g. --log's tracker that cannot be used) stops every
    rank with its sentence: the tracker is opened once, by the one rank that writes and logs, never by N processes
    racing to create the same store. `settings`: what every process must share, {flag: (as typed, value)}."""
    from biasaudit._core.output_paths import check_output_dir
    from biasaudit._core.sharding import join_torchrun, leave_torchrun
    from biasaudit.data.adapter import load_adapter
    from biasaudit.data.checkpoint import check_checkpoint_file
    from biasaudit.scanning.agreement import check_agreement, scan_fingerprint, stopping_together
    from biasaudit.scanning.audit import adapter_source

    joined = join_torchrun(device)
    assert joined is not None  # under_torchrun() holds
    held.callback(leave_torchrun)
    # Every process checks what it was given, and an error on any one stops them all here.
    with stopping_together(True, group="this torchrun"):
        check_output_dir(out)
        loaded = load_adapter(adapter)
        check_checkpoint_file(checkpoint)  # hashed next
        fingerprint = scan_fingerprint(
            settings, adapter=adapter_source(loaded, adapter), checkpoint=checkpoint, unimodal=tuple((unimodal or {}).items())
        )
        given = rank_zero() if joined[0].index == 0 else None
    check_agreement(fingerprint, group="this torchrun", remedy="be started with the same arguments")
    return joined[0].index, joined[1], given


def torchrun_place() -> tuple[int, int]:
    """(rank, world size) that torchrun gave this process, read from its environment: (0, 1) outside torchrun."""
    if not under_torchrun():
        return 0, 1
    return int(os.environ.get("RANK", "0") or 0), int(os.environ["WORLD_SIZE"])


def meet_after_runs() -> None:
    """Join the torchrun's process group only now, after this process's independent runs (a group joined earlier would
    have the methods sum their statistics over processes training other runs), wait for every process, and leave."""
    from biasaudit._core.sharding import join_torchrun, leave_torchrun

    import torch.distributed as dist

    join_torchrun("cpu")
    try:
        dist.barrier()
    finally:
        leave_torchrun()
