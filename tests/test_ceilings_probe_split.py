"""Which split the ceilings' linear probes are fitted on, and the caveat of a ceiling that bounds nothing (methods.md
section 9; docs/methods.md, "Ceilings"), on a tiny model whose answers are known by hand.

`ColourAdapter`: three classes; the `text` modality is the one-hot colour word k, the `image` 1.5 * one-hot(label), and
the model adds them (logits = 1.5 e_y + e_k). So Full and the image alone are always right, and the text alone (image
muted to zero) predicts the colour's class k.
- train: k = y for every sample, a perfect shortcut. A probe fitted there learns colour -> class.
- val: every colour equally often within each class, and class 0 commoner (36 / 27 / 27): the colour says nothing, so a
  probe fitted there predicts val's commonest class, 0, whatever the colour (its weights are exactly 0 at the optimum).
- test, the audited split: k = y + 1 mod 3, the colour never names the label; labels 40 / 25 / 25.
On test: text alone 0%, image alone 100%; the text ceiling is 0% from a train probe (below chance, 33.3%) and
40 / 90 = 44.4% from a val probe; the image ceiling is 100% either way.

The issue: a text ceiling of 6.8% with 10 classes (utilisation 132%) from a probe fitted on train, where the shortcut
held 95% of the time, and a "large Gap expected" read from it.
"""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.scanning.audit import audit_model
from biasaudit.data.batches import read_split_labels, reads_shared_by_the_run
from biasaudit.diagnostics.ceilings import ceilings_section
from biasaudit.diagnostics.accuracy import ConditionScores
from biasaudit.report import render_audit_html
from biasaudit.results import to_json_text
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.engine import scan_model

FAST = dict(bootstrap_replicates=200, projection="pca", gradient_batches=1, min_wrong=1, batch_size=16, conditions="missing,ceilings")
CHANCE = 100 / 3


def colour_pairs(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, colours) of a split, as the module docstring lays them out."""
    if split == "train":
        labels = torch.arange(90) % 3
        return labels, labels.clone()
    if split == "val":
        pairs = [(y, i % 3) for y, n in ((0, 36), (1, 27), (2, 27)) for i in range(n)]
        return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    labels = torch.tensor([0] * 40 + [1] * 25 + [2] * 25)
    return labels, (labels + 1) % 3


class ColourModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text_branch = nn.Identity()
        self.image_branch = nn.Flatten()

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.image_branch(image) + self.text_branch(text)


class ColourAdapter(Adapter):
    modalities = [Modality("text", "tensor"), Modality("image", "image", value_range=(0.0, 2.0))]
    num_classes = 3
    bias_key = "k"
    splits = ("train", "val", "test")

    def __init__(self, splits: tuple[str, ...] | None = None) -> None:
        self.splits = splits or type(self).splits
        self.reads: list[str] = []

    def build_model(self) -> nn.Module:
        return ColourModel()

    def data(self, split: str, *, batch_size: int):
        self.reads.append(split)
        labels, colours = colour_pairs(split)
        text = nn.functional.one_hot(colours, 3).float()
        image = 1.5 * nn.functional.one_hot(labels, 3).float()[:, None, :]
        for lo in range(0, len(labels), batch_size):
            hi = lo + batch_size
            yield {"text": text[lo:hi], "image": image[lo:hi], "label": labels[lo:hi], "k": colours[lo:hi]}

    def prepare(self, batch, *, device):
        return batch["text"].to(device), batch["image"].to(device)

    def branches(self, model):
        return {"text": model.text_branch, "image": model.image_branch}


def scan(adapter: Adapter, split: str = "test") -> dict:
    return audit_model(adapter.build_model(), adapter, config=ScanConfig(split=split, **FAST), checkpoint=None)


@pytest.fixture(scope="module")
def with_val() -> dict:
    return scan(ColourAdapter())


@pytest.fixture(scope="module")
def train_only() -> dict:
    return scan(ColourAdapter(splits=("train", "test")))


def test_probes_are_fitted_on_val_so_a_train_shortcut_no_longer_sinks_the_text_ceiling_below_chance(with_val, train_only):
    """Fitted on train, the text probe learned colour -> class and scored 0% on test, below chance, so the user read a
    text ceiling under what the model itself gets from text. Fitted on val, it scores what the text can tell there."""
    ceilings = with_val["ceilings"]
    text, image = ceilings["modalities"]["text"], ceilings["modalities"]["image"]
    assert text["ceiling"] == pytest.approx(100 * 40 / 90)  # val's commonest class, 0, for every colour
    assert ceilings["probe_split"] == "val"
    assert text["source"] == "linear probe on the text branch output, fitted on val"
    assert image["ceiling"] == 100.0 and image["alone"] == 100.0 and text["alone"] == 0.0
    assert train_only["ceilings"]["modalities"]["text"]["ceiling"] == 0.0  # the train probe follows the colour
    assert text["ceiling"] > CHANCE > train_only["ceilings"]["modalities"]["text"]["ceiling"]


def test_without_val_the_section_says_the_probes_were_fitted_on_train(train_only):
    """A reader must be able to tell which split a ceiling's probe learned from; the section did not say."""
    ceilings = train_only["ceilings"]
    assert ceilings["probe_split"] == "train"
    assert ceilings["modalities"]["text"]["source"] == "linear probe on the text branch output, fitted on train"


def test_auditing_val_fits_the_probes_on_train_and_says_so():
    """A probe scored on the samples it was fitted on would flatter itself: auditing val falls back to train, named."""
    ceilings = scan(ColourAdapter(), split="val")["ceilings"]
    assert ceilings["probe_split"] == "train"
    assert ceilings["modalities"]["image"]["source"] == "linear probe on the image branch output, fitted on train (val is the audited split)"


