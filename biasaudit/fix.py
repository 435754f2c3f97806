"""`biasaudit fix`: audit before, retrain with a method, export a drop-in state dict, audit after with
identical conditions, split and seed, and write the comparison."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from biasaudit.adapter import Adapter
from biasaudit.audit import audit_model, load_model_noting_prefix, stage_audit
from biasaudit.output_paths import check_output_dir
from biasaudit.checkpoint import save_state_atomic
from biasaudit.compare import compare_audits
from biasaudit.errors import InputError
from biasaudit.output_set import OutputSet
from biasaudit.results import read_audit, write_json_atomic
from biasaudit.progress import Progress
from biasaudit.scan import ScanConfig
from biasaudit.training.loop import TrainConfig, load_training_state, scored_as_trained, train
from biasaudit.training.methods import make_method

OUTPUTS = ("model.pt", "before.json", "after.json", "compare.json", "train_log.json")
FILES = OUTPUTS + ("after.html", "compare.html")


def reusable_before(path: str | Path, *, config: ScanConfig, checkpoint_sha: str) -> dict[str, Any]:
    """An existing audit may stand in for `before` only if it audited this checkpoint the same way."""
    audit = read_audit(path)
    recorded = audit["manifest"].get("config", {})
    wanted = json.loads(json.dumps(config.to_dict()))  # as the file holds it: tuples become lists
    # Every setting the audit's numbers depend on (the samples and their replicate weights, what each condition
    # impairs, the groups, the donors, the probes, the k-means clusters); not the device, nor the batch size, which
    # changes no figure a comparison reads.
    different = [k for k in wanted if k not in ("device", "batch_size") and recorded.get(k) != wanted[k]]
    if different or audit["manifest"].get("checkpoint", {}).get("sha256") != checkpoint_sha:
        what = ", ".join(different) or "checkpoint hash"
        raise InputError(f"--before {path} does not match this run ({what} differ); rerun without --before.")
    return audit


def dominant_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose absence flips the most predictions (None when nothing flips or no missing group ran)."""
    return (audit.get("summary", {}).get("missing") or {}).get("dominant")


