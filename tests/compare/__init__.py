"""Tests of the diff engine (a package: tests/ already has a test_headers.py of its own)."""
