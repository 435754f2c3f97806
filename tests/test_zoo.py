"""Every command against a zoo of small but architecturally real models (tests/zoo/, issue 10).

The zoo: a CNN with BatchNorm and dropout + token branch; a BertModel built from a tiny config with a real
BertTokenizerFast, left- and right-padded, returning a SequenceClassifierOutput; frozen encoders with
trainable embedding layers; three modalities (image, tokens, tabular); forwards returning a dict and a
dataclass. Each is trained here (seeded, seconds) on data with a planted shortcut: a colour word in the
caption that agrees with the label 90% of the time (tests/zoo/zoo_common.py). So the facts are known: the
text is the modality the model leans on and the one that carries the bias.

For each model: `scan`; `fix` with ce, mmdb (--scale 4; auto on two models) and balgrad in each head mode (on
three modalities balgrad must refuse with exit 2 and one sentence); `compare`, `gate` (a passing and a
failing rule) and `report` on what they wrote. Beyond exit codes: every output parses, the fixed model.pt
loads strictly into the adapter's model and re-audits to fix's after.json, a scan leaves a BatchNorm model
bit-identical, left- and right-padded ids of the same texts give the same audit, and checkpoints saved with
`module.` / `_orig_mod.` prefixes or by Lightning audit exactly like the plain one.

The commands run in-process through typer's CliRunner on biasaudit.cli.app (the console script's entry
point, without ~3 s of imports per call). Re-audits of fixed checkpoints use biasaudit.scanning.audit.audit_checkpoint,
the function `scan` calls, to skip rendering HTML that is checked elsewhere.
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from biasaudit.data.adapter import load_adapter
from biasaudit.scanning.audit import audit_checkpoint, audit_model
from biasaudit.cli import app
from biasaudit.scanning.config import ScanConfig

ZOO = Path(__file__).parent / "zoo"
sys.path.insert(0, str(ZOO))
try:
    import zoo_common as zc
finally:
    sys.path.remove(str(ZOO))

CONDITIONS = "missing,carrier"
SCAN_FAST = ["--conditions", CONDITIONS, "--bootstrap", "50", "--projection", "pca", "--embedding-points", "50",
             "--gradient-batches", "2", "--batch-size", "16"]
FIX_FAST = ["--epochs", "1", "--conditions", CONDITIONS, "--bootstrap", "50", "--scan-projection", "pca",
            "--embedding-points", "50", "--gradient-batches", "2", "--scan-batch-size", "16", "--batch-size", "16"]
SCAN_CONFIG = ScanConfig(split="test", conditions=CONDITIONS, batch_size=16, bootstrap_replicates=50, projection="pca",
                         embedding_points=50, gradient_batches=2)
FIX_OUTPUTS = ("model.pt", "before.json", "after.json", "compare.json", "train_log.json", "after.html", "compare.html")


@dataclass(frozen=True)
class Entry:
    file: str
    name: str
    fit: dict = field(default_factory=dict)
    trained_as: str | None = None  # another entry whose checkpoint this one shares (same weights, other tokenizer)

    @property
    def spec(self) -> str:
        return f"{ZOO / self.file}:{self.name}"


MODELS = {
    "cnn_bn_dropout": Entry("cnn_tokens.py", "adapter"),
    "hf_bert_right": Entry("hf_bert.py", "right", fit={"lr": 5e-3}),
    "hf_bert_left": Entry("hf_bert.py", "left", trained_as="hf_bert_right"),
    "frozen_encoders": Entry("frozen.py", "adapter"),
    "three_modalities": Entry("three_modalities.py", "adapter"),
    "dict_output": Entry("structured_outputs.py", "dict_output"),
    "dataclass_output": Entry("structured_outputs.py", "dataclass_output"),
}
TWO_MODALITY_MODELS = [m for m in MODELS if m != "three_modalities"]
METHODS = ["ce", "mmdb", "balgrad:shared_zero", "balgrad:ogm_split", "balgrad:separate"]
HEAD_MODES = ("shared_zero", "ogm_split", "separate")
FIX_MATRIX = [pytest.param(name, method, id=f"{name}-{method}") for name in TWO_MODALITY_MODELS for method in METHODS]

RUNNER = CliRunner()


def cli(*args: Any):
    return RUNNER.invoke(app, [str(a) for a in args])


def succeeded(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output[-6000:]}\n{result.exception!r}"


def read_json(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text(encoding="utf-8"))


def html_page(path: Path) -> str:
    assert path.is_file(), f"{path} was not written"
    page = path.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html"), path
    assert "http://" not in page and "https://" not in page, f"{path} is not self-contained"
    return page


def accuracies(audit: dict) -> dict[str, tuple[float, float | None]]:
    return {row["name"]: (row["accuracy"], row["flip_rate"]) for row in audit["conditions"]}


def prefix_recorded(manifest: Any) -> list[Any]:
    """Every value in the manifest under a key that names a removed prefix (e.g. checkpoint.prefix_removed)."""
    found = []
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            if "prefix" in str(key).lower():
                found.append(value)
            found += prefix_recorded(value)
    return found


class Zoo:
    """Trains each model once, scans it once and runs each fix once; the tests read the results."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checkpoints: dict[str, Path] = {}
        self._scans: dict[str, tuple[Path, dict]] = {}
        self._fixes: dict[tuple[str, str], tuple[Any, Path]] = {}
        self._adapters: dict[str, Any] = {}

    def adapter(self, name: str):
        # No skip without transformers: CI installs the [hf] extra, and a missing package fails loudly here.
        if name not in self._adapters:
            self._adapters[name] = load_adapter(MODELS[name].spec)
        return self._adapters[name]

    def checkpoint(self, name: str) -> Path:
        entry = MODELS[name]
        source = entry.trained_as or name
        if source not in self._checkpoints:
            adapter = self.adapter(source)
            model = zc.fit(adapter, **MODELS[source].fit)
            path = self.root / "checkpoints" / f"{source}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
            self._checkpoints[source] = path
        self.adapter(name)
        return self._checkpoints[source]

    def scan(self, name: str) -> tuple[Path, dict, Any]:
        """(out dir, audit, CliRunner result) of `biasaudit scan` of the model's baseline checkpoint."""
        if name not in self._scans:
            out = self.root / "scan" / name
            result = cli("scan", self.checkpoint(name), "--adapter", MODELS[name].spec, "--out", out, *SCAN_FAST)
            succeeded(result)
            self._scans[name] = (out, read_json(out / "audit.json"), result)
        return self._scans[name]

    def fix(self, name: str, method: str, *extra: str, reuse_before: bool | None = None) -> tuple[Any, Path]:
        """(CliRunner result, out dir) of `biasaudit fix`; method is ce, mmdb or balgrad:HEAD_MODE. Every method but
        ce reuses the scan as its before audit (--before); ce computes its own, which must equal the scan."""
        if reuse_before is None:
            reuse_before = not method.startswith("ce")
        key = (name, " ".join((method, *extra, str(reuse_before))))
        if key not in self._fixes:
            base, _, head_mode = method.partition(":")
            options = ["--method", base, *(["--head-mode", head_mode] if head_mode else []), *extra]
            if base == "mmdb" and "--scale" not in extra:
                options += ["--scale", "4"]
            if reuse_before:  # the scan taken with the same settings: the before audit is not computed again
                options += ["--before", self.scan(name)[0] / "audit.json"]
            out = self.root / "fix" / name / "-".join(key[1].replace(":", "_").replace("--", "").split())
            result = cli("fix", self.checkpoint(name), "--adapter", MODELS[name].spec, "--out", out, *options, *FIX_FAST)
            self._fixes[key] = (result, out)
        return self._fixes[key]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


