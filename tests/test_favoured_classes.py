"""Bias values that favour two classes (methods.md section 9, F(k)): aligned share, conflicting accuracy, worst-group
accuracy and the carrier's excess bias-follow rate against hand counts. Under the single most frequent class (the
rule before F(k)) every one of these figures is wrong on this data, and the shortcut vanishes from the group measures.

The data: 4 classes, 2 bias values. In train bias value 0 goes with labels 0 and 1, bias value 1 with labels 2 and 3,
48 of every 50 samples of a label (so P_0 = (.48, .48, .02, .02): F(0) = {0, 1}, F(1) = {2, 3}; the single argmax
reads c(0) = 0 and c(1) = 2). The test split holds every (label, bias value) pair 20 times (160 samples).
The model: logits = s_y * onehot(y) (content) + cue(k), with s = 1.5 for labels 0 and 2, 0.5 for labels 1 and 3, and
cue(0) = (1.0, 0.9, 0, 0), cue(1) = (0, 0, 0.9, 1.0). By hand:
- aligned samples (label in F(k)) are all right; conflicting samples of labels 0 and 2 are right (1.5 beats 1.0),
  those of label 1 (with k = 1) are predicted 3, those of label 3 (with k = 0) are predicted 0;
- conflicting accuracy 40 / 80 = 50%, aligned 100%; train aligned share 192 / 200 = 96%;
- under (label, aligned/conflicting/neutral) groups the worst groups are "1 / conflicting" and "3 / conflicting", 0%;
- bias swap of the cue (same label, the other bias value; the null swap keeps the same cue, so the same prediction):
  samples (1, k=0) then predict 3 in F(1) and samples (3, k=1) predict 0 in F(0); nothing else follows:
  excess 40 / 160 = 0.25 (the argmax rule counted only 0 in F(0): 0.125).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.scanning.audit import audit_model
from biasaudit.comparing import compare_audits
from biasaudit.diagnostics.favoured import ALIGNED, CONFLICTING, NEUTRAL, alignment, favoured_classes
from biasaudit.errors import InputError
from biasaudit.scanning.config import ScanConfig

STRENGTH = torch.tensor([1.5, 0.5, 1.5, 0.5])
CUE = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 0.9, 1.0]])
FAST = dict(split="test", bootstrap_replicates=200, projection="pca", gradient_batches=1, min_wrong=1, batch_size=32)


def _split(name: str, *, conflicting_per_group: int = 20, weak_others: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "train":
        labels = torch.arange(200) // 50
        favoured_value = labels // 2
        # 2 of every 50 samples of a label carry the other bias value (weak_others of the weak labels 1 and 3)
        other = (torch.arange(200) % 50) < torch.where(labels % 2 == 1, weak_others, 2)
        return labels, torch.where(other, 1 - favoured_value, favoured_value)
    labels, bias = [], []
    for y in range(4):
        for k in range(2):
            n = 20 if k == y // 2 else conflicting_per_group
            labels += [y] * n
            bias += [k] * n
    return torch.tensor(labels), torch.tensor(bias)


class TwoFavouredModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cue_branch = nn.Identity()
        self.content_branch = nn.Flatten()
        self.register_buffer("cue", CUE.clone())

    def forward(self, cue: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return self.content_branch(content) + self.cue_branch(cue) @ self.cue


class TwoFavouredAdapter(Adapter):
    modalities = [Modality("cue", "tensor"), Modality("content", "image", value_range=(0.0, 2.0))]
    num_classes = 4
    bias_key = "k"
    splits = ("train", "test")
    bias_names = ("k0", "k1")
    conflicting_per_group = 20
    weak_others = 2

    def build_model(self) -> nn.Module:
        return TwoFavouredModel()

    def data(self, split: str, *, batch_size: int):
        labels, bias = _split(split, conflicting_per_group=self.conflicting_per_group, weak_others=self.weak_others)
        cue = nn.functional.one_hot(bias, 2).float()
        content = (nn.functional.one_hot(labels, 4).float() * STRENGTH[labels][:, None])[:, None, :]
        for lo in range(0, len(labels), batch_size):
            hi = lo + batch_size
            yield {"cue": cue[lo:hi], "content": content[lo:hi], "label": labels[lo:hi], "k": bias[lo:hi]}

    def prepare(self, batch, *, device):
        return batch["cue"].to(device), batch["content"].to(device)

    def branches(self, model):
        return {"cue": model.cue_branch, "content": model.content_branch}


def scan(adapter: Adapter, **options):
    config = ScanConfig(**{**FAST, "conditions": "missing,carrier", **options})
    return audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)


@pytest.fixture(scope="module")
def by_alignment():
    return scan(TwoFavouredAdapter(), group_by="alignment")


def test_each_bias_value_favours_both_of_its_classes_and_the_audit_lists_them(by_alignment):
    favoured = by_alignment["groups"]["favoured"]
    assert [(v["bias_name"], v["classes"]) for v in favoured["values"]] == [("k0", [0, 1]), ("k1", [2, 3])]
    assert favoured["values"][0]["shares"] == pytest.approx([0.48, 0.48])
    assert favoured["several"] == 2 and favoured["fraction"] == 0.5
    # The two top shares tie: an audit under the single-argmax reading would have been arbitrary here, and says so.
    assert favoured["near_ties"] == ["k0", "k1"] and "k0, k1" in by_alignment["groups"]["note"]


def test_aligned_share_and_conflicting_accuracy_equal_hand_counts(by_alignment):
    """Under the argmax rule the train aligned share read 48% (truth 96%) and conflicting samples scored 66.7%."""
    groups = by_alignment["groups"]
    assert groups["shift"]["train_aligned_share"] == pytest.approx(192 / 200)
    assert groups["shift"]["split_aligned_share"] == pytest.approx(0.5)
    full = groups["conditions"]["full"]
    assert full["conflicting_accuracy"] == pytest.approx(50.0)
    assert full["aligned_accuracy"] == 100.0
    assert groups["conflicting_samples"] == 80


def test_worst_group_is_the_conflicting_weak_labels_at_zero(by_alignment):
    """The argmax rule merged each weak label's right and wrong samples into one 'conflicting' group: worst 50%."""
    full = by_alignment["groups"]["conditions"]["full"]
    assert full["worst_group"] == 0.0
    assert full["worst_group_label"] == "1 / conflicting"
    assert full["groups_at_minimum"] == 2 and full["worst_group_n"] == 20
    lo, hi = full["worst_group_exact_ci"]  # 0 of 20: exact upper bound 1 - 0.025 ** (1/20)
    assert lo == 0.0 and hi == pytest.approx(100 * (1 - 0.025 ** (1 / 20)))
    headline = by_alignment["verdict"]["headline"]
    assert "worst-group accuracy 0.0% (exact 95% interval" in headline and "2 groups share this minimum" in headline


