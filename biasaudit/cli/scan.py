"""`biasaudit scan`: audit a checkpoint."""

from __future__ import annotations

import inspect
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from biasaudit.cli.app import app
from biasaudit.cli.choices import GroupBy, Precision, Projection, plain
from biasaudit.api._names import CONDITION_GROUPS as GROUPS
from biasaudit.api._names import DEFAULT_DIAGNOSTICS, DIAGNOSTICS
from biasaudit.cli.console import ADAPTER_HELP, err, explicit_options, handled, out, print_verdict, progress_bars, summary_table
from biasaudit.cli.naming import named_as
from biasaudit.cli.options import parse_mute, parse_unimodal
from biasaudit.cli.tracker_options import Experiment, Log, RunName, TrackingUri, logged, tracking, wanted

if TYPE_CHECKING:
    from biasaudit import Tracker

# From the registry parse_conditions reads, so that --help lists every group and diagnostic the scan accepts.
CONDITIONS_HELP = (
    f"Comma list. Condition groups: {', '.join(GROUPS)}. Diagnostics that need forwards of their "
    f"own: {', '.join(DIAGNOSTICS)}. default = {', '.join(GROUPS + DEFAULT_DIAGNOSTICS)}. One group for one modality: "
    "GROUP:MODALITY (e.g. missing:image). Any impairment: MODALITY=IMPAIRMENT[:SEVERITY] (e.g. image=gaussian:0.2)."
)


