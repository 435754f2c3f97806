"""Hugging Face helpers: a "tokens" Modality read off a tokenizer, tokenising raw strings in prepare, and
transformers staying optional.

Known facts: a left-padding and a right-padding tokenizer give the same audit of the same texts (to float
rounding) for a padding-invariant model; the raw-strings route and the token-id route agree on every missing-
modality condition, because "missing text" tokenises to exactly what muting the ids leaves."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transformers  # the [hf] extra, which CI installs: these tests run, never skip

from biasaudit.adapters import empty_text_ids, token_modality, tokenizing_prepare
from biasaudit.scanning.audit import audit_model
from biasaudit.errors import AdapterError
from biasaudit.data.impairments import impair_batch, resolve_impairment
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "hf_adapters.py"
SCRIPT = Path(sys.executable).parent / "biasaudit"
CPU = torch.device("cpu")


def load_fixture():
    spec = importlib.util.spec_from_file_location("hf_adapters_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = load_fixture()


@pytest.fixture(scope="module")
def model():
    return fx.trained_net()


def rounded(value):
    """Numbers to 9 decimals: the same arithmetic in another order (padding on the other side) may differ in the
    last bits of a float, never in what a user reads."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 9) if isinstance(value, float) else value


def numbers(audit):
    """What a user reads off an audit: every condition row (accuracy, interval, per class, flip rate) and the summary."""
    return rounded({row["name"]: row for row in audit["conditions"]}), rounded(audit["summary"])


