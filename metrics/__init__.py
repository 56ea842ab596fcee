"""Metrics for Prometheus: the `/metrics` endpoint (docs/operations.md) and what the monitor records for it."""
