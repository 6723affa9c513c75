"""Shared marks of the NPE tests."""

import importlib.util

import pytest

# sbibm ships the reference observations and posterior samples; it is read, never imported
needs_sbibm = pytest.mark.skipif(
    importlib.util.find_spec("sbibm") is None,
    reason="sbibm reference files not installed (pip install --no-deps sbibm)",
)
