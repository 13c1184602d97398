"""The task registry: tasks by name, and the task that wrote a run folder.

Tasks register explicitly (:func:`register_task`) in their own ``task`` module; the built-in
ones are imported by name on the first look-up, so importing medlens (or ``medlens --help``)
imports no task and no torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TypeVar

from medlens._json import did_you_mean
from medlens.errors import MedlensError
from medlens.tasks.base import Predictor, Task

__all__ = [
    "get_task",
    "load_predictor",
    "register_task",
    "task_for_dataset",
    "task_for_run",
    "task_names",
]

_BUILTIN = (
    "medlens.tasks.classification.task",
    "medlens.tasks.segmentation.task",
    "medlens.tasks.detection.task",
    "medlens.tasks.registration.task",
    "medlens.tasks.reconstruction.task",
    "medlens.tasks.sequences.task",
)
_REGISTRY: dict[str, Task] = {}
T = TypeVar("T", bound=type[Task])


def register_task(cls: T) -> T:
    """Class decorator: register one instance of the task ``cls`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.replace("-", "").isalnum():
        raise ValueError(f"a task needs a name of letters, digits and '-', got {name!r}")
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = cls()
    return cls


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def task_names() -> list[str]:
    """The registered tasks' names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The task ``name``; a one-line error listing the tasks otherwise."""
    _load_builtins()
    task = _REGISTRY.get(str(name))
    if task is None:
        known = sorted(_REGISTRY)
        raise MedlensError(
            f"--task {name}: not a task{did_you_mean(str(name), known)} (tasks: {', '.join(known)})"
        )
    return task


def task_for_dataset(kind: str) -> Task:
    """The task that learns from datasets of ``kind`` (a :class:`~medlens.data.Dataset`'s
    ``task``: ``segmentation``, ``multilabel``, ...)."""
    _load_builtins()
    for task in _REGISTRY.values():
        if kind in task.dataset_kinds:
            return task
    raise MedlensError(f"no task learns from {kind} datasets (tasks: {', '.join(task_names())})")


def task_for_run(run: str | Path):
    """``(task, run_folder)`` for a run folder written by ``medlens train``."""
    from medlens.tasks.run_folder import RunFolder

    folder = RunFolder(run)
    name = folder.task
    _load_builtins()
    if name not in _REGISTRY:
        raise MedlensError(f"{folder.path}: a {name} run, and no such task is installed")
    return _REGISTRY[name], folder


def load_predictor(run_dir: str | Path, *, backend: str = "torch", log=None,
                   **options) -> Predictor:  # fmt: skip
    """The predictor of a finished run folder, whatever task wrote it.

    ``predictor.predict(images)`` gives one prediction per :class:`~medlens.image.Image`, on
    that image's own grid; ``predictor.predict_path(source, output)`` does what
    ``medlens predict`` does. ``backend``: ``"torch"``, ``"onnx"`` (the run's export by
    ``medlens export``) or ``"auto"`` (the faster of the two, measured at load; see
    :mod:`medlens.tasks.export`); ``predictor.backend`` says which it predicts on.
    """
    from medlens.tasks.export import use_backend

    task, folder = task_for_run(run_dir)
    predictor = task.load_predictor(folder, **options)
    use_backend(predictor, backend, log=log)
    return predictor
