"""Prediction of a learned registration run: one pair, an image folder against one fixed image,
or a pairs CSV; the result is the :class:`~medlens.registration.register.Registration` that
``medlens register`` writes, so both commands write the same files.

The network's velocity lives on the fixed image's canonical grid; the transform it gives maps a
fixed world point ``p`` to ``A(p + D_c u_c(x_c))`` (``A``: the centres' translation, ``x_c``:
``p``'s canonical index, ``D_c`` the canonical grid's direction times spacing), which is the
registration's ``A(p + D u(x))`` with ``u`` the canonical displacement sampled at each fixed
voxel and expressed in the fixed grid's voxels. ``refine`` steps of instance optimisation start
from the network's velocity and minimise the training loss on this one pair (without labels).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.image import Image, Role
from medlens.tasks.registration.data import canonical_case
from medlens.tasks.registration.network import RegistrationLoss, build_network, displacement
from medlens.tasks.registration.plan import RegistrationPlan, canonical_matrix
from medlens.tasks.registration.prealign import REFERENCE, atlas_world

__all__ = ["RegistrationRun", "load_registration_run", "predict_inputs", "register_learned"]


@dataclass
class RegistrationRun:
    path: Path
    info: dict[str, Any]
    plan: RegistrationPlan
    networks: list[torch.nn.Module]
    reference: Image | None = None  # the atlas image of the affine pre-alignment


def load_registration_run(path: str | Path) -> RegistrationRun:
    from medlens.tasks.run_folder import RunFolder

    folder = RunFolder(path).require("registration")
    plan = RegistrationPlan.load(folder.path / "plan.json")
    networks = folder.load_networks(lambda: build_network(plan))
    reference = None
    if plan.prealign == "affine":
        from medlens.io import load_image

        reference = load_image(folder.path / REFERENCE)
    return RegistrationRun(folder.path, folder.info, plan, networks, reference)


def velocity_of(trained: RegistrationRun, fixed, moving) -> torch.Tensor:
    """The networks' mean velocity ``(1, n, *P)`` for canonical cases ``fixed``, ``moving``."""
    x = torch.cat([fixed.image, moving.image])[None]
    with torch.no_grad():
        outs = [net.eval()(x).float() for net in trained.networks]
    return torch.stack(outs).mean(0)


def refined(trained: RegistrationRun, velocity: torch.Tensor, fixed, moving,
            steps: int) -> torch.Tensor:  # fmt: skip
    """``velocity`` after ``steps`` Adam steps on the training loss of this pair (without
    labels; ``plan.refine["weight"]``, when given, replaces the diffusion weight)."""
    plan = trained.plan
    loss = RegistrationLoss(plan)
    loss.weight = float(plan.refine.get("weight", loss.weight))
    v = velocity.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=float(plan.refine.get("lr", 0.05)))
    targets = {"fixed": fixed.image[None], "moving": moving.image[None]}
    for _ in range(int(steps)):
        optimiser.zero_grad()
        value = loss(v, targets)
        if not torch.isfinite(value):
            raise MedlensError("the instance optimisation diverged; nothing written")
        value.backward()
        optimiser.step()
    return v.detach()


def register_learned(trained: RegistrationRun, fixed: Image, moving: Image, *,
                     refine: int | None = None):  # fmt: skip
    """The :class:`~medlens.registration.register.Registration` of ``moving`` to ``fixed`` by the
    run's network (and ``refine`` steps of instance optimisation; default: the plan's)."""
    from medlens.registration.apply import index_points
    from medlens.registration.optimise import Stage
    from medlens.registration.register import Registration
    from medlens.transforms._warp import warp_coords

    plan = trained.plan
    if fixed.spatial_dims != moving.spatial_dims:
        raise MedlensError(f"a {fixed.spatial_dims}D fixed image and a {moving.spatial_dims}D "
                           "moving image")  # fmt: skip
    started = time.perf_counter()
    f = canonical_case(plan, "fixed", fixed, None, atlas_world(trained, fixed))
    m = canonical_case(plan, "moving", moving, None, atlas_world(trained, moving))
    velocity = velocity_of(trained, f, m)
    steps = int(plan.refine.get("steps", 0) if refine is None else refine)
    stages = [Stage(f"network ({plan.prealign} pre-alignment)", [{"shape": list(plan.shape)}])]
    if steps > 0:
        velocity = refined(trained, velocity, f, m, steps)
        stages.append(Stage(f"instance optimisation ({steps} steps)", [{"steps": steps}]))
    with torch.no_grad():
        field_c = displacement(velocity, plan.integration_steps, plan.smooth)  # canonical voxels
        n = plan.spatial_dims
        grid = canonical_matrix(plan, np.zeros(n))
        to_fixed_world = np.asarray(fixed.affine, float)
        # each fixed voxel's canonical index, the canonical field there, into fixed voxels
        to_canonical = np.linalg.inv(grid) @ np.linalg.inv(f.world) @ to_fixed_world
        index = index_points(fixed.spatial_shape).astype(np.float64)
        at = index @ to_canonical[:n, :n].T + to_canonical[:n, n]
        coords = torch.from_numpy(at.astype(np.float32)).reshape(1, *fixed.spatial_shape, n)
        sampled = warp_coords(field_c, coords, padding="border")  # (1, n, *fixed)
        linear = np.linalg.inv(to_fixed_world[:n, :n]) @ f.world[:n, :n] @ grid[:n, :n]
        change = torch.as_tensor(linear, dtype=torch.float32)
        field = torch.einsum("ij,bj...->bi...", change, sampled)
    world = m.world @ np.linalg.inv(f.world)
    result = Registration(fixed, moving, world, field.contiguous(), stages)
    result.seconds = time.perf_counter() - started
    return result