# ---- the zoo itself --------------------------------------------------------------------------------------------------
def test_the_planted_shortcut_is_there_and_the_bert_vocab_matches_the_word_list():
    for split in ("train", "test"):
        data = zc.split_data(split)
        assert len(data.label) == zc.SIZES[split] and data.image.shape[1:] == zc.IMAGE_SHAPE
        assert float(data.image.min()) >= 0.0 and float(data.image.max()) <= 1.0
        agreement = float((data.label == data.bias).float().mean())
        assert 0.85 <= agreement <= 0.97, f"{split}: the colour word agrees with the label {agreement:.0%} of the time"
        assert all(zc.COLOURS[b] in caption.split() for b, caption in zip(data.bias.tolist(), data.captions))
        assert len({len(c.split()) for c in data.captions}) >= 4, "captions of several lengths make padding real"
    assert zc.BERT_VOCAB.read_text().split() == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *zc.WORDS]


# ---- scan ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_scan_writes_a_parsable_audit_that_finds_the_text_shortcut(name, zoo):
    checkpoint = zoo.checkpoint(name)
    original = checkpoint.read_bytes()
    out, audit, result = zoo.scan(name)
    adapter = zoo.adapter(name)
    assert result.stdout.split() == [str(out / "audit.json"), str(out / "audit.html")]
    html_page(out / "audit.html")
    assert checkpoint.read_bytes() == original, "scan must never modify the checkpoint"
    assert audit["dataset"]["n"] == zc.SIZES["test"] and audit["dataset"]["split"] == "test"
    assert [m["name"] for m in audit["dataset"]["modalities"]] == [m.name for m in adapter.modalities]
    names = [row["name"] for row in audit["conditions"]]
    assert names == ["full", *(f"missing:{m.name}" for m in adapter.modalities)]
    # The known facts: the caption carries the shortcut, so muting it flips the most predictions, and swapping in a
    # caption of another colour moves the predictions to that colour's class.
    missing = audit["summary"]["missing"]
    assert missing["dominant"] == "text", missing["flip_rates"]
    assert missing["flip_rates"]["text"] > missing["flip_rates"]["image"] + 0.15, missing["flip_rates"]
    assert audit["summary"]["carrier"] == "text"
    assert audit["carrier"]["modalities"]["text"]["bias_swap"]["excess_follow_rate"] > 0.3
    assert 60.0 <= audit["summary"]["full"]["accuracy"] <= 100.0
    for section in ("jsd", "embeddings", "gradient_conflict", "groups", "carrier"):
        assert audit[section]["available"], f"{section}: {audit[section].get('note')}"
    assert audit["jsd"]["bias_source"] == "bias_key" and 0.0 <= audit["jsd"]["weighted_mean"] <= 1.0
    assert not any(value for value in prefix_recorded(audit["manifest"])), "a plain state dict has no prefix to remove"


