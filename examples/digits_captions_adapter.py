"""The adapter of the bundled demo, as a file you can pass to the CLI and read as an example.

    biasaudit scan demo.pt --adapter examples/digits_captions_adapter.py:adapter

The real code lives in biasaudit/datasets/demo_model.py; this file only shows where each part of
the adapter contract is and what it means for the demo. To write your own, start from
examples/my_model_adapter.py instead.
"""

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter

# DigitsCaptionsAdapter declares:
#   modalities  - Modality("image", "image", key="image", value_range=(0, 1)): raw pixels in [0, 1],
#                 so "missing image" is a black image and salt-and-pepper uses 0 and 1;
#                 Modality("text", "text", key="caption"): raw strings, so "missing text" is "".
#   num_classes - 10 digits; label_key="label" holds them in each batch.
#   bias_key    - "colour": the index of the colour word in the caption, the shortcut that the JSD
#                 diagnostic and MMDB's margins are computed from (bias_names are the colour words).
#   splits      - train, val, test and ood (colour independent of the digit).
# and implements:
#   build_model()             - a fresh DemoModel (MLP image branch + bag-of-words text branch);
#   data(split, batch_size=)  - dict batches {image, caption, label, colour} in a fixed order;
#   prepare(batch, device=)   - tokenises the (possibly impaired) captions into word counts and
#                               returns (pixels, bow), the positional arguments of the model;
#   classifier(model)         - model.classifier, the final nn.Linear (MMDB, embedding plots);
#   branches(model)           - {"image": model.image_branch, "text": model.text_branch} (BalGrad).
#
# Keyword options choose the data: rho (how often the colour word matches the digit in
# train and test, default 0.95), noise (std of the fixed Gaussian pixel noise, default 0.5),
# seed (split, noise and captions) and balanced_val (default True: val's colours are random, a
# small bias-balanced set for model selection; False draws them like train's). The defaults are
# the calibrated demo.
adapter = DigitsCaptionsAdapter()
