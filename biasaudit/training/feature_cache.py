"""Frozen-encoder feature caching for biasaudit's loop (loop.py): the outputs of the model's frozen parts, computed
once, stand in for those parts in every training batch, so later epochs skip them.

A frozen part is an outermost submodule whose parameters are all frozen (model_modes.frozen_modules); the loop keeps
it in eval mode, so with deterministic data (Adapter.deterministic_data) its output for a sample is the same in every
epoch and one pass can compute it. Training with the cache must give the very weights it gives without (torch.equal):

- Exactness. CPU and GPU kernels (matrix products, convolutions) may round a row differently for another number of
  rows in the batch (or another padded width), though not for another order of the rows (the probe checks that,
  feature_cache_probe.py). So the fill pass batches the samples as training does, each in a batch of the training's
  size (feature_cache_fill.py), and records per sample the signature of the call that computed it: the shapes and
  dtypes of the module's inputs. A call in training is served from the cache when its signature is the one every one
  of its samples was computed with; otherwise (the shorter last batch of an epoch) the module runs as usual.
- Nothing else changes: the fill runs in eval mode without gradient (no dropout, no BatchNorm update) and every global
  random generator is put back afterwards, so a run with the cache draws exactly what a run without draws.
- A frozen part that receives gradient (trainable layers upstream), runs more than once per forward, or returns
  something other than tensors (or tuples, lists, dicts of them) is left out ("auto") or refused ("on").

Index space: the global sample index of the training split (epoch_batches.SAMPLE_INDEX); rows are stored compactly
in the fill's order, so held-out samples take no room.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from biasaudit._core.output_paths import check_output_dir
from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.training import rng_states
from biasaudit.training.epoch_batches import SAMPLE_INDEX, without_index
from biasaudit.training.feature_cache_fill import Entry, fill, fill_batches, split_size, uncacheable
from biasaudit.training.feature_cache_probe import NOT_RUN, Candidate, probe
from biasaudit.training.feature_cache_serve import Served, check_unchanged
from biasaudit.training.model_modes import frozen_modules
from biasaudit.training.train_config import TrainConfig

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class CacheSettings:
    """mode: "auto" caches what it can and says why not otherwise; "on" refuses (InputError) when it cannot; "off".
    directory: None keeps the outputs in memory, else in np.memmap files under it (created if missing).
    max_bytes: a cache that would be larger is not built ("on": refused, naming the size)."""

    mode: str = "auto"
    directory: Path | None = None
    max_bytes: int = 4 * 2**30


def check_cache_settings(settings: CacheSettings) -> None:
    """Refuse settings that cannot work, before any expensive work; leaves nothing behind."""
    if settings.mode not in MODES:
        raise InputError(f"Feature cache mode {settings.mode!r} is unknown. Available: {', '.join(MODES)}.")
    bound = settings.max_bytes
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
        raise InputError(f"The feature cache bound max_bytes is {bound!r}; expected a positive whole number of bytes.")
    if settings.directory is not None:
        # A directory that exists as a file, lies below a file, or cannot be written to: refused by trying (a probe
        # file, removed at once), since permission bits say nothing to root.
        check_output_dir(settings.directory, option="Feature cache directory")


def _size(n: int) -> str:
    """Bytes for a reader: a whole number of the largest unit when exact, else one decimal and the exact count."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n // scale} {unit}" if n % scale == 0 else f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


NONDETERMINISTIC = (
    "nothing cached: the adapter does not declare deterministic_data = True (random augmentations would be frozen "
    "into the cache)."
)


def _nondeterministic(adapter: Adapter) -> str:
    return (
        f"The feature cache needs deterministic training data, but adapter {type(adapter).__name__} does not declare "
        "deterministic_data = True (random augmentations would be frozen into the cache); set it or use --feature-cache off."
    )


