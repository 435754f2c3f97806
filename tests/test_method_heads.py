"""The unimodal head modes as a public helper (issue 21, item 1; methods.md section 7, step 1): each mode's logits by
hand on a tiny late-fusion model, what their gradients reach, BatchNorm statistics and dropout left alone by the
unimodal passes, the separate heads' seeding and state, and the argument checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods import UnimodalHeads, branch_widths

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from method_models import TinyLateFusion, branches_of  # noqa: E402

sys.path.pop(0)


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyLateFusion()
    generator = torch.Generator().manual_seed(100 + seed)
    return model, torch.randn(5, 3, generator=generator), torch.randn(5, 4, generator=generator)


def run(heads: UnimodalHeads, model, a, b):
    with heads.capture():
        fused = model(a, b)
    return fused, heads.logits(lambda: model(a, b))


def test_shared_zero_is_the_classifier_on_the_zero_filled_fusion_and_trains_only_its_branch():
    model, a, b = tiny()
    heads = UnimodalHeads(model, branches_of(model))
    fused, unimodal = run(heads, model, a, b)
    W, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    z_a, z_b = model.image_branch(a), model.text_branch(b)
    assert list(unimodal) == ["image", "text"]
    torch.testing.assert_close(unimodal["image"], F.linear(torch.cat([z_a, torch.zeros_like(z_b)], 1), W, bias))
    torch.testing.assert_close(unimodal["text"], F.linear(torch.cat([torch.zeros_like(z_a), z_b], 1), W, bias))
    torch.testing.assert_close(fused, model(a, b))
    loss = F.cross_entropy(unimodal["image"], torch.tensor([0, 1, 2, 0, 1]))
    reached = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    names = [name for name, _ in model.named_parameters()]
    assert [n for n, g in zip(names, reached) if g is not None] == ["image_branch.weight", "image_branch.bias"]


def test_ogm_split_is_the_weight_slices_plus_half_the_bias():
    model, a, b = tiny(1)
    heads = UnimodalHeads(model, branches_of(model), mode="ogm_split", classifier=model.classifier)
    with torch.no_grad():
        _, unimodal = run(heads, model, a, b)
        W, bias = model.classifier.weight, model.classifier.bias
        torch.testing.assert_close(unimodal["image"], model.image_branch(a) @ W[:, :2].T + bias / 2)
        torch.testing.assert_close(unimodal["text"], model.text_branch(b) @ W[:, 2:].T + bias / 2)


def test_separate_heads_read_the_branch_outputs_and_are_training_only_parameters():
    model, a, b = tiny(2)
    before = torch.get_rng_state()
    heads = UnimodalHeads(model, branches_of(model), mode="separate", num_classes=3, widths={"image": 2, "text": 2}, seed=4)
    assert torch.equal(torch.get_rng_state(), before), "the heads must not draw from the global generator"
    w_a, b_a, w_b, b_b = heads.parameters()
    assert w_a.shape == (3, 2) and b_b.shape == (3,)
    _, unimodal = run(heads, model, a, b)
    torch.testing.assert_close(unimodal["image"], F.linear(model.image_branch(a), w_a, b_a))
    torch.testing.assert_close(unimodal["text"], F.linear(model.text_branch(b), w_b, b_b))
    again = UnimodalHeads(model, branches_of(model), mode="separate", num_classes=3, widths={"image": 2, "text": 2}, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(heads.parameters(), again.parameters()))
    other = UnimodalHeads(model, branches_of(model), mode="separate", num_classes=3, widths={"image": 2, "text": 2}, seed=5)
    assert not torch.equal(heads.parameters()[0], other.parameters()[0])
    other.load_state_dict(heads.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(heads.parameters(), other.parameters()))
    assert {k for k in model.state_dict()} == {"image_branch.weight", "image_branch.bias", "text_branch.weight", "text_branch.bias",
                                                 "classifier.weight", "classifier.bias"}
    assert branch_widths(model, branches_of(model), lambda: model(a, b)) == {"image": 2, "text": 2}


class BatchNormDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        self.text = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, a, b):
        return self.head(self.dropout(torch.cat([self.image(a), self.text(b)], dim=1)))


@pytest.mark.parametrize("mode", ["shared_zero", "ogm_split"])
def test_unimodal_passes_move_no_batchnorm_statistics_and_draw_no_dropout(mode):
    torch.manual_seed(0)
    model = BatchNormDropout().train()
    a, b = torch.randn(8, 3), torch.randn(8, 4)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    heads = UnimodalHeads(model, {"image": model.image, "text": model.text}, mode=mode,
                          classifier=model.head if mode == "ogm_split" else None)
    with heads.capture():
        model(a, b)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    unimodal = heads.logits(lambda: model(a, b))
    assert torch.equal(torch.get_rng_state(), state), "a unimodal pass drew dropout"
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items()), "a unimodal pass moved BatchNorm statistics"
    assert not torch.equal(reference["image.1.running_mean"], once["image.1.running_mean"])  # the fused pass did
    z = heads.branch_outputs()
    shift = model.head.bias / 2 if mode == "ogm_split" else 0.0
    with torch.no_grad():
        expected = model.head(torch.cat([z["image"], torch.zeros_like(z["text"])], 1)) - shift
    torch.testing.assert_close(unimodal["image"], expected)
    assert model.training and model.dropout.training


def test_mistakes_are_one_sentence_naming_the_argument():
    model, a, b = tiny()
    with pytest.raises(InputError, match=r"'branches'.*'text' that took no part in the forward pass"):
        heads = UnimodalHeads(model, branches_of(model))
        with heads.capture():
            model.classifier(torch.cat([model.image_branch(a), torch.zeros(5, 2)], 1))
        heads.logits(lambda: model(a, b))
    heads = UnimodalHeads(model, branches_of(model))
    with heads.capture():
        model(a, b)
    with pytest.raises(InputError, match="'rerun'"):
        heads.logits()
    with pytest.raises(InputError, match="'classifier'"):
        UnimodalHeads(model, branches_of(model), mode="ogm_split")
    with pytest.raises(InputError, match="'mode'"):
        UnimodalHeads(model, branches_of(model), mode="magic")
    with pytest.raises(ArgumentTypeError, match="'num_classes'"):
        UnimodalHeads(model, branches_of(model), mode="separate", widths={"image": 2, "text": 2})
    with pytest.raises(InputError, match="'widths'"):
        UnimodalHeads(model, branches_of(model), mode="separate", num_classes=3, widths={"image": 2})
    with pytest.raises(InputError, match="'branches'.*not part of 'model'"):
        UnimodalHeads(model, {"image": model.image_branch, "text": nn.Linear(4, 2)})
    with pytest.raises(InputError, match="'branches'.*share one"):
        UnimodalHeads(model, {"image": model.image_branch, "both": model})
