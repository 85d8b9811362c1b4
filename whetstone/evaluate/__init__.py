"""Evaluation: loss on completion tokens (more metrics plug in here)."""
