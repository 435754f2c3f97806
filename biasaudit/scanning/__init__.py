"""The scan: one pass of a model over a split under every condition, sharding, and the audit document."""
