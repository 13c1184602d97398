"""Preprocessing steps and the :class:`Preprocessor` that chains, fits and serialises them.

A step is a small object following scikit-learn's contract: ``__init__`` stores its arguments and
nothing else, :meth:`Step.get_params` returns them, a fitted step's :meth:`FittedStep.fit` learns
attributes whose names end in ``_`` and returns ``self``. A :class:`Preprocessor` is an ordered
list of steps; it is written as plain JSON (step names, arguments, learned attributes; no pickle)
so a trained model's run folder re-applies exactly the same steps at prediction.

Spatial steps (``spatial = True``) move label maps with their image (nearest neighbour, same crop
box); intensity steps leave label maps untouched.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medlens._json import check_keys, read_json
from medlens.errors import MedlensError
from medlens.image import Image, Role

__all__ = [
    "FittedStep",
    "NotFittedError",
    "Preprocessor",
    "Step",
    "get_step_class",
    "register_step",
    "registered_steps",
    "step_from_dict",
    "step_to_dict",
]

FORMAT = "medlens.preprocessor"
VERSION = 1
# Modules defining the built-in steps; imported on the first look-up by name, never at import.
_BUILTIN_MODULES = (
    "medlens.preprocessing.spatial",
    "medlens.preprocessing.intensity",
    "medlens.preprocessing._channels",
    "medlens.preprocessing.enhance",
)
_KEYS = ("format", "version", "steps")
_STEP_KEYS = ("name", "params", "state")
_REGISTRY: dict[str, type[Step]] = {}


class NotFittedError(MedlensError):
    """A fitted step (or a preprocessor holding one) was used before :meth:`fit`."""


class Step:
    """One deterministic preprocessing operation on an :class:`~medlens.image.Image`."""

    #: whether the step changes the grid (and so must be applied to label maps as well)
    spatial: ClassVar[bool] = False

    def transform(self, image: Image) -> Image:
        raise NotImplementedError

    def transform_pair(self, image: Image, label: Image | None) -> tuple[Image, Image | None]:
        """Transform an image and its label map (or mask) consistently.

        Intensity steps leave the label map as it is; spatial steps override this so both end
        up on the same grid.
        """
        return self.transform(image), label

    def __call__(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        return self.transform(image, *args, **kwargs)

    # ------------------------------------------------------------------ parameters and state
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, by name (as scikit-learn's ``get_params(deep=False)``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Step:
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def get_state(self) -> dict[str, Any]:
        """Learned attributes (names ending in ``_``); empty for steps that learn nothing."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        defaults = {
            name: p.default
            for name, p in inspect.signature(type(self).__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        shown = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if k not in defaults or not _same(v, defaults[k])
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


class FittedStep(Step):
    """A step that learns from a dataset; using it before :meth:`fit` raises NotFittedError."""

    #: names of the attributes :meth:`fit` sets; all must be present for a fitted step
    learned: ClassVar[tuple[str, ...]] = ()

    def fit(self, images: Iterable[Image], masks: Iterable[Any] | None = None) -> FittedStep:
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, name) for name in self.learned)

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet: call fit(images) first "
                "(or load a saved preprocessor)"
            )

    def set_state(self, state: dict[str, Any]) -> FittedStep:
        unknown = set(state) - set(self.learned)
        if unknown:
            raise ValueError(f"{type(self).__name__} learns no attribute(s) {sorted(unknown)}")
        for name, value in state.items():
            setattr(self, name, value)
        return self


# ----------------------------------------------------------------------------- registry
def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step known by its class name to :meth:`Preprocessor.from_dict`."""
    name = cls.__name__
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a different preprocessing step is already registered as {name!r}")
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def registered_steps() -> dict[str, type[Step]]:
    """Every registered step class by name (built-in steps included)."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_step_class(name: str) -> type[Step]:
    if name not in _REGISTRY:
        _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MedlensError(
            f"unknown preprocessing step {name!r}; known steps: {', '.join(sorted(_REGISTRY))}"
        ) from None


def step_to_dict(step: Step) -> dict[str, Any]:
    """Plain-JSON description of a step: name, constructor arguments, learned attributes."""
    name = type(step).__name__
    if _REGISTRY.get(name) is not type(step):
        raise ValueError(f"{name} is not registered; decorate it with @register_step to save it")
    out: dict[str, Any] = {"name": name, "params": _jsonable(step.get_params(), name)}
    if isinstance(step, FittedStep):
        out["state"] = _jsonable(step.get_state(), name) if step.is_fitted else None
    return out


def step_from_dict(data: dict[str, Any]) -> Step:
    where = f"step {data.get('name')!r}" if isinstance(data, dict) else "step"
    check_keys(data, _STEP_KEYS, where=where)
    cls = get_step_class(data["name"])
    step = cls(**data.get("params", {}))
    state = data.get("state")
    if state is not None:
        if not isinstance(step, FittedStep):
            raise MedlensError(f"step {data['name']!r} learns nothing but a state was saved")
        step.set_state(state)
    return step


