"""Retraining methods that remove a modality bias: the loss math of MMDB and BalGrad, and their training loop."""
