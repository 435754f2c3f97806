"""The options of `biasaudit fix` that every method shares, by their --help panel: the model and its data, training, and
the before and after audits. Each is an Annotated type; `fix` (cli/fix.py) declares its parameters with them and gives
them their defaults, so that --help shows a default where the signature reads it. The methods' own options are in
cli/fix_method_options.py.

The list options (--mute, --option) are the exception: a list default in a signature is one list shared by every call
(ruff's B006), so they stay typer's OptionInfo, with their default inside, which `fix` takes as its parameters' default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from biasaudit.cli import choices
from biasaudit.cli.console import ADAPTER_HELP

MODEL = "Model and data"
TRAINING = "Training"
AUDITS = "Audits (before and after)"

# Model and data (CHECKPOINT, the one argument, is listed apart)

Checkpoint = Annotated[Path, typer.Argument(help="State dict of the biased model; it is never modified.")]
Adapter = Annotated[str, typer.Option("--adapter", "-a", help=ADAPTER_HELP, rich_help_panel=MODEL)]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Directory for model.pt, before/after audits, compare.json, train_log.json.", rich_help_panel=MODEL
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of shuffling, training and both audits.", rich_help_panel=MODEL)]
Device = Annotated[str, typer.Option(help="Torch device.", rich_help_panel=MODEL)]
TrustCheckpoint = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full pickles.", rich_help_panel=MODEL)]

# Training

Method = Annotated[
    choices.Method,
    typer.Option(
        help="ce (plain fine-tuning, the control), mmdb, balgrad, ogm_ge, mmpareto, groupdro, jtt, dandr or dfr "
        "(post hoc: refits the final linear layer, no training epochs; the training options are ignored).",
        rich_help_panel=TRAINING,
    ),
]
Epochs = Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=TRAINING)]
LearningRate = Annotated[float, typer.Option(help="Learning rate.", rich_help_panel=TRAINING)]
Optimizer = Annotated[
    choices.Optimizer, typer.Option(help="adam, adamw (decoupled weight decay) or sgd.", rich_help_panel=TRAINING)
]
WeightDecay = Annotated[
    float,
    typer.Option(
        "--weight-decay", help="Weight decay (adam: L2 term; adamw: decoupled; sgd: L2 term).", rich_help_panel=TRAINING
    ),
]
Momentum = Annotated[float, typer.Option(help="SGD momentum (--optimizer sgd only).", rich_help_panel=TRAINING)]
BatchSize = Annotated[int, typer.Option(help="Training batch size.", rich_help_panel=TRAINING)]
Precision = Annotated[
    choices.Precision,
    typer.Option(
        "--precision",
        help="fp32, or bf16 / fp16: the training steps and both audits' forwards under autocast (fp16 with a gradient "
        "scaler; CUDA only).",
        rich_help_panel=TRAINING,
    ),
]
FeatureCache = Annotated[
    choices.FeatureCache,
    typer.Option(
        "--feature-cache",
        help="Compute the outputs of the model's frozen parts on the training samples once and reuse them in later epochs "
        "(the same weights as without): auto when the adapter declares deterministic_data = True, on (refuse when it "
        "cannot), off.",
        rich_help_panel=TRAINING,
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Keep the feature cache in memory-mapped files here instead of memory.",
        rich_help_panel=TRAINING,
    ),
]
CacheMaxGb = Annotated[
    float,
    typer.Option(
        "--cache-max-gb", help="The feature cache's bound in GiB; a larger cache is not built.", rich_help_panel=TRAINING
    ),
]
ShuffleBuffer = Annotated[
    int,
    typer.Option(
        "--shuffle-buffer",
        min=1,
        help="Samples gathered and shuffled at a time when the training data cannot be read by index (not a DataLoader "
        "over a map-style dataset): a true shuffle within each buffer, an approximation beyond it; bounds memory.",
        rich_help_panel=TRAINING,
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from OUT/state/last.pt.", rich_help_panel=TRAINING)
]
FromScratch = Annotated[
    bool,
    typer.Option(
        "--from-scratch",
        help="Train from the adapter's build_model() initial weights (seeded by "
        "--seed), the papers' protocol, instead of fine-tuning the checkpoint; the before-audit is then the "
        "starting checkpoint's.",
        rich_help_panel=TRAINING,
    ),
]
OPTION = typer.Option(
    [],
    "--option",
    metavar="NAME=VALUE",
    help="Any option of the method, as ba.fix's options= "
    "takes it (a number, true/false, none, auto or a word); repeatable; overrides the method's "
    "own flags. The route for a method added to the registry without flags of its own.",
    rich_help_panel=TRAINING,
)

# Audits (before and after)

Split = Annotated[str, typer.Option(help="Split audited before and after.", rich_help_panel=AUDITS)]
Conditions = Annotated[str, typer.Option(help="Conditions of both audits (see scan).", rich_help_panel=AUDITS)]
AlsoSplit = Annotated[
    str,
    typer.Option(
        "--also-split",
        help="A second split audited before and after the same way, its Full accuracy "
        "change in the verdict: auto (test, when --split is out of distribution), a split name, or none.",
        rich_help_panel=AUDITS,
    ),
]
Before = Annotated[
    Path | None,
    typer.Option(
        "--before", help="Reuse an existing audit of this checkpoint, taken with the same scan settings.", rich_help_panel=AUDITS
    ),
]
MUTE = typer.Option(
    [], "--mute", help="Both audits: what 'missing' means for a modality, e.g. image=mean (see scan).", rich_help_panel=AUDITS
)
MuteCompare = Annotated[
    bool,
    typer.Option("--mute-compare", help="Both audits: also measure each modality's other muting choice.", rich_help_panel=AUDITS),
]
Bootstrap = Annotated[int, typer.Option("--bootstrap", min=10, help="Both audits: bootstrap replicates.", rich_help_panel=AUDITS)]
MinWrong = Annotated[
    int,
    typer.Option(
        "--min-wrong", min=1, help="Both audits: mistakes per bias value for the unweighted JSD mean.", rich_help_panel=AUDITS
    ),
]
EmbeddingPoints = Annotated[
    int,
    typer.Option("--embedding-points", min=10, help="Both audits: points kept for the embedding plots.", rich_help_panel=AUDITS),
]
GradientBatches = Annotated[
    int,
    typer.Option("--gradient-batches", min=1, help="Both audits: batches sampled for gradient conflict.", rich_help_panel=AUDITS),
]
ScanBatchSize = Annotated[
    int,
    typer.Option(
        "--scan-batch-size", min=1, help="Both audits: samples per batch (training uses --batch-size).", rich_help_panel=AUDITS
    ),
]
ScanProjection = Annotated[
    choices.Projection,
    typer.Option(
        "--scan-projection",
        help="Both audits: 2-D projection of the embeddings, umap or pca (--projection is BalGrad's).",
        rich_help_panel=AUDITS,
    ),
]
AuditMinGroup = Annotated[
    int,
    typer.Option(
        "--audit-min-group",
        min=1,
        help="Both audits: smallest group in worst-group accuracy (scan's --min-group; --min-group is MMDB's).",
        rich_help_panel=AUDITS,
    ),
]
GroupBy = Annotated[
    choices.GroupBy, typer.Option("--group-by", help="Both audits: auto, bias or alignment (see scan).", rich_help_panel=AUDITS)
]
CeilingPerClass = Annotated[
    int,
    typer.Option(
        "--ceiling-per-class",
        min=1,
        help="Both audits: samples per class of the ceiling probes (val, else train).",
        rich_help_panel=AUDITS,
    ),
]
Draws = Annotated[
    int,
    typer.Option(
        "--draws", min=1, help="Both audits: independent draws of every random condition (see scan).", rich_help_panel=AUDITS
    ),
]
FavouredFraction = Annotated[
    float,
    typer.Option(
        "--favoured-fraction",
        min=0.0,
        max=1.0,
        help="Both audits: the favoured-class fraction (see scan).",
        rich_help_panel=AUDITS,
    ),
]
KmeansK = Annotated[
    int,
    typer.Option(
        "--kmeans-k",
        min=2,
        help="Clusters of the k-means bias discovery (MMDB without a bias key, and both audits' JSD).",
        rich_help_panel=AUDITS,
    ),
]