@app.command()
def scan(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="State dict of the model (torch.save(model.state_dict(), path))."),
    adapter: str | None = typer.Option(
        None, "--adapter", "-a", help=ADAPTER_HELP + " Required here or in the config file.", rich_help_panel="Model and data"
    ),
    split: str = typer.Option("test", help="Which split of the adapter's data to evaluate.", rich_help_panel="Model and data"),
    conditions: str = typer.Option("default", help=CONDITIONS_HELP, rich_help_panel="Conditions"),
    out_dir: Path = typer.Option(
        Path("biasaudit-out"), "--out", "-o", help="Directory for audit.json and audit.html.", rich_help_panel="Output"
    ),
    seed: int = typer.Option(
        0, help="Seed of every random choice (impairments, bootstrap, sampling, projections).", rich_help_panel="Statistics"
    ),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda.", rich_help_panel="Model and data"),
    batch_size: int = typer.Option(256, min=1, help="Samples per batch.", rich_help_panel="Model and data"),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="Allow full pickles (runs code from the file: only for checkpoints you trust).",
        rich_help_panel="Model and data",
    ),
    projection: Projection = typer.Option("umap", help="2-D projection of the embeddings.", rich_help_panel="Diagnostics"),
    bootstrap: int = typer.Option(1000, min=10, help="Bootstrap replicates for the 95% intervals.", rich_help_panel="Statistics"),
    gradient_batches: int = typer.Option(
        8, min=1, help="Batches sampled for the gradient-conflict histogram.", rich_help_panel="Diagnostics"
    ),
    min_wrong: int = typer.Option(
        30,
        min=1,
        help="Minimum wrong predictions under a bias value to enter the unweighted JSD mean.",
        rich_help_panel="Statistics",
    ),
    kmeans_k: int = typer.Option(
        16,
        "--kmeans-k",
        min=2,
        help="Clusters of the k-means bias discovery, used when the data has no bias value.",
        rich_help_panel="Statistics",
    ),
    embedding_points: int = typer.Option(
        5000,
        "--embedding-points",
        min=10,
        help="Most points kept for the embedding plots (seeded sample).",
        rich_help_panel="Diagnostics",
    ),
    mute: list[str] = typer.Option(
        [],
        "--mute",
        help="What 'missing' means for a modality, e.g. image=mean (mid-grey) instead of the black image; repeatable.",
        rich_help_panel="Conditions",
    ),
    mute_compare: bool = typer.Option(
        False,
        "--mute-compare",
        help="Also measure each modality's other muting choice (image: black and mid-grey) "
        "and say which modality each makes dominant.",
        rich_help_panel="Conditions",
    ),
    min_group: int = typer.Option(
        10,
        "--min-group",
        min=1,
        help="Smallest (label, bias value) group that enters worst-group and bias-balanced accuracy.",
        rich_help_panel="Statistics",
    ),
    group_by: GroupBy = typer.Option(
        "auto",
        "--group-by",
        help="Groups: bias = (label, bias value); alignment = (label, bias-aligned or conflicting); "
        "auto = bias unless its groups are too small to count half the samples.",
        rich_help_panel="Statistics",
    ),
    favoured_fraction: float = typer.Option(
        0.5,
        "--favoured-fraction",
        min=0.0,
        max=1.0,
        help="A bias value favours every class with a training "
        "share of at least this fraction of its largest share (and above 1/C); aligned samples have a favoured label.",
        rich_help_panel="Statistics",
    ),
    draws: int = typer.Option(
        1,
        "--draws",
        min=1,
        help="Independent draws of every random condition (noise, ratio subsets, probe samples): "
        "figures are their means and intervals resample draws and samples; draw d uses seed + d.",
        rich_help_panel="Statistics",
    ),
    ceiling_per_class: int = typer.Option(
        50,
        "--ceiling-per-class",
        min=1,
        help="Samples per class the ceilings' linear probes are fitted on "
        "(seeded; from val when the adapter has it, else train).",
        rich_help_panel="Diagnostics",
    ),
    unimodal: list[str] = typer.Option(
        [],
        "--unimodal",
        help="MODALITY=CHECKPOINT: a model of the same architecture trained on that modality alone, "
        "whose accuracy (other modalities muted) is the modality's ceiling instead of a linear probe; repeatable.",
        rich_help_panel="Conditions",
    ),
    precision: Precision = typer.Option(
        "fp32",
        "--precision",
        help="Forward precision: fp32, or bf16 / fp16 autocast (CUDA only).",
        rich_help_panel="Model and data",
    ),
    shard_spec: str | None = typer.Option(
        None,
        "--shard",
        help="I/N: evaluate only shard I of N (the batches I, I+N, I+2N, ...; I counts from 0) "
        "and write its part, scan-part-I-of-N.pt, into --out; `biasaudit merge` turns the N parts into the audit. "
        "For job arrays; under torchrun the processes split the scan themselves.",
        rich_help_panel="Scale",
    ),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="Settings file (default: biasaudit.toml, else the tool.biasaudit table of pyproject.toml).",
        rich_help_panel="Model and data",
    ),
    log: Log = None,
    experiment: Experiment = None,
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Audit a checkpoint: bias measures (carrier test, worst-group accuracy, JSD), reliance (accuracy under muted and noisy
    modalities, Gap, flip rates, ceilings), calibration, embeddings, gradient conflict."""
    import biasaudit as ba
    from biasaudit.cli.config_file import SCAN_KEYS, TRACKER_KEYS, load_settings, resolve
    from biasaudit.cli.torchrun import scan_settings, torchrun_rank, under_torchrun
    from biasaudit.errors import InputError

    with handled(), ExitStack() as held:
        settings = load_settings(config_file)
        given = {name: plain(value) for name, value in ctx.params.items() if name in SCAN_KEYS}
        v, sources = resolve(given, explicit_options(ctx), settings, "scan")
        if shard_spec is not None and under_torchrun():  # every process refuses alone, before any waits for the others
            raise InputError(
                "--shard splits a scan into parts for a job array; under torchrun the processes already split it. "
                "Use one or the other."
            )
        flags = {param.name: param.opts[0] for param in ctx.command.params}
        # ba.scan's keywords by the flags that set them (and where each value came from, for a settings file's key).
        spelling = {
            **flags,
            "model": "CHECKPOINT",
            "unimodal_models": "--unimodal",
            "out": "--out",
            "shard": "--shard",
            "trust_checkpoint": "--trust-checkpoint",
            "provenance": "--config",
        }
        keyword_sources = {**sources, "unimodal_models": sources.get("unimodal", "default")}
        if v["adapter"] is None:
            raise InputError("--adapter is required: give it on the command line or as adapter in the config file's scan table.")
        with named_as(spelling, keyword_sources):
            mute_pairs = parse_mute(v["mute"])
            unimodal_models = parse_unimodal(v["unimodal"])
        keywords = dict(
            split=v["split"],
            conditions=v["conditions"],
            batch_size=v["batch_size"],
            seed=v["seed"],
            device=v["device"],
            bootstrap=v["bootstrap"],
            projection=v["projection"],
            gradient_batches=v["gradient_batches"],
            min_wrong=v["min_wrong"],
            kmeans_k=v["kmeans_k"],
            embedding_points=v["embedding_points"],
            mute=mute_pairs,
            mute_compare=v["mute_compare"],
            min_group=v["min_group"],
            group_by=v["group_by"],
            ceiling_per_class=v["ceiling_per_class"],
            precision=v["precision"],
            favoured_fraction=v["favoured_fraction"],
            draws=v["draws"],
            unimodal_models=unimodal_models,
            trust_checkpoint=trust_checkpoint,
            # The audit records its scan settings, not where it is logged: it is the same audit with --log or without.
            provenance={
                "config_file": str(settings.path) if settings.path else None,
                "sources": {key: source for key, source in sources.items() if key not in TRACKER_KEYS},
            },
        )
        refused = "--shard writes only a part of an audit" if shard_spec is not None else None

        def opened() -> Tracker | None:
            """The tracker of --log, opened and checked after the scan's own checks (a bad adapter exits 2 having
            written nothing, not even a tracker's store) and before the scan: a tracker not installed, a store that
            cannot be reached, exit 2 at once. Under torchrun, rank 0 alone opens it (cli/torchrun.py)."""
            if wanted(v["log"]) and refused is None:
                with named_as(spelling, keyword_sources):
                    checked_first(v["adapter"], keywords)
            return held.enter_context(
                tracking(v["log"], v["experiment"], v["run_name"], v["tracking_uri"], sources=sources, refused=refused)
            )

        if shard_spec is not None:
            opened()  # refuses --log: a part is no audit
            with progress_bars() as progress, named_as(spelling, keyword_sources):
                part = ba.scan_shard(checkpoint, v["adapter"], shard=shard_spec, out=out_dir, progress=progress, **keywords)
            count = shard_spec.split("/")[-1].strip()
            err.print(
                f"shard {shard_spec.strip()}: wrote its part; `biasaudit merge` the {count} parts into the audit.",
                markup=False,
                highlight=False,
            )
            out.print(str(part), markup=False, highlight=False)
            return
        rank, tracker = 0, None
        if under_torchrun():  # the processes split the scan; each checks that all were started alike (cli/torchrun.py)
            rank, keywords["device"], tracker = torchrun_rank(
                held,
                adapter=v["adapter"],
                device=v["device"],
                settings=scan_settings(v, flags, unimodal_models),
                checkpoint=checkpoint,
                unimodal=unimodal_models,
                out=out_dir,
                rank_zero=opened,
            )
        else:
            tracker = opened()
        with progress_bars() if rank == 0 else nullcontext(None) as progress, named_as(spelling, keyword_sources):
            audit = ba.scan(checkpoint, v["adapter"], out=out_dir, progress=progress, distributed=under_torchrun(), **keywords)
        if rank != 0:
            return
        document = audit.to_dict()
        err.print(summary_table(document))
        print_verdict(document)
        out.print(f"{out_dir / 'audit.json'}\n{out_dir / 'audit.html'}")
        later = f"log it with ba.log(ba.Audit.read({str(out_dir / 'audit.json')!r}), to={{to}})"
        logged(tracker, audit, [out_dir / "audit.json", out_dir / "audit.html"], later=later)


def checked_first(adapter: str, keywords: dict[str, Any]) -> None:
    """What ba.scan checks before its work (the adapter and every setting), run before --log opens the tracker, so that
    a mistake there exits 2 with nothing written. It loads the adapter once more than the scan does, hence only with --log."""
    import biasaudit as ba
    from biasaudit.api._scan import checked_scan

    own = inspect.signature(ba.scan).parameters  # ba.scan's keywords; the rest are ScanConfig settings by name
    fields = {name: keywords[name] for name in ("split", "conditions", "seed", "device", "batch_size", "projection")}
    checked_scan(
        ba.scan,
        adapter,
        {name: value for name, value in keywords.items() if name not in own},
        unimodal_models=keywords["unimodal_models"],
        bootstrap_replicates=keywords["bootstrap"],
        **fields,
    )
