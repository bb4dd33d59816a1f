"""Sustained load and the benchmark smoke run."""
