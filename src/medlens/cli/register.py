"""``medlens register``: align one image to another by instance optimisation."""

from __future__ import annotations

from pathlib import Path

import typer


def register(
    fixed: Path = typer.Argument(..., help="The image to align to (its grid is the output's)."),
    moving: Path = typer.Argument(..., help="The image to move."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the results."),
    method: str = typer.Option(
        "deformable",
        "--method",
        help="affine, deformable (an affine, then a diffeomorphism), or learned:RUN (the "
        "network of a medlens train --task registration run).",
    ),
    similarity: str = typer.Option(
        "lncc",
        "--similarity",
        help="mse, ncc, lncc (local NCC, same modality), mi (mutual information) or mind "
        "(MIND descriptors); use mi or mind across modalities.",
    ),
    fixed_labels: Path | None = typer.Option(
        None, "--fixed-labels", help="Label map on the fixed grid, to score the result."
    ),
    moving_labels: Path | None = typer.Option(
        None, "--moving-labels", help="Label map on the moving grid: warped and scored."
    ),
    landmarks: tuple[Path, Path] | None = typer.Option(
        None,
        "--landmarks",
        help="Two CSVs of index coordinates (fixed, moving; X,Y[,Z] columns): the target "
        "registration error.",
    ),
    initial: str = typer.Option(
        "affine",
        "--initial",
        help="Before the deformation: affine (an affine stage), center (the centres only) or none.",
    ),
    weight: float | None = typer.Option(
        None, "--weight", help="Regularisation weight (default: tuned per similarity)."
    ),
    regulariser: str = typer.Option(
        "diffusion", "--regulariser", help="diffusion or bending (energy of the velocity)."
    ),
    fixed_mask: Path | None = typer.Option(
        None, "--fixed-mask", help="Where the similarity counts (on the fixed grid, > 0)."
    ),
    iterations: int = typer.Option(100, "--iterations", help="Steps per pyramid level."),
    refine: int | None = typer.Option(
        None,
        "--refine",
        help="learned:RUN only: steps of instance optimisation from the network's output "
        "(default: the run's plan).",
    ),
    inverse_consistency: bool = typer.Option(
        False,
        "--inverse-consistency",
        help="Also register FIXED to MOVING (twice the time) and report how far each point "
        "lands from itself through both (metrics.json inverse_consistency, mm).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines."),
) -> None:
    """Register MOVING to FIXED and write warped.nii.gz, displacement.nii.gz (ITK), affine.tfm,
    metrics.json and report.html (with warped_labels.nii.gz when labels are given)."""
    from medlens._atomic import ensure_outside
    from medlens.errors import MedlensError
    from medlens.image import Role
    from medlens.io import load_image
    from medlens.registration.outputs import matched_landmarks, write_registration
    from medlens.registration.register import register as run

    learned = Path(method.split(":", 1)[1]) if method.startswith("learned:") else None
    if learned is None and refine is not None:
        raise MedlensError("--refine is for --method learned:RUN")
    if (fixed_labels is None) != (moving_labels is None):
        raise MedlensError("give both --fixed-labels and --moving-labels, or neither")
    inputs = [p for p in (fixed, moving, fixed_labels, moving_labels, fixed_mask) if p]
    inputs += list(landmarks or ())
    ensure_outside(output, *inputs)
    fixed_image, moving_image = load_image(fixed), load_image(moving)
    labels = [load_image(p, role=Role.LABEL) for p in (fixed_labels, moving_labels) if p]
    if labels:
        fixed_image.check_same_grid(labels[0], name=str(fixed_labels))
        moving_image.check_same_grid(labels[1], name=str(moving_labels))
    mask = load_image(fixed_mask, role=Role.LABEL) if fixed_mask else None
    if mask is not None:
        fixed_image.check_same_grid(mask, name=str(fixed_mask))
    points = matched_landmarks(*landmarks) if landmarks else None
    if points is not None and points[0].shape[1] != fixed_image.spatial_dims:
        raise MedlensError(
            f"{points[0].shape[1]}D landmarks for a {fixed_image.spatial_dims}D image",
            landmarks[0] if landmarks else None,
        )
    log = (lambda s: None) if quiet else (lambda s: typer.echo(s, err=True))
    if learned is not None:
        from medlens.tasks.registration.predict import load_registration_run, register_learned

        trained = load_registration_run(learned)

        def align(a, b, mask_a):
            return register_learned(trained, a, b, refine=refine)
    else:

        def align(a, b, mask_a):
            return run(a, b, method=method, similarity=similarity, initial=initial, weight=weight,
                       regulariser=regulariser, fixed_mask=mask_a, iterations=iterations,
                       log=log)  # fmt: skip

    result = align(fixed_image, moving_image, mask)
    backward = None
    if inverse_consistency:  # the other way round, the moving image unmasked
        log("registering FIXED to MOVING for the inverse consistency ...")
        backward = align(moving_image, fixed_image, None)
    files = write_registration(
        result,
        output,
        fixed_labels=labels[0] if labels else None,
        moving_labels=labels[1] if labels else None,
        landmarks=points,
        backward=backward,
    )
    import json

    from medlens.tasks.registration.report import write_registration_report

    metrics = json.loads(files["metrics"].read_text())
    write_registration_report(output, result, metrics)
    line = f"registered in {metrics['seconds']:.1f} s"
    if "inverse_consistency" in metrics and metrics["inverse_consistency"]["mean_mm"] is not None:
        line += f"; inverse consistency {metrics['inverse_consistency']['mean_mm']:.2f} mm"
    if "labels" in metrics:
        line += (
            f"; Dice {metrics['labels_before']['dice_mean']:.3f} -> "
            f"{metrics['labels']['dice_mean']:.3f}"
        )
    if "landmarks" in metrics:
        unit = "px" if fixed_image.meta.get("spacing_known") is False else "mm"
        line += (
            f"; TRE median {metrics['landmarks_before']['median']:.2f} -> "
            f"{metrics['landmarks']['median']:.2f} {unit}"
        )
    typer.echo(f"{line}; folding {metrics['folding_fraction']:.2%}: {output}")


def apply_transform(
    transforms: list[Path] = typer.Argument(
        ...,
        help="One or more transforms, each a .tfm, an ITK displacement field (.nii.gz) or a "
        "medlens register output folder; the first maps the reference's points.",
    ),
    reference: Path = typer.Option(..., "--reference", help="The fixed image: the output grid."),
    output: Path = typer.Option(..., "--output", "-o", help="The file to write."),
    input: Path | None = typer.Option(
        None,
        "--input",
        help="An image or label map on the moving image's world, or a CSV of its points "
        "(X,Y[,Z] index columns). Without it the transform itself is written (a displacement "
        "field on the reference grid).",
    ),
    interpolation: str = typer.Option(
        "linear",
        "--interpolation",
        help="linear, bspline, nearest or onehot (labels: each label linearly, then the most "
        "likely); label maps default to onehot.",
    ),
    invert: bool = typer.Option(False, "--invert", help="Use the inverse of the chain."),
    moving: Path | None = typer.Option(
        None,
        "--moving",
        help="Points: the image their index coordinates refer to (the output is then in the "
        "reference's index coordinates); without it points are world LPS mm.",
    ),
) -> None:
    """Apply (compose, invert) transforms to an image, a label map or points."""
    from medlens._atomic import ensure_outside
    from medlens.errors import MedlensError
    from medlens.io import load_image, save_image
    from medlens.registration.apply import index_points, read_transform, resample_through
    from medlens.registration.transform_io import write_displacement

    ensure_outside(output, *transforms, reference, *[p for p in (input, moving) if p])
    chain = read_transform(transforms[0])
    for path in transforms[1:]:
        chain = chain.then(read_transform(path))
    if invert:
        chain = chain.inverted()
    fixed = load_image(reference)
    if input is None:
        if not output.name.lower().endswith((".nii", ".nii.gz")):
            raise MedlensError("a transform is written as a displacement field (.nii.gz)", output)
        world = fixed.index_to_world(index_points(fixed.spatial_shape))
        vectors = (chain.map(world) - world).T.reshape(fixed.spatial_dims, *fixed.spatial_shape)
        write_displacement(output, vectors, fixed)
        typer.echo(f"transform written as a displacement field: {output}")
        return
    if input.suffix.lower() == ".csv":
        write_points(chain, input, fixed, output, load_image(moving) if moving else None)
        return
    from medlens.image import Role

    image = load_image(input)
    if interpolation == "linear" and _looks_like_labels(image):
        image = image.replace(role=Role.LABEL)
        interpolation = "onehot"
    save_image(resample_through(chain, image, fixed, interpolation), output)
    typer.echo(f"{input.name} resampled ({interpolation}) onto {reference.name}: {output}")


def _looks_like_labels(image) -> bool:
    import numpy as np

    from medlens.image import Role

    if image.role == Role.LABEL:
        return True
    array = np.asarray(image.array)
    return np.issubdtype(array.dtype, np.integer) and len(np.unique(array[::7])) <= 32


def write_points(chain, source: Path, reference, output: Path, moving=None) -> None:
    """Points of the moving image into the reference's coordinates through the inverse of the
    chain (which maps reference points to moving ones): index coordinates of ``moving`` in,
    the reference's index coordinates out (with ``moving``), else world LPS mm both ways."""
    from medlens._atomic import atomic_write_text
    from medlens.errors import MedlensError
    from medlens.registration.outputs import read_landmarks

    ids, points = read_landmarks(source)
    if points.shape[1] != reference.spatial_dims:
        raise MedlensError(
            f"{points.shape[1]}D points for a {reference.spatial_dims}D image", source
        )
    world = moving.index_to_world(points) if moving is not None else points
    mapped = chain.inverse_map(world)
    if moving is not None:
        mapped = reference.world_to_index(mapped)
    axes = ["X", "Y", "Z"][: points.shape[1]]
    lines = [",".join(["id", *axes])]
    for k, row in enumerate(mapped):
        name = ids[k] if ids else str(k + 1)
        lines.append(",".join([name, *(f"{v:.4f}" for v in row)]))
    atomic_write_text(output, "\n".join(lines) + "\n")
    unit = "index coordinates" if moving is not None else "world mm"
    typer.echo(f"{len(mapped)} points mapped onto the reference ({unit}): {output}")
