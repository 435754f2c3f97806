"""`ba.leaderboard`: every fix method against the control over seeds; `ba.merge_leaderboard` of a sharded one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from biasaudit._core.arguments import at_least, checked, non_negative_finite, not_empty, one_of, output_dir, positive_finite
from biasaudit._core.progress import Progress
from biasaudit.api._scan import _check_scan, adapter_of
from biasaudit.choosing.runs import KEEP, PRIMARY
from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.results import StrPath
from biasaudit.results.leaderboard_result import LeaderboardResult
from biasaudit.scanning.config import PRECISIONS
from biasaudit.training.optimizers import OPTIMIZERS

if TYPE_CHECKING:
    from biasaudit._core.sharding import Shard


def _grids_problem(value: Any) -> str | None:
    """None when `value` maps methods with a gridded option to one or more distinct positive numbers; a method's grid
    that is not raises its own sentence ("The grid of ogm_ge's alpha is ..."), the command line's --grid as well."""
    from biasaudit.training.selection import OPTION_GRIDS, check_grid

    expected = f"a mapping of method ({', '.join(OPTION_GRIDS)}) to one or more distinct positive, finite numbers"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return expected
    for method, grid in value.items():
        if not isinstance(method, str):
            return expected
        if method not in OPTION_GRIDS:
            raise InputError(
                f"The 'grids' parameter of ba.leaderboard names {method!r}, which has no option chosen on validation "
                f"data. Available: {', '.join(OPTION_GRIDS)}."
            )
        check_grid(method, grid)
    return None


