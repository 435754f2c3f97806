"""Streaming metrics of a scan: accuracy and bootstrap, Avg and Gap, the JSD diagnostic."""