def test_a_scan_leaves_a_batchnorm_dropout_model_bit_identical_and_in_train_mode(zoo):
    adapter = zoo.adapter("cnn_bn_dropout")
    model = adapter.build_model()
    model.load_state_dict(torch.load(zoo.checkpoint("cnn_bn_dropout"), weights_only=True), strict=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k for k in before) and any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    audit = audit_model(model, adapter, config=SCAN_CONFIG, checkpoint=None)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == [], f"the scan changed {changed}"
    assert all(m.training for m in model.modules()), "the scan left (part of) the model in eval mode"
    # ... and it audited the model in eval mode: the same numbers as the CLI scan of the checkpoint.
    assert accuracies(audit) == accuracies(zoo.scan("cnn_bn_dropout")[1])


# ---- fix -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, method", FIX_MATRIX)
def test_fix_writes_a_drop_in_checkpoint_that_re_audits_to_its_after_json(name, method, zoo):
    checkpoint = zoo.checkpoint(name)
    original = checkpoint.read_bytes()
    # ce computes its own before audit (the others reuse the scan through --before): both must be the scan's numbers.
    result, out = zoo.fix(name, method)
    succeeded(result)
    assert result.stdout.split() == [str(out / n) for n in FIX_OUTPUTS]
    assert checkpoint.read_bytes() == original, "the input checkpoint must never be modified"
    before, after, compare, log = (read_json(out / f"{n}.json") for n in ("before", "after", "compare", "train_log"))
    html_page(out / "after.html")
    assert 'id="training"' in html_page(out / "compare.html")
    assert accuracies(before) == accuracies(zoo.scan(name)[1])
    base, _, head_mode = method.partition(":")
    training = after["manifest"]["training"]
    assert training["method"] == base and log["training"]["method"] == base
    if head_mode:
        assert training["settings"]["head_mode"] == head_mode and training["settings"]["modalities"] == ["image", "text"]
    steps = log["steps"]
    assert len(steps) == math.ceil(zc.SIZES["train"] / 16), "one epoch of batches of 16"
    assert all(math.isfinite(step["loss"]) for step in steps)
    if base == "balgrad":  # both unimodal losses are real numbers: each head saw its own modality
        assert all(math.isfinite(step["loss_v"]) and math.isfinite(step["loss_l"]) and 0 <= step["lam"] <= 1 for step in steps)
        assert all(isinstance(step["conflicted"], bool) for step in steps)
    assert compare["summary"]["full"]["after"] == after["summary"]["full"]["accuracy"]
    assert compare["summary"]["full"]["before"] == before["summary"]["full"]["accuracy"]
    assert compare["paired"] is True, compare.get("unpaired_reason")

    # A drop-in state dict of the user's architecture: strict load, the same keys as the input checkpoint.
    adapter = zoo.adapter(name)
    state = torch.load(out / "model.pt", weights_only=True)
    baseline = torch.load(checkpoint, weights_only=True)
    assert list(state) == list(baseline)
    model = adapter.build_model()
    model.load_state_dict(state, strict=True)
    assert any(not torch.equal(state[k], baseline[k]) for k in state), "training changed nothing"
    if name == "frozen_encoders":
        frozen = [k for k in state if k.startswith(("image_encoder.", "text_encoder."))]
        assert frozen and all(torch.equal(state[k], baseline[k]) for k in frozen), "a frozen encoder was trained"
    if base == "mmdb":  # the cosine classifier written back as unit rows with zero bias (README)
        linear = adapter.classifier(model)
        assert torch.allclose(linear.weight.norm(dim=1), torch.ones(zc.CLASSES), atol=1e-5)
        assert torch.count_nonzero(linear.bias) == 0
        assert training["settings"]["scale"] == 4.0

    # Re-audited as `scan` audits it, the fixed checkpoint gives exactly fix's after.json.
    rescan = audit_checkpoint(out / "model.pt", adapter, config=SCAN_CONFIG)
    assert accuracies(rescan) == accuracies(after)
    assert rescan["summary"]["missing"]["gap"] == after["summary"]["missing"]["gap"]


