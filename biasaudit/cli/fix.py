"""`biasaudit fix`: retrain with a method and prove the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from biasaudit.cli.app import app
from biasaudit.cli.choices import (
    BalGradProjection,
    BiasSource,
    GroupBy,
    HeadMode,
    KLMode,
    Method,
    Optimizer,
    Projection,
    Schedule,
    WeightMode,
    plain,
)
from biasaudit.cli.console import ADAPTER_HELP, err, handled, out, progress_bars
from biasaudit.cli.naming import named_as
from biasaudit.cli.options import FIX_SCAN_FLAGS, _scale, number_or_auto, parse_mute


def _c_grid(text: str) -> tuple[float, ...]:
    """--dfr-c-grid as numbers (DFR checks that they are positive and finite)."""
    from biasaudit.errors import InputError

    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--dfr-c-grid is {text!r}; expected positive numbers separated by commas, e.g. 0.1,1,10.") from None


# Method options whose flag is not --OPTION-WITH-DASHES (the library's messages name the option, e.g. "upweight is 0").
FIX_OPTION_FLAGS = {
    "upweight": "--jtt-upweight",
    "fraction": "--jtt-fraction",
    "every": "--dandr-every",
    "max_times": "--dandr-max-times",
    "c_grid": "--dfr-c-grid",
    "dominant": "--bias-modality",
    "schedule": "--lambda-schedule",
    "weights": "--balgrad-weights",
    "kl_mode": "--kl-mode",
    "head_mode": "--head-mode",
    "lambda_initial": "--lambda-initial",
}
# ba.fix's keywords by fix's flags: the audits' settings, the method's options and training's (the library's sentences name
# the keyword; cli/naming.py names the flag). Where a name is both, the method's option and training's win.
FIX_FLAGS = {
    **FIX_SCAN_FLAGS,
    **FIX_OPTION_FLAGS,
    "model": "CHECKPOINT",
    "out": "--out",
    "before": "--before",
    "batch_size": "--batch-size",
    "scan_batch_size": "--scan-batch-size",
    "selection_min_group": "--min-group",
    "projection": "--projection",
    "also_split": "--also-split",
    "resume": "--resume",
    "bias": "--bias",
    "trust_checkpoint": "--trust-checkpoint",
    "state_dir": "--out",
    "options": "--method",
}


@app.command()
def fix(
    checkpoint: Path = typer.Argument(..., help="State dict of the biased model; it is never modified."),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP, rich_help_panel="Model and data"),
    method: Method = typer.Option(
        "mmdb",
        help="ce (plain fine-tuning, the control), mmdb, balgrad, ogm_ge, mmpareto, groupdro, jtt, dandr or dfr "
        "(post hoc: refits the final linear layer, no training epochs; the training options are ignored).",
        rich_help_panel="Training",
    ),
    out_dir: Path = typer.Option(
        Path("biasaudit-fix"),
        "--out",
        "-o",
        help="Directory for model.pt, before/after audits, compare.json, train_log.json.",
        rich_help_panel="Model and data",
    ),
    epochs: int = typer.Option(20, help="Training epochs.", rich_help_panel="Training"),
    lr: float = typer.Option(3e-3, help="Learning rate.", rich_help_panel="Training"),
    optimizer: Optimizer = typer.Option("adam", help="adam, adamw (decoupled weight decay) or sgd.", rich_help_panel="Training"),
    weight_decay: float = typer.Option(
        0.0, "--weight-decay", help="Weight decay (adam: L2 term; adamw: decoupled; sgd: L2 term).", rich_help_panel="Training"
    ),
    momentum: float = typer.Option(0.0, help="SGD momentum (--optimizer sgd only).", rich_help_panel="Training"),
    batch_size: int = typer.Option(64, help="Training batch size.", rich_help_panel="Training"),
    seed: int = typer.Option(0, help="Seed of shuffling, training and both audits.", rich_help_panel="Model and data"),
    device: str = typer.Option("cpu", help="Torch device.", rich_help_panel="Model and data"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run from OUT/state/last.pt.", rich_help_panel="Training"
    ),
    split: str = typer.Option("test", help="Split audited before and after.", rich_help_panel="Audits (before and after)"),
    conditions: str = typer.Option(
        "default", help="Conditions of both audits (see scan).", rich_help_panel="Audits (before and after)"
    ),
    also_split: str = typer.Option(
        "auto",
        "--also-split",
        help="A second split audited before and after the same way, its Full accuracy "
        "change in the verdict: auto (test, when --split is out of distribution), a split name, or none.",
        rich_help_panel="Audits (before and after)",
    ),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Train from the adapter's build_model() initial weights (seeded by "
        "--seed), the papers' protocol, instead of fine-tuning the checkpoint; the before-audit is then the "
        "starting checkpoint's.",
        rich_help_panel="Training",
    ),
    before: Path | None = typer.Option(
        None,
        "--before",
        help="Reuse an existing audit of this checkpoint, taken with the same scan settings.",
        rich_help_panel="Audits (before and after)",
    ),
    mute: list[str] = typer.Option(
        [],
        "--mute",
        help="Both audits: what 'missing' means for a modality, e.g. image=mean (see scan).",
        rich_help_panel="Audits (before and after)",
    ),
    mute_compare: bool = typer.Option(
        False,
        "--mute-compare",
        help="Both audits: also measure each modality's other muting choice.",
        rich_help_panel="Audits (before and after)",
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=10, help="Both audits: bootstrap replicates.", rich_help_panel="Audits (before and after)"
    ),
    min_wrong: int = typer.Option(
        30,
        "--min-wrong",
        min=1,
        help="Both audits: mistakes per bias value for the unweighted JSD mean.",
        rich_help_panel="Audits (before and after)",
    ),
    embedding_points: int = typer.Option(
        5000,
        "--embedding-points",
        min=10,
        help="Both audits: points kept for the embedding plots.",
        rich_help_panel="Audits (before and after)",
    ),
    gradient_batches: int = typer.Option(
        8,
        "--gradient-batches",
        min=1,
        help="Both audits: batches sampled for gradient conflict.",
        rich_help_panel="Audits (before and after)",
    ),
    scan_batch_size: int = typer.Option(
        256,
        "--scan-batch-size",
        min=1,
        help="Both audits: samples per batch (training uses --batch-size).",
        rich_help_panel="Audits (before and after)",
    ),
    scan_projection: Projection = typer.Option(
        "umap",
        "--scan-projection",
        help="Both audits: 2-D projection of the embeddings, umap or pca (--projection is BalGrad's).",
        rich_help_panel="Audits (before and after)",
    ),
    audit_min_group: int = typer.Option(
        10,
        "--audit-min-group",
        min=1,
        help="Both audits: smallest group in worst-group accuracy (scan's --min-group; --min-group is MMDB's).",
        rich_help_panel="Audits (before and after)",
    ),
    group_by: GroupBy = typer.Option(
        "auto", "--group-by", help="Both audits: auto, bias or alignment (see scan).", rich_help_panel="Audits (before and after)"
    ),
    ceiling_per_class: int = typer.Option(
        50,
        "--ceiling-per-class",
        min=1,
        help="Both audits: samples per class of the ceiling probes (val, else train).",
        rich_help_panel="Audits (before and after)",
    ),
    draws: int = typer.Option(
        1,
        "--draws",
        min=1,
        help="Both audits: independent draws of every random condition (see scan).",
        rich_help_panel="Audits (before and after)",
    ),
    favoured_fraction: float = typer.Option(
        0.5,
        "--favoured-fraction",
        min=0.0,
        max=1.0,
        help="Both audits: the favoured-class fraction (see scan).",
        rich_help_panel="Audits (before and after)",
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow full pickles.", rich_help_panel="Model and data"
    ),
    scale: str = typer.Option(
        "auto",
        help="MMDB: the cosine scale s, or auto (grid 1..32 by bias-balanced validation accuracy).",
        rich_help_panel="MMDB",
    ),
    min_group: int = typer.Option(
        1,
        "--min-group",
        min=1,
        help="An auto option (--scale, --alpha, --gamma, --eta, --jtt-upweight): smallest (label, bias) group counted in the bias-balanced validation accuracy.",
        rich_help_panel="MMDB",
    ),
    bias_source: BiasSource = typer.Option(
        "auto",
        "--bias",
        help="MMDB, Group DRO, DFR: where the bias values come from: key (the adapter's bias_key), "
        "kmeans (k-means on the branch of the modality the model leans on; methods.md section 3) or auto "
        "(key when the adapter declares one).",
        rich_help_panel="MMDB",
    ),
    bias_modality: str | None = typer.Option(
        None,
        "--bias-modality",
        help="MMDB, Group DRO, DFR with k-means bias: the modality whose branch is "
        "clustered (default: the before audit's carrier, else its dominant one).",
        rich_help_panel="MMDB",
    ),
    kmeans_k: int = typer.Option(
        16,
        "--kmeans-k",
        min=2,
        help="Clusters of the k-means bias discovery (MMDB without a bias key, and both audits' JSD).",
        rich_help_panel="Audits (before and after)",
    ),
    min_count: int = typer.Option(
        0, "--min-count", help="MMDB: ignore labels with fewer samples under a bias value.", rich_help_panel="MMDB"
    ),
    entropy_gate: float | None = typer.Option(
        None,
        "--entropy-gate",
        help="MMDB: zero the margins of bias values with label entropy >= this (bits).",
        rich_help_panel="MMDB",
    ),
    lambda_initial: float = typer.Option(
        0.1, "--lambda-initial", help="BalGrad: initial mutual-learning weight λ_0 (0..1).", rich_help_panel="BalGrad"
    ),
    lambda_schedule: Schedule = typer.Option(
        "linear", "--lambda-schedule", help="BalGrad: linear (λ_0 rising to 1) or constant (λ_0).", rich_help_panel="BalGrad"
    ),
    beta: float = typer.Option(1.0, help="BalGrad: weight of the unimodal losses on the branches.", rich_help_panel="BalGrad"),
    kl_mode: KLMode = typer.Option("mutual", "--kl-mode", help="BalGrad: mutual or undirected.", rich_help_panel="BalGrad"),
    projection: BalGradProjection = typer.Option(
        "global", help="BalGrad: global or per_modality projection.", rich_help_panel="BalGrad"
    ),
    head_mode: HeadMode | None = typer.Option(
        None,
        "--head-mode",
        help="BalGrad, OGM-GE, MMPareto unimodal heads: shared_zero (the model with the "
        "other branch zeroed), ogm_split (classifier weight slices, half the bias) or separate (new "
        "training-only linear heads). Default: shared_zero for balgrad, ogm_split for ogm_ge, separate "
        "for mmpareto.",
        rich_help_panel="BalGrad, OGM-GE, MMPareto",
    ),
    alpha: str = typer.Option(
        "0.3",
        "--alpha",
        help="OGM-GE: α of the coefficient k = 1 − tanh(α·ρ) on the dominant branch's gradients "
        "(reference range 0.1-0.8), or auto (0.1, 0.3, 0.8 by bias-balanced validation accuracy).",
        rich_help_panel="OGM-GE",
    ),
    ge: bool = typer.Option(
        True,
        "--ge/--no-ge",
        help="OGM-GE: add the generalisation-enhancement noise N(0, std(g)²) to the modulated gradients.",
        rich_help_panel="OGM-GE",
    ),
    gamma: str = typer.Option(
        "1.5",
        "--gamma",
        help="MMPareto: γ, the factor on every branch's integrated gradient, or auto (1, 1.5, 2 "
        "by bias-balanced validation accuracy).",
        rich_help_panel="MMPareto",
    ),
    eta: str = typer.Option(
        "0.01",
        "--eta",
        help="Group DRO: step size of the group weights q (q_g <- q_g exp(eta L_g)), or auto "
        "(0.001, 0.01, 0.1 by bias-balanced validation accuracy); groups are (label, bias value), the bias value "
        "as --bias says.",
        rich_help_panel="Group DRO",
    ),
    jtt_upweight: str = typer.Option(
        "10",
        "--jtt-upweight",
        help="JTT: loss weight λ of stage 1's misclassified training samples in "
        "stage 2, or auto (5, 10, 20 by bias-balanced validation accuracy).",
        rich_help_panel="JTT",
    ),
    jtt_fraction: float = typer.Option(
        0.5,
        "--jtt-fraction",
        help="JTT: fraction of --epochs spent on stage 1 (plain ERM); stage 2 restarts from the starting weights for the rest.",
        rich_help_panel="JTT",
    ),
    dandr_every: int | None = typer.Option(
        None,
        "--dandr-every",
        help="D&R: re-initialise after every this many epochs (default: "
        "epochs // (max-times + 1), e.g. 5 of 20; the paper's 20 suits 100+ epochs).",
        rich_help_panel="D&R",
    ),
    dandr_max_times: int = typer.Option(
        3, "--dandr-max-times", help="D&R: at most this many re-initialisations.", rich_help_panel="D&R"
    ),
    dfr_c_grid: str = typer.Option(
        "0.1,0.3,1,3,10",
        "--dfr-c-grid",
        help="DFR: candidate inverse L2 strengths C, comma-separated, chosen "
        "by worst-group accuracy on half of val (else a seeded 20% of train).",
        rich_help_panel="DFR",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        metavar="NAME=VALUE",
        help="Any option of the method, as ba.fix's options= "
        "takes it (a number, true/false, none, auto or a word); repeatable; overrides the method's "
        "own flags. The route for a method added to the registry without flags of its own.",
        rich_help_panel="Training",
    ),
    balgrad_weights: WeightMode = typer.Option(
        "batch",
        "--balgrad-weights",
        help="BalGrad KL weights: batch (this batch's unimodal losses) or running (their moving averages, momentum 0.9).",
        rich_help_panel="BalGrad",
    ),
) -> None:
    """Retrain to reduce modality bias; write a drop-in state dict and before/after audits."""
    import biasaudit as ba

    def interrupted() -> str:
        states = sorted((out_dir / "state").glob("**/last.pt"))  # an auto option: one per candidate
        shown = states[0] if len(states) == 1 else out_dir / "state"
        kept = f"; the training state {shown} is kept: --resume continues from its last finished epoch" if states else ""
        return f"no results were written to {out_dir}{kept}"

    (
        method,
        optimizer,
        scan_projection,
        group_by,
        bias_source,
        lambda_schedule,
        kl_mode,
        projection,
        head_mode,
        balgrad_weights,
    ) = (
        plain(c)
        for c in (
            method,
            optimizer,
            scan_projection,
            group_by,
            bias_source,
            lambda_schedule,
            kl_mode,
            projection,
            head_mode,
            balgrad_weights,
        )
    )
    with handled(interrupted):
        # Parsed inside handled(): a bad --scale is a one-sentence exit 2 like every other option.
        options = {
            "ce": {},
            "mmdb": {
                "scale": _scale(scale),
                "min_count": min_count,
                "entropy_gate": entropy_gate,
                "bias": bias_source,
                "dominant": bias_modality,
            },
            "balgrad": {
                "lambda_initial": lambda_initial,
                "schedule": lambda_schedule,
                "beta": beta,
                "kl_mode": kl_mode,
                "projection": projection,
                "head_mode": head_mode,
                "weights": balgrad_weights,
            },
            "ogm_ge": {"alpha": number_or_auto(alpha, "--alpha"), "ge": ge, "head_mode": head_mode},
            "mmpareto": {"gamma": number_or_auto(gamma, "--gamma"), "head_mode": head_mode},
            "groupdro": {"eta": number_or_auto(eta, "--eta"), "bias": bias_source, "dominant": bias_modality},
            "jtt": {"upweight": number_or_auto(jtt_upweight, "--jtt-upweight"), "fraction": jtt_fraction},
            "dandr": {"every": dandr_every, "max_times": dandr_max_times},
            "dfr": {"c_grid": _c_grid(dfr_c_grid), "bias": bias_source, "dominant": bias_modality},
        }
        options = {
            name: {k: v for k, v in given.items() if not (k == "head_mode" and v is None)}  # None: the method's default
            for name, given in options.items()
        }
        options[method] = {**options.get(method, {}), **_method_options(option)}
        # A method or training option the library refuses is named as the user typed it (the library names the option).
        named = [*options[method], "epochs", "lr", "batch_size", "optimizer", "weight_decay", "momentum", "kmeans_k"]
        with named_as({**{key: f"--{key.replace('_', '-')}" for key in named}, **FIX_FLAGS}), progress_bars() as progress:
            result = ba.fix(
                checkpoint,
                adapter,
                out=out_dir,
                method=method,
                options=options.get(method, {}),
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                optimizer=optimizer,
                weight_decay=weight_decay,
                momentum=momentum,
                seed=seed,
                device=device,
                resume=resume,
                split=split,
                conditions=conditions,
                also_split=None if also_split == "none" else also_split,
                from_scratch=from_scratch,
                before=before,
                mute=parse_mute(mute),
                mute_compare=mute_compare,
                bootstrap=bootstrap,
                min_wrong=min_wrong,
                embedding_points=embedding_points,
                gradient_batches=gradient_batches,
                scan_batch_size=scan_batch_size,
                projection=scan_projection,
                min_group=audit_min_group,
                group_by=group_by,
                ceiling_per_class=ceiling_per_class,
                draws=draws,
                favoured_fraction=favoured_fraction,
                trust_checkpoint=trust_checkpoint,
                kmeans_k=kmeans_k,
                selection_min_group=min_group,
                progress=progress,
            )
        compare, training = result.comparison.to_dict(), result.train_log["training"]
        selection = training.get("option_selection")
        if selection:
            name = selection["option"]
            scores = ", ".join(f"{name}={s:g}: {v:.1f}" for s, v in zip(selection["grid"], selection["scores"].values()))
            criterion = selection["criterion"].split(" (")[0]
            err.print(
                f"{method} {name} auto chose {name}={selection['chosen']:g} ({criterion} on {selection['validated_on']}: {scores})",
                markup=False,
            )
        warning = training["settings"].get("scale_warning")
        if warning:
            err.print(f"[yellow]note:[/] {escape(warning)}")
        # Bias measures first, then the Gap as reliance (biasaudit.verdict); escaped: intervals are [lo, hi].
        err.print(f"[bold]{method}[/]: {escape(compare['verdict'])}")  # one line each, for grep and CI logs
        for sentence in compare.get("verdict_sentences") or []:
            err.print(f"  {escape(sentence)}")
        names = ["model.pt", "before.json", "after.json", "compare.json", "train_log.json", "after.html", "compare.html"]
        if result.also is not None:
            names += ["also_before.json", "also_after.json", "also_compare.json"]
        out.print("\n".join(str(out_dir / name) for name in names))


def _method_options(given: list[str]) -> dict[str, Any]:
    """--option NAME=VALUE pairs as ba.fix's options: numbers, true/false and none as Python values, words as str."""
    from biasaudit.errors import InputError

    words = {"true": True, "false": False, "none": None}
    options: dict[str, Any] = {}
    for pair in given:
        name, sign, text = pair.partition("=")
        if not sign or not name.strip().isidentifier():
            raise InputError(f"--option is {pair!r}; expected NAME=VALUE, e.g. --option alpha=0.5.")
        value: Any = words.get(text.strip().lower(), text.strip())
        if isinstance(value, str):
            for number in (int, float):
                try:
                    value = number(value)
                    break
                except ValueError:
                    pass
        options[name.strip()] = value
    return options
