"""The console: the only place that prints (rich progress and logs on stderr, results on stdout) and the only one
that catches BiasAuditError and turns it into an exit code: 0 ok, 1 gate failed, 2 usage or input error, 3 internal
error, 130 interrupted."""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from biasaudit.errors import BiasAuditError

# Names such as "ratio:a:0.5" hold emoji codes (":a:"): no emoji replacement anywhere. stdout carries results (paths, JSON)
# as plain text, never through markup.
err = Console(
    stderr=True, highlight=False, emoji=False, soft_wrap=True
)  # a message is one line: paths stay whole for copy and grep
out = Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
ADAPTER_HELP = "Your adapter: path/to/file.py:NAME or package.module:NAME (see README, 'Writing an adapter')."
PACKAGE = Path(__file__).resolve().parents[1]


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """biasaudit's own warnings (e.g. a tokenizer output the model does not take) as one line, like its errors; any
    other library's as Python shows them."""
    with warnings.catch_warnings():
        others = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if Path(filename).resolve().is_relative_to(PACKAGE):
                err.print(f"[bold yellow]warning:[/] {escape(str(message))}", markup=True, highlight=False)
            else:
                others(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextmanager
def handled(interrupted: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn our errors into one red sentence and an exit code; anything else is a bug (exit 3).

    `interrupted` says what a Ctrl-C leaves behind, when that is more than nothing (fix keeps its training state).
    Runs write their files as a set that Ctrl-C cannot split (biasaudit._core.output_set): before the set is in place,
    nothing was written; once it is, the interrupt says so.
    """
    try:
        with _one_line_warnings():
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
        err.print(
            "[bold red]internal error:[/] this is a bug in biasaudit or in the adapter's code; the traceback above says where."
        )
        raise typer.Exit(3) from None


def explicit_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (or set through the environment), as opposed to defaults."""
    # By the enum member's name: typer ships its own copy of click's ParameterSource.
    typed = ("COMMANDLINE", "ENVIRONMENT")
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) in typed}


# Without a terminal (nohup, CI logs) a bar cannot redraw: a plain line per stage at most this often, plus its last.
PLAIN_PROGRESS_SECONDS = 30.0


def plain_progress(
    write: Callable[[str], object], *, every: float = PLAIN_PROGRESS_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Callable[..., None]:
    """A progress callback writing 'stage: done/total (pct), rate/s, ETA' lines: one per stage every `every` seconds,
    and one when a stage that printed completes, so that a long scan under nohup or CI shows it is alive without
    flooding the log (a stage shorter than `every` prints nothing)."""
    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def update(stage: str, done: int, total: int | None, status: str | None = None) -> None:
        now = clock()
        started.setdefault(stage, now)
        finished = total is not None and done >= total
        printed = stage in last
        if (finished and not printed) or (not finished and now - last.get(stage, started[stage]) < every):
            return
        last[stage] = now
        elapsed = now - started[stage]
        rate = done / elapsed if elapsed > 0 else None
        parts = [f"{stage}: {done}/{total}" if total else f"{stage}: {done}"]
        if total:
            parts[0] += f" ({100 * done / total:.0f}%)"
        if rate:
            parts.append(f"{rate:.1f}/s")
            if total and not finished:
                parts.append(f"ETA {max(total - done, 0) / rate:.0f} s")
        if status:
            parts.append(status)
        write(", ".join(parts) + "\n")

    return update


@contextmanager
def progress_bars() -> Iterator:
    if not err.is_terminal:
        yield plain_progress(sys.stderr.write)
        return
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=err, transient=True) as bars:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int | None, status: str | None = None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, status="")
            if status is None:
                bars.update(tasks[stage], completed=done, total=total)
            else:
                bars.update(tasks[stage], completed=done, total=total, status=status)

        yield update


def _ci_text(ci, *, scale: float = 1.0, prefix: str = "") -> str:
    """'[lo, hi]', or 'no interval' when the bootstrap gave none (a tiny split: no replicate drew a sample). The bounds as
    every report prints them (biasaudit.verdict.words): a bound of -0.03 stays '-0.03', never '-0.0'."""
    from biasaudit.verdict.words import interval

    text = interval(ci, scale=scale)
    return f"{prefix}{text}" if text else "no interval"


