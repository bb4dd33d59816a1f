"""Unit tests: pure functions and modules, no server and no network."""
