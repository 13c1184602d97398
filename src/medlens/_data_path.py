"""Where the real example data lives (``MEDLENS_DATA``, default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The real-data folder; it may not exist (a user's fresh clone)."""
    env = os.environ.get("MEDLENS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"
