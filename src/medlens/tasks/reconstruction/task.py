"""Reconstruction on the task platform: plan, train, predict, evaluate, explain, serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Prediction, Predictor, Task
from medlens.tasks.reconstruction.plan import ReconstructionPlan
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder

__all__ = ["ReconstructionPrediction", "ReconstructionPredictor", "ReconstructionTask"]


@dataclass
class ReconstructionPrediction(Prediction):
    """One file's reconstruction: the magnitude volume on its source's grid."""

    image: Any = None
    seconds: float = 0.0
    scores: dict[str, float] | None = None
    formats = ("nifti",)

    def row(self) -> dict[str, Any]:
        shape = "x".join(str(s) for s in self.image.spatial_shape)
        return {"id": self.id, "shape": shape, "seconds": round(self.seconds, 4),
                **(self.scores or {})}  # fmt: skip

    def save(self, folder: Path) -> list[Path]:
        return [self.encode("nifti", folder)]

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        """``nifti``: the magnitude volume ``ID.nii.gz`` (simulated data says so in its name
        nowhere, but in ``reconstructions.csv`` and the evaluation)."""
        from medlens.io import save_image

        if fmt != "nifti":
            return super().encode(fmt, folder, **context)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return save_image(self.image, folder / f"{self.id}.nii.gz")


class ReconstructionPredictor(Predictor):
    """A reconstruction run's network(s): :meth:`predict` takes k-space files' contents
    (:class:`~medlens.reconstruction.raw.KSpaceData`, what :meth:`read` gives)."""

    task = "reconstruction"

    def __init__(self, run: RunFolder) -> None:
        from medlens.tasks.reconstruction.predict import load_reconstruction_run

        super().__init__(run)
        self.trained = load_reconstruction_run(run.path)

    def input_spec(self) -> dict[str, Any]:
        plan = self.trained.plan
        if plan.kind == "superres":
            return {"spatial_dims": 3 if plan.through_plane else 2, "channels": 1,
                    "factors": list(plan.factors), "any_size": True}  # fmt: skip
        return {"spatial_dims": 2, "channels": plan.coils, "kspace": True,
                "accelerations": list(plan.accelerations), "any_size": True}  # fmt: skip

    @property
    def answer_formats(self) -> tuple[str, ...]:
        return ReconstructionPrediction.formats

    @property
    def superres(self) -> bool:
        return self.trained.plan.kind == "superres"

    def read(self, source: Path) -> list[Any]:
        from medlens.tasks.reconstruction.data import open_kspace

        if self.superres:
            return super().read(source)

        found = open_kspace(Path(source))
        items = [found.load(i) for i in range(len(found.files))]
        for item in items:
            item.meta.setdefault("path", item.path.name)
        return items

    def predict(self, images) -> list[Prediction]:
        from medlens.metrics.reconstruction import psnr, ssim
        from medlens.tasks.reconstruction.data import reference, slice_maps
        from medlens.tasks.reconstruction.predict import output_image, reconstruct, scored_pair

        if self.superres:
            return self._superres(images)
        out: list[Prediction] = []
        for data in images:
            if not hasattr(data, "kspace"):
                raise MedlensError("a reconstruction run takes k-space files (.npz, fastMRI or "
                                   "ISMRMRD .h5), not images")  # fmt: skip
            complex_image, seconds = reconstruct(self.trained, data)
            scores = None
            if data.target is not None:
                target = np.stack([reference(data, s, slice_maps(data, s, self.trained.plan))
                                   for s in range(data.kspace.shape[0])])  # fmt: skip
                got, ref = scored_pair(data, complex_image, target)
                scores = {"psnr": round(psnr(ref, got), 3), "ssim": round(ssim(ref, got), 4)}
            name = Path(str(data.meta.get("path", data.path.name))).name.split(".")[0]
            out.append(ReconstructionPrediction(name, output_image(data, np.abs(complex_image)),
                                                seconds, scores))  # fmt: skip
        return out

    def _superres(self, images) -> list[Prediction]:
        from medlens.io.discover import file_stem
        from medlens.tasks.reconstruction.superres import predict_image

        out: list[Prediction] = []
        for k, image in enumerate(images):
            if hasattr(image, "kspace"):
                raise MedlensError("a super-resolution run takes images, not k-space")
            fine, seconds = predict_image(self.trained, image)
            name = file_stem(Path(str(image.meta.get("path", f"image-{k}"))).name)
            out.append(ReconstructionPrediction(name, fine, seconds, None))
        return out

    def predict_path(self, source, output, **options: Any) -> str:
        from medlens._atomic import atomic_write_rows

        output = Path(output)
        predictions = self.predict(self.read(Path(source)))
        for p in predictions:
            p.save(output)
        atomic_write_rows(output / "reconstructions.csv", [p.row() for p in predictions])
        return f"{len(predictions)} file(s) reconstructed: {output}"


class ResidualScore(nn.Module):
    """A super-resolution network seen as a scorer: the mean magnitude of the residual it adds
    to the interpolated image ``(B, 1, H, W)``, ``(B, 1)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @property
    def feature_layer(self) -> nn.Module:
        return self.network.explain_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.network(x) - x).abs().flatten(1).mean(dim=1, keepdim=True)


