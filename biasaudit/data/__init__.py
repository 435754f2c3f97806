"""What biasaudit reads: modalities, the adapter contract, batches, checkpoints."""
