"""Logging biasaudit results to Weights & Biases (pip install "biasaudit[wandb]"): the backend of
`ba.log(..., to="wandb")` and `--log wandb`.

W&B's own settings decide where a run goes: WANDB_PROJECT (or `experiment`), WANDB_ENTITY, WANDB_MODE (online,
offline, disabled), WANDB_DIR, WANDB_BASE_URL, WANDB_API_KEY. The run: the active one (wandb.run), left open; else a new
one (named `run_name`), finished when the tracker closes. Logged: the metrics in one history step (and so in the
summary), the params in the config, the tags (the verdict among them) in the summary, each table as a wandb.Table
(biasaudit/table/NAME), each HTML file as a wandb.Html (biasaudit/html/NAME) and every file in an artifact of type
biasaudit-KIND.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from biasaudit.errors import InputError
from biasaudit.integrations.tracking import not_installed, said
from biasaudit.integrations.tracking_keys import PREFIX, Entry, part
from biasaudit.integrations.tracking_run import TrackedRun

try:
    import wandb
except ImportError:
    raise ImportError(str(not_installed("wandb"))) from None

MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # wandb.Settings.mode
LOCAL = ("offline", "disabled", "dryrun")  # modes that need no account


class WandbBackend:
    def __init__(self, *, where: str, experiment: str | None, run_name: str | None, tracking_uri: str | None) -> None:
        if tracking_uri is not None:
            raise InputError(f"The 'tracking_uri' parameter of {where} is MLflow's; W&B reads its server from WANDB_BASE_URL.")
        self.experiment, self.run_name = experiment, run_name
        self.run: Any = None
        self.owned = False

    def check(self) -> None:
        """The mode is one W&B knows, and an online run can log in: before any work, in one sentence."""
        if wandb.run is not None:  # the result goes into it: another project or name asked for would be ignored
            for option, asked, held in (
                ("project", self.experiment, wandb.run.project),
                ("run name", self.run_name, wandb.run.name),
            ):
                if asked is not None and asked != held:
                    raise InputError(
                        f"The {option} {asked!r} was given, but a W&B run is active (wandb.run, {option} {held!r}) and the "
                        f"result would go to it: leave the {option} out, or finish that run first."
                    )
            return
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if mode and mode not in MODES:
            raise InputError(f"WANDB_MODE is {mode!r}, which W&B does not know. Available: {', '.join(MODES)}.")
        if mode == "disabled":  # W&B would take every figure, keep none, and hand back a folder it never writes
            raise InputError("WANDB_MODE is 'disabled', under which W&B logs nothing: unset it, or set WANDB_MODE=offline.")
        if mode in LOCAL:
            return
        online = f"W&B logs online here (WANDB_MODE {mode or 'unset'})"
        url = wandb.setup().settings.base_url  # WANDB_BASE_URL, else `wandb login --host`'s, else W&B's own
        # verify: the server is asked now, not at wandb.init after the work. prompt=False: with no key, W&B would ask
        # in a terminal and, unanswered, go offline quietly; here it answers False. (Its `timeout` is the prompt's.)
        try:
            logged_in = wandb.login(verify=True, prompt=False)
        except Exception as exc:  # W&B's answer (a server that cannot be reached, a key refused), whatever its class
            raise InputError(
                f"{online} but cannot log in to {url} ({said(exc)}): check WANDB_BASE_URL and the API key, "
                "or set WANDB_MODE=offline."
            ) from None
        if not logged_in:
            raise InputError(
                f"{online} but has no API key for {url}: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline."
            )

    def _run(self) -> Any:
        if self.run is None:
            if wandb.run is not None:
                self.run, self.owned = wandb.run, False
            else:
                try:
                    self.run = wandb.init(project=self.experiment, name=self.run_name, job_type="biasaudit")
                except Exception as exc:  # W&B's own answer (a server that cannot be reached, a project refused)
                    raise InputError(f"W&B could not start a run: {said(exc)}.") from None
                self.owned = True
        return self.run

    def log(self, entry: Entry, files: list[Path]) -> TrackedRun:
        run = self._run()
        run.config.update(dict(entry.params), allow_val_change=True)
        data: dict[str, Any] = dict(entry.metrics)
        for table in entry.tables:
            data[f"{PREFIX}/table/{table.name}"] = wandb.Table(
                columns=list(table.columns), data=[list(row) for row in table.rows]
            )
        for path in files:
            if path.suffix == ".html":  # the report as W&B shows it: inject=False keeps the page as written
                data[f"{PREFIX}/html/{part(path.stem)}"] = wandb.Html(path.read_text(encoding="utf-8"), inject=False)
        run.log(data)
        run.summary.update(dict(entry.tags))
        run.tags = tuple(dict.fromkeys((*(run.tags or ()), PREFIX, f"{PREFIX}-{entry.kind}")))
        if files:
            artifact = wandb.Artifact(f"{PREFIX}-{entry.kind}", type=f"{PREFIX}-{entry.kind}")
            for path in files:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact)
        return TrackedRun(
            tracker="wandb",
            run_id=run.id,
            experiment=run.project,
            location=run.url or str(Path(run.dir).parent),
            metrics=tuple(entry.metrics),
            artifacts=tuple(path.name for path in files),
        )

    def end(self, *, failed: bool) -> None:
        if self.owned and self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
        self.run, self.owned = None, False