def test_a_ceiling_below_chance_is_caveated_and_no_large_gap_rests_on_it(train_only):
    """The train probe's text ceiling, 0%, is below chance: the audit called it what the text can tell and read a large
    expected Gap (100 points, disjoint intervals) from it, so a biased model's Gap looked explained by the data."""
    ceilings = train_only["ceilings"]
    text, image = ceilings["modalities"]["text"], ceilings["modalities"]["image"]
    assert text["caveat"] == ("The text ceiling (0.0%) is not a bound on what text can tell: it is below chance (33.3%), "
                              "likely because its probe was fitted on train, where a shortcut that fails on this split can hold.")
    assert image["caveat"] is None  # 100% is neither below chance nor below the image alone (100%)
    assert text["caveat"] in ceilings["note"]
    assert ceilings["implied_gap"] is None and ceilings["large_gap_expected"] is False
    sentences = train_only["verdict"]["sentences"]
    assert not any("large Gap is expected" in s or "imply a Gap" in s for s in sentences)
    assert text["caveat"] in sentences
    assert any(s.startswith("Unimodal ceilings") and "text 0.0%" in s and "(not a bound)" in s for s in sentences)
    page = render_audit_html(json.loads(to_json_text(train_only)))
    assert "not a bound (see the note)" in page and "Gap implied by the ceilings that are bounds" in page


def test_ceilings_above_chance_and_above_the_accuracy_alone_get_no_caveat(with_val):
    """The val probes' ceilings bound what the model gets alone (44.4% >= 0% for text, 100% >= 100% for the image):
    no caveat, and the large Gap they imply (55.6 points, disjoint intervals) is said."""
    ceilings = with_val["ceilings"]
    assert all(row["caveat"] is None for row in ceilings["modalities"].values())
    assert ceilings["implied_gap"] == pytest.approx(100 - 100 * 40 / 90) and ceilings["large_gap_expected"] is True
    assert any("so a large Gap is expected" in s for s in with_val["verdict"]["sentences"])


def _scores(accuracy: float) -> ConditionScores:
    return ConditionScores(accuracy=accuracy, accuracy_ci=(accuracy - 2, accuracy + 2), macro_f1=accuracy, per_class_accuracy=[],
                           flip_rate=0.0, n=100, replicate_accuracy=np.full(4, accuracy))


def test_the_caveat_rule_by_hand():
    """Below the accuracy alone only, below chance only, a weaker unimodal checkpoint, and two bounds: the implied Gap
    is the bounds' spread (70 - 50 = 20), not the 40 points a caveated 30% ceiling would make of it."""
    rows = {"a": (40.0, 60.0), "b": (30.0, 20.0), "c": (70.0, 50.0), "d": (45.0, 50.0), "e": (50.0, 10.0)}
    scores = {f"{kind}:{m}": _scores(value) for m, pair in rows.items() for kind, value in zip(("ceiling", "alone"), pair)}
    sources = {m: f"linear probe on the {m} branch output, fitted on val" for m in rows} | {"d": "checkpoint d.pt"}
    section = ceilings_section(list(rows), scores, sources, observed_gap=None, note=None, num_classes=3, probe_split="val")
    caveats = {m: row["caveat"] for m, row in section["modalities"].items()}
    assert caveats["a"] == ("The a ceiling (40.0%) is not a bound on what a can tell: it is below the model's own accuracy with "
                            "only a intact (60.0%), likely because its probe, fitted on val, had too few samples or learned a "
                            "shortcut that holds there too.")
    assert caveats["b"].startswith("The b ceiling (30.0%) is not a bound on what b can tell: it is below chance (33.3%), likely")
    assert caveats["d"].endswith("below the model's own accuracy with only d intact (50.0%), so the unimodal checkpoint uses d "
                                 "less well than the model does.")
    assert caveats["c"] is None and caveats["e"] is None
    assert section["implied_gap"] == 20.0 and section["large_gap_expected"] is True  # 70 vs 50, intervals [68, 72] and [48, 52]
    assert section["note"] == " ".join(caveats[m] for m in "abd") and section["probe_split"] == "val"
    # Exactly at chance or at the accuracy alone is a bound (float sums of the same counts may differ in the last bit).
    level = {"ceiling:x": _scores(100 / 3), "alone:x": _scores(100 / 3 + 1e-12)}
    assert ceilings_section(["x"], level, {"x": "checkpoint x.pt"}, observed_gap=None, note=None, num_classes=3)["modalities"]["x"]["caveat"] is None


def test_the_probe_split_and_caveats_are_in_the_published_schema(train_only):
    """A reader validating audits against the schema could not rely on the new fields' types."""
    schema = json.loads(resources.files("biasaudit").joinpath("schemas", "audit.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    audit = json.loads(to_json_text(train_only))
    assert not list(validator.iter_errors(audit))
    for damage in (lambda a: a["ceilings"].__setitem__("probe_split", 5),
                   lambda a: a["ceilings"]["modalities"]["text"].__setitem__("caveat", ["below chance"])):
        bad = json.loads(to_json_text(train_only))
        damage(bad)
        assert list(validator.iter_errors(bad))


def test_val_labels_are_read_through_the_runs_shared_reads():
    """The probe sample comes from val's labels read once per run (as train's are): a scan inside a run that has read
    them already reads val only for the probes' forwards."""
    adapter = ColourAdapter()
    with reads_shared_by_the_run():
        read_split_labels(adapter, "val", batch_size=16)
        scan_model(adapter.build_model(), adapter, config=ScanConfig(split="test", **FAST))
    assert adapter.reads.count("val") == 2  # the read above, then the probes' forwards
