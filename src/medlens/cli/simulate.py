"""``medlens simulate``: SIMULATED data made from real images, named as simulated everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Make SIMULATED datasets from real images.", no_args_is_help=True)


@app.command("kspace")
def kspace(
    images: Path = typer.Argument(
        ..., help="Real magnitude images: a file, a DICOM series folder or a folder tree."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="New (or empty) output folder."),
    coils: int = typer.Option(1, "--coils", help="Receiver coils (1: single-coil)."),
    accel: float = typer.Option(4.0, "--accel", help="Acceleration of the stored masks."),
    mask: str = typer.Option("random", "--mask", help="Undersampling: random or equispaced."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same dataset."),
    noise: float = typer.Option(
        0.01, "--noise", help="Complex noise per k-space sample, a fraction of the image maximum."
    ),
    slices: int = typer.Option(16, "--slices", help="At most this many slices per image (0: all)."),
    centre_fraction: float = typer.Option(
        None, "--centre-fraction", help="Fully sampled centre (default 0.32/accel, as fastMRI)."
    ),
) -> None:
    """Retrospective k-space from real magnitude images: smooth synthetic phase, synthetic
    birdcage coils, noise, and fastMRI-style masks (written as .npz files)."""
    from medlens.reconstruction.simulate import simulate_kspace_dataset

    summary = simulate_kspace_dataset(
        images,
        output,
        coils=coils,
        acceleration=accel,
        mask=mask,
        seed=seed,
        noise=noise,
        max_slices=slices or None,
        centre_fraction=centre_fraction,
        progress=True,
    )
    typer.echo(json.dumps(summary, default=str))