# ----------------------------------------------------------------------------- the pipeline
class Preprocessor:
    """An ordered list of steps applied to an image and, for spatial steps, its label map.

    Args:
        steps: the steps, applied in order.

    Example::

        prep = Preprocessor([Reorient("RAS"), Resample(1.5), PercentileClipZScore()])
        prep.fit(train_images, masks=train_labels)
        prep.save(run_dir / "preprocessing.json")
        image, label = Preprocessor.load(run_dir / "preprocessing.json").transform(ct, seg)
    """

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = list(steps)

    @property
    def is_fitted(self) -> bool:
        return all(s.is_fitted for s in self.steps if isinstance(s, FittedStep))

    def fit(self, images: Iterable[Image], masks: Iterable[Any] | None = None) -> Preprocessor:
        """Fit the fitted steps in order, each on the output of the steps before it.

        ``masks`` (foreground masks or label maps, one per image, or None) travel through the
        spatial steps with their images and tell fitted steps where the foreground is.
        """
        images = list(images)
        if masks is None:
            current_masks: list[Image | None] = [None] * len(images)
        else:
            masks = list(masks)
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            current_masks = [_as_mask(m, im) for m, im in zip(masks, images, strict=True)]
        last_fitted = max(
            (i for i, s in enumerate(self.steps) if isinstance(s, FittedStep)), default=-1
        )
        for step in self.steps[: last_fitted + 1]:
            if isinstance(step, FittedStep):
                has_mask = any(m is not None for m in current_masks)
                step.fit(images, current_masks if has_mask else None)
            pairs = [
                step.transform_pair(im, m) for im, m in zip(images, current_masks, strict=True)
            ]
            images = [p[0] for p in pairs]
            current_masks = [p[1] for p in pairs]
        return self

    def transform(self, image: Image, label: Image | None = None) -> Image | tuple[Image, Image]:
        """Apply every step; with ``label`` return ``(image, label)`` on the same grid."""
        for step in self.steps:
            if isinstance(step, FittedStep):
                step.check_fitted()
        if label is not None:
            if not isinstance(label, Image):
                raise TypeError("label must be an Image on the image's grid")
            image.check_same_grid(label)
            if label.role is not Role.LABEL:
                label = label.replace(role=Role.LABEL)
        for step in self.steps:
            image, label = step.transform_pair(image, label)
        return image if label is None else (image, label)

    __call__ = transform

    def fit_transform(self, images: Iterable[Image], masks: Iterable[Any] | None = None):
        images = list(images)
        masks = None if masks is None else list(masks)
        self.fit(images, masks)
        if masks is None:
            return [self.transform(im) for im in images]
        return [
            self.transform(im, m if m is None else _as_mask(m, im))
            for im, m in zip(images, masks, strict=True)
        ]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "steps": [step_to_dict(s) for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str | Path | None = None) -> Preprocessor:
        """The preprocessor ``data`` describes; unknown keys are refused with a suggestion.

        A classification run's ``preprocessing.json`` from before it held this format
        (``{"input": ..., "normalisation": ...}``) reads as its :class:`ChannelZScore`, so every
        run folder's ``preprocessing.json`` loads the same way.
        """
        if _is_legacy_classification(data):
            from medlens.preprocessing._channels import ChannelZScore

            try:
                return cls([ChannelZScore.from_normalisation(data["normalisation"])])
            except (TypeError, ValueError, KeyError) as error:
                raise MedlensError(f"invalid classification normalisation: {error}", path) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MedlensError(f"not a medlens preprocessor description (format {FORMAT!r})", path)
        try:
            check_keys(data, _KEYS)
        except MedlensError as error:
            raise MedlensError(error.problem, path) from None
        if data.get("version", VERSION) > VERSION:
            raise MedlensError(
                f"preprocessor format version {data['version']} is newer than this medlens "
                f"understands ({VERSION})",
                path,
            )
        try:
            return cls([step_from_dict(s) for s in data.get("steps", [])])
        except (TypeError, ValueError, KeyError) as error:
            raise MedlensError(f"invalid preprocessing step: {error}", path) from error
        except MedlensError as error:
            raise MedlensError(error.problem, path) from error

    def save(self, path: str | Path) -> Path:
        """Write the preprocessor as JSON, atomically (never a half-written file)."""
        from medlens._atomic import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        path = Path(path)
        try:
            data = read_json(path, what="preprocessor file")
        except MedlensError as error:  # the same one line, with ``error.path`` set
            raise MedlensError(error.problem.removeprefix(f"{path}: "), path) from None
        return cls.from_dict(data, path=path)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> Step:
        return self.steps[index]

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {s!r}" for s in self.steps)
        return f"Preprocessor([\n{inner}\n])" if self.steps else "Preprocessor([])"


# ----------------------------------------------------------------------------- helpers
def _as_mask(mask: Any, image: Image) -> Image | None:
    """A mask or label map as a label-role Image on ``image``'s grid (None stays None)."""
    if mask is None:
        return None
    if isinstance(mask, Image):
        image.check_same_grid(mask)
        return mask if mask.role is Role.LABEL else mask.replace(role=Role.LABEL)
    array = np.asarray(mask)
    if array.shape != image.spatial_shape:
        raise MedlensError(
            f"mask of shape {array.shape} does not match the image's spatial shape "
            f"{image.spatial_shape}",
            image.meta.get("path"),
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return image.with_array(array, role=Role.LABEL, leading=())


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types; NumPy scalars and arrays become numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: cannot store a {type(value).__name__} in JSON ({value!r})")


def _is_legacy_classification(data: Any) -> bool:
    """A classification run's first ``preprocessing.json``: its input and normalisation."""
    return (
        isinstance(data, dict)
        and "format" not in data
        and isinstance(data.get("normalisation"), dict)
        and set(data) <= {"input", "normalisation"}
    )


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False
