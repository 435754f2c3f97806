"""The adapter as a method's prepare() and epoch_end() see it in biasaudit's loop (loop.py)."""

from __future__ import annotations

from typing import Any, cast
from collections.abc import Iterator, Mapping

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import adapter_batches
from biasaudit.errors import InputError
from biasaudit.training.epoch_batches import held_out_batches, training_batches
from biasaudit.training.train_config import TrainConfig


def training_view(adapter: Adapter, config: TrainConfig) -> Adapter:
    """TrainingView(adapter, config), typed as the adapter it stands for. The cast is sound: the view answers every
    attribute of an Adapter (data() its own, the rest the adapter's through __getattr__), which mypy cannot see."""
    return cast(Adapter, TrainingView(adapter, config))


class TrainingView:
    """The adapter as a method's prepare() sees it: the training split without the held-out rows, so margins,
    k-means clusters and any other statistic a method fits on train never see the samples that validate it
    (methods.md section 6, `--scale auto` without a val split). Every other attribute is the adapter's own."""

    def __init__(self, adapter: Adapter, config: TrainConfig) -> None:
        self._adapter, self._config = adapter, config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def data(self, split: str, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        if split == self._config.split:
            return training_batches(self._adapter, config=self._config, batch_size=batch_size)
        return iter(self._adapter.data(split, batch_size=batch_size))

    def indexed_training_batches(self, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        """The training batches in the adapter's order with the SAMPLE_INDEX column (JTT's error-set pass)."""
        return training_batches(self._adapter, config=self._config, batch_size=batch_size, index=True)

    def validation_source(self) -> str | None:
        """Where a method validates: "val" when the adapter offers it, else the held-out part of train when the run
        holds one out (config.holdout), else None."""
        if "val" in self._adapter.splits:
            return "val"
        return f"held-out {self._config.holdout:.0%} of train" if self._config.holdout > 0 else None

    def validation(self, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        """The batches of validation_source(): never samples the run trains on."""
        if "val" in self._adapter.splits:
            return iter(adapter_batches(self._adapter, "val", batch_size=batch_size))
        if self._config.holdout > 0:
            return held_out_batches(self._adapter, config=self._config, batch_size=batch_size)
        raise InputError("There is no validation data: the adapter offers no 'val' split and the run holds out no part of train.")