@checked(
    "ba.leaderboard",
    seeds=lambda value: (
        None
        if len(value) >= 2 and len(set(value)) == len(value) and min(value) >= 0
        else "at least two different seeds of 0 or more"
    ),
    split=not_empty,
    epochs=at_least(1),
    lr=positive_finite,
    batch_size=at_least(1),
    optimizer=one_of(OPTIMIZERS),
    precision=one_of(tuple(PRECISIONS)),
    bootstrap=at_least(10),
    primary=one_of(PRIMARY),
    keep=one_of(KEEP),
    max_full_drop=non_negative_finite,
    out=output_dir("ba.leaderboard", "out"),
    jobs=at_least(1),
    grids=_grids_problem,
    shard=lambda value: (
        None if value is None or _shard_of(value) is not None else "I/N with N >= 1 and I from 0 to N - 1, e.g. '0/4'"
    ),
)
def leaderboard(
    model: nn.Module | StrPath,
    adapter: Adapter | str,
    *,
    out: StrPath,
    methods: Sequence[str] = ("ce", "mmdb", "balgrad", "ogm_ge", "mmpareto", "groupdro", "jtt", "dandr", "dfr"),
    seeds: Sequence[int] = (0, 1, 2),
    split: str = "test",
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    precision: str = "fp32",
    bootstrap: int = 1000,
    primary: str = "worst-group",
    max_full_drop: float = 1.0,
    keep: str = "best",
    device: str | torch.device = "cpu",
    jobs: int = 1,
    grids: Mapping[str, Sequence[float]] | None = None,
    shard: str | None = None,
    progress: Progress | None = None,
    on_run: Callable[[str, int, bool], None] | None = None,
    trust_checkpoint: bool = False,
) -> LeaderboardResult:
    """Fix `model` with every method in `methods` for every seed, compare each with the `ce` control (always included)
    seed by seed, pool the changes over seeds and samples (a hierarchical bootstrap, biasaudit/choosing/pooling.py),
    and recommend a method only when a bias measure improves beyond that noise on most seeds and Full accuracy
    (in distribution, on `test`, when `split` is out of distribution) does not fall by more than `max_full_drop`
    points (biasaudit/choosing/rule.py). Writes leaderboard.json, leaderboard.html and every run into `out`; a
    rerun with the same settings reuses the finished runs. `jobs` > 1 trains that many runs at once in spawned
    processes (at most one per CPU core, or one per GPU; the adapter must then be importable by its module). The
    caller's model is never trained.

    Each method's own option (MMDB's scale, OGM-GE's alpha, MMPareto's gamma, Group DRO's eta, JTT's upweight) is
    chosen per run on `val` (else a seeded 20% of train) from a small grid (biasaudit.training.selection.OPTION_GRIDS);
    `grids` replaces a method's grid, e.g. {"ogm_ge": (0.1, 0.5)}; a one-value grid fixes the option.

    `shard` ("I/N", a job array's task I of N): train only every N-th (method, seed) run from the I-th into `out` and
    write its record `shard-I-of-N.json` (the result's `json_path`; `recommended` is None, `html_path` None); when
    every shard has finished, `merge_leaderboard` of their folders writes the leaderboard.

    Parameters: `model` and `adapter` (the starting model, never trained itself); `out` (the folder of the runs and the
    document); `methods` and `seeds` (every method runs with every seed; the control `ce` always); `split` (evaluated; never
    val); training of every run: `epochs`, `lr`, `batch_size`, `optimizer`, `device`, `precision` (fp32, or bf16 / fp16
    autocast of the training and the audits on CUDA, fp16 with a grad scaler); `bootstrap` (replicates of every
    audit); the rule: `primary` (the tie-breaking bias measure: worst-group, bias-balanced, ood or follow-rate) and
    `max_full_drop` (points); `keep` ("best", "all" or "none" checkpoints); `jobs`, `grids`, `shard` (above); `progress`;
    `on_run` (on_run(method, seed, reused) is told of every run as it finishes or is found finished). `model` may be the
    path of a checkpoint (loaded safely; a full pickle only with `trust_checkpoint`, and recorded with its SHA-256) and
    `adapter` an adapter spec, as for `scan`.
    """
    from biasaudit.choosing.board import run_leaderboard
    from biasaudit.choosing.runs import CONTROL, LeaderboardSettings, check_settings, default_grids

    settings = LeaderboardSettings(
        methods=(CONTROL, *[m for m in methods if m != CONTROL]),
        seeds=tuple(seeds),
        split=split,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        precision=precision,
        optimizer=optimizer,
        bootstrap=bootstrap,
        primary=primary,
        max_full_drop=max_full_drop,
        keep=keep,
        grids={**default_grids(), **{m: tuple(float(v) for v in g) for m, g in (grids or {}).items()}},
    )
    device = str(device)
    loaded, spec = adapter_of(adapter)
    _check_scan(loaded, settings.scan_config(settings.seeds[0], device), where="ba.leaderboard")  # as ba.fix, before any work
    check_settings(loaded, settings)
    part = _shard_of(shard) if shard is not None else None
    checkpoint = None
    if not isinstance(model, nn.Module):
        from biasaudit.scanning.audit import load_model

        checkpoint, model = Path(model), load_model(Path(model), loaded, trust=trust_checkpoint)
    document = run_leaderboard(
        model,
        loaded,
        settings,
        out=out,
        device=device,
        checkpoint=checkpoint,
        adapter_spec=spec,
        progress=progress,
        on_run=on_run,
        jobs=jobs,
        shard=part,
    )
    if part is not None:
        return LeaderboardResult(
            recommended=None,
            verdict=f"Shard {part.index}/{part.count}: {len(document['runs'])} runs finished; "
            "merge every shard's folder (merge_leaderboard, or biasaudit merge) for the leaderboard.",
            reasons=(),
            json_path=Path(out) / f"shard-{part.index}-of-{part.count}.json",
            html_path=None,
            document=document,
        )
    return _leaderboard_result(document, Path(out))


def _leaderboard_result(document: Mapping[str, Any], out: Path) -> LeaderboardResult:
    recommendation = document["recommendation"]
    return LeaderboardResult(
        recommended=recommendation["method"],
        verdict=document["verdict"],
        reasons=tuple(recommendation["reasons"]),
        json_path=out / "leaderboard.json",
        html_path=out / "leaderboard.html",
        document=document,
    )


def _shard_of(text: Any) -> Shard | None:
    from biasaudit._core.sharding import parse_shard

    try:
        return parse_shard(text) if isinstance(text, str) else None
    except InputError:
        return None


@checked(
    "ba.merge_leaderboard",
    folders=lambda value: None if len(value) >= 1 else "one or more folders",
    out=output_dir("ba.merge_leaderboard", "out"),
)
def merge_leaderboard(folders: Sequence[StrPath], *, out: StrPath) -> LeaderboardResult:
    """The leaderboard of a sharded run (`leaderboard(..., shard="I/N")` per job-array task): reads every shard's
    folder, checks that they are one leaderboard's (same settings, every shard's record, every run finished), copies
    the runs into `out` unless it is a shard's folder, and writes leaderboard.json and leaderboard.html exactly as one
    process would have. Needs no model, adapter or training.

    Parameters: `folders` (the --out folders of every shard, in any order); `out` (where the document goes; may be
    one of the shards' folders).
    """
    from biasaudit.choosing.merging import merge_leaderboard as merge

    return _leaderboard_result(merge(folders, out=out), Path(out))