def check_cache_plan(
    model: nn.Module, adapter: Adapter, settings: CacheSettings, *, config: TrainConfig, device: torch.device
) -> None:
    """What "on" is refused for, before any audit: settings that cannot work, a model with no frozen part, data the
    adapter does not declare deterministic, and (one probe forward of the first training batch, which changes nothing)
    a frozen part that receives gradient, runs more than once per forward or returns what cannot be stored."""
    check_cache_settings(settings)
    if settings.mode != "on":
        return
    if not frozen_modules(model):
        raise InputError(
            "--feature-cache on caches the outputs of the model's frozen parts, but no part of the model has all its "
            "parameters frozen (requires_grad False); use --feature-cache off."
        )
    if getattr(adapter, "deterministic_data", False) is not True:
        raise InputError(_nondeterministic(adapter))
    first = next(fill_batches(adapter, config=config), None)
    if first is None:
        return  # an empty split is the loop's to refuse, with its own sentence
    names = {id(module): name for name, module in model.named_modules()}
    candidates = [Candidate(names[id(m)], m) for m in frozen_modules(model)]
    model.to(device)  # where training puts it
    probe(model, adapter, without_index(first[0]), candidates, rows=len(first[0][SAMPLE_INDEX]), device=device)
    refused = [(c.name, c.problem) for c in candidates if c.problem is not None and c.problem != NOT_RUN]
    if refused:
        raise InputError(uncacheable(*refused[0]))
    too_large = _over_bound([c for c in candidates if c.problem is None], split_size(adapter, config=config)[1], settings)
    if too_large is not None:
        raise InputError(too_large[0])


def _over_bound(kept: list[Candidate], samples: int, settings: CacheSettings) -> tuple[str, str] | None:
    """(the refusal, the note) when the kept modules' outputs on `samples` samples exceed the bound; else None."""
    per_sample = sum(leaf.row_bytes for c in kept for leaf in c.leaves)
    if per_sample * samples <= settings.max_bytes:
        return None
    size = f"{_size(per_sample * samples)}, {per_sample} bytes a sample for {samples} samples"
    bound = _size(settings.max_bytes)
    return (
        f"The feature cache would take {size}, more than its bound of {bound} (--cache-max-gb); raise the bound or use "
        "--feature-cache off.",
        f"nothing cached: the outputs of the frozen modules would take {size}, more than the bound of {bound}.",
    )


def _declined(settings: CacheSettings, refusal: str, note: str) -> tuple[None, str]:
    if settings.mode == "on":
        raise InputError(refusal)
    return None, note


