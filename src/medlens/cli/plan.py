"""``medlens plan``: the self-configured segmentation plan of a dataset, as editable JSON."""

from __future__ import annotations

from pathlib import Path

import typer


def plan(
    data: Path = typer.Argument(..., help="Segmentation dataset (Decathlon folder, HC18, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="The plan JSON to write."),
    device: str = typer.Option("cpu", "--device", help="Budget to plan for: cpu or gpu."),
    max_samples: int | None = typer.Option(
        None, "--max-samples", help="Fingerprint at most this many cases (faster on big sets)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a plan entry, e.g. --set patch_size=96,96,96; repeatable."
    ),
) -> None:
    """Fingerprint the dataset and write its segmentation plan (spacing, patch, network)."""
    from medlens._atomic import ensure_outside
    from medlens.data import fingerprint, open_dataset
    from medlens.tasks.segmentation import PlanError, apply_plan_overrides, make_plan

    if device not in ("cpu", "gpu"):
        raise PlanError(f"--device {device}: choose cpu or gpu")
    ensure_outside(output, data)
    dataset = open_dataset(data)
    result = make_plan(fingerprint(dataset, max_samples=max_samples, progress=True), device=device)
    if overrides:
        result = apply_plan_overrides(result, overrides)
    result.save(output)
    shape = "x".join(map(str, result.patch_size))
    spacing = ", ".join(f"{s:.3g}" for s in result.target_spacing)
    grid = f"spacing ({spacing}) mm"
    if result.target_scale is not None:
        factors = ", ".join(f"{s:.3g}" for s in result.target_scale)
        grid = f"pixels scaled by 1/({factors}), median spacing ({spacing}) mm"
    typer.echo(
        f"{result.dataset}: {result.spatial_dims}D, {grid}, patch {shape}, "
        f"batch {result.batch_size}, {len(result.network['features'])}-stage U-Net, "
        f"{result.normalisation['scheme']} normalisation"
    )
    for note in result.notes:
        typer.echo(f"  {note}")
    typer.echo(f"plan: {output}")
