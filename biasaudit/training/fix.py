"""`biasaudit fix`: audit before, retrain with a method, export a drop-in state dict, audit after with
identical conditions, split and seed, and write the comparison."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import shares_reads
from biasaudit.scanning.audit import audit_model, load_model_noting_prefix, stage_audit
from biasaudit._core.output_paths import check_output_dir
from biasaudit.data.checkpoint import save_state_atomic
from biasaudit.comparing import compare_audits
from biasaudit.errors import CheckpointError, InputError
from biasaudit._core.output_set import OutputSet
from biasaudit.results import read_audit, write_json_atomic
from biasaudit._core.progress import Progress
from biasaudit.scanning.engine import ScanConfig
from biasaudit.training.diagnosis import TreatmentWarning, diagnosis, treatment_warnings
from biasaudit.training.loop import TrainConfig, load_training_state, scored_as_trained, train
from biasaudit.training.methods import METHODS, make_method
from biasaudit.verdict.words import change, ci_points, pts

log = logging.getLogger(__name__)

OUTPUTS = ("model.pt", "before.json", "after.json", "compare.json", "train_log.json")
FILES = OUTPUTS + ("after.html", "compare.html")
# The second split's audits and comparison (`also_split`), written only when it runs; a run without them removes an
# earlier run's, so a directory never mixes two runs.
ALSO_FILES = ("also_before.json", "also_after.json", "also_compare.json")
AUTO = "auto"


def check_before(audit: Mapping[str, Any], *, config: ScanConfig, checkpoint_sha: str | None, named: str, remedy: str) -> None:
    """An existing audit may stand in for `before` only if it audited this model the same way (InputError otherwise,
    naming it as `named`): same generator, same settings, and (when given) the same checkpoint."""
    from biasaudit.comparing import generator_of
    from biasaudit._core.randomness import GENERATOR

    drawn = generator_of(audit)
    if dict(drawn) != GENERATOR:
        raise InputError(f"{named} was drawn with another random generator ({drawn['name']} v{drawn['version']}); {remedy}.")
    recorded = audit["manifest"].get("config", {})
    wanted = json.loads(json.dumps(config.to_dict()))  # as the file holds it: tuples become lists
    defaults = json.loads(json.dumps(ScanConfig().to_dict()))  # a setting an older audit does not record had its default,
    defaults["favoured_fraction"] = None  # but for the favoured-class rule: older audits read the single most frequent class
    # Every setting the audit's numbers depend on (the samples and their replicate weights, what each condition
    # impairs, the groups, the donors, the probes, the k-means clusters); not the device, nor the batch size, which
    # changes no figure a comparison reads.
    different = [k for k in wanted if k not in ("device", "batch_size") and recorded.get(k, defaults.get(k)) != wanted[k]]
    if checkpoint_sha is not None and audit["manifest"].get("checkpoint", {}).get("sha256") != checkpoint_sha:
        different.append("checkpoint hash")
    if different:
        raise InputError(f"{named} does not match this run ({', '.join(different)} differ); {remedy}.")


def reusable_before(path: str | Path, *, config: ScanConfig, checkpoint_sha: str) -> dict[str, Any]:
    audit = read_audit(path)
    check_before(audit, config=config, checkpoint_sha=checkpoint_sha, named=f"--before {path}", remedy="rerun without --before")
    return audit


def check_method(method: str, options: Mapping[str, Any]) -> None:
    """The method exists and takes these options (an "auto" one too): checked before anything is loaded or audited."""
    from biasaudit.training.selection import placeholder_options

    if method not in METHODS:
        make_method(method)  # the unknown-method sentence
    make_method(method, **placeholder_options(method, options))


def is_post_hoc(method: str) -> bool:
    """A method that refits a trained model without a training loop (DFR)."""
    return bool(getattr(METHODS.get(method), "post_hoc", False))


def refuse_post_hoc_resume(method: str, resume: bool) -> None:
    if resume and is_post_hoc(method):
        raise InputError(f"--resume continues an interrupted training, but {method} refits post hoc without training; run without --resume.")


def check_resumable(state_dir: Path, *, method: str, options: Mapping[str, Any], grid: Sequence[float] | None = None) -> None:
    """A resume with nothing to resume is a mistake, found before anything is loaded or audited."""
    from biasaudit.training.selection import OPTION_GRIDS, auto_option, candidate_state_dir

    option = auto_option(method, options)
    if option is not None:  # each candidate keeps its own state (selection.py)
        if not any((candidate_state_dir(state_dir, option, value) / "last.pt").is_file()
                   for value in (grid or OPTION_GRIDS[method][1])):
            raise CheckpointError(f"--resume found no training state of any {option} auto candidate under {state_dir}; run without "
                                  "--resume first.")
        return
    load_training_state(state_dir)


def check_plan(adapter: Adapter, *, method: str, split: str, also_split: str | None, from_scratch: bool) -> None:
    """The options that shape the run as a whole, checked before any work."""
    from biasaudit.data.batches import check_split

    if also_split not in (None, AUTO):
        check_split(adapter, also_split)
        if also_split == split:
            raise InputError(f"--also-split {also_split} is the split both audits already take (--split); name another split, or none.")
    if from_scratch:
        if is_post_hoc(method):
            raise InputError(f"--from-scratch trains from build_model()'s initial weights, but {method} refits a trained model's final "
                             "layer without training; run it without --from-scratch.")


def resolved_also_split(also_split: str | None, before: Mapping[str, Any], adapter: Adapter, *, split: str) -> str | None:
    """auto: the in-distribution `test` split when the audited split is out of distribution (the before-audit's groups
    find its bias distribution shifted from train's) and the adapter has one; else none."""
    if also_split != AUTO:
        return also_split
    shifted = bool((((before.get("groups") or {}).get("shift")) or {}).get("ood"))
    return "test" if shifted and split != "test" and "test" in adapter.splits else None


def reinitialise(model: nn.Module, adapter: Adapter, *, seed: int) -> None:
    """--from-scratch: the model's weights (and buffers) become those of a fresh build_model(), drawn with the run
    seed under generators of its own: the papers' protocol, training from initialisation rather than fine-tuning."""
    from biasaudit.training import rng_states

    with rng_states.seeded_run(seed):
        fresh = adapter.build_model()
    try:
        model.load_state_dict(fresh.state_dict())
    except RuntimeError as exc:
        raise InputError(f"--from-scratch: the adapter's build_model() builds another architecture than the checkpoint's "
                         f"({str(exc).splitlines()[0]}).") from exc


def dominant_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose absence flips the most predictions (None when nothing flips or no missing group ran)."""
    return (audit.get("summary", {}).get("missing") or {}).get("dominant")


def carrier_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose bias swap moves predictions most (None when the carrier test did not run or found none)."""
    return (audit.get("summary") or {}).get("carrier")


def run_fix(checkpoint: str | Path, adapter: Adapter, *, method: str, method_options: Mapping[str, Any], train_config: TrainConfig,
            scan_config: ScanConfig, out_dir: str | Path, adapter_spec: str | None = None, trust: bool = False,
            before_path: str | Path | None = None, resume: bool = False, min_group: int = 1, progress: Progress | None = None,
            also_split: str | None = AUTO, from_scratch: bool = False) -> FixFiles:
    """`fix_model` on a checkpoint, its results written into `out_dir` as one set (model.pt last). Returns the paths
    and what they hold, so a caller never reads back the files it just had written."""
    checkpoint = Path(checkpoint)
    target = check_output_dir(out_dir)
    if target.exists() and (target / "model.pt").resolve() == checkpoint.resolve():
        raise InputError(f"--out {target} holds the input checkpoint as model.pt; choose another directory so it is never overwritten.")
    # The directory is locked from here to the last write; every output is staged and moved into place together,
    # model.pt last (biasaudit._core.output_set): a failing after-audit, a crash or a second run never leaves a new
    # model.pt beside an earlier run's after.json.
    with OutputSet(target, files=FILES, optional=ALSO_FILES) as outputs:
        outcome = _fix_into(outputs, checkpoint, adapter, method=method, method_options=method_options, train_config=train_config,
                  scan_config=scan_config, adapter_spec=adapter_spec, trust=trust, before_path=before_path, resume=resume,
                  min_group=min_group, progress=progress, also_split=also_split, from_scratch=from_scratch)
    out = target
    paths = {"model": out / "model.pt"}
    paths.update({name.split(".")[0]: out / name for name in OUTPUTS[1:]})
    paths["after_html"] = out / "after.html"
    paths["compare_html"] = out / "compare.html"
    if outcome.also is not None:
        paths.update({name.split(".")[0]: out / name for name in ALSO_FILES})
    return FixFiles(paths=paths, outcome=outcome)


@dataclass(frozen=True)
class FixOutcome:
    """What a fix produced in memory (the model trained in place); `fix_model`'s one return type."""

    before: dict[str, Any]
    after: dict[str, Any]
    training: dict[str, Any]
    steps: list[dict[str, Any]]
    comparison: dict[str, Any]
    also: AlsoSplit | None = None


@dataclass(frozen=True)
class AlsoSplit:
    """The second split's before and after audits and their comparison (`also_split`), e.g. the in-distribution
    test split beside an OOD one: a fix that raises OOD accuracy may cost accuracy in distribution."""

    split: str
    before: dict[str, Any]
    after: dict[str, Any]
    comparison: dict[str, Any]


@dataclass(frozen=True)
class FixFiles:
    """`run_fix`'s result: where each output went (model, before, after, compare, train_log, after_html, compare_html)
    and the outcome those files hold."""

    paths: dict[str, Path]
    outcome: FixOutcome


@shares_reads  # the audits' JSD priors and MMDB's margins read train's labels once
def fix_model(model: nn.Module, adapter: Adapter, *, method: str, method_options: Mapping[str, Any], train_config: TrainConfig,
              scan_config: ScanConfig, before: dict[str, Any] | None = None, state_dir: str | Path | None = None, resume: bool = False,
              min_group: int = 1, progress: Progress | None = None, checkpoint: str | Path | None = None, adapter_spec: str | None = None,
              prefix_removed: str | None = None, after_checkpoint: Callable[[nn.Module], Path | None] | None = None,
              also_split: str | None = AUTO, from_scratch: bool = False, also_before: dict[str, Any] | None = None,
              option_grid: Sequence[float] | None = None) -> FixOutcome:
    """Audit (unless `before` is given), retrain `model` in place with `method`, audit again with the same settings and
    compare. Writes nothing but the training state in `state_dir` (when given). `after_checkpoint(model)` may save the
    fixed weights and return their path, which the after audit's manifest then names and hashes.

    `also_split`: a second split audited before and after in the same way (auto: `test` when the audited split is out
    of distribution); its comparison is in the outcome and its Full accuracy change in the verdict (`also_before`
    reuses an audit of that split taken the same way, as `before` does for the main one). `from_scratch`:
    train from build_model()'s initial weights (seeded by the run seed) instead of fine-tuning the model; the
    before-audit is then the starting checkpoint's, and the comparison says so. `option_grid`: the values an "auto"
    option is chosen from (default: selection.OPTION_GRIDS)."""
    if resume and state_dir is None:
        raise InputError("resume needs the state_dir of the run to continue.")
    post_hoc = is_post_hoc(method)
    refuse_post_hoc_resume(method, resume)
    check_plan(adapter, method=method, split=scan_config.split, also_split=also_split, from_scratch=from_scratch)
    if resume:  # before the before-audit: a resume with nothing to resume is a mistake, found at once
        check_resumable(Path(state_dir), method=method, options=method_options, grid=option_grid)
    from biasaudit.training.selection import auto_option, choose_option, placeholder_options, selection_plan

    auto = auto_option(method, method_options)
    method_options = placeholder_options(method, method_options)
    discovers_bias = method == "mmdb" or bool(getattr(METHODS.get(method), "discovers_bias", False))
    if discovers_bias and method_options.get("kmeans_k") is None:
        method_options["kmeans_k"] = scan_config.kmeans_k  # discovered bias: the clusters the before audit's JSD used
    fixer = make_method(method, **method_options)
    if getattr(fixer, "validates", False) and "val" not in adapter.splits and train_config.holdout == 0:
        # A method that validates during training (D&R's purity gap) needs samples it never trains on: without a val
        # split, the seeded held-out part of train that an auto option uses (selection.selection_plan).
        train_config = selection_plan(adapter, train_config)[0]
    check = getattr(fixer, "check", None)
    if callable(check):
        check(model, adapter)  # a missing hook or a model the method cannot train: before the audit, which can take long
    check_config = getattr(fixer, "check_config", None)
    if callable(check_config) and not post_hoc:
        check_config(train_config)  # e.g. JTT's two stages need the epochs for both
    if from_scratch and discovers_bias and (method_options.get("bias") == "kmeans" or not getattr(adapter, "bias_key", None)):
        # The bias values would be k-means clusters of the re-initialised, random branch features.
        raise InputError(f"--from-scratch with {method}'s discovered bias values (k-means of a branch's features; the adapter has "
                         "no bias_key or --bias kmeans) would cluster a random model's features; give the adapter a bias_key "
                         "or fine-tune without --from-scratch.")
    audit_as = dict(adapter_spec=adapter_spec, progress=progress)
    if before is None:
        before = audit_model(model, adapter, config=scan_config, checkpoint=checkpoint, prefix_removed=prefix_removed, **audit_as)
    also = resolved_also_split(also_split, before, adapter, split=scan_config.split)
    also_config = replace(scan_config, split=also) if also is not None else None
    if also_config is None:
        also_before = None
    elif also_before is None or also_before["manifest"]["config"].get("split") != also:
        also_before = audit_model(model, adapter, config=also_config, checkpoint=checkpoint, prefix_removed=prefix_removed, **audit_as)
    found = treatment_warnings(method, before)
    for sentence in found:  # before training: the before-audit already shows it (training/diagnosis.py)
        warnings.warn(sentence, TreatmentWarning, stacklevel=2)
    if discovers_bias:
        # Without a bias_key, MMDB (Group DRO, DFR) clusters the branch of one modality: the one that carries the bias (the carrier
        # test of the before audit) when known, else the one the model leans on (methods.md section 3); a
        # caller who names the modality (option `dominant`) overrides the audit.
        method_options["dominant"] = method_options.get("dominant") or carrier_of(before) or dominant_of(before)
        fixer = make_method(method, **method_options)
    if from_scratch:
        reinitialise(model, adapter, seed=train_config.seed)
    start = time.perf_counter()
    selection = None
    trained = model
    if auto is not None:
        # The winning candidate is kept (it is the training of the chosen value from the same start): no extra run.
        choice = choose_option(model, adapter, method=method, options=method_options, config=train_config, grid=option_grid,
                               min_group=min_group, progress=progress, state_dir=state_dir, resume=resume)
        selection, trained, fixer, steps = choice.selection, choice.model, choice.method, choice.steps
        method_options[auto] = selection["chosen"]
        train_config = selection_plan(adapter, train_config)[0]  # the kept candidate's: without val, train less its held-out part
    elif post_hoc:
        # DFR: the one method that repairs a checkpoint without retraining; no step to log (its figures are its settings).
        fixer.refit(model, adapter, config=train_config)
        steps: list[dict[str, Any]] = []
    else:
        steps = train(model, adapter, fixer, config=train_config, state_dir=state_dir, resume=resume, progress=progress)
    fixer.export(trained, adapter)
    train_seconds = time.perf_counter() - start
    log.info("%s %s in %.1f s", method, "refitted" if post_hoc else f"trained {train_config.epochs} epochs", train_seconds)
    not_finite = [name for name, value in trained.state_dict().items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if not_finite:
        kept = f"; the training state is in {state_dir}" if state_dir is not None else ""
        raise InputError(f"Training diverged: {len(not_finite)} tensors of the fixed model hold NaN or infinite values (first "
                         f"{not_finite[0]}); no results were written (lower the learning rate){kept}.")
    if trained is not model:
        model.load_state_dict(trained.state_dict())  # the caller's model is the one fixed, in place
    saved = after_checkpoint(trained) if after_checkpoint is not None else None
    with scored_as_trained(fixer, trained, adapter) as scored:
        after = audit_model(trained, adapter, config=scan_config, checkpoint=saved, **audit_as)
        also_after = audit_model(trained, adapter, config=also_config, checkpoint=saved, **audit_as) if also_config is not None else None
    for audit in (after, also_after):
        if scored is not None and audit is not None:
            audit["manifest"]["scored_model"] = scored
    training = {"method": method, "settings": fixer.settings(), "after_audit_scores": scored or "model.pt as written",
                "option_selection": selection, "config": train_config.to_dict(), "wall_time_s": round(train_seconds, 3),
                "source_checkpoint": str(checkpoint) if checkpoint is not None else None,
                "start": FROM_SCRATCH if from_scratch else "the checkpoint's weights (fine-tuning)",
                "diagnosis": {**diagnosis(before), "warnings": found}}
    if post_hoc:
        training["loop"] = (f"none: {method} refits the final linear layer post hoc; the training options (epochs, lr, batch size, "
                            "optimizer, weight decay, momentum) were not used")
    after["manifest"]["training"] = training
    comparison = compare_audits(before, after)
    comparison["verdict_sentences"] = [*comparison["verdict_sentences"], ONE_RUN]
    also_outcome = None
    if also_config is not None:
        also_after["manifest"]["training"] = training
        also_comparison = compare_audits(also_before, also_after)
        also_comparison["verdict_sentences"] = [*also_comparison["verdict_sentences"], ONE_RUN]
        if from_scratch:
            also_comparison = from_scratch_labelled(also_comparison)
        also_outcome = AlsoSplit(split=also, before=also_before, after=also_after, comparison=also_comparison)
        comparison = with_also_split(comparison, also_outcome.comparison)
    if from_scratch:
        comparison = from_scratch_labelled(comparison)
    return FixOutcome(before=before, after=after, training=training, steps=steps, comparison=comparison, also=also_outcome)


# Seeds are not optional: the do-nothing ce control fine-tuned with seeds 0, 1, 2 gave three confident, opposite
# verdicts on one model. A fix's intervals are those of the audited samples only.
ONE_RUN = ("These intervals cover the audited samples, not training randomness: they are about this one trained model. To "
           "choose a method, compare methods over seeds against the ce control with `biasaudit leaderboard`.")
FROM_SCRATCH = "build_model()'s initial weights drawn with the run seed (--from-scratch); the before-audit is the checkpoint's"


def with_also_split(comparison: dict[str, Any], also: Mapping[str, Any]) -> dict[str, Any]:
    """The main comparison with the second split's: its section (`also_split`), its Full accuracy change in the verdict
    line, and its verdict as a sentence."""
    full = also["summary"]["full"]
    line = (f"on {also['split']}: Full accuracy {pts(full['before'])} -> {pts(full['after'])} "
            f"(change {change(full['delta'])}{ci_points(full.get('delta_ci'))})")
    return {**comparison, "verdict": f"{comparison['verdict']} Also {line}.",
            "verdict_sentences": [*comparison["verdict_sentences"], f"Also audited {line}; there: {also['verdict']}"],
            "also_split": {"split": also["split"], "full": full, "verdict": also["verdict"],
                           "verdict_sentences": also["verdict_sentences"], "bias": also["bias"]}}


def from_scratch_labelled(comparison: dict[str, Any]) -> dict[str, Any]:
    """A from-scratch run's comparison: before is the starting checkpoint, not the weights this training started from."""
    said = ("Before is the checkpoint given to fix, not this training's start: the fixed model was trained from build_model()'s "
            "initial weights (--from-scratch), so the changes compare two trainings, not one model before and after a fix.")
    return {**comparison, "before_is": "the starting checkpoint (the fixed model was trained from scratch)",
            "verdict": f"from scratch, against the starting checkpoint: {comparison['verdict']}",
            "verdict_sentences": [said, *comparison["verdict_sentences"]]}


def _fix_into(outputs: OutputSet, checkpoint: Path, adapter: Adapter, *, method: str, method_options: Mapping[str, Any],
              train_config: TrainConfig, scan_config: ScanConfig, adapter_spec: str | None, trust: bool, before_path: str | Path | None,
              resume: bool, min_group: int, progress: Progress | None, also_split: str | None, from_scratch: bool) -> FixOutcome:
    from biasaudit._core.files import file_sha256
    from biasaudit.report.compare_render import write_compare_html

    out = outputs.out
    refuse_post_hoc_resume(method, resume)
    if resume:  # before loading anything: a resume with nothing to resume is a mistake, found at once
        check_resumable(out / "state", method=method, options=method_options)
    check_method(method, method_options)
    check_plan(adapter, method=method, split=scan_config.split, also_split=also_split, from_scratch=from_scratch)
    model, prefix_removed = load_model_noting_prefix(checkpoint, adapter, trust=trust)
    before = reusable_before(before_path, config=scan_config, checkpoint_sha=file_sha256(checkpoint)) if before_path is not None else None

    def saved(fixed: nn.Module) -> Path:
        staged_model = outputs.staged("model.pt")
        save_state_atomic(fixed.state_dict(), staged_model)
        outputs.record_binary("model.pt")
        return staged_model

    outcome = fix_model(model, adapter, method=method, method_options=method_options, train_config=train_config, scan_config=scan_config,
                        before=before, state_dir=out / "state", resume=resume, min_group=min_group, progress=progress,
                        checkpoint=checkpoint, adapter_spec=adapter_spec, prefix_removed=prefix_removed, after_checkpoint=saved,
                        also_split=also_split, from_scratch=from_scratch)
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
    outputs.commit(tuple(name for name in outputs.files if name != "model.pt") + ("model.pt",))
    return replace(outcome, comparison=comparison)
