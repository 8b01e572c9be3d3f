"""Benchmarks of great-escape against the tools a team would use instead. Not tests: see bench/RESULTS.md."""
