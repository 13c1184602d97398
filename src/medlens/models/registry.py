"""Model registry and the one factory, :func:`create_model`.

Models are registered explicitly with :func:`register_model` in their own module, and
:mod:`medlens.models` imports those modules by name, so what is registered never depends on
import side effects elsewhere. Training scripts, configs and the CLI name models by string.

Each model is registered for a task kind (``"classification"``, ``"segmentation"``, or a kind a
new task brings), so that code
that only handles one kind of network (a classification job, the classifier zoo tests) can ask
:func:`list_models` for that kind only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from torch import nn

from medlens._json import did_you_mean
from medlens.models.base import check_model_args

__all__ = ["TASKS", "create_model", "kinds", "list_models", "model_task", "register_model"]

#: The kinds of the built-in models. The set is open: a new task registers models of a new kind
#: (``register_model("retina", task="detection")``); asking for a kind no model has is an error
#: with the closest kind suggested, so a misspelt kind still fails.
TASKS = ("classification", "segmentation")

ModelBuilder = Callable[..., nn.Module]
B = TypeVar("B", bound=ModelBuilder)


class _Entry(NamedTuple):
    builder: ModelBuilder
    task: str


# One dict holds builder and task together, so copying it (as tests do) isolates both.
_REGISTRY: dict[str, _Entry] = {}


def _check_task(task: object) -> str:
    """A kind name: lower-case letters, digits and ``-``."""
    if (
        not isinstance(task, str)
        or not task
        or not task.replace("-", "").isalnum()
        or (task != task.lower())
    ):
        raise ValueError(f"task must be a lower-case name such as 'classification', got {task!r}")
    return task


def kinds() -> list[str]:
    """The kinds of the registered models (``classification``, ``segmentation``, ...)."""
    return sorted({entry.task for entry in _REGISTRY.values()})


def register_model(name: str, task: str = "classification") -> Callable[[B], B]:
    """Decorator registering a builder ``f(spatial_dims=, in_channels=, num_classes=, **kw)``.

    The builder is returned unchanged. Registering a name twice is an error, so that two models
    cannot silently shadow each other. ``task`` names the kind (any lower-case name; the built-in
    kinds are :data:`TASKS`); classification builders
    return a :class:`~medlens.models.base.Backbone`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    task = _check_task(task)

    def decorator(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, task)
        return builder

    return decorator


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob (``"resnet*"``).

    Args:
        pattern: glob on the name, e.g. ``"resnet*"``.
        task: only models for this task (``"classification"``, ``"segmentation"``); all if None.
    """
    if task is not None and task not in kinds():
        known = kinds()
        hint = did_you_mean(str(task), known)
        raise ValueError(f"no models of task {task!r}{hint}; tasks: {', '.join(known)}")
    names = sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def model_task(name: str) -> str:
    """The task ``name`` was registered for, e.g. to reject a U-Net in a classification job."""
    return _lookup(name).task


def _lookup(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        known = sorted(_REGISTRY)
        hint = did_you_mean(str(name), known)
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")
    return entry


def create_model(
    name: str,
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    **kw: Any,
) -> nn.Module:
    """Build the registered model ``name`` for 2D or 3D inputs.

    Args:
        name: a name from :func:`list_models`.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        in_channels: input channels (1 for CT/MR/grey X-ray, 3 for RGB).
        num_classes: classifier outputs (0 gives a head returning pooled features), or the
            segmentation classes (output channels) of a segmentation model.
        **kw: model options, e.g. ``stem``, ``input_size``, ``dropout``, ``width``, ``norm``
            (``"batch"``, ``"instance"`` or ``"group"``; each model keeps its own default); for
            the U-Nets ``features``, ``strides``, ``kernel_sizes``, ``deep_supervision``.

    Returns:
        A :class:`~medlens.models.base.Backbone` for classification models, the network (e.g. a
        :class:`~medlens.models.unet.UNet`) for segmentation ones.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad arguments.
    """
    builder = _lookup(name).builder
    check_model_args(spatial_dims, in_channels, num_classes)
    return builder(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kw
    )