@pytest.mark.parametrize("head_mode", HEAD_MODES)
def test_balgrad_refuses_three_modalities_with_one_sentence_and_writes_nothing(head_mode, zoo):
    result, out = zoo.fix("three_modalities", f"balgrad:{head_mode}")
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output[-4000:]}"
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error: ") and "BalGrad" in message and "two" in message, message
    assert message.count(". ") == 0 and message.endswith("."), f"expected one sentence: {message}"
    assert not out.exists(), f"exit 2 must write nothing, but {sorted(p.name for p in out.iterdir())} are in {out}"


@pytest.mark.parametrize("method", ["ce", "mmdb"])
def test_fix_works_on_three_modalities(method, zoo):
    result, out = zoo.fix("three_modalities", method)
    succeeded(result)
    after = read_json(out / "after.json")
    assert set(after["summary"]["missing"]["scores"]) == {"image", "text", "tab"}
    model = zoo.adapter("three_modalities").build_model()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    rescan = audit_checkpoint(out / "model.pt", zoo.adapter("three_modalities"), config=SCAN_CONFIG)
    assert accuracies(rescan) == accuracies(after)


@pytest.mark.parametrize("name", ["cnn_bn_dropout", "hf_bert_left"])
def test_fix_mmdb_with_the_automatic_scale(name, zoo):
    result, out = zoo.fix(name, "mmdb", "--scale", "auto")
    succeeded(result)
    assert "mmdb scale auto chose scale=" in result.stderr
    log = read_json(out / "train_log.json")
    selection = log["training"]["option_selection"]
    assert selection["chosen"] in selection["grid"] and len(selection["grid"]) > 1
    assert selection["validated_on"].startswith("held-out"), "the zoo has no val split: a held-out part of train"
    assert log["training"]["settings"]["scale"] == selection["chosen"]
    model = zoo.adapter(name).build_model()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)


# ---- compare, gate, report -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_compare_re_renders_fix_s_comparison_from_the_files(name, zoo):
    result, fixed = zoo.fix(name, "ce")
    succeeded(result)
    out = zoo.root / "compare" / name
    again = cli("compare", fixed / "before.json", fixed / "after.json", "--train-log", fixed / "train_log.json", "--out", out)
    succeeded(again)
    assert again.stdout.split() == [str(out / "compare.json"), str(out / "compare.html")]
    redone, original = read_json(out / "compare.json"), read_json(fixed / "compare.json")
    assert redone["paired"] is True
    assert [(r["name"], r["delta"], r["delta_ci"]) for r in redone["conditions"]] == \
           [(r["name"], r["delta"], r["delta_ci"]) for r in original["conditions"]]
    assert redone["summary"] == original["summary"] and redone["verdict"] == original["verdict"]
    page = html_page(out / "compare.html")
    for section in ("verdict", "summary", "conditions", "training"):
        assert f'id="{section}"' in page, section


