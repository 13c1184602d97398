"""The task platform: what a task supplies, and what every command gets from it.

A task (classification, segmentation, and every task after them) is one object registered with
:func:`~medlens.tasks.registry.register_task`. The command line's ``plan``, ``train``,
``evaluate``, ``predict`` and ``explain`` look the task up by name (``--task``) or by the run
folder it wrote, and call it; none of them knows a task by name. A task supplies:

- ``name``, a one-line ``summary`` and its ``plan_type`` (a :class:`~medlens.tasks.plan.Plan`);
- :meth:`Task.plan`: the plan from a dataset's fingerprint;
- :meth:`Task.train`: plan (or take a plan), train, validate, report; writes a run folder;
- :meth:`Task.load_predictor`: a :class:`Predictor` over a finished run folder;
- :meth:`Task.evaluate`: metrics with confidence intervals and a report on labelled data;
- :meth:`Task.explain_job`: what :func:`medlens.explain.explain_job` needs (a scalar score per
  image and the layer to explain), so ``explain`` never imports a task;
- :meth:`Task.export_spec`: the run's networks, an example input and what stays outside the
  graph, so ``medlens export`` writes ONNX for any task (:mod:`medlens.tasks.export`).

Options a command passes that the task does not take are refused by name
(:func:`check_options`): ``--positive-class`` means nothing to segmentation.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from medlens.errors import MedlensError

if TYPE_CHECKING:
    from medlens.explain import ExplainJob
    from medlens.image import Image
    from medlens.tasks.plan import Plan
    from medlens.tasks.run_folder import RunFolder

__all__ = ["Evaluation", "ExportSpec", "Prediction", "Predictor", "Task", "check_options"]

Log = Callable[[str], Any]


@dataclass
class Prediction:
    """One input's result. Subclasses hold the task's values and write themselves."""

    id: str

    def row(self) -> dict[str, Any]:
        """The result as one CSV row (column -> value)."""
        return {"id": self.id}

    #: the answers a server can give besides JSON (``"nifti"``, ``"png"``: :meth:`encode`)
    formats: ClassVar[tuple[str, ...]] = ()
    #: the one of :attr:`formats` that is a DICOM object (``"seg"``, ``"sr"``), what the DICOM
    #: node and ``--output dicomweb://`` send back; None: the result has no DICOM form
    dicom_form: ClassVar[str | None] = None

    def save(self, folder: Path) -> list[Path]:
        """Write the result's files (masks, maps) into ``folder``; none by default."""
        return []

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (what ``medlens serve`` answers); the CSV row by default."""
        return self.row()

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        """Write the result as one file in the format ``fmt`` (one of :attr:`formats`) into
        ``folder``; returns the file. ``context``: what a DICOM result records of the model
        (``model_name``, ``model_version``)."""
        raise MedlensError(f"a {type(self).__name__} has no {fmt} form (json only)")


class Predictor(abc.ABC):
    """A finished run, loaded once, that predicts.

    :meth:`predict` takes images (each on its own grid) and returns one :class:`Prediction`
    per image, on that image's grid; :meth:`predict_path` finds the inputs in a path (see
    :func:`medlens.io.discover_inputs`), predicts and writes the results.
    """

    task: ClassVar[str]
    #: whether :meth:`predict` runs several images through the networks together (a server
    #: then gathers concurrent requests into one call); False: image by image anyway
    batches_images: ClassVar[bool] = False
    #: the images one prediction takes, by name (what a server's multipart fields are called);
    #: :meth:`predict` takes them one after another, e.g. ``("fixed", "moving")`` in pairs
    input_fields: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(self, run: RunFolder) -> None:
        self.run = run

    @property
    def info(self) -> dict[str, Any]:
        return self.run.info

    @property
    def networks(self) -> list[Any]:
        """The networks prediction runs, one per fold (predictors keep their loaded run as
        ``self.trained``); :func:`medlens.tasks.export.use_backend` swaps in ONNX sessions."""
        return self.trained.networks  # type: ignore[attr-defined]

    @networks.setter
    def networks(self, value: list[Any]) -> None:
        self.trained.networks = value  # type: ignore[attr-defined]

    @property
    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`medlens.io.load_image` for this run's inputs (how DICOM
        pixels are read), so every caller reads an input as ``predict_path`` does."""
        return {}

    @property
    def answer_formats(self) -> tuple[str, ...]:
        """The file forms of its predictions besides JSON (:attr:`Prediction.formats`)."""
        return ()

    @abc.abstractmethod
    def input_spec(self) -> dict[str, Any]:
        """What the model takes, for model cards: at least ``spatial_dims`` and ``channels``."""

    @abc.abstractmethod
    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        """One prediction per image, in order."""

    def read(self, source: Path) -> list[Image]:
        """The images under ``source`` (a file or folder: :func:`medlens.io.discover_inputs`),
        read as :meth:`predict_path` reads them. Each image's ``meta`` holds ``path`` (its name),
        ``source`` (its file or DICOM series folder) and ``series_uid`` (a DICOM series; else
        None), so that its prediction can write itself as DICOM in the source's study."""
        from medlens.io.discover import discover_inputs

        images = []
        for item in discover_inputs(source, spatial_dims=self.input_spec().get("spatial_dims")):
            image = item.load(**self.load_options)
            image.meta.update(path=item.name, source=str(item.source), series_uid=item.series_uid)
            images.append(image)
        return images

    def dicom_results(self, source: Path, folder: Path, **context: Any) -> list[Path]:
        """Predict the DICOM inputs under ``source`` and write each result as its DICOM object
        (:attr:`Prediction.dicom_form`: a SEG, an SR) into ``folder``; returns the files.
        ``context``: the model's ``model_name`` and ``model_version``, recorded in each object.

        Raises:
            MedlensError: a result of this task has no DICOM form for these inputs (a 2D mask).
        """
        images = self.read(source)
        written = []
        for image, prediction in zip(images, self.predict(images), strict=True):
            if prediction.dicom_form is None:
                raise MedlensError(f"a {type(prediction).__name__} has no DICOM form")
            name = Path(str(image.meta["path"])).name or prediction.id
            written.append(prediction.encode(prediction.dicom_form, folder, name=name, **context))
        return written

    @abc.abstractmethod
    def predict_path(self, source: Path, output: Path, **options: Any) -> str:
        """Predict everything under ``source`` into ``output``; returns a one-line summary."""


