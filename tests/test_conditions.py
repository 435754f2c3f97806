"""The condition grid a user asks for is the one that is evaluated, and mistakes name what is available."""

import pytest

from biasaudit.data.adapter import Modality
from biasaudit.scanning.conditions import parse_conditions
from biasaudit.errors import ConditionError

MODS = [Modality("image", "image"), Modality("text", "text")]


def names(spec):
    return [c.name for c in parse_conditions(spec, MODS)]


def test_default_grid_has_full_missing_noisy_and_the_ratio_sweep():
    grid = names("default")
    assert grid[:5] == ["full", "missing:image", "missing:text", "noisy:image", "noisy:text"]
    assert [n for n in grid if n.startswith("ratio:text")] == [f"ratio:text:{r}" for r in ("0.1", "0.3", "0.5", "0.7", "0.9", "1")]


def test_noisy_defaults_follow_methods_md():
    grid = {c.name: c for c in parse_conditions("noisy", MODS)}
    assert (grid["noisy:image"].impairment, grid["noisy:image"].severity) == ("salt_pepper", 0.3)
    assert (grid["noisy:text"].impairment, grid["noisy:text"].severity) == ("token_delete", 0.15)


def test_full_is_always_first_and_duplicates_are_dropped():
    assert names("missing:text,missing:text,missing") == ["full", "missing:text", "missing:image"]


def test_custom_impairment_with_severity():
    (full, custom) = parse_conditions("image=salt_pepper:0.1", MODS)
    assert (custom.modality, custom.impairment, custom.severity, custom.group) == ("image", "salt_pepper", 0.1, "custom")


@pytest.mark.parametrize("spec,message", [
    ("blurry", "Unknown condition 'blurry'. Available: default"),
    ("missing:audio", "Available: image, text"),
    ("image=blur:0.2", "Available: .*salt_pepper"),
    ("image=salt_pepper:1.5", r"outside \[0, 1\]"),
    ("text=token_delete:-0.1", r"outside \[0, 1\]"),
    ("text=token_delete:lots", "expected a number"),
])
def test_bad_condition_is_one_clear_sentence(spec, message):
    with pytest.raises(ConditionError, match=message):
        parse_conditions(spec, MODS)


def test_a_modality_can_choose_what_missing_means():
    grid = {c.name: c for c in parse_conditions("missing,ratio", [Modality("image", "image", missing="mean"), Modality("text", "text")])}
    assert grid["missing:image"].impairment == "mean" and grid["ratio:image:0.5"].impairment == "mean"
    with pytest.raises(ConditionError, match="does not remove modality 'image'.*Available: mean, zero"):
        parse_conditions("missing", [Modality("image", "image", missing="salt_pepper"), Modality("text", "text")])
