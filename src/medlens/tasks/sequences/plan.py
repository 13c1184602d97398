"""The plan of a sequence run: what is learnt from each cine, how sequences are fed, the network.

Three kinds, one per task on the platform:

* ``classification`` (``sequence-classification``): a class per cine from the ``column`` of
  ``cases.csv`` (``classes`` in sorted order), a CNN + GRU or LSTM (``network.name``
  ``cnn-gru`` | ``cnn-lstm``) with cross-entropy;
* ``regression`` (``sequence-regression``): a number per cine (``column``, EF by default), the
  same networks with an L1 loss on the value standardised by the training cases' mean and
  standard deviation (``target_mean``, ``target_std``);
* ``segmentation`` (``sequence-segmentation``): the label ``cavity_label`` in every frame of
  every slice, a :class:`~medlens.models.TemporalUNet` (``network.temporal`` ``gru`` | ``lstm``
  | ``conv`` | ``none``), cross-entropy plus soft Dice.

Classification and regression see each cine as ``frames`` frames sampled evenly over the whole
sequence, each resized to ``size`` (bilinear), the slices as ``slices`` channels (padded with
zeros, or cut). Segmentation sees each slice's whole sequence at its own size, padded to what the
network divides by. A sequence shorter than ``min_frames`` (half the shortest training one, at
least 2) is refused: the model never saw so little of a cycle.

Each training sample is augmented by the transform engine with one set of spatial parameters for
all its frames (flips and quarter turns in-plane), a cyclic start, time reversal (``reverse``;
off where the order of frames carries the label) and a frame-rate change (``rates``; for
classification and regression at least 1, so every sequence still spans what it spanned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medlens.engine import TrainConfig
from medlens.tasks.plan import Plan, PlanError

__all__ = ["KINDS", "SequencePlan", "make_plan"]

KINDS = ("classification", "regression", "segmentation")
FEATURES = [16, 32, 64, 128]
_SKIP = {"case", "subject", "background", "simulated", "split", "seed"}


@dataclass
class SequencePlan(Plan):
    """What a sequence run trains (see the module's notes)."""

    FORMAT = "medlens.sequence-plan/1"

    format: str
    kind: str
    column: str | None = None
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    cavity_label: int = 1
    frames: int = 16
    min_frames: int = 2
    size: list[int] = field(default_factory=lambda: [112, 112])
    slices: int = 1
    network: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(f"kind {self.kind!r}: use {', '.join(KINDS)}")
        name = self.network.get("name")
        wanted = ("temporal-unet",) if self.kind == "segmentation" else ("cnn-gru", "cnn-lstm")
        if name not in wanted:
            raise PlanError(f"network.name {name!r}: a {self.kind} run uses {' or '.join(wanted)}")
        if self.kind == "segmentation" and self.network.get("temporal") not in (
            "gru", "lstm", "conv", "none"):  # fmt: skip
            raise PlanError(f"network.temporal {self.network.get('temporal')!r}: use gru, lstm, "
                            "conv or none")  # fmt: skip
        if self.kind == "classification" and len(self.classes) < 2:
            raise PlanError(f"classes {self.classes}: a classification needs at least two")
        if self.kind != "segmentation" and (int(self.frames) < 2 or len(self.size) != 2
                                            or min(self.size) < 8):  # fmt: skip
            raise PlanError(f"frames {self.frames} and size {self.size}: need at least 2 frames "
                            "of at least 8x8")  # fmt: skip
        if not 0 < float(self.val_fraction) < 1:
            raise PlanError(f"val_fraction {self.val_fraction}: must be between 0 and 1")
        if self.target_std <= 0:
            raise PlanError(f"target_std {self.target_std}: must be positive")
        rates = self.augment.get("rates", [1.0, 1.0])
        if len(rates) != 2 or not 0 < float(rates[0]) <= float(rates[1]):
            raise PlanError(f"augment.rates {rates}: two rates, 0 < low <= high")

    @property
    def task(self) -> str:
        return f"sequence-{self.kind}"

    def spec(self) -> dict[str, Any]:
        """The network's description as the run keeps it (``sequence.json``)."""
        net = self.network
        spec: dict[str, Any] = {"kind": self.kind, "network": net["name"],
                                "features": list(net.get("features", FEATURES)),
                                "batch": self.train.batch_size}  # fmt: skip
        if self.kind == "segmentation":
            return {**spec, "temporal": net["temporal"], "label": self.cavity_label}
        return {**spec, "column": self.column, "slices": self.slices, "frames": self.frames,
                "size": list(self.size), "hidden": int(net.get("hidden", 64)),
                "classes": list(self.classes), "offset": self.target_mean,
                "scale": self.target_std, "min_frames": self.min_frames}  # fmt: skip

    def describe(self) -> list[str]:
        """The plan in a few lines, for ``medlens plan`` and the training log."""
        net, t = self.network, self.train
        if self.kind == "segmentation":
            what = (f"label {self.cavity_label} in every frame; {net['name']} "
                    f"(temporal {net['temporal']}, features {net.get('features')})")  # fmt: skip
        else:
            if self.kind == "classification":
                names = ", ".join(self.classes)
                target = f"{len(self.classes)} classes of {self.column!r} ({names})"
            else:
                target = (f"{self.column!r} (mean {self.target_mean:.3g}, "
                          f"sd {self.target_std:.3g})")  # fmt: skip
            what = (f"{target}; {self.frames} frames of {self.size[0]}x{self.size[1]}, "
                    f"{self.slices} slice(s) as channels; {net['name']} "
                    f"(features {net.get('features')}, hidden {net.get('hidden')})")  # fmt: skip
        return [f"{self.task}: {what}",
                f"augmentation: {self.augment}",
                f"training: {t.epochs} epochs of {t.batches_per_epoch} batches of {t.batch_size}, "
                f"{t.optimizer} lr {t.lr}, {t.schedule}; validation {self.val_fraction:.0%} of "
                "the subjects"]  # fmt: skip


def _numeric(rows: list[dict[str, str]], column: str) -> bool:
    try:
        [float(r[column]) for r in rows]
    except (KeyError, ValueError):
        return False
    return True


def default_column(kind: str, rows: list[dict[str, str]]) -> str | None:
    """The target a kind learns when none is given: ``label`` (classification), ``ef_percent``
    or the first numeric column (regression); None for segmentation."""
    if kind == "segmentation" or not rows:
        return None
    columns = [c for c in rows[0] if c not in _SKIP]
    if kind == "classification":
        for name in ("label", "class", "diagnosis"):
            if name in columns:
                return name
        text = [c for c in columns if not _numeric(rows, c)]
        return text[0] if text else None
    if "ef_percent" in columns:
        return "ef_percent"
    numbers = [c for c in columns if _numeric(rows, c)]
    return numbers[0] if numbers else None


def make_plan(kind: str, cines, column: str | None = None) -> SequencePlan:
    """The default plan of ``kind`` for the cine folder ``cines`` (a
    :class:`~medlens.tasks.sequences.data.CineSet`): targets from its ``cases.csv``, frames and
    slices from its cines."""
    import numpy as np

    from medlens.errors import DatasetError

    rows = cines.rows
    column = column or default_column(kind, rows)
    where = cines.root / "cases.csv"
    if kind != "segmentation" and (column is None or column not in rows[0]):
        what = "class" if kind == "classification" else "value"
        columns = ", ".join(rows[0])
        raise DatasetError(f"no {what} column {column!r} to learn (columns: {columns})", where)
    shapes = [cines.shape(i) for i in range(len(cines))]
    phases = [s[0] for s in shapes]
    plan: dict[str, Any] = {"format": SequencePlan.FORMAT, "kind": kind, "column": column,
                            "min_frames": max(2, min(phases) // 2),
                            "slices": max(s[1] for s in shapes)}  # fmt: skip
    train = {"epochs": 20, "batches_per_epoch": 40, "lr": 1e-3, "optimizer": "adamw",
             "schedule": "cosine", "amp": "off", "monitor": "val_score", "monitor_mode": "min",
             "tensorboard": False}  # fmt: skip
    augment: dict[str, Any] = {"flip": True, "rot90": True, "reverse": True,
                               "intensity": [0.8, 1.2]}  # fmt: skip
    if kind == "segmentation":
        plan["network"] = {"name": "temporal-unet", "features": FEATURES, "temporal": "gru"}
        train["batch_size"] = 2
        augment["rates"] = [0.8, 1.25]  # the labels move with the frames
        if not any(cines.has_labels(i) for i in range(len(cines))):
            raise DatasetError("no label maps (labels/CASE.nii.gz) to learn from", cines.root)
    else:
        side = int(np.median([min(s[2], s[3]) for s in shapes]))
        plan.update(frames=int(min(32, max(8, int(np.median(phases))))),
                    size=[min(112, side)] * 2,
                    network={"name": "cnn-gru", "features": FEATURES, "hidden": 64})  # fmt: skip
        train["batch_size"] = 4
        augment["rates"] = [1.0, 1.25]  # every sequence still spans what it spanned
        if kind == "classification":
            plan["classes"] = sorted({r[column] for r in rows})
        else:
            if not _numeric(rows, column):
                raise DatasetError(f"column {column!r} holds values that are not numbers", where)
            values = np.array([float(r[column]) for r in rows])
            plan.update(target_mean=float(values.mean()),
                        target_std=float(values.std()) or 1.0)  # fmt: skip
    plan["augment"] = augment
    plan["train"] = train
    return SequencePlan.from_dict(plan, where=f"{kind} plan")
