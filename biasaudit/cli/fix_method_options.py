"""The options of `biasaudit fix` that belong to one method (or a few), by their --help panel, as Annotated types;
`fix` (cli/fix.py) gives them their defaults. With them, the parsers of the values that are more than a number or a
word: --dfr-c-grid and --option."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from biasaudit.cli import choices

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

# MMDB

Scale = Annotated[
    str,
    typer.Option(
        help="MMDB: the cosine scale s, or auto (grid 1..32 by bias-balanced validation accuracy).", rich_help_panel="MMDB"
    ),
]
MinGroup = Annotated[
    int,
    typer.Option(
        "--min-group",
        min=1,
        help="An auto option (--scale, --alpha, --gamma, --eta, --jtt-upweight): smallest (label, bias) group counted "
        "in the bias-balanced validation accuracy.",
        rich_help_panel="MMDB",
    ),
]
BiasSource = Annotated[
    choices.BiasSource,
    typer.Option(
        "--bias",
        help="MMDB, Group DRO, DFR: where the bias values come from: key (the adapter's bias_key), "
        "kmeans (k-means on the branch of the modality the model leans on; methods.md section 3) or auto "
        "(key when the adapter declares one).",
        rich_help_panel="MMDB",
    ),
]
BiasModality = Annotated[
    str | None,
    typer.Option(
        "--bias-modality",
        help="MMDB, Group DRO, DFR with k-means bias: the modality whose branch is "
        "clustered (default: the before audit's carrier, else its dominant one).",
        rich_help_panel="MMDB",
    ),
]
MinCount = Annotated[
    int, typer.Option("--min-count", help="MMDB: ignore labels with fewer samples under a bias value.", rich_help_panel="MMDB")
]
EntropyGate = Annotated[
    float | None,
    typer.Option(
        "--entropy-gate", help="MMDB: zero the margins of bias values with label entropy >= this (bits).", rich_help_panel="MMDB"
    ),
]

# BalGrad

LambdaInitial = Annotated[
    float, typer.Option("--lambda-initial", help="BalGrad: initial mutual-learning weight λ_0 (0..1).", rich_help_panel="BalGrad")
]
LambdaSchedule = Annotated[
    choices.Schedule,
    typer.Option("--lambda-schedule", help="BalGrad: linear (λ_0 rising to 1) or constant (λ_0).", rich_help_panel="BalGrad"),
]
Beta = Annotated[float, typer.Option(help="BalGrad: weight of the unimodal losses on the branches.", rich_help_panel="BalGrad")]
KlMode = Annotated[choices.KLMode, typer.Option("--kl-mode", help="BalGrad: mutual or undirected.", rich_help_panel="BalGrad")]
Projection = Annotated[
    choices.BalGradProjection, typer.Option(help="BalGrad: global or per_modality projection.", rich_help_panel="BalGrad")
]
BalgradWeights = Annotated[
    choices.WeightMode,
    typer.Option(
        "--balgrad-weights",
        help="BalGrad KL weights: batch (this batch's unimodal losses) or running (their moving averages, momentum 0.9).",
        rich_help_panel="BalGrad",
    ),
]

# BalGrad, OGM-GE, MMPareto

HeadMode = Annotated[
    choices.HeadMode | None,
    typer.Option(
        "--head-mode",
        help="BalGrad, OGM-GE, MMPareto unimodal heads: shared_zero (the model with the "
        "other branch zeroed), ogm_split (classifier weight slices, half the bias) or separate (new "
        "training-only linear heads). Default: shared_zero for balgrad, ogm_split for ogm_ge, separate "
        "for mmpareto.",
        rich_help_panel="BalGrad, OGM-GE, MMPareto",
    ),
]

# OGM-GE

Alpha = Annotated[
    str,
    typer.Option(
        "--alpha",
        help="OGM-GE: α of the coefficient k = 1 − tanh(α·ρ) on the dominant branch's gradients "
        "(reference range 0.1-0.8), or auto (0.1, 0.3, 0.8 by bias-balanced validation accuracy).",
        rich_help_panel="OGM-GE",
    ),
]
Ge = Annotated[
    bool,
    typer.Option(
        "--ge/--no-ge",
        help="OGM-GE: add the generalisation-enhancement noise N(0, std(g)²) to the modulated gradients.",
        rich_help_panel="OGM-GE",
    ),
]

# MMPareto

Gamma = Annotated[
    str,
    typer.Option(
        "--gamma",
        help="MMPareto: γ, the factor on every branch's integrated gradient, or auto (1, 1.5, 2 "
        "by bias-balanced validation accuracy).",
        rich_help_panel="MMPareto",
    ),
]

# Group DRO

Eta = Annotated[
    str,
    typer.Option(
        "--eta",
        help="Group DRO: step size of the group weights q (q_g <- q_g exp(eta L_g)), or auto "
        "(0.001, 0.01, 0.1 by bias-balanced validation accuracy); groups are (label, bias value), the bias value "
        "as --bias says.",
        rich_help_panel="Group DRO",
    ),
]

# JTT

JttUpweight = Annotated[
    str,
    typer.Option(
        "--jtt-upweight",
        help="JTT: loss weight λ of stage 1's misclassified training samples in "
        "stage 2, or auto (5, 10, 20 by bias-balanced validation accuracy).",
        rich_help_panel="JTT",
    ),
]
JttFraction = Annotated[
    float,
    typer.Option(
        "--jtt-fraction",
        help="JTT: fraction of --epochs spent on stage 1 (plain ERM); stage 2 restarts from the starting weights for the rest.",
        rich_help_panel="JTT",
    ),
]

# D&R

DandrEvery = Annotated[
    int | None,
    typer.Option(
        "--dandr-every",
        help="D&R: re-initialise after every this many epochs (default: "
        "epochs // (max-times + 1), e.g. 5 of 20; the paper's 20 suits 100+ epochs).",
        rich_help_panel="D&R",
    ),
]
DandrMaxTimes = Annotated[
    int, typer.Option("--dandr-max-times", help="D&R: at most this many re-initialisations.", rich_help_panel="D&R")
]

# DFR

DfrCGrid = Annotated[
    str,
    typer.Option(
        "--dfr-c-grid",
        help="DFR: candidate inverse L2 strengths C, comma-separated, chosen "
        "by worst-group accuracy on half of val (else a seeded 20% of train).",
        rich_help_panel="DFR",
    ),
]


def parse_c_grid(text: str) -> tuple[float, ...]:
    """--dfr-c-grid as numbers (DFR checks that they are positive and finite)."""
    from biasaudit.errors import InputError

    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--dfr-c-grid is {text!r}; expected positive numbers separated by commas, e.g. 0.1,1,10.") from None


def parse_method_options(given: list[str]) -> dict[str, Any]:
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
