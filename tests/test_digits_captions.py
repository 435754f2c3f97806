"""The bundled demo: digits-captions data, its model and adapter, and the baseline it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biasaudit.data.adapter import load_adapter, validate_adapter
from biasaudit.datasets import COLOURS, DigitsCaptionsAdapter, bag_of_words, load_digits_captions, train_baseline
from biasaudit.datasets.demo_model import VOCABULARY
from biasaudit.datasets.digits_captions import CAPTION_TEMPLATES, SPLITS
from biasaudit.errors import DataError, InputError

N_DIGITS = 1797


@pytest.fixture(scope="module")
def splits():
    return load_digits_captions(seed=0)


@pytest.fixture(scope="module")
def trained():
    adapter = DigitsCaptionsAdapter()
    return adapter, train_baseline(adapter, seed=0)


def _colour_match(split) -> float:
    return float((split.colours == split.labels).float().mean())


def _within_binomial(fraction: float, p: float, n: int, *, sds: float = 4.0) -> bool:
    return abs(fraction - p) <= sds * math.sqrt(p * (1 - p) / n)


# ---- data --------------------------------------------------------------------------------------
def test_same_seed_gives_identical_data_and_another_seed_does_not(splits):
    again = load_digits_captions(seed=0)
    other = load_digits_captions(seed=1)
    for name in SPLITS:
        assert torch.equal(splits[name].images, again[name].images)
        assert splits[name].captions == again[name].captions
        assert torch.equal(splits[name].colours, again[name].colours)
    assert not torch.equal(splits["train"].labels, other["train"].labels)


def test_split_sizes_cover_every_digit_once_and_are_stratified(splits):
    sizes = {name: len(split) for name, split in splits.items()}
    assert sizes == {"train": 989, "val": 180, "test": 305, "ood": 323}
    assert sum(sizes.values()) == N_DIGITS
    for name, split in splits.items():
        per_class = np.bincount(split.labels.numpy(), minlength=10)
        # ~10% of each split per class (load_digits is nearly balanced: 174-183 per digit).
        assert per_class.min() >= 0.09 * len(split) and per_class.max() <= 0.11 * len(split), (name, per_class)


def test_tensors_have_the_documented_shapes_types_and_pixel_range(splits):
    for split in splits.values():
        n = len(split)
        assert split.images.shape == (n, 1, 8, 8) and split.images.dtype == torch.float32
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert split.labels.dtype == torch.long and split.colours.dtype == torch.long
        assert len(split.captions) == n and all(isinstance(c, str) for c in split.captions)


def test_noise_parameter_controls_the_pixel_noise():
    clean = load_digits_captions(noise=0.0)["train"].images
    noisy = load_digits_captions(noise=0.5)["train"].images
    # Without noise the pixels are the original 0..16 grey levels scaled to [0, 1].
    assert torch.allclose(clean * 16, torch.round(clean * 16), atol=1e-5)
    assert not torch.allclose(noisy * 16, torch.round(noisy * 16), atol=1e-3)
    # Clipped noise on a mostly black digit: well away from the clean image on average.
    assert float((noisy - clean).abs().mean()) > 0.2


def test_rho_sets_how_often_the_colour_matches_the_label_in_train(splits):
    assert _within_binomial(_colour_match(splits["train"]), 0.95, len(splits["train"]))
    low = load_digits_captions(rho=0.6)
    assert _within_binomial(_colour_match(low["train"]), 0.6, len(low["train"]))
    assert _colour_match(load_digits_captions(rho=1.0)["test"]) == 1.0
    # Changing rho changes only the captions: the same images in the same splits.
    assert torch.equal(low["train"].images, splits["train"].images)


def test_a_mismatched_colour_is_another_colour_drawn_uniformly(splits):
    train = load_digits_captions(rho=0.0)["train"]
    assert _colour_match(train) == 0.0
    offsets = ((train.colours - train.labels) % 10).numpy()
    counts = np.bincount(offsets, minlength=10)[1:]
    assert counts.min() > 0.5 * counts.mean()


def test_ood_colour_is_independent_of_the_label(splits):
    for rho in (0.95, 1.0):
        ood = load_digits_captions(rho=rho)["ood"]
        assert _within_binomial(_colour_match(ood), 0.1, len(ood))


def test_each_caption_names_exactly_its_bias_colour_and_nothing_else_depends_on_the_label(splits):
    for split in splits.values():
        for caption, colour in zip(split.captions, split.colours.tolist()):
            words = caption.split()
            assert [w for w in words if w in COLOURS] == [COLOURS[colour]], caption
            assert len(words) >= 3
    train = splits["train"]
    remainders_by_label: dict[int, set[str]] = {}
    for caption, label, colour in zip(train.captions, train.labels.tolist(), train.colours.tolist()):
        remainders_by_label.setdefault(label, set()).add(caption.replace(COLOURS[colour], "{colour}"))
    # Every digit is described with every template: only the colour word carries the label.
    assert all(r == set(CAPTION_TEMPLATES) for r in remainders_by_label.values())


def test_bad_options_raise_input_errors_naming_them():
    with pytest.raises(InputError, match="rho=1.5"):
        load_digits_captions(rho=1.5)
    with pytest.raises(InputError, match="noise=-0.1"):
        load_digits_captions(noise=-0.1)


# ---- model and adapter ---------------------------------------------------------------------------
def test_adapter_passes_validation_and_loads_by_module_path():
    validate_adapter(DigitsCaptionsAdapter(), source="demo")
    loaded = load_adapter("biasaudit.datasets.demo_model:DigitsCaptionsAdapter")
    assert isinstance(loaded, DigitsCaptionsAdapter)
    assert loaded.bias_key == "colour" and tuple(loaded.bias_names) == COLOURS
    assert [m.key for m in loaded.modalities] == ["image", "caption"]


def test_data_yields_the_whole_split_in_a_fixed_order_with_the_declared_keys(splits):
    adapter = DigitsCaptionsAdapter()
    batches = list(adapter.data("test", batch_size=100))
    assert [len(b["label"]) for b in batches] == [100, 100, 100, 5]
    assert set(batches[0]) == {"image", "caption", "label", "colour"}
    assert torch.equal(torch.cat([b["image"] for b in batches]), splits["test"].images)
    assert sum((b["caption"] for b in batches), []) == splits["test"].captions
    assert torch.equal(torch.cat([b["colour"] for b in batches]), splits["test"].colours)
    with pytest.raises(DataError, match="Available: train, val, test, ood"):
        next(adapter.data("validation", batch_size=8))


def test_bag_of_words_counts_known_words_and_an_empty_caption_is_all_zeros():
    bow = bag_of_words(["a red digit on white paper", "", "zebra red Red"])
    assert bow.shape == (3, len(VOCABULARY))
    assert float(bow[0].sum()) == 6 and float(bow[0, VOCABULARY.index("red")]) == 1
    assert not bow[1].any()
    assert float(bow[2].sum()) == 2 and float(bow[2, VOCABULARY.index("red")]) == 2


def test_prepare_and_hooks_fit_the_model():
    adapter = DigitsCaptionsAdapter()
    model = adapter.build_model()
    batch = next(iter(adapter.data("val", batch_size=7)))
    batch = dict(batch, caption=[""] * 7)
    pixels, bow = adapter.prepare(batch, device=torch.device("cpu"))
    assert pixels.shape == (7, 1, 8, 8) and not bow.any()
    assert adapter.forward(model, (pixels, bow)).shape == (7, 10)
    assert adapter.classifier(model) is model.classifier
    assert adapter.branches(model) == {"image": model.image_branch, "text": model.text_branch}


def test_baseline_training_is_deterministic_and_reports_progress(trained):
    adapter, model = trained
    calls = []
    again = train_baseline(adapter, epochs=2, seed=0, progress=lambda stage, done, total: calls.append((stage, done, total)))
    twice = train_baseline(adapter, epochs=2, seed=0)
    assert calls == [("train", 1, 2), ("train", 2, 2)]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), twice.state_dict().values()))


def _predictions(model, split, *, mute: str | None = None) -> np.ndarray:
    images = torch.zeros_like(split.images) if mute == "image" else split.images
    captions = [""] * len(split) if mute == "text" else split.captions
    with torch.no_grad():
        return model(images, bag_of_words(captions)).argmax(1).numpy()


def test_baseline_is_accurate_in_distribution_and_text_biased(trained):
    """The demo's story: an accurate model that leans on the caption's colour word."""
    adapter, model = trained
    for name in ("test", "ood"):
        split = adapter.split_data(name)
        labels = split.labels.numpy()
        full = _predictions(model, split)
        no_image, no_text = _predictions(model, split, mute="image"), _predictions(model, split, mute="text")
        flip_image, flip_text = (no_image != full).mean(), (no_text != full).mean()
        assert flip_text > flip_image, (name, flip_text, flip_image)
        if name == "test":
            assert (full == labels).mean() > 0.85
            assert 100 * ((no_image == labels).mean() - (no_text == labels).mean()) >= 20
        else:
            wrong = full != labels
            assert (full == labels).mean() < 0.6
            # Its mistakes copy the colour prior: most wrong answers are the colour's digit.
            assert (full[wrong] == split.colours.numpy()[wrong]).mean() > 0.6


def test_val_is_bias_balanced_by_default_and_iid_on_request():
    """MMDB's --scale auto scores bias-balanced accuracy on val: an iid val would hold too few
    colour-conflicting samples to rank candidates, so val's colours ignore the label unless asked."""
    for rho in (0.95, 1.0):
        val = load_digits_captions(rho=rho)["val"]
        assert _within_binomial(_colour_match(val), 0.1, len(val))
    iid = load_digits_captions(rho=1.0, balanced_val=False)
    assert _colour_match(iid["val"]) == 1.0
    balanced = load_digits_captions(rho=1.0)
    for name in ("train", "test", "ood"):  # only val's colours change
        assert torch.equal(iid[name].colours, balanced[name].colours)
    assert torch.equal(iid["val"].images, balanced["val"].images)
