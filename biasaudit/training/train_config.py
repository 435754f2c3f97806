"""The settings of one training run in biasaudit's loop (loop.py), checked when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from biasaudit.errors import InputError
from biasaudit.training.optimizers import check_optimizer
from biasaudit.training.precision import check_precision_name


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    shuffle_buffer: int = 100_000
    split: str = "train"
    # Fraction of the train split held out (seeded per sample) for model selection when there is no val split.
    holdout: float = 0.0
    optimizer: str = "adam"  # biasaudit/training/optimizers.py
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    # The steps' precision: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler); precision.py.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} is {getattr(self, name)}; expected a positive integer.")
        # Adam works in the parameters' precision: a rate float32 cannot hold overflows inside torch (exit 3).
        if not 0 < self.lr <= torch.finfo(torch.float32).max:
            raise InputError(f"lr is {self.lr}; expected a positive learning rate that float32 can hold (at most 3.4e38).")
        check_optimizer(self.optimizer, weight_decay=self.weight_decay, momentum=self.momentum)
        check_precision_name(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