def test_carrier_excess_counts_a_follow_into_either_favoured_class(by_alignment):
    cue = by_alignment["carrier"]["modalities"]["cue"]["bias_swap"]
    assert cue["n"] == 160
    assert cue["excess_follow_rate"] == pytest.approx(40 / 160)  # the argmax rule: 20 / 160
    assert cue["null_follow_rate"] == 0.0
    content = by_alignment["carrier"]["modalities"]["content"]["bias_swap"]
    assert content["excess_follow_rate"] == 0.0  # a same-label donor has the same content
    assert by_alignment["carrier"]["carrier"] == "cue"


def test_per_group_rows_say_aligned_or_conflicting_by_the_favoured_set():
    audit = scan(TwoFavouredAdapter(), group_by="bias")
    rows = {(r["label"], r["bias"]): r for r in audit["groups"]["groups"]}
    for (label, bias), row in rows.items():
        assert row["conflicting"] is (bias != label // 2), (label, bias)
        assert row["alignment"] == ("conflicting" if bias != label // 2 else "aligned")
        expected = 0.0 if bias != label // 2 and label in (1, 3) else 100.0
        assert row["accuracy"]["full"] == expected
        lo, hi = row["accuracy_exact_ci"]["full"]
        assert lo <= expected <= hi and hi - lo > 0  # exact intervals never have zero width at n = 20


def test_when_every_conflicting_sample_is_in_an_uncounted_group_the_headline_says_so():
    """Conflicting groups of 3 samples, min_group 10: a 'worst-group accuracy 100%' headline would hide the shortcut."""
    adapter = TwoFavouredAdapter()
    adapter.conflicting_per_group = 3
    audit = scan(adapter, group_by="bias", min_group=10)
    groups = audit["groups"]
    assert groups["blind"] and groups["conflicting_samples"] == 12
    left = groups["conditions"]["full"]["uncounted"]
    assert (left["groups"], left["n"], left["conflicting_n"]) == (4, 12, 12)
    assert left["accuracy"] == pytest.approx(50.0)  # labels 0 and 2 right, 1 and 3 wrong
    assert left["accuracy_ci"][0] <= 50.0 <= left["accuracy_ci"][1]
    headline = audit["verdict"]["headline"]
    assert "worst-group accuracy" not in headline
    assert "all 12 bias-conflicting samples are in groups below min_group 10" in headline
    assert "bias-conflicting accuracy 50.0%" in headline


def test_groups_left_out_are_counted_and_scored_beside_the_worst_group():
    adapter = TwoFavouredAdapter()
    adapter.conflicting_per_group = 5
    audit = scan(adapter, group_by="bias", min_group=5)  # every group counted: nothing left out
    assert audit["groups"]["conditions"]["full"]["uncounted"]["n"] == 0
    audit = scan(adapter, group_by="bias", min_group=6)
    left = audit["groups"]["conditions"]["full"]["uncounted"]
    assert (left["groups"], left["n"]) == (4, 20)
    assert audit["groups"]["blind"]  # all conflicting samples are in the 4 small groups
    assert any(s.startswith("Worst-group accuracy cannot see the bias") for s in audit["verdict"]["sentences"])


def test_boundary_shares_are_favoured_at_any_fraction():
    """8 of 10 is exactly 0.8 of the largest share, though 0.8 * 10 is a hair above 8 in floating point."""
    assert favoured_classes(np.array([[10, 8, 0, 0]]), fraction=0.8).tolist() == [[True, True, False, False]]
    assert favoured_classes(np.array([[10, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]), fraction=0.2)[0, :2].tolist() == [True, True]


def test_neutral_samples_do_not_make_a_split_out_of_distribution():
    """A bias value never seen in train favours nothing: its samples are neutral and enter neither aligned share."""
    counts = np.array([[9, 1], [1, 9]])
    favoured = favoured_classes(counts)
    from biasaudit.diagnostics.favoured import aligned_share
    assert aligned_share(counts, favoured) == pytest.approx(0.9)
    assert aligned_share(np.array([[9, 1], [1, 9], [5, 5]]), favoured_classes(np.array([[9, 1], [1, 9], [5, 5]]))) == pytest.approx(0.9)


def test_a_flat_prior_favours_nothing_and_its_samples_are_neutral():
    counts = np.array([[10, 10, 10], [20, 5, 0], [12, 10, 0], [0, 0, 0]])
    favoured = favoured_classes(counts)
    assert favoured.tolist() == [[False, False, False], [True, False, False], [True, True, False], [False, False, False]]
    assert favoured_classes(counts, fraction=0.9).tolist()[2] == [True, False, False]
    states = alignment(np.array([0, 1, 1, 2, 3, 7]), np.array([0, 0, 1, 1, 0, 0]), favoured)
    assert states.tolist() == [NEUTRAL, ALIGNED, CONFLICTING, ALIGNED, NEUTRAL, NEUTRAL]


def test_the_fraction_is_a_setting_that_decides_what_a_bias_value_favours(by_alignment):
    """With 20 of the 50 weak-label samples under the other bias value, P_0 = (.48, .30, .02, .20): at 0.5 bias value 0
    favours classes 0 and 1 (0.30 >= 0.24; 0.20 is not), at 0.9 class 0 only. Aligned share in train: 156 / 200 vs 96 / 200."""
    assert by_alignment["manifest"]["config"]["favoured_fraction"] == 0.5
    adapter = TwoFavouredAdapter()
    adapter.weak_others = 20
    loose, strict = (scan(adapter, group_by="alignment", favoured_fraction=f) for f in (0.5, 0.9))
    assert [v["classes"] for v in loose["groups"]["favoured"]["values"]] == [[0, 1], [2, 3]]
    assert [v["classes"] for v in strict["groups"]["favoured"]["values"]] == [[0], [2]]
    assert loose["groups"]["shift"]["train_aligned_share"] == pytest.approx(156 / 200)
    assert strict["groups"]["shift"]["train_aligned_share"] == pytest.approx(96 / 200)
    assert strict["manifest"]["config"]["favoured_fraction"] == 0.9
    with pytest.raises(InputError, match="favoured_fraction is 0; expected a number above 0 and at most 1"):
        ScanConfig(favoured_fraction=0)


def test_compare_does_not_pair_bias_measures_of_an_audit_written_under_the_single_argmax_rule(by_alignment):
    """Its aligned/conflicting groups and bias-follow rates count other samples; accuracy and the Gap still compare, so a
    stored baseline keeps gating reliance after an upgrade."""
    older = copy.deepcopy(by_alignment)
    del older["manifest"]["config"]["favoured_fraction"]
    comparison = compare_audits(older, by_alignment)
    bias = comparison["bias"]
    assert bias["worst_group"] is None and bias["bias_balanced"] is None and bias["bias_follow"] is None
    for key in ("groups", "carrier"):
        assert any("read bias values differently" in why and "single most frequent class" in why for why in bias["lacking"][key])
    assert comparison["summary"]["missing"]["gap"]["delta"] == 0.0
    same = compare_audits(copy.deepcopy(by_alignment), by_alignment)["bias"]  # the same rule pairs
    assert same["worst_group"] is not None


def test_the_terminal_summary_of_a_blind_split_shows_the_pooled_conflicting_accuracy_not_a_worst_group():
    """`biasaudit scan` prints this table: a 'worst group 100.0' row there would hide the shortcut the verdict names."""
    from rich.console import Console

    from biasaudit.cli.console import summary_table

    adapter = TwoFavouredAdapter()
    adapter.conflicting_per_group = 3
    audit = scan(adapter, group_by="bias", min_group=10)
    console = Console(width=200, record=True)
    console.print(summary_table(audit))
    text = console.export_text()
    assert "worst group / balanced" not in text
    assert "bias-conflicting" in text and "all in groups below min_group 10" in text


def test_a_comparison_says_how_many_groups_sit_at_the_worst_group_minimum(by_alignment):
    """'worst-group 0.0 -> 0.0%' alone reads as no change when eleven groups at 0% became one."""
    comparison = compare_audits(copy.deepcopy(by_alignment), by_alignment)
    entry = comparison["bias"]["worst_group"]["full"]
    assert entry["groups_at_minimum"] == {"before": 2, "after": 2}
    assert "groups at that minimum 2 -> 2" in " ".join([comparison["verdict"], *comparison["verdict_sentences"]])