@dataclass
class Evaluation:
    """What ``medlens evaluate`` shows and saves: the metrics (``--json``), lines for the
    terminal, and the files written (name -> path)."""

    metrics: dict[str, Any]
    lines: list[str]
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What ``medlens export`` needs of a run: one network per fold (inputs ``(N, C, *spatial)``,
    float32), an example input, whether the spatial axes may vary (fully convolutional
    networks; sizes then multiples of ``spatial_divisor``), and ``outside``: what prediction
    does around the networks (normalisation, resampling, sliding window, calibration, ...), in
    the words and numbers a reimplementation needs."""

    networks: list[Any]
    example: Any
    dynamic_spatial: bool
    outside: dict[str, Any]
    spatial_divisor: list[int] | None = None
    output: str = "logits"


class Task(abc.ABC):
    """A task on the platform (see the module's notes)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    plan_type: ClassVar[type[Plan]]
    #: the dataset kinds (``Dataset.task``) this task learns from, for ``medlens plan DATA``
    dataset_kinds: ClassVar[frozenset[str]] = frozenset()
    #: options of each command this task takes beyond the common ones
    options: ClassVar[Mapping[str, frozenset[str]]] = {}

    @abc.abstractmethod
    def plan(self, data: Path, *, device: str = "cpu", max_samples: int | None = None,
             overrides: Sequence[str] = (), log: Log = print) -> Plan:  # fmt: skip
        """The plan for the dataset at ``data`` (``overrides``: ``--set`` items)."""

    @abc.abstractmethod
    def train(self, data: Path, output: Path, *, plan: Path | None = None,
              epochs: int | None = None, folds: int | None = None, seed: int = 0,
              resume: bool = False, overrides: Sequence[str] = (), progress: bool = True,
              log: Log = print, **options: Any) -> dict[str, Any]:  # fmt: skip
        """Train into the run folder ``output``; returns ``run.json``'s content."""

    @abc.abstractmethod
    def load_predictor(self, run: RunFolder, **options: Any) -> Predictor:
        """A predictor over the finished run ``run``."""

    @abc.abstractmethod
    def evaluate(self, run: RunFolder, data: Path, *, split: str | None = None, n_boot: int = 1000,
                 progress: bool = True, **options: Any) -> Evaluation:  # fmt: skip
        """Metrics with 95% bootstrap intervals on the labelled data at ``data``."""

    @abc.abstractmethod
    def explain_job(self, predictor: Predictor, source: Path, *, split: str | None = None,
                    target: str | None = None, limit: int | None = None,
                    progress: bool = True) -> ExplainJob:  # fmt: skip
        """What to explain for the inputs at ``source`` (:class:`medlens.explain.ExplainJob`)."""

    @abc.abstractmethod
    def export_spec(self, run: RunFolder) -> ExportSpec:
        """The run's networks and what stays outside them (:class:`ExportSpec`)."""


def check_options(task: Task, command: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``given`` that were set (not None), refusing those ``task`` does not
    take for ``command``, by their flag (``--positive-class``)."""
    allowed = task.options.get(command, frozenset())
    chosen = {k: v for k, v in given.items() if v is not None}
    for key in chosen:
        if key not in allowed:
            flag = "--" + key.replace("_", "-")
            takes = ", ".join("--" + k.replace("_", "-") for k in sorted(allowed)) or "none"
            raise MedlensError(
                f"{flag} is not an option of {task.name} ({command} options of {task.name}: "
                f"{takes})"
            )
    return chosen
