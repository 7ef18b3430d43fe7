"""Pytest configuration: makes the repository root importable (for ``agents``)."""
