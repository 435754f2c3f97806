"""The runs of a leaderboard: one `fix` per (method, seed), each from the same starting model, written into its own
folder as one set of files, and skipped when a finished run of the same settings is already there.

    OUT/settings.json                    the settings every run was made with (a restart with others is refused)
    OUT/before/seed-S.json               the starting model's audit with scan seed S (shared by the seed's runs)
    OUT/runs/METHOD/seed-S/after.json    the fixed model's audit (split, conditions and scan seed S, as before)
                          also_after.json  its audit of the in-distribution split, when the leaderboard's is OOD
                          train_log.json the training settings and steps, and the leaderboard key of the run
                          compare.json   after against before, for the run's compare page
                          model.pt       the fixed weights (--keep all, or best before pruning)

A run is finished when its three JSON files carry the same run id (biasaudit._core.output_set writes them as one set) and
its train log names this leaderboard's settings, method and seed: a killed leaderboard restarted with the same
command trains only what is missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.scanning.audit import audit_model, stage_audit
from biasaudit.data.checkpoint import save_state_atomic
from biasaudit.errors import InputError
from biasaudit._core.output_set import OutputSet
from biasaudit._core.progress import Progress
from biasaudit.results import write_json_atomic
from biasaudit.scanning.config import ScanConfig
from biasaudit.training.train_config import TrainConfig

CONTROL = "ce"
PRIMARY = ("worst-group", "bias-balanced", "ood", "follow-rate")
KEEP = ("all", "best", "none")
SELECTION_SPLIT = "val"
# Settings no run's figures depend on: a restart may change them (add methods or seeds, keep, the rule's options).
NOT_IN_RUNS = ("methods", "seeds", "keep", "primary", "max_full_drop")
RUN_FILES = ("after.json", "train_log.json", "compare.json")


def default_grids() -> dict[str, tuple[float, ...]]:
    """Each method's option chosen on validation data and its grid (selection.OPTION_GRIDS; dfr chooses its C itself)."""
    from biasaudit.training.selection import OPTION_GRIDS

    return {method: grid for method, (_, grid) in OPTION_GRIDS.items()}


def run_options(settings: LeaderboardSettings, method: str) -> dict[str, Any]:
    """The options a run of `method` is given: its gridded option as "auto" (chosen on val, else a seeded 20% of train)
    over the leaderboard's grid; a one-value grid fixes the option without selection."""
    from biasaudit.training.selection import OPTION_GRIDS

    grid = settings.grids.get(method)
    if grid is None:
        return {}
    option = OPTION_GRIDS[method][0]
    return {option: grid[0]} if len(grid) == 1 else {option: "auto"}


