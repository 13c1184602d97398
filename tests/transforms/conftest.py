"""Fixtures of the transform tests.

The ``torch.compile`` intensity kernels are switched off for every test here, as with
``MEDLENS_COMPILE=0``: compiling takes tens of seconds per shape, and the eager code gives the same
values. The native resampling kernels stay on (they build in under a second and are the default
path); ``no_native`` switches them off for a test that needs the torch reference.
"""

from __future__ import annotations

import pytest

from medlens.transforms import _compile, _native


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    monkeypatch.setitem(_compile.STATE, "disabled", True)


@pytest.fixture
def no_native(monkeypatch):
    """Resample with torch (``grid_sample``) for one test (restored afterwards)."""
    monkeypatch.setitem(_native.STATE, "disabled", True)
