"""Tests for shipping a run: export, the adapter library, the server, the report, trackers."""
