"""The scan's diagnostics: what it measures besides each condition's accuracy (methods.md sections 3-9).

Two kinds, by what they need of the scan:

- Registered diagnostics (registry.py) follow one protocol (protocol.py: update / merge / compute / reset). They read
  only what every batch of the pass yields anyway (a BatchOutcome: predictions and confidences per condition, labels,
  bias values, bootstrap weights, the Full logits and fused feature), so the scan creates, feeds, merges across shards
  (part files included) and finishes them without knowing them: jsd, embeddings, groups, calibration. Adding one is
  a module here and a line in registry.py.
- Engine-driven diagnostics need forwards or passes of their own, which biasaudit/scanning schedules: the carrier test
  and the interaction share (donor swaps, forwarded per batch from a donor pool read before the pass), the ceilings
  (linear probes fitted on train before the pass, or unimodal models, and the branch outputs of the Full forward),
  Shapley values (a forward per subset of modalities, shared with the missing conditions through the batch's cache),
  the gradient conflict (backward passes on a seeded sample of batches, taken whole by shard 0) and the mute checks
  (branch moments of the Full and muted forwards). Their accumulators still merge exactly (biasaudit/scanning/state.py).
  The accuracy of every condition (accuracy.py) is the scan itself, not a diagnostic.
"""
