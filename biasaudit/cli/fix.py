"""`biasaudit fix`: retrain with a method and prove the change."""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from rich.markup import escape

from biasaudit.cli import fix_method_options as method_opt
from biasaudit.cli import fix_options as opt
from biasaudit.cli.app import app
from biasaudit.cli.choices import plain
from biasaudit.cli.console import err, handled, out, progress_bars
from biasaudit.cli.fix_method_options import FIX_OPTION_FLAGS, parse_c_grid, parse_method_options
from biasaudit.cli.naming import named_as
from biasaudit.cli.options import FIX_SCAN_FLAGS, _scale, number_or_auto, parse_mute
from biasaudit.cli.torchrun import torchrun_rank, under_torchrun
from biasaudit.cli.tracker_options import Experiment, Log, RunName, TrackingUri, logged, tracking


# ba.fix's keywords by fix's flags: the audits' settings, the method's options and training's (the library's sentences name
# the keyword; cli/naming.py names the flag). Where a name is both, the method's option and training's win.
FIX_FLAGS = {
    **FIX_SCAN_FLAGS,
    **FIX_OPTION_FLAGS,
    "model": "CHECKPOINT",
    "out": "--out",
    "before": "--before",
    "batch_size": "--batch-size",
    "shuffle_buffer": "--shuffle-buffer",
    "feature_cache": "--feature-cache",
    "cache_dir": "--cache-dir",
    "cache_max_gb": "--cache-max-gb",
    "scan_batch_size": "--scan-batch-size",
    "precision": "--precision",
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
    checkpoint: opt.Checkpoint,
    adapter: opt.Adapter,
    method: opt.Method = "mmdb",
    out_dir: opt.OutDir = Path("biasaudit-fix"),
    epochs: opt.Epochs = 20,
    lr: opt.LearningRate = 3e-3,
    optimizer: opt.Optimizer = "adam",
    weight_decay: opt.WeightDecay = 0.0,
    momentum: opt.Momentum = 0.0,
    batch_size: opt.BatchSize = 64,
    precision: opt.Precision = "fp32",
    shuffle_buffer: opt.ShuffleBuffer = 100_000,
    feature_cache: opt.FeatureCache = "auto",
    cache_dir: opt.CacheDir = None,
    cache_max_gb: opt.CacheMaxGb = 4.0,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    resume: opt.Resume = False,
    split: opt.Split = "test",
    conditions: opt.Conditions = "default",
    also_split: opt.AlsoSplit = "auto",
    from_scratch: opt.FromScratch = False,
    before: opt.Before = None,
    mute: list[str] = opt.MUTE,
    mute_compare: opt.MuteCompare = False,
    bootstrap: opt.Bootstrap = 1000,
    min_wrong: opt.MinWrong = 30,
    embedding_points: opt.EmbeddingPoints = 5000,
    gradient_batches: opt.GradientBatches = 8,
    scan_batch_size: opt.ScanBatchSize = 256,
    scan_projection: opt.ScanProjection = "umap",
    audit_min_group: opt.AuditMinGroup = 10,
    group_by: opt.GroupBy = "auto",
    ceiling_per_class: opt.CeilingPerClass = 50,
    draws: opt.Draws = 1,
    favoured_fraction: opt.FavouredFraction = 0.5,
    trust_checkpoint: opt.TrustCheckpoint = False,
    scale: method_opt.Scale = "auto",
    min_group: method_opt.MinGroup = 1,
    bias_source: method_opt.BiasSource = "auto",
    bias_modality: method_opt.BiasModality = None,
    kmeans_k: opt.KmeansK = 16,
    min_count: method_opt.MinCount = 0,
    entropy_gate: method_opt.EntropyGate = None,
    lambda_initial: method_opt.LambdaInitial = 0.1,
    lambda_schedule: method_opt.LambdaSchedule = "linear",
    beta: method_opt.Beta = 1.0,
    kl_mode: method_opt.KlMode = "mutual",
    projection: method_opt.Projection = "global",
    head_mode: method_opt.HeadMode = None,
    alpha: method_opt.Alpha = "0.3",
    ge: method_opt.Ge = True,
    gamma: method_opt.Gamma = "1.5",
    eta: method_opt.Eta = "0.01",
    jtt_upweight: method_opt.JttUpweight = "10",
    jtt_fraction: method_opt.JttFraction = 0.5,
    dandr_every: method_opt.DandrEvery = None,
    dandr_max_times: method_opt.DandrMaxTimes = 3,
    dfr_c_grid: method_opt.DfrCGrid = "0.1,0.3,1,3,10",
    option: list[str] = opt.OPTION,
    balgrad_weights: method_opt.BalgradWeights = "batch",
    log: Log = None,
    experiment: Experiment = None,
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
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
    with handled(interrupted), ExitStack() as held:
        # Parsed inside handled(): a bad --scale is a one-sentence exit 2 like every other option. Any: each method's
        # options are numbers, words, flags and None (ba.fix's options= is a Mapping[str, Any]).
        options: dict[str, dict[str, Any]] = {
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
            "dfr": {"c_grid": parse_c_grid(dfr_c_grid), "bias": bias_source, "dominant": bias_modality},
        }
        options = {
            name: {k: v for k, v in given.items() if not (k == "head_mode" and v is None)}  # None: the method's default
            for name, given in options.items()
        }
        options[method] = {**options.get(method, {}), **parse_method_options(option)}
        # A method or training option the library refuses is named as the user typed it (the library names the option).
        named = [*options[method], "epochs", "lr", "batch_size", "optimizer", "weight_decay", "momentum", "kmeans_k"]
        keywords: dict[str, Any] = {
            "out": out_dir,
            "method": method,
            "options": options.get(method, {}),
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "shuffle_buffer": shuffle_buffer,
            "feature_cache": plain(feature_cache),
            "precision": plain(precision),
            "cache_dir": cache_dir,
            "cache_max_gb": cache_max_gb,
            "optimizer": optimizer,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "seed": seed,
            "device": device,
            "resume": resume,
            "split": split,
            "conditions": conditions,
            "also_split": None if also_split == "none" else also_split,
            "from_scratch": from_scratch,
            "before": before,
            "mute": parse_mute(mute),
            "mute_compare": mute_compare,
            "bootstrap": bootstrap,
            "min_wrong": min_wrong,
            "embedding_points": embedding_points,
            "gradient_batches": gradient_batches,
            "scan_batch_size": scan_batch_size,
            "projection": scan_projection,
            "min_group": audit_min_group,
            "group_by": group_by,
            "ceiling_per_class": ceiling_per_class,
            "draws": draws,
            "favoured_fraction": favoured_fraction,
            "trust_checkpoint": trust_checkpoint,
            "kmeans_k": kmeans_k,
            "selection_min_group": min_group,
        }

        def opened() -> Any:
            return held.enter_context(tracking(log, experiment, run_name, tracking_uri))

        # Rank 0 alone opens the tracker (within the processes' checks, so that its refusal stops them all), shows
        # progress and prints: the processes' results are the same.
        rank, tracker = 0, None
        if under_torchrun():  # data-parallel over the processes, each checking that all were started alike (cli/torchrun.py)
            shared = {
                FIX_FLAGS.get(key, f"--{key}"): (f"{FIX_FLAGS.get(key, key)} {value!r}", repr(value))
                for key, value in keywords.items()
                if key != "device"
            }
            rank, keywords["device"], tracker = torchrun_rank(
                held, adapter=adapter, device=device, settings=shared, checkpoint=checkpoint, out=out_dir, rank_zero=opened
            )
        else:
            tracker = opened()
        with (
            named_as({**{key: f"--{key.replace('_', '-')}" for key in named}, **FIX_FLAGS}),
            progress_bars() if rank == 0 else nullcontext(None) as progress,
        ):
            result = ba.fix(checkpoint, adapter, progress=progress, distributed=under_torchrun(), **keywords)
        if rank != 0:
            return
        compare, training = result.comparison.to_dict(), result.train_log["training"]
        selection = training.get("option_selection")
        if selection:
            name = selection["option"]
            # The grid is the scores' keys (biasaudit.training.selection): one score per candidate.
            pairs = zip(selection["grid"], selection["scores"].values(), strict=True)
            scores = ", ".join(f"{name}={s:g}: {v:.1f}" for s, v in pairs)
            criterion = selection["criterion"].split(" (")[0]
            chosen = f"{name}={selection['chosen']:g}"
            err.print(f"{method} {name} auto chose {chosen} ({criterion} on {selection['validated_on']}: {scores})", markup=False)
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
        read = [f"ba.Audit.read({str(out_dir / name)!r})" for name in ("before.json", "after.json")]
        later = f"log its comparison with ba.log(ba.compare({read[0]}, {read[1]}), to={{to}})"
        logged(tracker, result, [out_dir / name for name in names if name != "model.pt"], later=later)  # not the model
