"""``medlens train --task reconstruction``: plan, split by subject, train, validate.

The job: open ``--data`` (k-space files: :mod:`.data`), split its files by subject (80/20, or
fold ``k`` of ``K``), plan from its fingerprint (or take ``plan.json``) and train the unrolled
network on training slices with masks drawn anew (:class:`~.data.SliceBatches`). Each
validated epoch reconstructs up to ``plan.val_slices`` validation slices with their files'
stored masks; the mean PSNR (dB, each slice against its reference's maximum) picks the best
epoch. ``metrics.json`` holds the validation slices' PSNR, SSIM and NMSE, the zero-filled
figures beside them; ``baselines.json`` the compressed-sensing weights chosen on the validation
files (:mod:`.tuning`). Checkpoints are written every epoch; ``resume=True`` continues a killed run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens import __version__
from medlens._atomic import atomic_write_json, ensure_outside
from medlens.errors import DatasetError, MedlensError
from medlens.tasks.reconstruction.data import open_kspace
from medlens.tasks.reconstruction.plan import ReconstructionPlan, make_plan
from medlens.tasks.run_folder import RunFolder, failed_cleanly, run_format

__all__ = ["RUN_FORMAT", "ReconstructionLoss", "build_network", "score_slices",
           "train_reconstruction", "validation_slices"]  # fmt: skip

RUN_FORMAT = run_format("reconstruction")
VAL_FRACTION = 0.2


def build_network(plan: ReconstructionPlan) -> nn.Module:
    from medlens.reconstruction.unrolled import UnrolledNet

    net = plan.network
    if plan.kind == "superres":
        from medlens.models import create_model

        return create_model("edsr", spatial_dims=2, in_channels=1, width=int(net["width"]),
                            blocks=int(net["blocks"]))  # fmt: skip
    return UnrolledNet(int(net["cascades"]), list(net["features"]),
                       hard_dc=bool(net.get("hard_dc", True)))  # fmt: skip


class ReconstructionLoss(nn.Module):
    """The plan's loss on ``(output, {"target": ...})``."""

    def __init__(self, plan: ReconstructionPlan) -> None:
        super().__init__()
        self.l1, self.ssim = float(plan.loss.get("l1", 1.0)), float(plan.loss.get("ssim", 1.0))

    def forward(self, output: torch.Tensor, targets) -> torch.Tensor:
        from medlens.reconstruction.losses import reconstruction_loss

        target = targets["target"] if isinstance(targets, dict) else targets
        if output.ndim == 4:  # (B, 1, H, W) planes of super-resolution
            output, target = output[:, 0], target[:, 0]
        return reconstruction_loss(output, target, l1=self.l1, ssim=self.ssim)


def train_reconstruction(data: str | Path, output: str | Path, *,
                         plan: str | Path | None = None, epochs: int | None = None,
                         folds: int | None = None, fold: int | None = None, seed: int = 0,
                         resume: bool = False, overrides: Sequence[str] = (),
                         progress: bool = True,
                         log: Callable[[str], Any] = print) -> dict[str, Any]:  # fmt: skip
    """Plan (unless ``plan`` is given), train and validate; returns ``run.json``'s content."""
    if folds is not None and folds > 1 and fold is None:
        raise MedlensError("reconstruction trains one model: give --fold k with --folds K")
    if fold is not None and not (folds and folds > 1 and 0 <= fold < folds):
        raise MedlensError(f"fold {fold}: needs folds=K > 1 and 0 <= fold < K")
    with failed_cleanly(output, resume=resume):
        return _job(Path(data), Path(output), plan, epochs, (folds, fold), seed, resume,
                    overrides, progress, log)  # fmt: skip


class KSpaceJob:
    """What training needs of a k-space dataset (``kind="mri"``)."""

    unit = "files"

    def __init__(self, data: Path) -> None:
        self.source = open_kspace(data)
        self.names, self.groups = self.source.ids, self.source.subjects()
        self.simulated = bool(self.source.fingerprint().get("simulated"))

    def default_plan(self) -> ReconstructionPlan:
        return make_plan(self.source.fingerprint())

    def prepare(self, plan, split, seed: int):
        """Training batches, validation items and the validation score."""
        from medlens.tasks.reconstruction.data import SliceBatches

        train_files = [int(i) for i in split["train_indices"]]
        val = validation_slices(self.source, [int(i) for i in split["val_indices"]], plan, seed)

        def evaluate(model, _):
            return {"score": score_slices(model, self.source, val, plan)["psnr"]}

        return SliceBatches(self.source, train_files, plan, seed=seed), val, evaluate

    def final(self, network, val, plan) -> tuple[dict[str, Any], str]:
        metrics = score_slices(network, self.source, val, plan, zero_filled=True)
        line = (f"validation slices: PSNR {metrics['psnr']:.2f} dB (zero-filled "
                f"{metrics['zero_filled_psnr']:.2f}), SSIM {metrics['ssim']:.4f}")  # fmt: skip
        return metrics, line

    def tune_baselines(self, plan, split, output: Path, log) -> None:
        """The compressed-sensing weights, chosen on the validation files (:mod:`.tuning`)."""
        from medlens.tasks.reconstruction.tuning import tune_baselines

        tune_baselines(self.source, [int(i) for i in split["val_indices"]], plan, output, log)


