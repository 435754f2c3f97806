"""The command line. The only module that prints: rich progress and logs on stderr, results in files
and on stdout. It is also the only place that catches BiasAuditError and turns it into an exit code:
0 ok, 1 gate failed, 2 usage or input error, 3 internal error."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from biasaudit.errors import BiasAuditError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find, measure and fix modality bias in multimodal PyTorch classifiers.")
# Names such as "ratio:a:0.5" hold emoji codes (":a:"): no emoji replacement anywhere. stdout carries results (paths, JSON)
# as plain text, never through markup.
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)  # a message is one line: paths stay whole for copy and grep
out = Console(highlight=False, soft_wrap=True, emoji=False, markup=False)


@contextmanager
def handled(interrupted: Optional[Callable[[], str]] = None) -> Iterator[None]:
    """Turn our errors into one red sentence and an exit code; anything else is a bug (exit 3).

    `interrupted` says what a Ctrl-C leaves behind, when that is more than nothing (fix keeps its training state).
    Runs write their files as a set that Ctrl-C cannot split (biasaudit.output_set): before the set is in place,
    nothing was written; once it is, the interrupt says so.
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        if exc.args:  # raised by the output set once its files were all in place
            err.print(f"interrupted {exc.args[0]}.", markup=False)
        else:
            err.print(f"interrupted; {interrupted() if interrupted else 'nothing was written'}.", markup=False)
        raise typer.Exit(130) from None
    except BiasAuditError as exc:
        # One line, never wrapped: CI logs and grep should see the whole sentence.
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)  # brackets in the text are not markup
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception:
        err.print_exception(max_frames=8)
        err.print("[bold red]internal error:[/] this is a bug in biasaudit or in the adapter's code; the traceback above says where.")
        raise typer.Exit(3) from None


def explicit_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (or set through the environment), as opposed to defaults."""
    # By the enum member's name: typer ships its own copy of click's ParameterSource.
    typed = ("COMMANDLINE", "ENVIRONMENT")
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) in typed}


@contextmanager
def progress_bars() -> Iterator:
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bars:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: Optional[int], status: Optional[str] = None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, status="")
            fields = {} if status is None else {"status": status}
            bars.update(tasks[stage], completed=done, total=total, **fields)

        yield update


def _ci_text(ci, *, scale: float = 1.0, prefix: str = "") -> str:
    """'[lo, hi]', or 'no interval' when the bootstrap gave none (a tiny split: no replicate drew a sample)."""
    if not ci or any(v is None for v in ci):
        return "no interval"
    return f"{prefix}[{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def summary_table(audit: dict) -> Table:
    table = Table(title=f"modality bias on split {audit['dataset']['split']!r} (n={audit['dataset']['n']})", title_justify="left")
    for column in ("condition", "accuracy %", "95% CI", "flip rate"):
        table.add_column(column, justify="left" if column == "condition" else "right")
    for row in audit["conditions"]:
        if row["group"] in ("full", "missing", "noisy", "custom", "mute_compare"):
            table.add_row(escape(row["name"]), f"{row['accuracy']:.1f}", _ci_text(row["accuracy_ci"]), f"{row['flip_rate']:.2f}")
    for group in ("missing", "noisy"):
        section = audit["summary"].get(group)
        if section:
            table.add_row(f"{group}: Avg / Gap", f"{section['avg']:.1f} / {section['gap']:.1f}", _ci_text(section["gap_ci"], prefix="gap "),
                          f"dominant: {escape(section['dominant'] or 'none')}")
    carrier = audit.get("carrier") or {}
    if carrier.get("available"):
        for name, row in carrier["modalities"].items():
            swap = row["bias_swap"]
            if swap["excess_follow_rate"] is not None:
                table.add_row(f"bias swap: {escape(name)}", f"{100 * swap['excess_follow_rate']:+.1f}", _ci_text(swap["excess_follow_rate_ci"], scale=100),
                              "carrier" if name == carrier.get("carrier") else "")
    groups = (audit.get("groups") or {}).get("conditions", {}).get("full")
    if groups and groups.get("worst_group") is not None:
        table.add_row("worst group / balanced", f"{groups['worst_group']:.1f} / {groups['bias_balanced']:.1f}", _ci_text(groups["worst_group_ci"]),
                      escape(groups.get("worst_group_label") or ""))
    jsd = audit.get("jsd", {})
    if jsd.get("available"):
        # The unweighted mean needs min_wrong mistakes per bias value; say so rather than drop the row.
        mean = "n/a" if jsd.get("mean") is None else f"{jsd['mean']:.3f}"
        weighted = "n/a" if jsd.get("weighted_mean") is None else f"{jsd['weighted_mean']:.3f}"
        table.add_row("JSD mean / weighted", f"{mean} / {weighted}", "", "no mistakes on this split" if jsd.get("n_wrong") == 0
                      else "low = mistakes copy the bias")
    return table


@contextmanager
def naming_source(sources: dict, *keys: str, flags: Optional[dict] = None) -> Iterator[None]:
    """A setting that came from a config file and fails its check names the file, table and key: the same check as
    the command line's, and the user learns where to look. With several keys, the one the message starts with. One
    from the command line is named by its flag (`flags` maps keys whose flag is not --KEY-WITH-DASHES)."""
    from biasaudit.errors import InputError

    try:
        yield
    except InputError as exc:
        text = str(exc)
        key = keys[0] if len(keys) == 1 else next((k for k in keys if text.lower().startswith((k + " ", k.replace("_", " ") + " "))), None)
        source = sources.get(key) if key else None
        if source and not source.startswith(("command line", "default")):
            raise InputError(f"{source} {key}: {text}") from exc
        if source == "command line" and text.startswith(key + " "):  # named as the user typed it
            flag = (flags or {}).get(key, f"--{key.replace('_', '-')}")
            raise InputError(f"{flag}{text[len(key):]}") from exc
        raise


def print_verdict(audit: dict) -> None:
    """The scan's verdict in words under the table: bias measures first, then reliance, then caveats."""
    verdict = audit.get("verdict") or {}
    if verdict.get("headline"):
        err.print(f"[bold]verdict:[/] {escape(verdict['headline'])}")
    for sentence in verdict.get("sentences", []):
        err.print(f"  - {sentence}", markup=False, highlight=False)