class FeatureCache:
    """The filled cache of a training run (module docstring). Build it with `FeatureCache.build` before training and
    wrap each training batch's forward and backward in `serving(indices)`."""

    def __init__(
        self,
        entries: list[Entry],
        *,
        slot: Tensor,
        settings: CacheSettings,
        note: str,
        excluded: dict[str, str],
    ) -> None:
        self._entries, self._slot = entries, slot
        self._settings, self.note, self._excluded = settings, note, excluded
        self._calls = {"served": 0, "ran": 0}

    @classmethod
    def build(
        cls, model: nn.Module, adapter: Adapter, *, config: TrainConfig, settings: CacheSettings, device: torch.device
    ) -> tuple[FeatureCache | None, str]:
        """Decide and fill the cache before training: (the cache or None, one sentence for the run's log saying what
        was cached, where and how large, or why nothing was). Global random generators are left as they were."""
        check_cache_settings(settings)
        if settings.mode == "off":
            return None, "feature cache off: frozen modules run in every training batch."
        names = {id(module): name for name, module in model.named_modules()}
        frozen = frozen_modules(model)
        if not frozen:
            return None, "nothing to cache: no part of the model has all its parameters frozen."
        if isinstance(model, nn.DataParallel):  # its replicas copy the stand-in forwards, each for the whole batch
            return _declined(
                settings,
                "The feature cache cannot serve a model wrapped in nn.DataParallel; have build_model() return the bare "
                "module or use --feature-cache off.",
                "nothing cached: the model is wrapped in nn.DataParallel, whose replicas the cache cannot serve.",
            )
        if getattr(adapter, "deterministic_data", False) is not True:
            return _declined(settings, _nondeterministic(adapter), NONDETERMINISTIC)
        generators = rng_states.capture()  # the data's own code may draw; a run with the cache must draw what one without does
        try:
            return cls._build(
                model, adapter, [Candidate(names[id(m)], m) for m in frozen], config=config, settings=settings, device=device
            )
        finally:
            rng_states.restore(generators)

    @classmethod
    def _build(
        cls,
        model: nn.Module,
        adapter: Adapter,
        candidates: list[Candidate],
        *,
        config: TrainConfig,
        settings: CacheSettings,
        device: torch.device,
    ) -> tuple[FeatureCache | None, str]:
        batches = fill_batches(adapter, config=config)
        first = next(batches, None)
        if first is None:
            return None, "nothing to cache: the training split is empty."
        rows = len(first[0][SAMPLE_INDEX])
        probe(model, adapter, without_index(first[0]), candidates, rows=rows, device=device)
        excluded = {c.name: c.problem for c in candidates if c.problem is not None}
        refused = [(name, problem) for name, problem in excluded.items() if problem != NOT_RUN]
        if settings.mode == "on" and refused:
            raise InputError(uncacheable(*refused[0]))
        kept = [c for c in candidates if c.problem is None]
        if not kept:
            return None, _note([], excluded, samples=0, settings=settings)
        total, samples = split_size(adapter, config=config)
        too_large = _over_bound(kept, samples, settings)
        if too_large is not None:
            return _declined(settings, *too_large)
        directory = None if settings.directory is None else Path(settings.directory)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        entries, slot = fill(
            model,
            adapter,
            kept,
            itertools.chain([first], batches),
            split=config.split,
            mode=settings.mode,
            directory=directory,
            samples=samples,
            total=total,
            device=device,
            excluded=excluded,
        )
        note = _note(entries, excluded, samples=samples, settings=settings)
        if not entries:
            return None, note
        return cls(entries, slot=slot, settings=settings, note=note, excluded=excluded), note

    @contextmanager
    def serving(self, indices: Tensor) -> Iterator[None]:
        """Within the block, each cached module returns its stored outputs for these global sample indices (one per
        row of the batch being forwarded) instead of running, when the call's signature is the one its samples were
        computed with; else it runs (module docstring)."""
        wanted = indices.detach().to("cpu", torch.long).reshape(-1)
        if wanted.numel() and (int(wanted.min()) < 0 or int(wanted.max()) >= len(self._slot)):
            raise AssertionError(f"feature cache: sample indices outside 0..{len(self._slot) - 1} were asked for")
        rows = self._slot[wanted]
        if bool((rows < 0).any()):
            missing = int(wanted[rows < 0][0])
            raise AssertionError(f"feature cache: sample {missing} was never filled (a held-out sample, or other data)")
        for entry in self._entries:
            check_unchanged(entry)
        replaced = [(entry, vars(entry.module).get("forward")) for entry in self._entries]
        for entry, _ in replaced:
            # An instance attribute: nn.Module.__call__ finds it first (its hooks still run around it).
            vars(entry.module)["forward"] = Served(entry, rows, entry.module.forward, self._calls)
        try:
            yield
        finally:
            for entry, own in replaced:
                if own is None:
                    del vars(entry.module)["forward"]
                else:  # a forward the user had set on the instance
                    vars(entry.module)["forward"] = own

    def settings(self) -> dict[str, Any]:
        """For the run's manifest: the mode, where the outputs are kept, which modules, samples and bytes."""
        directory = self._settings.directory
        return {
            "mode": self._settings.mode,
            "storage": "memory" if directory is None else "memmap",
            "directory": None if directory is None else str(directory),
            "max_bytes": self._settings.max_bytes,
            "modules": [entry.name for entry in self._entries],
            "excluded": dict(self._excluded),
            "samples": self._entries[0].store.samples,
            "bytes": sum(entry.store.nbytes for entry in self._entries),
            "files": [str(path) for entry in self._entries for path in entry.store.paths],
        }

    def usage(self) -> dict[str, int]:
        """Calls of cached modules so far inside `serving`: answered from the cache ("served"), and run ("ran")."""
        return dict(self._calls)

    def close(self, *, remove_files: bool = True) -> None:
        """Let go of the stored outputs (and delete the memmap files, unless told to keep them); after training."""
        for entry in self._entries:
            entry.store.close(remove=remove_files)


def _note(entries: list[Entry], excluded: dict[str, str], *, samples: int, settings: CacheSettings) -> str:
    if not entries:
        return "nothing cached: " + "; ".join(f"frozen module {n!r} {p}" for n, p in excluded.items()) + "."
    left_out = "".join(f"; left out frozen module {n!r}, which {p}" for n, p in excluded.items())
    names = ", ".join(repr(entry.name) for entry in entries)
    size = _size(sum(entry.store.nbytes for entry in entries))
    where = "in memory" if settings.directory is None else f"in memmap files under {settings.directory}"
    plural = "s" if len(entries) > 1 else ""
    return f"cached the outputs of frozen module{plural} {names} for {samples} training samples ({size} {where}){left_out}."
