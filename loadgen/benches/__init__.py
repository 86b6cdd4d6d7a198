"""Benchmarks and campaigns built on the generator (python -m loadgen bench | killloop | ...)."""