def carrier_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose bias swap moves predictions most (None when the carrier test did not run or found none)."""
    return (audit.get("summary") or {}).get("carrier")


def run_fix(checkpoint: str | Path, adapter: Adapter, *, method: str, method_options: Mapping[str, Any], train_config: TrainConfig,
            scan_config: ScanConfig, out_dir: str | Path, adapter_spec: str | None = None, trust: bool = False,
            before_path: str | Path | None = None, resume: bool = False, min_group: int = 1, progress: Progress | None = None) -> dict[str, Path]:
    checkpoint = Path(checkpoint)
    target = check_output_dir(out_dir)
    if target.exists() and (target / "model.pt").resolve() == checkpoint.resolve():
        raise InputError(f"--out {target} holds the input checkpoint as model.pt; choose another directory so it is never overwritten.")
    # The directory is locked from here to the last write; every output is staged and moved into place together,
    # model.pt last (biasaudit.output_set): a failing after-audit, a crash or a second run never leaves a new
    # model.pt beside an earlier run's after.json.
    with OutputSet(target, files=FILES) as outputs:
        _fix_into(outputs, checkpoint, adapter, method=method, method_options=method_options, train_config=train_config,
                  scan_config=scan_config, adapter_spec=adapter_spec, trust=trust, before_path=before_path, resume=resume,
                  min_group=min_group, progress=progress)
    out = target
    paths = {"model": out / "model.pt"}
    paths.update({name.split(".")[0]: out / name for name in OUTPUTS[1:]})
    paths["after_html"] = out / "after.html"
    paths["compare_html"] = out / "compare.html"
    return paths


def _fix_into(outputs: OutputSet, checkpoint: Path, adapter: Adapter, *, method: str, method_options: Mapping[str, Any],
              train_config: TrainConfig, scan_config: ScanConfig, adapter_spec: str | None, trust: bool, before_path: str | Path | None,
              resume: bool, min_group: int, progress: Progress | None) -> None:
    from biasaudit.checkpoint import file_sha256

    out = outputs.out
    if resume:  # before the before-audit: a resume with nothing to resume is a mistake, found at once
        load_training_state(out / "state")
    method_options = dict(method_options)
    auto_scale = method == "mmdb" and method_options.get("scale") == "auto"
    if auto_scale:
        method_options["scale"] = 4.0  # placeholder until the grid has chosen; validates the other options now
    if method == "mmdb" and method_options.get("kmeans_k") is None:
        method_options["kmeans_k"] = scan_config.kmeans_k  # discovered bias: the clusters the before audit's JSD used
    fixer = make_method(method, **method_options)
    model, prefix_removed = load_model_noting_prefix(checkpoint, adapter, trust=trust)
    check = getattr(fixer, "check", None)
    if callable(check):
        check(model, adapter)  # a missing hook or a model the method cannot train: before the audit, which can take long
    if before_path is not None:
        before = reusable_before(before_path, config=scan_config, checkpoint_sha=file_sha256(checkpoint))
    else:
        before = audit_model(model, adapter, config=scan_config, checkpoint=checkpoint, adapter_spec=adapter_spec, progress=progress,
                             prefix_removed=prefix_removed)
    if method == "mmdb":
        # Without a bias_key, MMDB clusters the branch of one modality: the one that carries the bias (the carrier
        # test of the before audit) when known, else the one the model leans on (methods.md section 3); a
        # caller who names the modality (option `dominant`) overrides the audit.
        method_options["dominant"] = method_options.get("dominant") or carrier_of(before) or dominant_of(before)
        fixer = make_method(method, **method_options)
    start = time.perf_counter()
    selection = None
    if auto_scale:
        from biasaudit.training.selection import choose_mmdb_scale

        selection = choose_mmdb_scale(model, adapter, options={k: v for k, v in method_options.items() if k != "scale"},
                                      config=train_config, min_group=min_group, progress=progress)
        method_options["scale"] = selection["chosen"]
        fixer = make_method(method, **method_options)
    log = train(model, adapter, fixer, config=train_config, state_dir=out / "state", resume=resume, progress=progress)
    fixer.export(model, adapter)
    train_seconds = time.perf_counter() - start
    not_finite = [name for name, value in model.state_dict().items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if not_finite:
        raise InputError(f"Training diverged: {len(not_finite)} tensors of the fixed model hold NaN or infinite values (first "
                         f"{not_finite[0]}); nothing was written to {out} (lower --lr). The training state is in {out / 'state'}.")
    from biasaudit.report.compare_render import write_compare_html

    staged_model = outputs.staged("model.pt")
    save_state_atomic(model.state_dict(), staged_model)
    outputs.record_binary("model.pt")
    with scored_as_trained(fixer, model, adapter) as scored:
        after = audit_model(model, adapter, config=scan_config, checkpoint=staged_model, adapter_spec=adapter_spec, progress=progress)
    after["manifest"]["checkpoint"]["path"] = str(out / "model.pt")
    if scored is not None:
        after["manifest"]["scored_model"] = scored
    training = {"method": method, "settings": fixer.settings(), "after_audit_scores": scored or "model.pt as written",
                "scale_selection": selection, "config": train_config.to_dict(), "wall_time_s": round(train_seconds, 3),
                "source_checkpoint": str(checkpoint)}
    after["manifest"]["training"] = training
    stage_audit(before, outputs, json_name="before.json", html_name=None)
    stage_audit(after, outputs, json_name="after.json", html_name="after.html")
    train_log = {"run": outputs.stamp(), "training": training, "steps": log}
    comparison = {"run": outputs.stamp(), **compare_audits(before, after)}
    write_json_atomic(train_log, outputs.staged("train_log.json"))
    write_json_atomic(comparison, outputs.staged("compare.json"))
    write_compare_html(comparison, before, after, outputs.staged("compare.html"), train_log=train_log)
    outputs.commit(tuple(name for name in FILES if name != "model.pt") + ("model.pt",))
