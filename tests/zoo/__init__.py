"""A zoo of small but architecturally real multimodal models for tests/test_zoo.py (issue 10).

Each module holds a model and an `Adapter` for it, on the seeded synthetic data of zoo_common (a colour word in
the caption that agrees with the label 90% of the time: a planted shortcut through the text modality):

- cnn_tokens: CNN with BatchNorm2d and dropout + token embedding (masked mean), concat, nn.Linear.
- hf_bert: a BertModel built from a tiny BertConfig + conv encoder, returning a SequenceClassifierOutput;
  tokenised by BertTokenizerFast from vocab.txt, in a left- and a right-padded variant.
- frozen: frozen conv and EmbeddingBag encoders, trainable per-modality embedding layers and classifier.
- three_modalities: image + tokens + tabular tensor.
- structured_outputs: forward returning a dict {"logits": ...} and a dataclass with .logits.

The files are loaded the way users load adapters, `biasaudit ... --adapter tests/zoo/FILE.py:NAME`, which
puts this directory on sys.path while importing, so they import their sibling `zoo_common` directly.
"""
