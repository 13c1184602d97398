"""Lazy public names for a package: import the module that defines a name on first use.

The package root, :mod:`medlens.preprocessing` and :mod:`medlens.tasks` expose names whose
modules import torch, matplotlib or SciPy; importing the package itself (and so ``medlens
--help``) must stay instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package`` for ``modules`` (public name -> module path)."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