@pytest.mark.parametrize("name", list(MODELS))
def test_gate_passes_and_fails_on_the_zoo_audits(name, zoo, tmp_path):
    result, fixed = zoo.fix(name, "ce")
    succeeded(result)
    junit = tmp_path / "gate.xml"
    passing = cli("gate", fixed / "after.json", "--baseline", fixed / "before.json", "--min-accuracy", "full=0",
                  "--max-gap", "missing=100", "--json", "--junit", junit)
    succeeded(passing)
    verdict = json.loads(passing.stdout)
    assert verdict["status"] == "PASS" and verdict["exit_code"] == 0
    assert {r["status"] for r in verdict["rules"]} == {"PASS"} and len(verdict["rules"]) == 2
    cases = ET.parse(junit).getroot().iter("testcase")
    assert len(list(cases)) == 2
    # The shortcut makes muting the caption cost far more than muting the image: the Gap is well above 5 points.
    scan_out, audit, _ = zoo.scan(name)
    assert audit["summary"]["missing"]["gap"] > 5
    failing = cli("gate", scan_out / "audit.json", "--max-gap", "missing=5", "--json")
    assert failing.exit_code == 1, failing.output[-4000:]
    verdict = json.loads(failing.stdout)
    assert verdict["status"] == "FAIL" and [r["status"] for r in verdict["rules"]] == ["FAIL"]


@pytest.mark.parametrize("name", list(MODELS))
def test_report_re_renders_the_html_from_audit_json_alone(name, zoo):
    scan_out, _, _ = zoo.scan(name)
    target = zoo.root / "report" / f"{name}.html"
    result = cli("report", scan_out / "audit.json", "--out", target)
    succeeded(result)
    assert result.stdout.split() == [str(target)]
    page = html_page(target)
    assert page == (scan_out / "audit.html").read_text(encoding="utf-8"), "the re-rendered page differs from scan's"


# ---- Hugging Face: left and right padding --------------------------------------------------------------------------
def test_left_and_right_padded_bert_give_the_same_audit(zoo):
    left, right = zoo.adapter("hf_bert_left"), zoo.adapter("hf_bert_right")
    assert left.tokenizer.padding_side == "left" and right.tokenizer.padding_side == "right"
    assert left.modalities[1].padding_side == "left" and left.modalities[1].special_ids == (2, 3)
    batch_left, batch_right = next(iter(left.data("test", batch_size=16))), next(iter(right.data("test", batch_size=16)))
    assert not torch.equal(batch_left["input_ids"], batch_right["input_ids"]), "the two variants must pad differently"
    assert bool((batch_left["attention_mask"][:, 0] == 0).any()) and bool((batch_right["attention_mask"][:, -1] == 0).any())
    assert torch.equal(batch_left["input_ids"][batch_left["attention_mask"] == 1],
                       batch_right["input_ids"][batch_right["attention_mask"] == 1]), "the same texts"
    # Padded per batch (as DataCollatorWithPadding pads): the batches of a split differ in width, in train and test.
    for split in ("train", "test"):
        assert len({b["input_ids"].shape[1] for b in left.data(split, batch_size=16)}) > 1, split
    checkpoint = zoo.checkpoint("hf_bert_left")
    assert checkpoint == zoo.checkpoint("hf_bert_right")
    # Every condition and diagnostic: noisy text deletes tokens (drawn per real token, so both paddings must delete the
    # same ones), the ratio sweep mutes some rows of a batch, the carrier test swaps captions between batches of
    # different widths, the ceilings probe the branch outputs, Shapley and interaction mix muted and donor rows.
    config = ScanConfig(split="test", conditions="default,shapley,interaction", batch_size=16, bootstrap_replicates=50,
                        projection="pca", embedding_points=50, gradient_batches=2)
    audits = [audit_checkpoint(checkpoint, adapter, config=config) for adapter in (left, right)]
    assert accuracies(audits[0]) == accuracies(audits[1])
    names = [r["name"] for r in audits[0]["conditions"]]
    assert names[:5] == ["full", "missing:image", "missing:text", "noisy:image", "noisy:text"] and len(names) > 5
    for section in ("ceilings", "shapley", "interaction"):
        assert audits[0][section]["available"] and audits[1][section]["available"], section
    assert audits[0]["ratio_sweep"] == audits[1]["ratio_sweep"]
    assert audits[0]["interaction"]["accuracy"] == audits[1]["interaction"]["accuracy"]
    assert audits[0]["interaction"]["additive_accuracy"] == audits[1]["interaction"]["additive_accuracy"]
    for m in ("image", "text"):
        assert audits[0]["ceilings"]["modalities"][m]["ceiling"] == audits[1]["ceilings"]["modalities"][m]["ceiling"], m
        assert audits[0]["shapley"]["modalities"][m]["mean"] == pytest.approx(audits[1]["shapley"]["modalities"][m]["mean"]), m
    for key in ("avg", "gap", "flip_rates", "dominant"):
        assert audits[0]["summary"]["missing"][key] == audits[1]["summary"]["missing"][key], key
        assert audits[0]["summary"]["noisy"][key] == audits[1]["summary"]["noisy"][key], key
    assert audits[0]["summary"]["carrier"] == audits[1]["summary"]["carrier"] == "text"
    swaps = [a["carrier"]["modalities"]["text"]["bias_swap"] for a in audits]
    assert swaps[0]["follow_rate"] == swaps[1]["follow_rate"] and swaps[0]["n"] == swaps[1]["n"]
    jsd = [a["jsd"] for a in audits]
    assert jsd[0]["weighted_mean"] == pytest.approx(jsd[1]["weighted_mean"], rel=1e-5, abs=1e-7)
    for bias in jsd[0]["per_bias"]:
        assert jsd[0]["per_bias"][bias]["n_wrong"] == jsd[1]["per_bias"][bias]["n_wrong"]
        assert jsd[0]["per_bias"][bias]["soft"] == pytest.approx(jsd[1]["per_bias"][bias]["soft"], rel=1e-5, abs=1e-7)
    assert audits[0]["groups"]["conditions"] == audits[1]["groups"]["conditions"]