def parse_mute(values: list[str]) -> tuple[tuple[str, str], ...]:
    from biasaudit.errors import InputError

    pairs = []
    for value in values:
        if not isinstance(value, str):  # a config file can hold any TOML value
            raise InputError(f"--mute {value!r} is not of the form MODALITY=IMPAIRMENT, e.g. image=mean.")
        name, sep, impairment = value.partition("=")
        if not sep or not name or not impairment:
            raise InputError(f"--mute {value!r} is not of the form MODALITY=IMPAIRMENT, e.g. image=mean.")
        pairs.append((name, impairment))
    return tuple(pairs)


def parse_unimodal(values: list[str], adapter) -> tuple[tuple[str, Path], ...]:
    """--unimodal MODALITY=CHECKPOINT items, checked before any model is loaded."""
    from biasaudit.errors import InputError
    from biasaudit.input_paths import check_input_file

    names = [m.name for m in adapter.modalities]
    pairs = []
    for value in values:
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            raise InputError(f"--unimodal {value!r} is not of the form MODALITY=CHECKPOINT, e.g. image=image_only.pt.")
        if name not in names:
            raise InputError(f"--unimodal {value!r} names modality {name!r}. Available: {', '.join(names)}.")
        check_input_file(Path(path), named=f"--unimodal {value!r}: the checkpoint {path}", expected="a file written by torch.save")
        pairs.append((name, Path(path)))
    return tuple(pairs)


def _scale(text: str) -> "float | str":
    from biasaudit.errors import InputError

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--scale {text!r} is neither 'auto' nor a number.") from None
    if not 0 < value < float("inf"):
        raise InputError(f"--scale {text} must be a positive, finite number.")
    return value


