"""Fixtures of the transform tests.

The compiled (``torch.compile``) resampling kernel is switched off for every test here, as with
``MEDLENS_COMPILE=0``: compiling takes tens of seconds per shape, and the grid_sample path it
falls back to gives the same values. The one test that checks the compiled kernel switches it
back on itself.
"""

from __future__ import annotations

import pytest

from medlens.transforms import _warp


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    monkeypatch.setitem(_warp._STATE, "disabled", True)


@pytest.fixture
def compiled(monkeypatch):
    """Switch the compiled kernel on for one test (restored afterwards)."""
    monkeypatch.setitem(_warp._STATE, "disabled", False)
