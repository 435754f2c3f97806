"""The adapters in examples/ must load and run, because users copy them."""

from __future__ import annotations

from pathlib import Path

import torch

from biasaudit.data.adapter import load_adapter, modality_by_name
from biasaudit.datasets import DigitsCaptionsAdapter
from biasaudit.data.impairments import impair_batch, resolve_impairment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CPU = torch.device("cpu")


def _template():
    return load_adapter(f"{EXAMPLES / 'my_model_adapter.py'}:adapter")


def test_demo_example_file_exposes_the_packaged_adapter_with_default_data():
    adapter = load_adapter(f"{EXAMPLES / 'digits_captions_adapter.py'}:adapter")
    assert isinstance(adapter, DigitsCaptionsAdapter)
    assert (adapter.rho, adapter.noise, adapter.seed) == (DigitsCaptionsAdapter().rho, DigitsCaptionsAdapter().noise, 0)


def test_template_adapter_loads_and_gives_logits_for_every_split():
    adapter = _template()
    model = adapter.build_model()
    for split in adapter.splits:
        batch = next(iter(adapter.data(split, batch_size=5)))
        logits = adapter.forward(model, adapter.prepare(batch, device=CPU))
        assert logits.shape == (5, adapter.num_classes)
        assert torch.isfinite(logits).all()


def test_template_missing_text_leaves_only_the_special_tokens_of_an_empty_string():
    adapter = _template()
    text = modality_by_name(adapter, "text")
    batch = next(iter(adapter.data("test", batch_size=4)))
    assert int(batch["attention_mask"].sum()) > 4 * len(text.special_ids)  # real words were there
    muted = impair_batch(batch, text, resolve_impairment(text.kind, "empty"), 1.0, indices=range(4), seed=0, tag="missing:text")
    empty = adapter.tokenizer([""] * 4)
    assert torch.equal(muted["input_ids"], empty["input_ids"])
    assert torch.equal(muted["attention_mask"], empty["attention_mask"])
    assert set(muted["input_ids"][muted["attention_mask"].bool()].tolist()) == set(text.special_ids)
    # The model still runs on what is left.
    assert adapter.forward(adapter.build_model(), adapter.prepare(muted, device=CPU)).shape == (4, adapter.num_classes)


def test_template_hooks_name_modules_of_the_model():
    adapter = _template()
    model = adapter.build_model()
    assert isinstance(adapter.classifier(model), torch.nn.Linear)
    owned = {id(m) for m in model.modules()}
    assert all(id(branch) in owned for branch in adapter.branches(model).values())