def summary_table(audit: dict) -> Table:
    from biasaudit.verdict.words import change, number

    table = Table(title=f"modality bias on split {audit['dataset']['split']!r} (n={audit['dataset']['n']})", title_justify="left")
    for column in ("condition", "accuracy %", "95% CI", "flip rate"):
        table.add_column(column, justify="left" if column == "condition" else "right")
    for row in audit["conditions"]:
        if row["group"] in ("full", "missing", "noisy", "custom", "mute_compare"):
            table.add_row(escape(row["name"]), number(row["accuracy"]), _ci_text(row["accuracy_ci"]), number(row["flip_rate"], 2))
    for group in ("missing", "noisy"):
        section = audit["summary"].get(group)
        if section:
            table.add_row(
                f"{group}: Avg / Gap",
                f"{number(section['avg'])} / {number(section['gap'])}",
                _ci_text(section["gap_ci"], prefix="gap "),
                f"dominant: {escape(section['dominant'] or 'none')}",
            )
    carrier = audit.get("carrier") or {}
    if carrier.get("available"):
        for name, row in carrier["modalities"].items():
            swap = row["bias_swap"]
            if swap["excess_follow_rate"] is not None:
                table.add_row(
                    f"bias swap: {escape(name)}",
                    change(swap["excess_follow_rate"], scale=100),
                    _ci_text(swap["excess_follow_rate_ci"], scale=100),
                    "carrier" if name == carrier.get("carrier") else "",
                )
    for modality, points in (audit.get("ratio_sweep") or {}).items():
        # The realised share muted next to each rung: one seed's nested subsets sit above or below r together.
        for p in points:
            if p["ratio"] < 1:
                muted = "" if p.get("muted_fraction") is None else f"{number(p['muted_fraction'], scale=100)}% muted"
                table.add_row(
                    escape(f"ratio:{modality}:{p['ratio']:g}"), number(p["accuracy"]), _ci_text(p["accuracy_ci"]), muted
                )
    section = audit.get("groups") or {}
    groups = (section.get("conditions") or {}).get("full")
    if groups and section.get("blind"):
        # Worst-group accuracy would cover groups the shortcut never misleads: the pooled conflicting figure instead.
        if groups.get("conflicting_accuracy") is not None:
            table.add_row(
                "bias-conflicting",
                number(groups["conflicting_accuracy"]),
                _ci_text(groups.get("conflicting_accuracy_ci")),
                f"all in groups below min_group {section.get('min_group')}",
            )
        else:
            table.add_row("worst group", "n/a", "", "no bias-conflicting samples")
    elif groups and groups.get("worst_group") is not None:
        # The worst group's own exact interval where the audit has it: a bootstrap of 0 of 11 has no width.
        table.add_row(
            "worst group / balanced",
            f"{number(groups['worst_group'])} / {number(groups['bias_balanced'])}",
            _ci_text(
                groups.get("worst_group_exact_ci") or groups["worst_group_ci"],
                prefix="exact " if groups.get("worst_group_exact_ci") else "",
            ),
            escape(groups.get("worst_group_label") or ""),
        )
    jsd = audit.get("jsd", {})
    if jsd.get("available"):
        # The unweighted mean needs min_wrong mistakes per bias value; say so rather than drop the row.
        mean, weighted = number(jsd.get("mean"), 3), number(jsd.get("weighted_mean"), 3)
        table.add_row(
            "JSD mean / weighted",
            f"{mean} / {weighted}",
            "",
            "no mistakes on this split" if jsd.get("n_wrong") == 0 else "low = mistakes copy the bias",
        )
    return table


def print_verdict(audit: dict) -> None:
    """The scan's verdict in words under the table: bias measures first, then reliance, then caveats."""
    verdict = audit.get("verdict") or {}
    if verdict.get("headline"):
        err.print(f"[bold]verdict:[/] {escape(verdict['headline'])}")
    for sentence in verdict.get("sentences", []):
        err.print(f"  - {sentence}", markup=False, highlight=False)
