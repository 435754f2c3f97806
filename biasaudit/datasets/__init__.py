"""Bundled demo data: digits-captions (real 8x8 digits + captions with a shortcut colour word)."""

from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter, bag_of_words, train_baseline
from biasaudit.datasets.digits_captions import COLOURS, DigitsCaptionsSplit, load_digits_captions

__all__ = [
    "COLOURS",
    "DemoModel",
    "DigitsCaptionsAdapter",
    "DigitsCaptionsSplit",
    "bag_of_words",
    "load_digits_captions",
    "train_baseline",
]
