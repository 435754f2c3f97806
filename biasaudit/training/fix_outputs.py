"""`biasaudit fix` on a checkpoint: `fix_model`'s results written into one output directory as one set (model.pt
last), so a crash or a failing after-audit never leaves a new model beside an earlier run's audits."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.checkpoint import save_state_atomic
from biasaudit.errors import InputError
from biasaudit.results import write_json_atomic
from biasaudit.scanning.audit import load_model_noting_prefix, stage_audit, stopping_together
from biasaudit.scanning.config import ScanConfig
from biasaudit._core.output_paths import check_output_dir
from biasaudit._core.output_set import OutputSet
from biasaudit._core.progress import Progress
from biasaudit.training.data_parallel import training_processes
from biasaudit.training.feature_cache import CacheSettings
from biasaudit.training.fix import FixOutcome, fix_model
from biasaudit.training.fix_audits import AUTO
from biasaudit.training.fix_checks import check_method, check_plan, check_resumable, refuse_post_hoc_resume, reusable_before
from biasaudit.training.train_config import TrainConfig

OUTPUTS = ("model.pt", "before.json", "after.json", "compare.json", "train_log.json")
FILES = (*OUTPUTS, "after.html", "compare.html")
# The second split's audits and comparison (`also_split`), written only when it runs; a run without them removes an
# earlier run's, so a directory never mixes two runs.
ALSO_FILES = ("also_before.json", "also_after.json", "also_compare.json")


def run_fix(
    checkpoint: str | Path,
    adapter: Adapter,
    *,
    method: str,
    method_options: Mapping[str, Any],
    train_config: TrainConfig,
    scan_config: ScanConfig,
    out_dir: str | Path,
    adapter_spec: str | None = None,
    trust: bool = False,
    before_path: str | Path | None = None,
    resume: bool = False,
    min_group: int = 1,
    progress: Progress | None = None,
    also_split: str | None = AUTO,
    from_scratch: bool = False,
    distributed: bool = False,
    cache: CacheSettings | None = None,
) -> FixFiles:
    """`fix_model` on a checkpoint, its results written into `out_dir` as one set (model.pt last). Returns the paths
    and what they hold, so a caller never reads back the files it just had written. `distributed`: every process of
    the process group runs it (sharded audits, data-parallel training); rank 0 alone locks and writes `out_dir`."""
    checkpoint = Path(checkpoint)
    writes = training_processes(distributed).writes
    with ExitStack() as held:
        # A refusal on any process (rank 0's locked directory, say) stops every one with its sentence.
        with stopping_together(distributed):
            target = check_output_dir(out_dir)
            if target.exists() and (target / "model.pt").resolve() == checkpoint.resolve():
                raise InputError(
                    f"--out {target} holds the input checkpoint as model.pt; choose another directory so it is never overwritten."
                )
            # The directory is locked from here to the last write; every output is staged and moved into place
            # together, model.pt last (biasaudit._core.output_set): a failing after-audit, a crash or a second run
            # never leaves a new model.pt beside an earlier run's after.json.
            outputs = held.enter_context(OutputSet(target, files=FILES, optional=ALSO_FILES)) if writes else None
        model, outcome = _fix_into(
            target,
            outputs,
            checkpoint,
            adapter,
            method=method,
            method_options=method_options,
            train_config=train_config,
            scan_config=scan_config,
            adapter_spec=adapter_spec,
            trust=trust,
            before_path=before_path,
            resume=resume,
            min_group=min_group,
            progress=progress,
            also_split=also_split,
            from_scratch=from_scratch,
            distributed=distributed,
            cache=cache,
        )
    out = target
    paths = {"model": out / "model.pt"}
    paths.update({name.split(".")[0]: out / name for name in OUTPUTS[1:]})
    paths["after_html"] = out / "after.html"
    paths["compare_html"] = out / "compare.html"
    if outcome.also is not None:
        paths.update({name.split(".")[0]: out / name for name in ALSO_FILES})
    return FixFiles(paths=paths, outcome=outcome, model=model)


@dataclass(frozen=True)
class FixFiles:
    """`run_fix`'s result: where each output went (model, before, after, compare, train_log, after_html, compare_html)
    and the outcome those files hold."""

    paths: dict[str, Path]
    outcome: FixOutcome
    model: nn.Module  # the fixed model in memory: the weights model.pt holds (rank 0 writes them)


def _fix_into(
    out: Path,
    outputs: OutputSet | None,
    checkpoint: Path,
    adapter: Adapter,
    *,
    method: str,
    method_options: Mapping[str, Any],
    train_config: TrainConfig,
    scan_config: ScanConfig,
    adapter_spec: str | None,
    trust: bool,
    before_path: str | Path | None,
    resume: bool,
    min_group: int,
    progress: Progress | None,
    also_split: str | None,
    from_scratch: bool,
    distributed: bool,
    cache: CacheSettings | None,
) -> tuple[nn.Module, FixOutcome]:
    from biasaudit._core.files import file_sha256
    from biasaudit.report.compare_render import write_compare_html

    refuse_post_hoc_resume(method, resume)
    if resume:  # before loading anything: a resume with nothing to resume is a mistake, found at once
        world = training_processes(distributed).world
        check_resumable(out / "state", method=method, options=method_options, processes=world)
    check_method(method, method_options)
    check_plan(adapter, method=method, split=scan_config.split, also_split=also_split, from_scratch=from_scratch)
    model, prefix_removed = load_model_noting_prefix(checkpoint, adapter, trust=trust)
    before = (
        reusable_before(before_path, config=scan_config, checkpoint_sha=file_sha256(checkpoint))
        if before_path is not None
        else None
    )

    def saved(fixed: nn.Module) -> Path | None:
        if outputs is None:  # a process other than rank 0 of a data-parallel run: it writes nothing
            return None
        staged_model = outputs.staged("model.pt")
        save_state_atomic(fixed.state_dict(), staged_model)
        outputs.record_binary("model.pt")
        return staged_model

    outcome = fix_model(
        model,
        adapter,
        method=method,
        method_options=method_options,
        train_config=train_config,
        scan_config=scan_config,
        before=before,
        state_dir=out / "state",
        resume=resume,
        min_group=min_group,
        progress=progress,
        checkpoint=checkpoint,
        adapter_spec=adapter_spec,
        prefix_removed=prefix_removed,
        after_checkpoint=saved,
        also_split=also_split,
        from_scratch=from_scratch,
        distributed=distributed,
        cache=cache,
    )
    if outputs is None:
        return model, outcome
    before, after, also = outcome.before, outcome.after, outcome.also
    if also is not None:
        outputs.include(*ALSO_FILES)  # before any stamp: every file of the set names all of them
    for audit in (after, also.after if also is not None else None):
        if audit is not None:
            audit["manifest"]["checkpoint"]["path"] = str(out / "model.pt")
    stage_audit(before, outputs, json_name="before.json", html_name=None)
    stage_audit(after, outputs, json_name="after.json", html_name="after.html")
    train_log = {"run": outputs.stamp(), "training": outcome.training, "steps": outcome.steps}
    comparison = {"run": outputs.stamp(), **outcome.comparison}
    write_json_atomic(train_log, outputs.staged("train_log.json"))
    write_json_atomic(comparison, outputs.staged("compare.json"))
    write_compare_html(comparison, before, after, outputs.staged("compare.html"), train_log=train_log)
    if also is not None:
        stage_audit(also.before, outputs, json_name="also_before.json", html_name=None)
        stage_audit(also.after, outputs, json_name="also_after.json", html_name=None)
        write_json_atomic({"run": outputs.stamp(), **also.comparison}, outputs.staged("also_compare.json"))
    outputs.commit((*(name for name in outputs.files if name != "model.pt"), "model.pt"))
    return model, replace(outcome, comparison=comparison)