def pairs_of(source: Path | None, fixed: Path | None, moving: Path | None):
    """``(name, fixed, moving, fixed_labels, moving_labels)`` rows to register."""
    from medlens.io.discover import discover_inputs, file_stem

    if moving is not None:
        if fixed is None:
            raise MedlensError("--moving needs --fixed")
        return [(file_stem(moving.name), fixed, moving, None, None)]
    if source is None:
        raise MedlensError("give --fixed and --moving, or --input (a pairs CSV, or images with "
                           "--fixed)")  # fmt: skip
    if source.is_file() and source.suffix.lower() == ".csv":
        from medlens.tasks.registration.data import open_source

        with source.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        open_source(source)  # checks the columns and the files, one line each
        out = []
        for k, row in enumerate(rows):
            columns = ("fixed", "moving", "fixed_labels", "moving_labels")
            values = [(row.get(key) or "").strip() for key in columns]
            found = {
                k: source.parent / v if v else None for k, v in zip(columns, values, strict=True)
            }
            name = f"{k:03d}-{file_stem(Path(row['moving']).name)}"
            out.append((name, *found.values()))
        return out
    if fixed is None:
        raise MedlensError("images to register need --fixed (the image they align to)", source)
    return [(file_stem(item.name), fixed, item.source, None, None)
            for item in discover_inputs(source)]  # fmt: skip


def predict_inputs(trained: RegistrationRun, source: Path | None, output: Path, *,
                   fixed: Path | None = None, moving: Path | None = None,
                   refine: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Register every pair (see :func:`pairs_of`) and write each into ``output/<name>`` (one
    pair: into ``output``), with ``summary.csv`` of the pairs' figures."""
    from medlens._atomic import atomic_write_text, ensure_outside
    from medlens.io import load_image
    from medlens.registration.outputs import write_registration
    from medlens.tasks.registration.report import write_registration_report

    rows = pairs_of(source, fixed, moving)
    ensure_outside(output, *[p for r in rows for p in r[1:] if p is not None])
    summary = []
    for name, f, m, fl, ml in rows:
        folder = output if len(rows) == 1 and moving is not None else output / name
        fixed_image, moving_image = load_image(f), load_image(m)
        labels = [load_image(p, role=Role.LABEL) for p in (fl, ml) if p is not None]
        for image, label, path in zip((fixed_image, moving_image), labels, (fl, ml), strict=False):
            image.check_same_grid(label, name=str(path))
        result = register_learned(trained, fixed_image, moving_image, refine=refine)
        files = write_registration(result, folder, fixed_labels=labels[0] if labels else None,
                                   moving_labels=labels[1] if labels else None)  # fmt: skip
        metrics = json.loads(files["metrics"].read_text())
        write_registration_report(folder, result, metrics)
        summary.append({"id": name, "fixed": str(f), "moving": str(m),
                        "seconds": metrics["seconds"],
                        "folding_fraction": metrics["folding_fraction"],
                        "sdlogj": metrics["sdlogj"],
                        "dice_before": (metrics.get("labels_before") or {}).get("dice_mean"),
                        "dice": (metrics.get("labels") or {}).get("dice_mean")})  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(summary[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary)
    atomic_write_text(output / "summary.csv", table.getvalue())
    return summary