# ---- checkpoints with wrapper prefixes -----------------------------------------------------------------------------
WRAPPED = {
    "module": lambda state: {f"module.{k}": v for k, v in state.items()},           # DataParallel / DDP
    "orig_mod": lambda state: {f"_orig_mod.{k}": v for k, v in state.items()},      # torch.compile
    "lightning": lambda state: {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 30},
}
REMOVED = {"module": "module.", "orig_mod": "_orig_mod.", "lightning": "model."}


@pytest.mark.parametrize("wrapper", list(WRAPPED))
def test_a_prefixed_checkpoint_audits_exactly_like_the_plain_one(wrapper, zoo):
    name = "cnn_bn_dropout"
    plain_out, plain, _ = zoo.scan(name)
    state = torch.load(zoo.checkpoint(name), weights_only=True)
    path = zoo.root / "wrapped" / f"{wrapper}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(WRAPPED[wrapper](state), path)
    out = zoo.root / "wrapped" / wrapper
    result = cli("scan", path, "--adapter", MODELS[name].spec, "--out", out, *SCAN_FAST)
    succeeded(result)
    audit = read_json(out / "audit.json")
    for section in ("summary", "conditions", "jsd", "groups", "carrier", "bootstrap", "samples", "gradient_conflict"):
        assert audit[section] == plain[section], section
    recorded = prefix_recorded(audit["manifest"])
    assert recorded and REMOVED[wrapper] in [str(v) for v in recorded], f"the manifest should name {REMOVED[wrapper]!r}: {recorded}"


def test_fix_of_a_lightning_checkpoint_writes_plain_keys(zoo):
    name = "frozen_encoders"
    state = torch.load(zoo.checkpoint(name), weights_only=True)
    path = zoo.root / "wrapped" / "frozen_lightning.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(WRAPPED["lightning"](state), path)
    out = zoo.root / "wrapped" / "frozen_lightning_fix"
    result = cli("fix", path, "--adapter", MODELS[name].spec, "--method", "ce", "--out", out, *FIX_FAST)
    succeeded(result)
    fixed = torch.load(out / "model.pt", weights_only=True)
    assert list(fixed) == list(state)
    zoo.adapter(name).build_model().load_state_dict(fixed, strict=True)
    before = read_json(out / "before.json")
    assert accuracies(before) == accuracies(zoo.scan(name)[1])