class CorrectionScore(nn.Module):
    """The network seen as a scorer for explanations: the mean magnitude of what it changes in
    the zero-filled image ``(B, 2, H, W)`` (real, imaginary), ``(B, 1)``; the k-space it sees is
    ``M F(S x)`` of that image (for one coil exactly what was measured)."""

    def __init__(self, network: nn.Module, mask: torch.Tensor, maps: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mask", mask)
        self.register_buffer("maps", maps)

    @property
    def feature_layer(self) -> nn.Module:
        return self.network.explain_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from medlens.reconstruction.kspace import forward

        image = torch.complex(x[:, 0].float(), x[:, 1].float())
        maps = self.maps.expand(x.shape[0], *self.maps.shape[1:])
        mask = self.mask.expand(x.shape[0], -1)
        kspace = forward(image, maps, mask[:, None, None, :])
        out = self.network({"kspace": kspace, "mask": mask, "maps": maps})
        return (out - image).abs().flatten(1).mean(dim=1, keepdim=True)


def _superres_job(predictor, source: Path, limit: int | None):
    """Explain a super-resolution run: the residual it adds to each image's interpolation (the
    middle plane of a volume's first channel)."""
    from medlens.explain import ExplainJob
    from medlens.reconstruction.degrade import upsample

    plan = predictor.trained.plan
    factors = [int(f) for f in plan.factors[-2:]] if not plan.through_plane else [1, 1]
    ids, inputs = [], []
    for image in predictor.read(source)[: limit or None]:
        plane = np.asarray(image.array, np.float32).reshape(-1, *image.array.shape[-2:])
        x = upsample(torch.from_numpy(plane[len(plane) // 2])[None, None], factors)[0]
        ids.append(Path(str(image.meta.get("path", "image"))).name)
        inputs.append(x)
    if not ids:
        raise MedlensError("no images to explain", source)
    notes = ["Super-resolution: the score explained is the mean magnitude of the residual the "
             "network adds to the cubic interpolation (the image shown)."]  # fmt: skip
    scorer = ResidualScore(predictor.trained.networks[0].eval())
    return ExplainJob(ids, inputs, [scorer] * len(ids), torch.zeros(len(ids), dtype=torch.long),
                      ["residual"] * len(ids), [x.numpy() for x in inputs], None, notes,
                      "reconstruction")  # fmt: skip


@register_task
class ReconstructionTask(Task):
    """Undersampled MRI reconstructed by an unrolled network with data consistency."""

    name = "reconstruction"
    summary = "MRI reconstruction from undersampled k-space (unrolled network, data consistency)"
    plan_type = ReconstructionPlan
    dataset_kinds = frozenset({"kspace"})
    options = MappingProxyType({"train": frozenset({"fold"}),
                                "evaluate": frozenset({"output", "baselines"})})  # fmt: skip

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print):
        from medlens.tasks.reconstruction.train import _open

        plan = _open(Path(data), None).default_plan()
        return plan.with_overrides(overrides) if overrides else plan

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, fold=None):  # fmt: skip
        from medlens.tasks.reconstruction.train import train_reconstruction

        return train_reconstruction(data, output, plan=plan, epochs=epochs, folds=folds,
                                    fold=fold, seed=seed, resume=resume, overrides=overrides,
                                    progress=progress, log=log)  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> ReconstructionPredictor:
        return ReconstructionPredictor(run, **options)

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True, output=None,
                 baselines=None) -> Evaluation:  # fmt: skip
        from medlens.tasks.reconstruction.evaluate import evaluate_reconstruction, format_table

        trained = ReconstructionPredictor(run).trained
        output = Path(output) if output is not None else run.path / "evaluation"
        if trained.plan.kind == "superres":
            from medlens.tasks.reconstruction.evaluate import evaluate_superres_run

            result = evaluate_superres_run(trained, Path(data), n_boot=n_boot, output=output,
                                           baselines=baselines, progress=progress)  # fmt: skip
            files = {k: Path(v) for k, v in result.pop("files", {}).items()}
            return Evaluation(result, [format_table(result), *(f"{k}: {v}" for k, v in
                                                              files.items())], files)  # fmt: skip
        result = evaluate_reconstruction(trained, Path(data), split=split, n_boot=n_boot,
                                         output=output, baselines=baselines,
                                         progress=progress)  # fmt: skip
        files = {k: Path(v) for k, v in result.pop("files", {}).items()}
        return Evaluation(result, [format_table(result), *(f"{k}: {v}" for k, v in
                                                          files.items())], files)  # fmt: skip

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.explain import ExplainJob
        from medlens.reconstruction.kspace import adjoint
        from medlens.tasks.reconstruction.data import evaluation_mask, network_input, slice_maps

        if split is not None or target is not None:
            raise MedlensError("--split and --target do not apply to a reconstruction run")
        trained = predictor.trained
        network = trained.networks[0].eval()
        if trained.plan.kind == "superres":
            return _superres_job(predictor, Path(source), limit)
        ids, inputs, models, display = [], [], [], []
        for data in predictor.read(Path(source))[: limit or None]:
            s = data.kspace.shape[0] // 2
            maps = slice_maps(data, s, trained.plan)
            batch = network_input(data.kspace[s], evaluation_mask(data, trained.plan), maps)
            zf = adjoint(batch["kspace"], batch["maps"], batch["mask"][:, None, None, :])[0]
            x = torch.stack([zf.real, zf.imag]).float()
            ids.append(f"{data.path.stem}-slice{s}")
            inputs.append(x)
            models.append(CorrectionScore(network, batch["mask"], batch["maps"]))
            display.append(zf.abs()[None].numpy())
        if not ids:
            raise MedlensError("no k-space files to explain", source)
        notes = ["Reconstruction: the score explained is the mean magnitude of the change the "
                 "network makes to the zero-filled image of the middle slice (its input, shown "
                 "as the magnitude; channels are the real and imaginary parts)."]  # fmt: skip
        return ExplainJob(ids, inputs, models, torch.zeros(len(ids), dtype=torch.long),
                          ["correction"] * len(ids), display, None, notes,
                          "reconstruction")  # fmt: skip

    def export_spec(self, run: RunFolder) -> ExportSpec:
        from medlens.reconstruction.unrolled import pack
        from medlens.tasks.reconstruction.predict import load_reconstruction_run

        trained = load_reconstruction_run(run.path)
        if trained.plan.kind == "superres":
            gen = torch.Generator().manual_seed(0)
            outside = {"input": "the low-resolution image interpolated onto the fine grid (cubic "
                       "spline, SciPy zoom order 3, pixel-edge grid, mirrored edges), one plane "
                       "per channel", "output": "the super-resolved plane",
                       "factors": list(trained.plan.factors),
                       "through_plane": "planes holding the slice axis, both orientations "
                       "averaged" if trained.plan.through_plane else None}  # fmt: skip
            return ExportSpec(trained.networks, torch.rand(2, 1, 48, 48, generator=gen),
                              dynamic_spatial=True, outside=outside, output="superres")  # fmt: skip
        for network in trained.networks:
            network.dft = "matmul"  # ONNX has no complex tensors: DFT matrices in the graph
        plan = trained.plan
        c, size = plan.coils, 32
        gen = torch.Generator().manual_seed(0)
        example = pack({
            "kspace": torch.randn(2, c, size, size, dtype=torch.complex64, generator=gen),
            "maps": torch.ones(2, c, size, size, dtype=torch.complex64) / c**0.5,
            "mask": (torch.rand(2, size, generator=gen) < 0.5).float(),
        })  # fmt: skip
        outside = {
            "input": {"channels": f"k-space real ({c}), imaginary ({c}); coil maps real ({c}), "
                      "imaginary ({c}); the mask of measured phase-encode lines repeated along "
                      "the readout (1)", "k-space": "(coils, readout, phase encode), centred "
                      "orthonormal FFT of the image, zero where not measured"},
            "output": "the complex image (real, imaginary), the scale of the measurements",
            "maps": "the file's coil maps, or ESPIRiT (sigpy) from each slice's measured centre"
            if plan.maps == "espirit" else "the file's coil maps (ones for one coil)",
            "ensemble": "images averaged over the folds",
        }  # fmt: skip
        return ExportSpec(trained.networks, example, dynamic_spatial=True, outside=outside,
                          output="reconstruction")  # fmt: skip
