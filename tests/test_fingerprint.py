"""The samples fingerprint decides whether two audits' bootstrap replicates may be paired. If an edited input or a
reshuffle left it unchanged, compare would pair unrelated samples and report intervals that mean nothing."""

from __future__ import annotations

import numpy as np
import torch

from biasaudit.data.fingerprint import SampleFingerprint, row_hashes


def test_an_image_row_changes_its_hash_when_one_value_changes_or_two_swap():
    images = torch.rand(4, 3, 32, 32)
    base = row_hashes(images)
    assert len(set(base.tolist())) == 4
    flat = images.reshape(4, -1)
    swapped = flat.clone()
    swapped[1, [0, 100]] = flat[1, [100, 0]]
    nudged = flat.clone()
    nudged[1, -1] += 1e-3
    for edited in (swapped.reshape(images.shape), nudged.reshape(images.shape)):
        hashes = row_hashes(edited)
        assert hashes[1] != base[1] and np.array_equal(hashes[[0, 2, 3]], base[[0, 2, 3]])
    # The dtype and shape are part of a row: the same bytes read as another shape hash differently.
    assert not np.array_equal(row_hashes(images.reshape(4, 3, 16, 64)), base)


def test_the_fingerprint_is_a_sum_by_index_that_any_batching_reaches():
    labels, images = np.arange(10) % 3, torch.rand(10, 5)
    whole = SampleFingerprint(with_bias=False, input_keys=["x"])
    whole.update(labels, inputs={"x": images}, indices=np.arange(10))
    parts = [SampleFingerprint(with_bias=False, input_keys=["x"]) for _ in range(2)]
    for part, rows in zip(parts, (np.arange(0, 10, 2), np.arange(1, 10, 2))):
        part.update(labels[rows], inputs={"x": images[rows]}, indices=rows)
    parts[0].merge(parts[1])
    assert parts[0].to_dict() == whole.to_dict()
    swapped = SampleFingerprint(with_bias=False, input_keys=["x"])
    order = np.r_[1, 0, 2:10]
    swapped.update(labels[order], inputs={"x": images[order]}, indices=np.arange(10))
    assert swapped.to_dict()["inputs_sha256"]["x"] != whole.to_dict()["inputs_sha256"]["x"]


def test_structured_changes_do_not_cancel_in_a_rows_hash():
    """A plain sum of odd multiples of the words missed changes in the words' top bits in pairs: a row negated, two
    signs flipped (as an SVD's sign ambiguity does), two bytes changed at the top of two words; and rows of zeros
    hashed alike whatever their type or shape."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 16))
    flipped = rows.copy()
    flipped[:, [2, 5]] *= -1
    for changed in (-rows, flipped, flipped.astype(np.float32), -rows.astype(np.float32)):
        base = rows.astype(changed.dtype)
        assert not np.any(row_hashes(changed) == row_hashes(base))
    raw = rng.integers(0, 256, size=(5000, 16), dtype=np.uint8)
    edited = raw.copy()
    edited[:, [7, 15]] = rng.integers(0, 256, size=(5000, 2), dtype=np.uint8)
    differs = np.any(edited != raw, axis=1)
    assert not np.any(row_hashes(edited)[differs] == row_hashes(raw)[differs])
    zeros = [row_hashes(np.zeros((1,) + shape, dtype=dtype))[0] for shape in ((4,), (8,), (2, 4)) for dtype in (np.float32, np.float64, np.int64)]
    assert len(set(zeros)) == len(zeros)