@dataclass(frozen=True)
class LeaderboardSettings:
    """Everything a leaderboard's numbers depend on; `methods` starts with the control."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    split: str = "test"
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adam"
    # The forwards' and the training's precision (fp32, or bf16 / fp16 autocast on CUDA; fp16 with a grad scaler).
    precision: str = "fp32"
    bootstrap: int = 1000
    conditions: str = "missing,carrier"
    primary: str = "worst-group"
    max_full_drop: float = 1.0
    keep: str = "best"
    # Per method, the grid its option is chosen from on val (default_grids); part of every run's identity.
    grids: dict[str, tuple[float, ...]] = field(default_factory=default_grids)
    # What the runs start from and run on; set by run_leaderboard (a restart of another model, adapter, device or
    # version into the same folder must not reuse these runs).
    starting_model: str | None = None  # SHA-256 of the starting model's state dict
    adapter: str | None = None
    device: str = "cpu"
    biasaudit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LeaderboardSettings:
        """The settings as settings.json holds them (lists back to tuples)."""
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        known["methods"], known["seeds"] = tuple(known["methods"]), tuple(known["seeds"])
        if "grids" in known:
            known["grids"] = {method: tuple(grid) for method, grid in known["grids"].items()}
        return cls(**known)

    def fingerprint(self) -> str:
        """What a run must share with the leaderboard to count as one of its runs (keep aside: it changes no figure)."""
        values = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_RUNS}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()

    def train_config(self, seed: int, device: str) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
            device=device,
            optimizer=self.optimizer,
            precision=self.precision,
        )

    def scan_config(self, seed: int, device: str) -> ScanConfig:
        # PCA: a leaderboard reads no embedding plot, and UMAP would cost more than a short training.
        return ScanConfig(
            split=self.split,
            conditions=self.conditions,
            seed=seed,
            device=device,
            bootstrap_replicates=self.bootstrap,
            projection="pca",
            precision=self.precision,
        )


def check_settings(adapter: Adapter, settings: LeaderboardSettings) -> None:
    """Every mistake a leaderboard can be told in one sentence, before any audit or training."""
    from biasaudit.data.batches import check_split
    from biasaudit.training.methods import METHODS
    from biasaudit.training.selection import check_grid

    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise InputError(f"Unknown method {unknown[0]!r} in the leaderboard's methods. Available: {', '.join(METHODS)}.")
    if len(set(settings.methods)) != len(settings.methods):
        raise InputError(f"The leaderboard's methods name one twice ({', '.join(settings.methods)}); name each once.")
    if len(settings.methods) < 2:
        raise InputError(f"A leaderboard compares methods against the control {CONTROL}; name at least one other method.")
    if len(settings.seeds) < 2 or len(set(settings.seeds)) != len(settings.seeds):
        raise InputError(
            f"A leaderboard needs at least two different seeds (given {', '.join(map(str, settings.seeds))}): one "
            "training run says nothing about the spread of a method over trainings (3 or more are better)."
        )
    check_split(adapter, settings.split)
    if settings.split == SELECTION_SPLIT:
        raise InputError(
            f"The evaluation split {settings.split!r} is the split methods choose their options on; evaluate on "
            "another split (e.g. test or ood)."
        )
    if settings.primary not in PRIMARY:
        raise InputError(f"Unknown primary bias measure {settings.primary!r}. Available: {', '.join(PRIMARY)}.")
    if settings.keep not in KEEP:
        raise InputError(f"Unknown keep choice {settings.keep!r}. Available: {', '.join(KEEP)}.")
    for method, grid in settings.grids.items():
        check_grid(method, grid)
    if not settings.max_full_drop >= 0:
        raise InputError(f"max_full_drop is {settings.max_full_drop!r}; expected points of Full accuracy, 0 or more.")


def check_resumed(out: Path, settings: LeaderboardSettings) -> None:
    """A restart into a folder that holds another leaderboard's runs is refused, naming what differs."""
    path = out / "settings.json"
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({type(exc).__name__}); choose another output folder.") from exc
    now = settings.to_dict()
    different = [key for key in now if key not in NOT_IN_RUNS and earlier.get(key) != now[key]]
    if different:
        changes = "; ".join(f"{key} {earlier.get(key)!r} -> {now[key]!r}" for key in different)
        raise InputError(
            f"{out} holds a leaderboard run with other settings ({changes}); rerun with the same settings to "
            "continue it, or choose another output folder."
        )


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values), whatever device it lives on."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{values.dtype}|{tuple(values.shape)}|".encode())
        digest.update(values.view(-1).view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()


def write_settings(out: Path, settings: LeaderboardSettings) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings.to_dict(), out / "settings.json")


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed-{seed}"


def run_key(settings: LeaderboardSettings, method: str, seed: int) -> dict[str, Any]:
    return {"settings": settings.fingerprint(), "method": method, "seed": seed}


