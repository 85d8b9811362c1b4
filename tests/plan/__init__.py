"""Tests for whetstone plan: parameter counts, the memory model, the probe, the CLI."""