def _open(data: Path, plan):
    """The training job of ``data``: k-space files (MRI) or images (super-resolution)."""
    from medlens.tasks.reconstruction.superres import ImageJob

    kind = None if plan is None else ReconstructionPlan.load(plan).kind
    if kind == "superres":
        return ImageJob(data)
    try:
        return KSpaceJob(data)
    except DatasetError as error:
        if kind == "mri" or "no k-space files" not in str(error):
            raise
    return ImageJob(data)


def _job(data, output, plan, epochs, cv, seed, resume, overrides, progress, log):
    from medlens.data import kfold_splits, save_splits, train_val_split

    if not data.exists():
        raise DatasetError("does not exist", data)
    ensure_outside(output, data)
    job = _open(data, output / "plan.json" if resume else plan)
    started = time.perf_counter()
    names, groups = job.names, job.groups
    if resume:
        the_plan = ReconstructionPlan.load(output / "plan.json")
        split = json.loads((output / "splits.json").read_text())["folds"][0]
    else:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        if len(set(groups)) < 2:
            raise DatasetError(f"{len(set(groups))} subject(s): training needs at least 2 "
                               "(one to validate on)", data)  # fmt: skip
        folds, fold = cv
        if folds is not None and folds > 1:
            split = kfold_splits(names, folds, groups=groups, stratify=False, seed=seed,
                                 ids=names)[fold]  # fmt: skip
        else:
            fraction = max(VAL_FRACTION, 1 / len(set(groups)))
            split = train_val_split(names, fraction, groups=groups, stratify=False, seed=seed,
                                    ids=names)  # fmt: skip
        the_plan = ReconstructionPlan.load(plan) if plan is not None else job.default_plan()
        the_plan = the_plan.with_overrides(overrides) if overrides else the_plan
        if epochs is not None:
            the_plan.train = the_plan.train.replace(epochs=int(epochs))
        output.mkdir(parents=True, exist_ok=True)
        the_plan.save(output / "plan.json")
        save_splits(output / "splits.json", split)
        RunFolder(output).write(_info(the_plan, data, job, seed, "training"))
        log(f"plan: {the_plan.describe()[0]}; {len(split['train'])} training and "
            f"{len(split['val'])} validation {job.unit}")  # fmt: skip
    batches, val, evaluate = job.prepare(the_plan, split, seed)
    _fit(the_plan, batches, val, evaluate, output / "fold-0", seed, progress, resume)
    info = _info(the_plan, data, job, seed, "complete")
    info["folds"] = 1
    if cv[1] is not None:
        info["cv_fold"] = [cv[1], cv[0]]
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    networks = RunFolder(output).load_networks(lambda: build_network(the_plan))
    metrics, line = job.final(networks[0], val, the_plan)
    atomic_write_json(output / "metrics.json", metrics)
    if hasattr(job, "tune_baselines"):
        job.tune_baselines(the_plan, split, output, log)
    info["evaluation"] = {k: v for k, v in metrics.items() if k != "slices"}
    RunFolder(output).write(info)
    log(line)
    return info


def validation_slices(source, files: list[int], plan, seed: int) -> list[tuple[int, int]]:
    """Up to ``plan.val_slices`` ``(file, slice)`` pairs of the validation files, evenly
    spread over them."""
    every = [(i, s) for i in files for s in range(source.load(i).kspace.shape[0])]
    if not every:
        raise DatasetError("no validation slices", source.path)
    keep = np.unique(np.linspace(0, len(every) - 1, min(plan.val_slices, len(every))).round())
    return [every[int(k)] for k in keep]


def _fit(plan, batches, val, evaluate, fold_dir, seed, progress, resume) -> None:
    from medlens.engine import Trainer

    torch.manual_seed(seed)
    network = build_network(plan)
    config = plan.train.replace(seed=seed, progress=progress)
    trainer = Trainer(network, config, batches, val_data=val, output_dir=fold_dir,
                      evaluate_fn=evaluate, loss_fn=ReconstructionLoss(plan),
                      task="reconstruction")  # fmt: skip
    trainer.fit(resume=resume and (fold_dir / "last.pt").exists())


@torch.no_grad()
def score_slices(network, source, slices, plan, *, zero_filled: bool = False) -> dict[str, Any]:
    """PSNR, SSIM and NMSE of ``network`` on ``slices`` with their stored masks (means over
    slices; with ``zero_filled`` the zero-filled figures too)."""
    from medlens.metrics.reconstruction import nmse, psnr, ssim
    from medlens.reconstruction.baselines import zero_filled as zero_fill
    from medlens.tasks.reconstruction.data import (
        evaluation_mask,
        network_input,
        reference,
        slice_maps,
    )

    network.eval()
    rows = []
    for i, s in slices:
        data = source.load(i)
        maps = slice_maps(data, s, plan)
        mask = evaluation_mask(data, plan)
        inputs = network_input(data.kspace[s], mask, maps)
        target = reference(data, s, maps)
        out = network(inputs)[0].abs().numpy()
        row = {"file": data.path.name, "slice": s, "psnr": psnr(target, out),
               "ssim": ssim(target, out), "nmse": nmse(target, out)}  # fmt: skip
        if zero_filled:
            zf = np.abs(zero_fill(data.kspace[s], mask, maps))
            row.update(zero_filled_psnr=psnr(target, zf), zero_filled_ssim=ssim(target, zf))
        rows.append(row)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("file", "slice")}
    return {**out, "n_slices": len(rows), "slices": rows}


def _info(plan, data, job, seed, status) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "medlens": __version__,
        "status": status,
        "task": "reconstruction",
        "kind": plan.kind,
        "data": {"source": str(data), job.unit: len(job.names), "simulated": job.simulated},
        "seed": seed,
    }
