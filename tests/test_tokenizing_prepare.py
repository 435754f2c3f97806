"""tokenizing_prepare with a model whose forward does not take every output of the tokenizer (issue 20, item 5).

A BERT tokenizer returns token_type_ids; a user's multimodal model often takes only input_ids and attention_mask.
Known answer: the same weights behind a forward that takes exactly (pixel_values, input_ids, attention_mask) and
behind one that swallows any keyword give the same audit, since neither reads token_type_ids."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from biasaudit import Modality
from biasaudit.adapters import tokenizing_prepare
from biasaudit.scanning.audit import audit_model
from biasaudit.errors import AdapterError
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "hf_adapters.py"
SCRIPT = Path(sys.executable).parent / "biasaudit"
CPU = torch.device("cpu")


def load_fixture():
    spec = importlib.util.spec_from_file_location("hf_adapters_fixture_keys", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = load_fixture()
TOKENIZER = type(fx.make_tokenizer()).__name__  # transformers 5 names BertTokenizerFast BertTokenizer
LEFT_OUT = (f"KeywordNet.forward does not take token_type_ids, which {TOKENIZER} also returns, so tokenizing_prepare leaves it "
            "out (the forward takes: pixel_values, input_ids, attention_mask; keys=(...) names the outputs to pass).")


def ours(caught) -> list[str]:
    return [str(w.message) for w in caught if "tokenizing_prepare" in str(w.message)]


def first_inputs(adapter):
    return adapter.prepare(next(iter(adapter.data("test", batch_size=4))), device=CPU)


def test_a_model_without_token_type_ids_is_scanned_and_told_once_what_was_left_out():
    torch.manual_seed(0)
    loose = fx.Net()  # forward(..., **_): takes token_type_ids and ignores them
    strict = fx.KeywordNet()
    strict.load_state_dict(loose.state_dict())
    config = ScanConfig(split="test", conditions="missing", batch_size=16, bootstrap_replicates=50, projection="pca", gradient_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        by_strict = audit_model(strict, fx.text_adapter(fx.KeywordNet), config=config, checkpoint=None)
    assert ours(caught) == [LEFT_OUT]  # one sentence for the whole scan, not one per batch
    by_loose = audit_model(loose, fx.text_adapter(), config=config, checkpoint=None)
    assert by_strict["conditions"] == by_loose["conditions"] and by_strict["summary"] == by_loose["summary"]


def test_naming_keys_passes_only_those_outputs_and_warns_nothing():
    adapter = fx.text_adapter(fx.KeywordNet, keys=("input_ids", "attention_mask"))
    inputs = first_inputs(adapter)
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert adapter.forward(adapter.build_model(), inputs).shape == (4, fx.NUM_CLASSES)
    assert ours(caught) == []


def test_a_model_in_a_data_parallel_wrapper_is_read_through_it():
    # DataParallel's forward takes (*inputs, **kwargs): what counts is the forward of the module it holds.
    adapter = fx.text_adapter(fx.KeywordNet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert adapter.forward(nn.DataParallel(adapter.build_model()), first_inputs(adapter)).shape == (4, fx.NUM_CLASSES)
    assert ours(caught) == [LEFT_OUT]


def test_naming_a_key_the_forward_does_not_take_is_refused_in_one_sentence():
    adapter = fx.keyword_text_naming_token_types
    with pytest.raises(AdapterError, match=re.escape("tokenizing_prepare(keys=...) names 'token_type_ids', which KeywordNet.forward does "
                                                     "not take; it takes: pixel_values, input_ids, attention_mask.")):
        adapter.forward(adapter.build_model(), first_inputs(adapter))


def test_naming_an_output_the_tokenizer_does_not_return_is_refused_in_one_sentence():
    adapter = fx.text_adapter(fx.KeywordNet, keys=("input_ids", "attention_masks"))
    with pytest.raises(AdapterError, match=r"names 'attention_masks', which BertTokenizer\w* does not return; "
                                           r"it returns: input_ids, token_type_ids, attention_mask\.$"):
        first_inputs(adapter)
    with pytest.raises(AdapterError, match=r"tokenizing_prepare got keys='input_ids'; expected the names of the tokenizer outputs"):
        tokenizing_prepare(fx.make_tokenizer(), [fx.IMAGE, Modality("text", "text", key="caption")], keys="input_ids")


def test_a_forward_that_takes_none_of_the_tokenizer_outputs_is_refused_in_one_sentence():
    class OtherNames(fx.Net):
        def forward(self, pixel_values, text_ids, text_mask):
            return super().forward(pixel_values, text_ids, text_mask)

    adapter = fx.text_adapter(OtherNames)
    with pytest.raises(AdapterError, match=r"OtherNames\.forward takes none of the outputs of BertTokenizer\w* \(input_ids, token_type_ids, "
                                           r"attention_mask\); it takes: pixel_values, text_ids, text_mask; write a prepare"):
        adapter.forward(adapter.build_model(), first_inputs(adapter))


class BertWithImage(nn.Module):
    """BERT for sequence classification behind a forward that names token_type_ids (as transformers 4.x's does; 5.x's
    takes **kwargs, which passes everything); the image is ignored."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=len(fx.make_tokenizer()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32, num_labels=fx.NUM_CLASSES)
        self.bert = BertForSequenceClassification(config)

    def forward(self, pixel_values, input_ids, attention_mask, token_type_ids):
        self.seen = token_type_ids
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def test_a_bert_classifier_still_gets_the_token_type_ids():
    # A guard, not a bug report: a forward that takes token_type_ids keeps receiving them, without a warning.
    adapter = fx.text_adapter(BertWithImage)
    model = BertWithImage().eval()  # the adapter's classifier and branch paths are Net's: no build_model()
    inputs = first_inputs(adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert adapter.forward(model, inputs).shape == (4, fx.NUM_CLASSES)
    assert ours(caught) == [] and torch.equal(model.seen, inputs["token_type_ids"])


# ---- through the console script ---------------------------------------------------------------------------------
def scan(tmp_path, adapter_name):
    checkpoint = tmp_path / "model.pt"
    torch.save(fx.KeywordNet().state_dict(), checkpoint)
    out = tmp_path / "out"
    result = subprocess.run([str(SCRIPT), "scan", str(checkpoint), "--adapter", f"{FIXTURE}:{adapter_name}", "--out", str(out),
                             "--conditions", "missing", "--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1"],
                            capture_output=True, text=True, timeout=300)
    return result, " ".join(result.stderr.split()), out


def test_the_cli_scans_a_model_without_token_type_ids_and_says_what_it_left_out(tmp_path):
    result, stderr, out = scan(tmp_path, "keyword_text")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and stderr.count(f"warning: {LEFT_OUT}") == 1, result.stderr
    assert "UserWarning" not in result.stderr  # one sentence, not Python's file:line and source line
    assert (out / "audit.json").exists()


def test_the_cli_refuses_a_named_key_the_forward_does_not_take_with_exit_2(tmp_path):
    result, stderr, out = scan(tmp_path, "keyword_text_naming_token_types")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: tokenizing_prepare(keys=...) names 'token_type_ids', which KeywordNet.forward does not take" in stderr, result.stderr
    assert not out.exists()


class PassesOn(nn.Module):
    """A forward with **kwargs that hands them on to a module that takes only its three inputs: the filter cannot see
    that, so the inner call's TypeError must still end in one sentence pointing to keys=(...)."""

    def __init__(self):
        super().__init__()
        self.inner = fx.KeywordNet()

    def forward(self, pixel_values, **text):
        return self.inner(pixel_values=pixel_values, **text)


class PositionalOnly(fx.KeywordNet):
    def forward(self, pixel_values, input_ids, /, attention_mask=None):
        return super().forward(pixel_values, input_ids, attention_mask)


def test_a_forward_passing_a_tokenizer_output_on_to_a_module_that_refuses_it_is_one_sentence():
    adapter = fx.text_adapter(fx.KeywordNet)
    with pytest.raises(AdapterError, match=r"^The model passed 'token_type_ids', which .* returns, on to a module that does not take it "
                                           r"\(.*\); name the outputs to pass with tokenizing_prepare\(keys=\(\.\.\.\)\)\.$"):
        adapter.forward(PassesOn(), first_inputs(adapter))


def test_a_forward_taking_the_token_ids_positionally_only_is_one_sentence():
    adapter = fx.text_adapter(fx.KeywordNet)
    with pytest.raises(AdapterError, match=r"PositionalOnly\.forward takes pixel_values, input_ids positionally only"):
        adapter.forward(PositionalOnly(), first_inputs(adapter))