# ---- token_modality ---------------------------------------------------------------------------------------------
def test_token_modality_reads_pad_empty_text_ids_and_padding_side_off_the_tokenizer():
    right, left = token_modality("text", fx.make_tokenizer("right")), token_modality("text", fx.make_tokenizer("left"))
    tokenizer = fx.make_tokenizer()
    assert (right.kind, right.key, right.mask_key) == ("tokens", "input_ids", "attention_mask")
    assert right.pad_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("[PAD]")
    assert right.special_ids == tuple(tokenizer("")["input_ids"]) == tuple(tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"]))
    assert tokenizer.unk_token_id not in right.special_ids  # [UNK] in a text is content: muting must remove it
    assert (right.padding_side, left.padding_side) == ("right", "left")
    custom = token_modality("q", tokenizer, key="q_ids", mask_key="q_mask", special_ids=[2])
    assert (custom.key, custom.mask_key, custom.special_ids) == ("q_ids", "q_mask", (2,))


def test_a_tokenizer_without_a_pad_token_is_refused_in_one_sentence():
    with pytest.raises(AdapterError, match=r"Tokenizer BertTokenizer\w* has no pad token; set tokenizer\.pad_token = \.\.\."):
        token_modality("text", fx.make_tokenizer(pad_token=None))


def test_a_tokenizer_whose_vocabulary_holds_only_its_special_tokens_is_refused(tmp_path):
    # What transformers 5 builds from BertTokenizerFast(vocab_file=...): every word [UNK], an audit of nothing.
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    name = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    tokenizer = transformers.BertTokenizerFast(**{name: str(vocab)})
    assert tokenizer("a red digit")["input_ids"].count(tokenizer.unk_token_id) == 3
    with pytest.raises(AdapterError, match=r"has only its 5 special tokens in its vocabulary, so every word becomes \[UNK\]"):
        token_modality("text", tokenizer)


def test_a_tokenizer_that_puts_nothing_around_an_empty_string_needs_special_ids():
    class Bare:  # like GPT-2's: "" gives no ids
        pad_token_id, padding_side = 0, "left"

        def __call__(self, text):
            return {"input_ids": []}

    assert empty_text_ids(Bare()) == ()
    with pytest.raises(AdapterError, match=r"puts no tokens around an empty string.*pass special_ids="):
        token_modality("text", Bare())
    assert token_modality("text", Bare(), special_ids=(7,)).special_ids == (7,)


def test_without_transformers_the_helpers_say_how_to_install_it(monkeypatch):
    tokenizer = fx.make_tokenizer()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    for call in (lambda: token_modality("text", tokenizer), lambda: tokenizing_prepare(tokenizer, [])):
        with pytest.raises(AdapterError, match=r"needs the transformers package, which is not installed; pip install 'biasaudit\[hf\]'"):
            call()


def test_biasaudit_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import biasaudit, biasaudit.adapters, biasaudit.cli, biasaudit.scanning.audit\n"
            "from biasaudit.adapters import LoaderAdapter, token_modality, tokenizing_prepare\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ---- the token-id route -----------------------------------------------------------------------------------------
def test_left_and_right_padding_tokenizers_give_the_same_audit(model):
    left, right = fx.tokens_adapter("left"), fx.tokens_adapter("right")
    first_left, first_right = (next(iter(a.data("test", batch_size=16))) for a in (left, right))
    assert not torch.equal(first_left["input_ids"], first_right["input_ids"])  # the layouts really differ
    config = ScanConfig(split="test", conditions="missing,text=token_delete:0.4,image=gaussian:0.5", batch_size=16,
                        bootstrap_replicates=50, projection="pca", gradient_batches=1)
    by_left, by_right = (audit_model(model, a, config=config, checkpoint=None) for a in (left, right))
    rows_left, summary_left = numbers(by_left)
    assert (rows_left, summary_left) == numbers(by_right)
    deleted = rows_left["text=token_delete:0.4"]
    assert deleted["accuracy"] != rows_left["full"]["accuracy"] or deleted["flip_rate"] > 0  # deletion did something


def test_muted_tokens_are_what_the_tokenizer_gives_for_an_empty_string():
    for side in ("left", "right"):
        adapter = fx.tokens_adapter(side)
        text = adapter.modalities[1]
        batch = next(iter(adapter.data("test", batch_size=5)))
        muted = impair_batch(batch, text, resolve_impairment("tokens", "empty"), 1.0, indices=range(5), seed=0, tag="missing:text")
        tokenizer = fx.make_tokenizer(side)
        empty = tokenizer([""] * 5, padding="max_length", max_length=batch["input_ids"].shape[1], return_tensors="pt")
        assert torch.equal(muted["input_ids"], empty["input_ids"]) and torch.equal(muted["attention_mask"], empty["attention_mask"])


# ---- the raw-strings route --------------------------------------------------------------------------------------
def test_tokenizing_prepare_tokenises_the_impaired_strings_and_passes_the_rest():
    adapter = fx.text_adapter()
    batch = next(iter(adapter.data("test", batch_size=4)))
    text = adapter.modalities[1]
    muted = impair_batch(batch, text, resolve_impairment("text", "empty"), 1.0, indices=range(4), seed=0, tag="missing:text")
    inputs = adapter.prepare(muted, device=CPU)
    assert set(inputs) >= {"pixel_values", "input_ids", "attention_mask"} and "caption" not in inputs and "label" not in inputs
    assert inputs["input_ids"].tolist() == [fx.make_tokenizer()("")["input_ids"]] * 4
    assert adapter.forward(adapter.build_model(), inputs).shape == (4, fx.NUM_CLASSES)


def test_raw_strings_and_token_ids_agree_on_every_missing_modality_condition(model):
    config = ScanConfig(split="test", conditions="missing", batch_size=16, bootstrap_replicates=50, projection="pca", gradient_batches=1)
    by_text = numbers(audit_model(model, fx.text_adapter(), config=config, checkpoint=None))
    by_tokens = numbers(audit_model(model, fx.tokens_adapter("right"), config=config, checkpoint=None))
    assert by_text[0].keys() == {"full", "missing:image", "missing:text"}
    assert by_text == by_tokens
    assert by_text[0]["missing:text"]["flip_rate"] > 0  # muting the text moved something


def test_tokenizing_prepare_needs_one_text_modality_to_tokenise():
    from biasaudit import Modality

    image = Modality("image", "image")
    with pytest.raises(AdapterError, match=r"needs exactly one text modality \(or text=NAME\); the text modalities are: none"):
        tokenizing_prepare(fx.make_tokenizer(), [image])
    two = [Modality("q", "text"), Modality("a", "text")]
    with pytest.raises(AdapterError, match=r"the text modalities are: q, a"):
        tokenizing_prepare(fx.make_tokenizer(), two)
    assert callable(tokenizing_prepare(fx.make_tokenizer(), two, text="a", max_length=8))


# ---- through the console script ---------------------------------------------------------------------------------
def test_a_tokenizer_without_pad_token_exits_2_with_one_sentence_and_writes_nothing(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(fx.Net().state_dict(), checkpoint)
    out = tmp_path / "out"
    result = subprocess.run([str(SCRIPT), "scan", str(checkpoint), "--adapter", f"{FIXTURE}:NoPadToken", "--out", str(out),
                             "--conditions", "missing", "--bootstrap", "50", "--projection", "pca"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"Tokenizer BertTokenizer\w* has no pad token; set tokenizer\.pad_token = \.\.\.", " ".join(result.stderr.split())), result.stderr
    assert not out.exists()