def finished_run(
    out: Path, settings: LeaderboardSettings, method: str, seed: int, *, also_split: str | None
) -> dict[str, Any] | None:
    """The audits and train log of a finished run of these settings, or None (missing, partial or other)."""
    folder = run_dir(out, method, seed)
    names = RUN_FILES + (("also_after.json",) if also_split else ())
    try:
        files = {name: json.loads((folder / name).read_text(encoding="utf-8")) for name in names}
    except (OSError, ValueError):
        return None
    ids = {
        files[name].get("manifest", {}).get("run", {}).get("id")
        if name.endswith("after.json")
        else files[name].get("run", {}).get("id")
        for name in names
    }
    if len(ids) != 1 or None in ids or files["train_log.json"].get("leaderboard") != run_key(settings, method, seed):
        return None
    return {
        "after": files["after.json"],
        "also_after": files.get("also_after.json"),
        "training": files["train_log.json"]["training"],
        "steps": files["train_log.json"]["steps"],
        "run_id": ids.pop(),
        "reused": True,
    }


def starting_audit(
    model: nn.Module,
    adapter: Adapter,
    out: Path,
    settings: LeaderboardSettings,
    seed: int,
    *,
    device: str,
    checkpoint: str | Path | None,
    progress: Progress | None,
    split: str | None = None,
) -> dict[str, Any]:
    """The starting model's audit with scan seed `seed` (of the evaluated split, or of `split`: the in-distribution one
    beside an OOD split), read back when a restart finds it (same settings). One per seed, shared by its runs."""
    split = split or settings.split
    name = f"seed-{seed}.json" if split == settings.split else f"seed-{seed}-{split}.json"
    path = out / "before" / name
    key = run_key(settings, "before" if split == settings.split else f"before {split}", seed)
    if path.is_file():
        audit = json.loads(path.read_text(encoding="utf-8"))
        if audit.get("leaderboard") == key:
            return audit
    config = replace(settings.scan_config(seed, device), split=split)
    audit = audit_model(model, adapter, config=config, checkpoint=checkpoint, progress=progress)
    audit["leaderboard"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(audit, path)
    return audit


def run_one(
    model: nn.Module,
    adapter: Adapter,
    out: Path,
    settings: LeaderboardSettings,
    method: str,
    seed: int,
    *,
    before: dict[str, Any],
    device: str,
    progress: Progress | None,
    also_split: str | None,
    also_before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fix a copy of `model` with `method` and `seed`, write the run's files as one set; its after-audit and training."""
    from biasaudit.training.fix import fix_model
    from biasaudit.report.compare_render import write_compare_html

    folder = run_dir(out, method, seed)
    files = (
        RUN_FILES
        + (("also_after.json",) if also_split else ())
        + ("compare.html",)
        + (("model.pt",) if settings.keep != "none" else ())
    )  # model.pt last
    with OutputSet(folder, files=files, option="the leaderboard's run folder") as outputs:
        fixed = copy.deepcopy(model)
        grid = settings.grids.get(method)
        outcome = fix_model(
            fixed,
            adapter,
            method=method,
            method_options=run_options(settings, method),
            option_grid=grid,
            train_config=settings.train_config(seed, device),
            scan_config=settings.scan_config(seed, device),
            before=before,
            progress=progress,
            also_split=also_split,  # a killed run is run again
            also_before=also_before,
        )
        stage_audit(outcome.after, outputs, json_name="after.json", html_name=None)
        also = outcome.also  # the also-split's audits: there exactly when also_split names a split (fix_model)
        if also is not None:
            stage_audit(also.after, outputs, json_name="also_after.json", html_name=None)
        train_log = {
            "run": outputs.stamp(),
            "leaderboard": run_key(settings, method, seed),
            "training": outcome.training,
            "steps": outcome.steps,
        }
        comparison = {"run": outputs.stamp(), **outcome.comparison}
        write_json_atomic(train_log, outputs.staged("train_log.json"))
        write_json_atomic(comparison, outputs.staged("compare.json"))
        write_compare_html(comparison, before, outcome.after, outputs.staged("compare.html"), train_log=train_log)
        if settings.keep != "none":
            save_state_atomic(fixed.state_dict(), outputs.staged("model.pt"))
            outputs.record_binary("model.pt")
        outputs.commit(files)
        run_id = outputs.run_id
    return {
        "after": outcome.after,
        "also_after": also.after if also is not None else None,
        "training": outcome.training,
        "steps": outcome.steps,
        "run_id": run_id,
        "reused": False,
    }
