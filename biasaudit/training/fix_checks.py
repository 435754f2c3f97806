"""What `fix` refuses before any work (nothing loaded, audited or trained yet): an unknown method or option, a
`before` audit taken another way, a resume with nothing to resume, and options that contradict the method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from biasaudit.data.adapter import Adapter
from biasaudit.errors import CheckpointError, InputError
from biasaudit.results import read_audit
from biasaudit.scanning.config import ScanConfig
from biasaudit.training.fix_audits import AUTO
from biasaudit.training.methods import METHODS, make_method, method_class
from biasaudit.training.training_state import check_same_processes, load_training_state


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


def driver_flag(method: str, flag: str) -> bool:
    """A class flag of the method's driver (post_hoc, discovers_bias); False for an unknown method, which make_method
    refuses in its own words."""
    return method in METHODS and bool(getattr(method_class(method), flag, False))


def is_post_hoc(method: str) -> bool:
    """A method that refits a trained model without a training loop (DFR)."""
    return driver_flag(method, "post_hoc")


def refuse_post_hoc_resume(method: str, resume: bool) -> None:
    if resume and is_post_hoc(method):
        raise InputError(
            f"--resume continues an interrupted training, but {method} refits post hoc without training; run without --resume."
        )


def check_resumable(
    state_dir: Path, *, method: str, options: Mapping[str, Any], grid: Sequence[float] | None = None, processes: int = 1
) -> None:
    """A resume with nothing to resume, or of a state written by another number of `processes`, is a mistake, found
    before anything is loaded or audited."""
    from biasaudit.training.selection import OPTION_GRIDS, auto_option, candidate_state_dir

    option = auto_option(method, options)
    if option is not None:  # each candidate keeps its own state (selection.py)
        if not any(
            (candidate_state_dir(state_dir, option, value) / "last.pt").is_file() for value in (grid or OPTION_GRIDS[method][1])
        ):
            raise CheckpointError(
                f"--resume found no training state of any {option} auto candidate under {state_dir}; run without --resume first."
            )
        return
    check_same_processes(load_training_state(state_dir).get("run"), processes)


def check_plan(adapter: Adapter, *, method: str, split: str, also_split: str | None, from_scratch: bool) -> None:
    """The options that shape the run as a whole, checked before any work."""
    from biasaudit.data.batches import check_split

    if also_split not in (None, AUTO):
        check_split(adapter, also_split)
        if also_split == split:
            raise InputError(
                f"--also-split {also_split} is the split both audits already take (--split); name another split, or none."
            )
    if from_scratch and is_post_hoc(method):
        raise InputError(
            f"--from-scratch trains from build_model()'s initial weights, but {method} refits a trained model's final "
            "layer without training; run it without --from-scratch."
        )
