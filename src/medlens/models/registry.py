"""Model registry and the one factory, :func:`create_model`.

Models are registered explicitly with :func:`register_model` in their own module, and
:mod:`medlens.models` imports those modules by name, so what is registered never depends on
import side effects elsewhere. Training scripts, configs and the CLI name models by string.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from medlens.models.base import Backbone, check_model_args

__all__ = ["create_model", "list_models", "register_model"]

ModelBuilder = Callable[..., Backbone]
B = TypeVar("B", bound=ModelBuilder)

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Decorator registering a builder ``f(spatial_dims=, in_channels=, num_classes=, **kw)``.

    The builder is returned unchanged. Registering a name twice is an error, so that two models
    cannot silently shadow each other.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob (``"resnet*"``)."""
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(
    name: str,
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    **kw: Any,
) -> Backbone:
    """Build the registered model ``name`` for 2D or 3D inputs.

    Args:
        name: a name from :func:`list_models`.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        in_channels: input channels (1 for CT/MR/grey X-ray, 3 for RGB).
        num_classes: classifier outputs; 0 gives a head returning pooled features.
        **kw: model options, e.g. ``stem``, ``input_size``, ``dropout``, ``width``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad arguments.
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")
    check_model_args(spatial_dims, in_channels, num_classes)
    return builder(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kw
    )
