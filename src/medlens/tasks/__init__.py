"""Complete jobs built from the parts: data in, a validated and reported model out.

Every task is registered on the platform (:mod:`medlens.tasks.base`,
:mod:`medlens.tasks.registry`); commands and servers look tasks up by name or by the run folder
they wrote. The names below load on first use, so importing this package imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlens._lazy import lazy_attributes

__all__ = ["explain_run", "get_task", "load_predictor", "register_task", "task_for_run",
           "task_names"]  # fmt: skip

_LAZY = {
    "explain_run": "medlens.tasks.explaining",
    "get_task": "medlens.tasks.registry",
    "load_predictor": "medlens.tasks.registry",
    "register_task": "medlens.tasks.registry",
    "task_for_run": "medlens.tasks.registry",
    "task_names": "medlens.tasks.registry",
}

if TYPE_CHECKING:
    from medlens.tasks.explaining import explain_run
    from medlens.tasks.registry import (
        get_task,
        load_predictor,
        register_task,
        task_for_run,
        task_names,
    )


__getattr__ = lazy_attributes(__name__, _LAZY)
