"""Benchmarks for unbroken (`make bench`): figures, not pass/fail. See docs/benchmarks.md."""