# The audit settings of `fix`, by the flags that set them (some differ from scan's: --scan-batch-size, ...).
FIX_SCAN_FLAGS = {"seed": "--seed", "batch_size": "--scan-batch-size", "bootstrap": "--bootstrap", "embedding_points": "--embedding-points",
                  "min_wrong": "--min-wrong", "gradient_batches": "--gradient-batches", "kmeans_k": "--kmeans-k",
                  "min_group": "--audit-min-group", "ceiling_per_class": "--ceiling-per-class", "group_by": "--group-by"}

ADAPTER_HELP = "Your adapter: path/to/file.py:NAME or package.module:NAME (see README, 'Writing an adapter')."


@app.command()
def scan(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="State dict of the model (torch.save(model.state_dict(), path))."),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP + " Required here or in the config file."),
    split: str = typer.Option("test", help="Which split of the adapter's data to evaluate."),
    conditions: str = typer.Option("default", help="Comma list: default, full, missing, noisy, ratio, missing:MOD, MOD=IMPAIRMENT[:SEVERITY]."),
    out_dir: Path = typer.Option(Path("biasaudit-out"), "--out", "-o", help="Directory for audit.json and audit.html."),
    seed: int = typer.Option(0, help="Seed of every random choice (impairments, bootstrap, sampling, projections)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    batch_size: int = typer.Option(256, min=1, help="Samples per batch."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full pickles (runs code from the file: only for checkpoints you trust)."),
    projection: str = typer.Option("umap", help="2-D projection of the embeddings: umap or pca."),
    bootstrap: int = typer.Option(1000, min=10, help="Bootstrap replicates for the 95% intervals."),
    gradient_batches: int = typer.Option(8, min=1, help="Batches sampled for the gradient-conflict histogram."),
    min_wrong: int = typer.Option(30, min=1, help="Minimum wrong predictions under a bias value to enter the unweighted JSD mean."),
    kmeans_k: int = typer.Option(16, "--kmeans-k", min=2, help="Clusters of the k-means bias discovery, used when the data has no bias value."),
    embedding_points: int = typer.Option(5000, "--embedding-points", min=10, help="Most points kept for the embedding plots (seeded sample)."),
    mute: list[str] = typer.Option([], "--mute", help="What 'missing' means for a modality, e.g. image=mean (mid-grey) instead of the black image; repeatable."),
    mute_compare: bool = typer.Option(False, "--mute-compare", help="Also measure each modality's other muting choice (image: black and mid-grey) and say which modality each makes dominant."),
    min_group: int = typer.Option(10, "--min-group", min=1, help="Smallest (label, bias value) group that enters worst-group and bias-balanced accuracy."),
    group_by: str = typer.Option("auto", "--group-by", help="Groups: bias = (label, bias value); alignment = (label, bias-aligned or conflicting); "
                                 "auto = bias unless its groups are too small to count half the samples."),
    ceiling_per_class: int = typer.Option(50, "--ceiling-per-class", min=1, help="Train samples per class the ceilings' linear probes are fitted on (seeded)."),
    unimodal: list[str] = typer.Option([], "--unimodal", help="MODALITY=CHECKPOINT: a model of the same architecture trained on that modality alone, "
                                       "whose accuracy (other modalities muted) is the modality's ceiling instead of a linear probe; repeatable."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Settings file (default: biasaudit.toml, else the tool.biasaudit table of pyproject.toml)."),
) -> None:
    """Audit a checkpoint: bias measures (carrier test, worst-group accuracy, JSD), reliance (accuracy under muted and noisy
    modalities, Gap, flip rates, ceilings), calibration, embeddings, gradient conflict."""
    from biasaudit.adapter import load_adapter
    from biasaudit.audit import AUDIT_FILES, audit_checkpoint, write_audit
    from biasaudit.output_paths import check_output_dir
    from biasaudit.output_set import OutputSet
    from biasaudit.config_file import SCAN_KEYS, load_settings, resolve
    from biasaudit.errors import InputError
    from biasaudit.conditions import parse_conditions
    from biasaudit.batches import check_split
    from biasaudit.scan import ScanConfig, resolve_device, with_mute_overrides

    with handled(), ExitStack() as held:
        check_output_dir(out_dir)
        settings = load_settings(config_file)
        given = {name: value for name, value in ctx.params.items() if name in SCAN_KEYS}
        v, sources = resolve(given, explicit_options(ctx), settings, "scan")
        if v["adapter"] is None:
            raise InputError("--adapter is required: give it on the command line or as adapter in the config file's scan table.")
        with naming_source(sources, "adapter"):
            loaded = load_adapter(v["adapter"])
        with naming_source(sources, "split"):
            check_split(loaded, v["split"])
        with naming_source(sources, "device"):
            resolve_device(v["device"])
        with naming_source(sources, "conditions"):
            parse_conditions(v["conditions"], loaded.modalities)
        with naming_source(sources, "mute"):
            mute_pairs = parse_mute(v["mute"])
            with_mute_overrides(loaded, mute_pairs)
        with naming_source(sources, "unimodal"):
            unimodal_checkpoints = parse_unimodal(v["unimodal"], loaded)
        with naming_source(sources, *SCAN_KEYS):
            config = ScanConfig(split=v["split"], conditions=v["conditions"], batch_size=v["batch_size"], seed=v["seed"], device=v["device"],
                                bootstrap_replicates=v["bootstrap"], projection=v["projection"], gradient_batches=v["gradient_batches"],
                                min_wrong=v["min_wrong"], kmeans_k=v["kmeans_k"], embedding_points=v["embedding_points"],
                                mute=mute_pairs, mute_compare=v["mute_compare"], min_group=v["min_group"], group_by=v["group_by"],
                                ceiling_per_class=v["ceiling_per_class"])
        # Locked from here until both files are in place: a second run into the same directory is refused now.
        outputs = held.enter_context(OutputSet(out_dir, files=AUDIT_FILES))
        with progress_bars() as progress:
            audit = audit_checkpoint(checkpoint, loaded, config=config, adapter_spec=v["adapter"], trust=trust_checkpoint, progress=progress,
                                     unimodal=unimodal_checkpoints)
        audit["manifest"]["settings"] = {"config_file": str(settings.path) if settings.path else None, "sources": sources}
        json_path, html_path = write_audit(audit, outputs)
        held.close()
        err.print(summary_table(audit))
        print_verdict(audit)
        out.print(f"{json_path}\n{html_path}")


