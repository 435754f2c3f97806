"""`ba.demo`: the whole story offline, on the bundled digits-captions data."""

from __future__ import annotations

from biasaudit._core.arguments import at_least, checked, not_empty, output_dir
from biasaudit._core.progress import Progress
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit

DEMO_ADAPTER = "biasaudit.datasets.demo_model:DigitsCaptionsAdapter"


@checked("ba.demo", out=output_dir("ba.demo", "out"), seed=at_least(0), split=not_empty)
def demo(*, out: StrPath, seed: int = 0, split: str = "ood", progress: Progress | None = None) -> Audit:
    """Train the bundled digits-captions model with plain cross-entropy, then audit it; `biasaudit demo`. Writes
    model.pt (the trained state dict), audit.json and audit.html into `out` as one set and returns the audit.

    Parameters: `out` (the folder); `seed` (the data split, training and scan); `split` ("ood": the colour word
    independent of the digit, or "test": the same bias as training); `progress` (a callback).
    """
    from pathlib import Path

    from biasaudit._core.output_set import OutputSet
    from biasaudit.data.checkpoint import save_state_atomic
    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
    from biasaudit.scanning.audit import AUDIT_FILES, audit_checkpoint, stage_audit, stamped
    from biasaudit.scanning.config import ScanConfig

    from biasaudit.data.batches import check_split

    adapter = DigitsCaptionsAdapter(seed=seed)
    check_split(adapter, split)  # before a minute of training
    with OutputSet(out, files=("model.pt", *AUDIT_FILES), option="ba.demo's 'out'") as outputs:
        model = train_baseline(adapter, seed=seed, progress=progress)
        save_state_atomic(model.state_dict(), outputs.staged("model.pt"))
        outputs.record_binary("model.pt")
        # The demo's ood split has ~20 mistakes per colour, under the default min_wrong of 30 that guards the
        # unweighted JSD mean on real datasets; 10 keeps every colour in the mean.
        config = ScanConfig(split=split, seed=seed, min_wrong=10)
        document = audit_checkpoint(
            outputs.staged("model.pt"), adapter, config=config, adapter_spec=DEMO_ADAPTER, progress=progress
        )
        document["manifest"]["checkpoint"]["path"] = str(Path(out) / "model.pt")
        document = stamped(document, outputs)
        stage_audit(document, outputs)
        outputs.commit(("audit.html", "audit.json", "model.pt"))
    return Audit.from_dict(document)
