"""Every registered impairment keeps its invariants (methods.md section 1). If one breaks, a scan would
report accuracies for inputs that silently changed shape, leaked across conditions, or differed between
two runs with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasaudit.data.adapter import Modality
from biasaudit.errors import ConditionError
from biasaudit.data.impairments import IMPAIRMENTS, impair_batch, resolve_impairment

MODALITIES = {
    "image": Modality("img", "image", key="img", value_range=(0.0, 1.0)),
    "text": Modality("txt", "text", key="txt"),
    "tokens": Modality("tok", "tokens", key="ids", pad_id=0, mask_key="mask", special_ids=(101, 102)),
    "tensor": Modality("vec", "tensor", key="vec"),
}


def make_batch(n: int = 12, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, 10), generator=g)
    mask = torch.ones(n, 10, dtype=torch.long)
    ids[:, 0], ids[:, 7] = 101, 102
    ids[:, 8:], mask[:, 8:] = 0, 0
    return {
        "img": torch.rand(n, 3, 6, 6, generator=g),
        "txt": [" ".join(f"w{i}_{j}" for j in range(1 + i % 7)) for i in range(n)],
        "ids": ids, "mask": mask,
        "vec": torch.randn(n, 5, generator=g, dtype=torch.float64),
    }


CASES = [(kind, name) for kind, table in IMPAIRMENTS.items() if kind in MODALITIES for name in table]


def apply(batch, kind, name, severity, *, seed=0, indices=None):
    modality = MODALITIES[kind]
    indices = np.arange(len(batch["txt"])) if indices is None else indices
    return impair_batch(batch, modality, resolve_impairment(kind, name), severity, indices=indices, seed=seed, tag=f"t:{name}")


def values(batch, kind):
    m = MODALITIES[kind]
    return (batch[m.key], batch[m.mask_key]) if kind == "tokens" else (batch[m.key],)


def same(a, b) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("kind,name", CASES)
def test_keeps_shape_and_dtype_and_changes_something(kind, name):
    batch = make_batch()
    impaired = apply(batch, kind, name, 0.5)
    for before, after in zip(values(batch, kind), values(impaired, kind)):
        if isinstance(before, torch.Tensor):
            assert after.shape == before.shape and after.dtype == before.dtype
        else:
            assert isinstance(after, list) and len(after) == len(before)
    assert not same(values(batch, kind), values(impaired, kind)), "severity 0.5 should change some input"


@pytest.mark.parametrize("kind,name", CASES)
def test_never_edits_its_input(kind, name):
    batch = make_batch()
    snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in batch.items()}
    apply(batch, kind, name, 1.0)
    for key, before in snapshot.items():
        assert same((batch[key],), (before,)), f"{kind}/{name} edited batch[{key!r}] in place"


@pytest.mark.parametrize("kind,name", CASES)
def test_identity_at_severity_zero(kind, name):
    batch = make_batch()
    assert same(values(apply(batch, kind, name, 0.0), kind), values(batch, kind))


@pytest.mark.parametrize("kind,name", CASES)
def test_reproducible_for_a_seed_and_independent_of_batch_size(kind, name):
    batch = make_batch()
    whole = values(apply(batch, kind, name, 0.5, seed=7), kind)
    again = values(apply(batch, kind, name, 0.5, seed=7), kind)
    assert same(whole, again)
    # The same samples, split into batches of 5 + 7 with their global indices, give the same result.
    parts = []
    for lo, hi in ((0, 5), (5, 12)):
        sub = {k: v[lo:hi] for k, v in batch.items()}
        parts.append(values(apply(sub, kind, name, 0.5, seed=7, indices=np.arange(lo, hi)), kind))
    for i, full_value in enumerate(whole):
        joined = torch.cat([p[i] for p in parts]) if isinstance(full_value, torch.Tensor) else parts[0][i] + parts[1][i]
        assert same((joined,), (full_value,))
    other_seed = values(apply(batch, kind, name, 0.5, seed=8), kind)
    assert not same(other_seed, whole), "a different seed should give different noise"


def test_zero_is_a_black_image_in_raw_pixel_space():
    out = apply(make_batch(), "image", "zero", 1.0)["img"]
    assert torch.count_nonzero(out) == 0


def test_salt_pepper_hits_whole_pixel_locations_with_min_or_max():
    batch = make_batch(n=40)
    out = apply(batch, "image", "salt_pepper", 0.3)["img"]
    changed = (out != batch["img"]).any(dim=1)  # [n, H, W]
    corrupted = out.permute(0, 2, 3, 1)[changed]  # every channel of a hit location
    assert ((corrupted == 0).all(dim=1) | (corrupted == 1).all(dim=1)).all(), "a hit location must be min or max in every channel"
    assert 0.2 < changed.float().mean() < 0.4, "about 30% of locations should be corrupted"


def test_token_delete_of_everything_equals_empty_for_text_and_token_ids():
    batch = make_batch()
    assert apply(batch, "text", "token_delete", 1.0)["txt"] == apply(batch, "text", "empty", 1.0)["txt"] == [""] * 12
    deleted, emptied = apply(batch, "tokens", "token_delete", 1.0), apply(batch, "tokens", "empty", 1.0)
    assert torch.equal(deleted["ids"], emptied["ids"]) and torch.equal(deleted["mask"], emptied["mask"])
    # What a tokenizer gives for "": [CLS][SEP], then padding with the mask off.
    assert emptied["ids"][0, :3].tolist() == [101, 102, 0] and emptied["mask"][0].tolist() == [1, 1] + [0] * 8


def test_token_delete_keeps_word_order_and_only_deletes():
    batch = make_batch()
    out = apply(batch, "text", "token_delete", 0.5)["txt"]
    for before, after in zip(batch["txt"], out):
        words = before.split()
        kept = after.split()
        it = iter(words)
        assert all(w in it for w in kept), "kept words must be a subsequence of the original"


def test_missing_ratio_mutes_nested_subsets_of_the_requested_size():
    batch = make_batch(n=200)
    batch["txt"] = ["some words"] * 200
    muted = {r: {i for i, t in enumerate(apply(batch, "text", "missing_ratio", r)["txt"]) if t == ""} for r in (0.1, 0.5, 0.9)}
    assert muted[0.1] <= muted[0.5] <= muted[0.9]
    assert abs(len(muted[0.5]) - 100) < 25


def test_gaussian_noise_scales_with_the_sample_variance():
    batch = make_batch(n=50)
    batch["vec"] = torch.randn(50, 4000, dtype=torch.float64) * 3.0
    noise = apply(batch, "tensor", "gaussian", 0.5)["vec"] - batch["vec"]
    assert abs(float(noise.std()) - 1.5) < 0.05


def test_unknown_impairment_names_the_available_ones():
    with pytest.raises(ConditionError, match="Available: .*salt_pepper"):
        resolve_impairment("image", "blur")


def test_gaussian_noise_keeps_images_in_range_and_integer_pixels_do_not_wrap():
    from dataclasses import replace

    from biasaudit.data.impairments import IMPAIRMENTS

    gaussian = IMPAIRMENTS["image"]["gaussian"]
    pixels = torch.tensor([[[[3, 250], [128, 0]]]], dtype=torch.uint8).repeat(50, 1, 1, 1)
    pixels[:, 0, 0, 1] = 255
    modality = replace(MODALITIES["image"], value_range=(0.0, 255.0))
    out = impair_batch({"img": pixels}, modality, gaussian, 1.0, indices=np.arange(50), seed=0, tag="g")["img"]
    assert out.dtype == torch.uint8
    # The same noise on the same pixels as floats, clamped to [0, 255] and rounded: a dark pixel pushed
    # below 0 must become 0, not wrap around to ~250.
    as_float = impair_batch({"img": pixels.double()}, modality, gaussian, 1.0, indices=np.arange(50), seed=0, tag="g")["img"]
    assert float(as_float.min()) >= 0.0 and float(as_float.max()) <= 255.0
    assert torch.equal(out, as_float.round().to(torch.uint8))
    assert (out[:, 0, 0, 0] == 0).sum() > 10
    floats = make_batch(n=20)
    noisy = apply(floats, "image", "gaussian", 1.0)["img"]
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0


def test_token_modality_without_special_ids_is_refused():
    from biasaudit.errors import AdapterError

    with pytest.raises(AdapterError, match="needs special_ids"):
        Modality("tok", "tokens", key="ids", pad_id=0, mask_key="mask")


def test_user_registered_kind_gets_missing_noisy_and_ratio_conditions():
    from biasaudit.scanning.conditions import parse_conditions
    from biasaudit.data.impairments import IMPAIRMENTS, register_impairment

    def silence(values, modality, severity, chosen, draws):
        out = values.clone()
        out[torch.as_tensor(chosen)] = 0
        return out

    def hum(values, modality, severity, chosen, draws):
        return values + severity

    register_impairment("audio", "silence", silence, default_severity=1.0, mutes=True)
    register_impairment("audio", "hum", hum, default_severity=0.2)
    try:
        modalities = [Modality("wave", "audio"), Modality("txt", "text")]
        grid = {c.name: c for c in parse_conditions("default", modalities)}
        assert grid["missing:wave"].impairment == "silence" and grid["noisy:wave"].impairment == "hum"
        assert grid["ratio:wave:0.5"].impairment == "silence"
    finally:
        IMPAIRMENTS.pop("audio")


class _SecondToLast(torch.nn.Module):
    """Reads only the token before the last real one: a position-sensitive model, as decoder LMs are. A right-padded
    batch is read at (length - 2), a left-padded one at (width - 2)."""

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side
        weights = torch.zeros(32, 3)
        for c in range(3):
            weights[10 + c, c], weights[20 + c, c] = 1.5, 1.0
        self.bag = torch.nn.Embedding.from_pretrained(weights)

    def forward(self, input_ids, attention_mask, token_type_ids, pixels):
        width = input_ids.shape[1]
        where = torch.full((len(input_ids),), width - 2) if self.side == "left" else attention_mask.sum(1) - 2
        return self.bag(input_ids[torch.arange(len(input_ids)), where.clamp(min=0)]) + 0 * pixels.sum(1, keepdim=True)


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_token_delete_and_empty_on_left_padded_ids_equal_the_right_padded_result(batch_size):
    """The same texts, padded on the left or on the right, must lose the same tokens and keep their padding side."""
    import importlib.util
    from pathlib import Path

    from biasaudit.scanning.audit import audit_model
    from biasaudit.scanning.config import ScanConfig

    spec = importlib.util.spec_from_file_location("shortcut_adapter_fixture", Path(__file__).parent / "fixtures" / "shortcut_adapter.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    config = ScanConfig(split="test", conditions="missing,noisy,words=token_delete:0.5", batch_size=batch_size, bootstrap_replicates=20,
                        projection="pca", gradient_batches=1, min_wrong=1)
    audits = [audit_model(_SecondToLast(side), adapter, config=config, checkpoint=None)
              for side, adapter in (("right", fx.TokenAdapter()), ("left", fx.LeftPaddedTokenAdapter()))]
    rows = [{r["name"]: (r["accuracy"], r["flip_rate"]) for r in audit["conditions"]} for audit in audits]
    assert rows[0] == rows[1]
    assert rows[0]["noisy:words"] != rows[0]["full"]  # the deletions do reach the token the model reads


def test_an_unknown_modality_kind_is_refused_where_the_adapter_enters_and_a_registered_one_is_accepted():
    """Modality imports nothing from the package (no adapter <-> impairments cycle); the kind is checked against the
    registry when an adapter is validated, so a kind registered after the Modality was written counts."""
    from biasaudit.data.adapter import Adapter, validate_adapter
    from biasaudit.errors import AdapterError
    from biasaudit.data.impairments import IMPAIRMENTS, register_impairment

    class Sound(Adapter):
        modalities = [Modality("audio", "waveform"), Modality("text", "text")]
        num_classes = 2

        def build_model(self):
            return torch.nn.Identity()

        def data(self, split, *, batch_size):
            return []

        def prepare(self, batch, *, device):
            return batch

    with pytest.raises(AdapterError, match="modality 'audio' has kind 'waveform'; expected one of: image, text, tokens, tensor"):
        validate_adapter(Sound(), source="sound.py:Sound")
    try:
        register_impairment("waveform", "silence", lambda values, *rest: values * 0, default_severity=1.0, mutes=True)
        assert validate_adapter(Sound(), source="sound.py:Sound")
    finally:
        IMPAIRMENTS.pop("waveform", None)


def test_a_ratio_mute_of_left_padded_ids_forwards_what_muting_the_whole_batch_gives():
    """A ratio condition forwards only its muted rows, but they must be muted as in the whole batch: an adapter that
    does not declare its padding side has it read off the batch's mask, and a sub-batch of full-length rows shows
    none (its muted rows would get their special tokens on the wrong side, read by a position-sensitive model)."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    from biasaudit.scanning.audit import audit_model
    from biasaudit.scanning.config import ScanConfig

    spec = importlib.util.spec_from_file_location("shortcut_adapter_fixture", Path(__file__).parent / "fixtures" / "shortcut_adapter.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)

    class Undeclared(fx.LeftPaddedTokenAdapter):
        modalities = [dataclasses.replace(m, padding_side=None) if m.kind == "tokens" else m for m in fx.LeftPaddedTokenAdapter.modalities]

    config = ScanConfig(split="test", conditions="full,ratio:words", batch_size=4, bootstrap_replicates=20, projection="pca",
                        gradient_batches=1, min_wrong=1)
    def reads_cls_as_class_1(side):  # a muted text is [CLS] [SEP]: read at its right place, it says class 1, padding says 0
        model = _SecondToLast(side)
        model.bag.weight.data[fx.CLS, 1] = 5.0
        return model

    rows = [{r["name"]: (r["accuracy"], r["flip_rate"]) for r in
             audit_model(reads_cls_as_class_1(side), adapter, config=config, checkpoint=None)["conditions"]}
            for side, adapter in (("right", fx.TokenAdapter()), ("left", Undeclared()))]
    assert rows[0] == rows[1]
    assert rows[0]["ratio:words:0.5"] != rows[0]["full"]
