"""Benchmarks: metrics.py (pure statistics), and the runners and reports built on it."""
