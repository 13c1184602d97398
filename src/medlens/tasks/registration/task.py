"""Learned registration on the task platform: plan, train, predict, evaluate, explain, export."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Prediction, Predictor, Task
from medlens.tasks.registration.plan import RegistrationPlan
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder

__all__ = ["RegistrationPrediction", "RegistrationPredictor", "RegistrationTask"]


@dataclass
class RegistrationPrediction(Prediction):
    """One registered pair: its :class:`~medlens.registration.register.Registration`."""

    result: Any = None
    formats = ("nifti", "displacement")

    def row(self) -> dict[str, Any]:
        from medlens.metrics.registration import folding_fraction, sdlogj

        u = self.result.field[0].numpy()
        return {"id": self.id, "seconds": round(self.result.seconds, 3),
                "folding_fraction": folding_fraction(u), "sdlogj": sdlogj(u)}  # fmt: skip

    def save(self, folder: Path) -> list[Path]:
        from medlens.registration.outputs import write_registration

        return list(write_registration(self.result, Path(folder) / self.id).values())

    def to_json(self) -> dict[str, Any]:
        """The row, and the affine part: the 4x4 (3x3 in 2D) matrix taking a fixed world point
        (LPS mm) to the moving world point it is compared with before the displacement."""
        return {**self.row(), "affine_world": self.result.world.round(6).tolist()}

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        """``nifti``: the moving image warped onto the fixed grid; ``displacement``: the
        displacement field in mm as ITK reads it (``medlens register``'s files)."""
        from medlens.io import save_image
        from medlens.registration.transform_io import write_displacement

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "nifti":
            return save_image(self.result.warp(), folder / "warped.nii.gz")
        if fmt == "displacement":
            field = self.result.displacement_mm()
            return write_displacement(folder / "displacement.nii.gz", field, self.result.fixed)
        return super().encode(fmt, folder, **context)


class RegistrationPredictor(Predictor):
    """A learned registration run's network(s): :meth:`predict` takes images in pairs
    ``[fixed, moving, fixed, moving, ...]`` and returns one registration per pair."""

    task = "registration"
    input_fields = ("fixed", "moving")

    def __init__(self, run: RunFolder, *, refine: int | None = None) -> None:
        from medlens.tasks.registration.predict import load_registration_run

        super().__init__(run)
        self.trained = load_registration_run(run.path)
        self.refine = refine

    def input_spec(self) -> dict[str, Any]:
        plan = self.trained.plan
        return {"spatial_dims": plan.spatial_dims, "channels": 2, "pairs": True,
                "canonical_shape": plan.shape, "canonical_spacing_mm": plan.spacing,
                "any_size": True}  # fmt: skip

    @property
    def answer_formats(self) -> tuple[str, ...]:
        return RegistrationPrediction.formats

    def predict(self, images) -> list[Prediction]:
        from medlens.io.discover import file_stem
        from medlens.tasks.registration.predict import register_learned

        if len(images) % 2:
            raise MedlensError(f"{len(images)} images: a registration takes them in pairs "
                               "(fixed, moving)")  # fmt: skip
        out: list[Prediction] = []
        for k in range(0, len(images), 2):
            fixed, moving = images[k], images[k + 1]
            name = file_stem(Path(str(moving.meta.get("path", f"pair-{k // 2}"))).name)
            result = register_learned(self.trained, fixed, moving, refine=self.refine)
            out.append(RegistrationPrediction(name, result))
        return out

    def predict_path(self, source, output, *, fixed=None, moving=None, refine=None) -> str:
        from medlens.tasks.registration.predict import predict_inputs

        steps = self.refine if refine is None else refine
        fixed, moving = (Path(p) if p is not None else None for p in (fixed, moving))
        rows = predict_inputs(self.trained, None if source is None else Path(source),
                              Path(output), fixed=fixed, moving=moving, refine=steps)  # fmt: skip
        dice = [r["dice"] for r in rows if r.get("dice") is not None]
        extra = f", mean Dice {sum(dice) / len(dice):.3f}" if dice else ""
        return f"{len(rows)} pair(s) registered{extra}: {output}"


class DeformationScore(nn.Module):
    """The network seen as a scorer for explanations: the mean length of the velocity it
    predicts (how far it moves the moving image), ``(B, 1)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @property
    def feature_layer(self) -> nn.Module:
        from medlens.explain.methods import default_layer

        layer = getattr(self.network, "explain_layer", None)
        return layer if isinstance(layer, nn.Module) else default_layer(self.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        velocity = self.network(x)
        return velocity.pow(2).sum(dim=1).add(1e-8).sqrt().flatten(1).mean(dim=1, keepdim=True)


@register_task
class RegistrationTask(Task):
    """Deformable registration learned from images or pairs (a VoxelMorph-style U-Net)."""

    name = "registration"
    summary = "deformable registration learned from image pairs (diffeomorphic, 2D and 3D)"
    plan_type = RegistrationPlan
    dataset_kinds = frozenset({"registration"})
    options = MappingProxyType(
        {
            "train": frozenset({"fold"}),
            "predict": frozenset({"fixed", "moving", "refine"}),
            "evaluate": frozenset({"output", "refine"}),
        }
    )

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print):
        from medlens.tasks.registration.data import open_source
        from medlens.tasks.registration.plan import make_plan

        source = open_source(Path(data))
        ids = source.ids[: max_samples or 50]
        plan = make_plan([source.load(i)[0] for i in ids], labelled=source.labelled,
                         label_values=source.label_values,
                         pairs="random" if source.pairs is None else "csv")  # fmt: skip
        return plan.with_overrides(overrides) if overrides else plan

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, fold=None):  # fmt: skip
        from medlens.tasks.registration.train import train_registration

        return train_registration(data, output, plan=plan, epochs=epochs, folds=folds, fold=fold,
                                  seed=seed, resume=resume, overrides=overrides,
                                  progress=progress, log=log)  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> RegistrationPredictor:
        return RegistrationPredictor(run, **options)

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True, output=None,
                 refine=None) -> Evaluation:  # fmt: skip
        from medlens.tasks.registration.evaluate import evaluate_registration, format_table

        trained = RegistrationPredictor(run).trained
        output = Path(output) if output is not None else run.path / "evaluation"
        result = evaluate_registration(trained, Path(data), split=split, n_boot=n_boot,
                                       output=output, refine=refine, progress=progress)  # fmt: skip
        files = {k: Path(v) for k, v in result.pop("files", {}).items()}
        lines = [format_table(result), *(f"{k}: {v}" for k, v in files.items())]
        return Evaluation(result, lines, files)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.explain import ExplainJob
        from medlens.io import load_image
        from medlens.io.discover import discover_inputs
        from medlens.tasks.registration.data import canonical_case
        from medlens.tasks.registration.predict import pairs_of

        if split is not None or target is not None:
            raise MedlensError("--split and --target do not apply to a registration run")
        trained = predictor.trained
        source = Path(source)
        if source.is_file() and source.suffix.lower() == ".csv":
            rows = [(r[0], r[1], r[2]) for r in pairs_of(source, None, None)]
        else:  # consecutive images as pairs
            found = discover_inputs(source, spatial_dims=trained.plan.spatial_dims)
            rows = [(f"{a.name}-{b.name}", a.source, b.source)
                    for a, b in itertools.pairwise(found)]  # fmt: skip
        network = trained.networks[0].eval()
        ids, inputs, display = [], [], []
        for name, fixed_path, moving_path in rows[: limit or len(rows)]:
            fixed, moving = load_image(fixed_path), load_image(moving_path)
            f = canonical_case(trained.plan, "fixed", fixed, None)
            m = canonical_case(trained.plan, "moving", moving, None)
            x = torch.cat([f.image, m.image])
            ids.append(str(name))
            inputs.append(x)
            display.append(x.numpy())
        if not ids:
            raise MedlensError("no pairs to explain", source)
        notes = ["Registration: the score explained is the mean length of the velocity the network "
                 "predicts (how far it moves the moving image), on the canonical grid; channel 0 "
                 "is the fixed image, channel 1 the moving one (centres aligned)."]  # fmt: skip
        return ExplainJob(ids, torch.stack(inputs), [DeformationScore(network)] * len(ids),
                          torch.zeros(len(ids), dtype=torch.long),
                          ["deformation"] * len(ids), display, None, notes,
                          "registration")  # fmt: skip

    def export_spec(self, run: RunFolder) -> ExportSpec:
        from medlens.tasks.registration.predict import load_registration_run

        t = load_registration_run(run.path)
        plan = t.plan
        outside = {
            "input": {
                "channels": ["fixed", "moving"],
                "spatial_dims": plan.spatial_dims,
                "axes": "array order (z, y, x) / (y, x)",
            },
            "canonical_grid": {
                "shape": plan.shape,
                "spacing_mm": plan.spacing,
                "direction": plan.direction,
                "centre": "each image's own centre (the centres aligned)",
            },
            "normalisation": "each image: mean of its channels, scaled by its own 1st and 99th "
            "percentiles; outside the image 0",
            "output": "stationary velocity field, canonical voxels, channel 0 along x",
            "integration": f"averaged 2x per axis, Gaussian smoothing of {plan.smooth:g} "
            f"voxels there (truncated at 2 sigma, edges repeated), scaling and squaring in "
            f"{plan.integration_steps} steps, interpolated back (linear), vectors doubled",
            "ensemble": "velocities averaged over the folds",
            "refine": dict(plan.refine),
        }
        example = torch.randn((1, 2, *plan.shape), generator=torch.Generator().manual_seed(0))
        return ExportSpec(t.networks, example, dynamic_spatial=False, outside=outside,
                          output="velocity")  # fmt: skip