@app.command()
def fix(
    checkpoint: Path = typer.Argument(..., help="State dict of the biased model; it is never modified."),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    method: str = typer.Option("mmdb", help="ce (plain fine-tuning, the control), mmdb or balgrad."),
    out_dir: Path = typer.Option(Path("biasaudit-fix"), "--out", "-o", help="Directory for model.pt, before/after audits, compare.json, train_log.json."),
    epochs: int = typer.Option(20, help="Training epochs."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(64, help="Training batch size."),
    seed: int = typer.Option(0, help="Seed of shuffling, training and both audits."),
    device: str = typer.Option("cpu", help="Torch device."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT/state/last.pt."),
    split: str = typer.Option("test", help="Split audited before and after."),
    conditions: str = typer.Option("default", help="Conditions of both audits (see scan)."),
    before: Optional[Path] = typer.Option(None, "--before", help="Reuse an existing audit of this checkpoint, taken with the same scan settings."),
    mute: list[str] = typer.Option([], "--mute", help="Both audits: what 'missing' means for a modality, e.g. image=mean (see scan)."),
    mute_compare: bool = typer.Option(False, "--mute-compare", help="Both audits: also measure each modality's other muting choice."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="Both audits: bootstrap replicates."),
    min_wrong: int = typer.Option(30, "--min-wrong", min=1, help="Both audits: mistakes per bias value for the unweighted JSD mean."),
    embedding_points: int = typer.Option(5000, "--embedding-points", min=10, help="Both audits: points kept for the embedding plots."),
    gradient_batches: int = typer.Option(8, "--gradient-batches", min=1, help="Both audits: batches sampled for gradient conflict."),
    scan_batch_size: int = typer.Option(256, "--scan-batch-size", min=1, help="Both audits: samples per batch (training uses --batch-size)."),
    scan_projection: str = typer.Option("umap", "--scan-projection", help="Both audits: 2-D projection of the embeddings, umap or pca "
                                        "(--projection is BalGrad's)."),
    audit_min_group: int = typer.Option(10, "--audit-min-group", min=1, help="Both audits: smallest group in worst-group accuracy "
                                        "(scan's --min-group; --min-group is MMDB's)."),
    group_by: str = typer.Option("auto", "--group-by", help="Both audits: auto, bias or alignment (see scan)."),
    ceiling_per_class: int = typer.Option(50, "--ceiling-per-class", min=1, help="Both audits: train samples per class of the ceiling probes."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full pickles."),
    scale: str = typer.Option("auto", help="MMDB: the cosine scale s, or auto (grid 1..32 by bias-balanced validation accuracy)."),
    min_group: int = typer.Option(1, "--min-group", min=1, help="MMDB --scale auto: smallest (label, bias) group counted in the bias-balanced accuracy."),
    bias_source: str = typer.Option("auto", "--bias", help="MMDB: where the bias values come from: key (the adapter's bias_key), "
                                    "kmeans (k-means on the branch of the modality the model leans on; methods.md section 3) or auto "
                                    "(key when the adapter declares one)."),
    bias_modality: Optional[str] = typer.Option(None, "--bias-modality", help="MMDB with k-means bias: the modality whose branch is "
                                                "clustered (default: the before audit's carrier, else its dominant one)."),
    kmeans_k: int = typer.Option(16, "--kmeans-k", min=2, help="Clusters of the k-means bias discovery (MMDB without a bias key, and both audits' JSD)."),
    min_count: int = typer.Option(0, "--min-count", help="MMDB: ignore labels with fewer samples under a bias value."),
    entropy_gate: Optional[float] = typer.Option(None, "--entropy-gate", help="MMDB: zero the margins of bias values with label entropy >= this (bits)."),
    lambda_initial: float = typer.Option(0.1, "--lambda-initial", help="BalGrad: initial mutual-learning weight λ_0 (0..1)."),
    lambda_schedule: str = typer.Option("linear", "--lambda-schedule", help="BalGrad: linear (λ_0 rising to 1) or constant (λ_0)."),
    beta: float = typer.Option(1.0, help="BalGrad: weight of the unimodal losses on the branches."),
    kl_mode: str = typer.Option("mutual", "--kl-mode", help="BalGrad: mutual or undirected."),
    projection: str = typer.Option("global", help="BalGrad: global or per_modality projection."),
    head_mode: str = typer.Option("shared_zero", "--head-mode", help="BalGrad unimodal heads: shared_zero (the model with the other branch zeroed), "
                                  "ogm_split (classifier weight slices, half the bias) or separate (new training-only linear heads)."),
    balgrad_weights: str = typer.Option("batch", "--balgrad-weights", help="BalGrad KL weights: batch (this batch's unimodal losses) or "
                                        "running (their moving averages, momentum 0.9)."),
) -> None:
    """Retrain to reduce modality bias; write a drop-in state dict and before/after audits."""
    from biasaudit.adapter import load_adapter
    from biasaudit.errors import InputError
    from biasaudit.fix import run_fix
    from biasaudit.scan import PROJECTIONS, ScanConfig, with_mute_overrides
    from biasaudit.training.loop import TrainConfig

    def interrupted() -> str:
        state = out_dir / "state" / "last.pt"
        kept = f"; the training state {state} is kept: --resume continues from its last finished epoch" if state.is_file() else ""
        return f"no results were written to {out_dir}{kept}"

    with handled(interrupted):
        # Parsed inside handled(): a bad --scale is a one-sentence exit 2 like every other option.
        options = {"ce": {}, "mmdb": {"scale": _scale(scale), "min_count": min_count, "entropy_gate": entropy_gate, "bias": bias_source,
                                      "dominant": bias_modality},
                   "balgrad": {"lambda_initial": lambda_initial, "schedule": lambda_schedule, "beta": beta, "kl_mode": kl_mode,
                               "projection": projection, "head_mode": head_mode, "weights": balgrad_weights}}
        # An unknown method gets its "Available: ..." error from the METHODS registry in run_fix.
        loaded = load_adapter(adapter)
        train_config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
        if scan_projection not in PROJECTIONS:  # named by fix's own flag; --projection is BalGrad's
            raise InputError(f"--scan-projection {scan_projection!r} is unknown. Available: {', '.join(PROJECTIONS)}.")
        # Every scan setting that shapes the audits' numbers, so that --before can reuse any scan taken the same way.
        # A bad one is named by fix's own flag.
        with naming_source({key: "command line" for key in FIX_SCAN_FLAGS}, *FIX_SCAN_FLAGS, flags=FIX_SCAN_FLAGS):
            scan_config = ScanConfig(split=split, conditions=conditions, seed=seed, device=device, kmeans_k=kmeans_k, mute=parse_mute(mute),
                                     mute_compare=mute_compare, bootstrap_replicates=bootstrap, min_wrong=min_wrong,
                                     embedding_points=embedding_points, gradient_batches=gradient_batches, batch_size=scan_batch_size,
                                     projection=scan_projection, min_group=audit_min_group, group_by=group_by,
                                     ceiling_per_class=ceiling_per_class)
        with_mute_overrides(loaded, scan_config.mute)  # a bad --mute is named before the method's own checks, as in scan
        with progress_bars() as progress:
            paths = run_fix(checkpoint, loaded, method=method, method_options=options.get(method, {}), train_config=train_config,
                            scan_config=scan_config, out_dir=out_dir, adapter_spec=adapter, trust=trust_checkpoint,
                            before_path=before, resume=resume, min_group=min_group, progress=progress)
        import json

        compare = json.loads(paths["compare"].read_text())
        training = json.loads(paths["train_log"].read_text())["training"]
        selection = training.get("scale_selection")
        if selection:
            scores = ", ".join(f"s={s:g}: {v:.1f}" for s, v in zip(selection["grid"], selection["scores"].values()))
            err.print(f"MMDB --scale auto chose s={selection['chosen']:g} (bias-balanced accuracy on {selection['validated_on']}: {scores})")
        warning = training["settings"].get("scale_warning")
        if warning:
            err.print(f"[yellow]note:[/] {escape(warning)}")
        # Bias measures first, then the Gap as reliance (biasaudit.verdict); escaped: intervals are [lo, hi].
        err.print(f"[bold]{method}[/]: {escape(compare['verdict'])}")  # one line each, for grep and CI logs
        for sentence in compare.get("verdict_sentences") or []:
            err.print(f"  {escape(sentence)}")
        out.print("\n".join(str(p) for p in paths.values()))


@app.command()
def compare(
    before: Path = typer.Argument(..., help="audit.json of the model before the change."),
    after: Path = typer.Argument(..., help="audit.json of the model after the change (same split, conditions and seed)."),
    out_dir: Path = typer.Option(Path("biasaudit-compare"), "--out", "-o", help="Directory for compare.json and compare.html."),
    train_log: Optional[Path] = typer.Option(None, "--train-log", help="train_log.json of a fix run, for the training section."),
) -> None:
    """Re-render the before/after comparison from two audit files, without the model."""
    from biasaudit.output_paths import check_output_dir
    from biasaudit.compare import compare_audits
    from biasaudit.output_set import OutputSet
    from biasaudit.report.compare_render import write_compare_html
    from biasaudit.results import read_audit, read_train_log, write_json_atomic

    with handled():
        out_path = check_output_dir(out_dir)
        first, second = read_audit(before), read_audit(after)
        log = read_train_log(train_log) if train_log is not None else None
        try:
            comparison = compare_audits(first, second)
        except BiasAuditError as exc:  # which two files, as the gate says for its baseline
            raise type(exc)(f"{before} vs {after}: {exc}") from exc
        with OutputSet(out_path, files=("compare.json", "compare.html")) as outputs:
            comparison = {"run": outputs.stamp(), **comparison}
            write_json_atomic(comparison, outputs.staged("compare.json"))
            write_compare_html(comparison, first, second, outputs.staged("compare.html"), train_log=log)
            outputs.commit(("compare.html", "compare.json"))
        err.print(escape(comparison["verdict"]))  # one line each, for grep and CI logs
        for sentence in comparison["verdict_sentences"]:
            err.print(f"  {escape(sentence)}")
        out.print(f"{out_path / 'compare.json'}\n{out_path / 'compare.html'}")


@app.command()
def report(
    audit: Path = typer.Argument(..., help="audit.json written by biasaudit scan (or before/after.json of a fix run)."),
    html: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: the JSON's name with .html)."),
) -> None:
    """Render the HTML audit again from its JSON, without the model."""
    from biasaudit.gate import check_audit_shape
    from biasaudit.output_paths import check_output_file
    from biasaudit.report.render import write_audit_html
    from biasaudit.results import read_audit

    with handled():
        target = check_output_file(html if html is not None else audit.with_suffix(".html"), option="--out")
        data = read_audit(audit)
        check_audit_shape(data, source=str(audit))
        write_audit_html(data, target)
        out.print(str(target))


@app.command()
def gate(
    ctx: typer.Context,
    current: Path = typer.Argument(..., help="audit.json of the candidate model."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="audit.json kept as the reference (same split, conditions and seed)."),
    min_worst_group: list[str] = typer.Option([], "--min-worst-group", metavar="CONDITION=PERCENT", help="CONDITION=PERCENT: FAIL when that condition's "
                                              "worst-group accuracy is lower (repeatable; e.g. full=60). A bias rule."),
    max_worst_group_drop: list[str] = typer.Option([], "--max-worst-group-drop", metavar="[CONDITION=]POINTS", help="POINTS or CONDITION=POINTS: FAIL when the "
                                                   "worst-group accuracy (plain: of full) fell by more than this against --baseline."),
    max_bias_follow_increase: list[str] = typer.Option([], "--max-bias-follow-increase", metavar="[MODALITY=]POINTS", help="POINTS or MODALITY=POINTS: FAIL when "
                                                       "the excess bias-follow rate rose by more than this many percentage points "
                                                       "against --baseline (plain: the baseline's carrier modality; repeatable)."),
    max_jsd_drop: Optional[float] = typer.Option(None, "--max-jsd-drop", help="FAIL when the JSD fell by more than this against "
                                                 "--baseline (its mistakes copy the bias more)."),
    jsd: str = typer.Option("weighted", "--jsd", metavar="weighted|mean", help="Which JSD --max-jsd-drop reads: weighted (every bias value with a "
                            "mistake, by its mistakes) or mean (only bias values with --min-wrong mistakes)."),
    max_gap: list[str] = typer.Option([], "--max-gap", metavar="[GROUP=]POINTS", help="POINTS or GROUP=POINTS: FAIL when a Gap of CURRENT exceeds this "
                                      "(plain: every group, missing and noisy; repeatable). A reliance rule."),
    max_gap_increase: list[str] = typer.Option([], "--max-gap-increase", metavar="[GROUP=]POINTS", help="POINTS or GROUP=POINTS: FAIL when a Gap grew by more "
                                               "than this against --baseline (plain: every group; e.g. missing=2). A reliance rule."),
    min_accuracy: list[str] = typer.Option([], "--min-accuracy", metavar="CONDITION=PERCENT", help="CONDITION=PERCENT: FAIL when that condition's accuracy is "
                                           "lower (repeatable; e.g. full=90)."),
    significant: bool = typer.Option(False, "--significant/--no-significant", help="A baseline rule's change past its limit fails "
                                     "only when its whole paired 95% interval lies beyond the limit (else WARN)."),
    json_output: bool = typer.Option(False, "--json", help="Print the machine verdict as JSON on stdout."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report, one test case per rule."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Rules file (default: biasaudit.toml, else the tool.biasaudit table of pyproject.toml)."),
) -> None:
    """Turn audits into a CI verdict: exit 0 when no rule fails, 1 when one fails, 2 on a usage or input error."""
    import json

    from biasaudit.errors import InputError
    from biasaudit.config_file import GATE_KEYS, load_settings, resolve
    from biasaudit.gate import check_audit_shape, evaluate_gate, gate_rules
    from biasaudit.output_paths import check_output_file
    from biasaudit.report.junit import write_gate_junit
    from biasaudit.results import read_audit

    with handled():
        settings = load_settings(config_file)
        v, sources = resolve({k: val for k, val in ctx.params.items() if k in GATE_KEYS}, explicit_options(ctx), settings, "gate")
        # Every rule is checked here, before any audit is read: a typo exits 2 without waiting on files.
        rules = gate_rules(v, sources=sources)
        baseline = Path(v["baseline"]) if v["baseline"] is not None else None
        if junit is not None:
            check_output_file(junit, option="--junit")
        audits = {}
        for name, path in (("current", current), ("baseline", baseline)):
            if path is not None:
                try:
                    audits[name] = read_audit(path)
                except InputError as exc:
                    if name == "baseline" and sources["baseline"] != "command line":
                        raise InputError(f"The baseline set in {sources['baseline']}: {exc}") from exc
                    raise
                check_audit_shape(audits[name], source=str(path))
        result = evaluate_gate(audits["current"], rules, baseline=audits.get("baseline"), current_name=str(current),
                               baseline_name=str(baseline) if baseline is not None else "baseline")
        result["settings"] = {"config_file": str(settings.path) if settings.path else None, "sources": sources}
        err.print(gate_table(result))
        if junit is not None:
            write_gate_junit(result, junit)
        if json_output:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")  # the verdict as json wrote it, never through the console
        if result["exit_code"]:
            raise typer.Exit(result["exit_code"])


STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "ERROR": "bold magenta"}


def gate_table(result: dict) -> Table:
    table = Table(title=f"biasaudit gate: {result['status']}", title_justify="left")
    for column in ("rule", "status", "figures"):
        table.add_column(column)
    for rule in result["rules"]:
        # Rule names hold brackets ("max_gap[missing]"): escaped, or rich would read them as markup.
        table.add_row(escape(rule["rule"]), f"[{STATUS_STYLE[rule['status']]}]{rule['status']}[/]", escape(rule["message"]))
    return table


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("biasaudit-demo"), "--out", "-o", help="Directory for the demo checkpoint and audit."),
    seed: int = typer.Option(0, help="Seed of the demo data split, training and scan."),
    split: str = typer.Option("ood", help="Split to audit: ood (colour independent of the digit) or test (same bias as training)."),
) -> None:
    """Train the bundled digits-captions model with plain cross-entropy, then audit it. Offline, about a minute."""
    from biasaudit.audit import AUDIT_FILES, audit_checkpoint, stage_audit
    from biasaudit.checkpoint import save_state_atomic
    from biasaudit.output_set import OutputSet
    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
    from biasaudit.scan import ScanConfig

    with handled():
        start = time.perf_counter()
        adapter = DigitsCaptionsAdapter(seed=seed)
        with OutputSet(out_dir, files=("model.pt", *AUDIT_FILES)) as outputs, progress_bars() as progress:
            model = train_baseline(adapter, seed=seed, progress=progress)
            save_state_atomic(model.state_dict(), outputs.staged("model.pt"))
            outputs.record_binary("model.pt")
            # The demo's ood split has ~20 mistakes per colour, under the default min_wrong of 30 that
            # guards the unweighted JSD mean on real datasets; 10 keeps every colour in the mean.
            config = ScanConfig(split=split, seed=seed, min_wrong=10)
            audit = audit_checkpoint(outputs.staged("model.pt"), adapter, config=config,
                                     adapter_spec="biasaudit.datasets.demo_model:DigitsCaptionsAdapter", progress=progress)
            audit["manifest"]["checkpoint"]["path"] = str(out_dir / "model.pt")
            stage_audit(audit, outputs)
            paths = outputs.commit(("audit.html", "audit.json", "model.pt"))
        out_path, checkpoint, json_path, html_path = out_dir, paths["model.pt"], paths["audit.json"], paths["audit.html"]
        err.print(summary_table(audit))
        print_verdict(audit)
        err.print(f"demo finished in {time.perf_counter() - start:.1f} s: checkpoint, audit.json and audit.html are in {out_path}/")
        out.print(f"{checkpoint}\n{json_path}\n{html_path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
