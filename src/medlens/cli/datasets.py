"""``medlens datasets``: convert, download and split datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Convert, download and split datasets.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert a dataset layout into medlens' standard layout.",
                          no_args_is_help=True)  # fmt: skip
download_app = typer.Typer(help="Download public datasets (needs a network).", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
app.add_typer(download_app, name="download")


@convert_app.command("hc18")
def convert_hc18(
    src: Path = typer.Argument(..., help="HC18 folder: images/, annotations/, labels.csv."),
    dst: Path = typer.Argument(..., help="Output folder (segmentation layout with dataset.json)."),
    limit: int | None = typer.Option(
        None, help="Convert only the first N subjects (all their images), for a try."
    ),
) -> None:
    """Fill the sonographers' head outlines into masks; keep the pixel size as spacing."""
    from medlens.data import convert_hc18 as convert

    summary = convert(src, dst, limit=limit, progress=True)
    typer.echo(json.dumps(summary, default=str))


@download_app.command("medmnist")
def download_medmnist(
    name: str = typer.Argument(..., help="Dataset name, e.g. breastmnist or adrenalmnist3d."),
    size: int = typer.Option(28, "--size", help="Image size: 28, 64, 128 or 224 (3D: 28, 64)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Folder for the files."),
    base_url: str | None = typer.Option(None, "--base-url", help="Mirror of the official record."),
) -> None:
    """Fetch an official MedMNIST v2 file (checksum verified, resumable)."""
    from medlens.data.download import download_medmnist as download

    path = download(name, size, cache_dir=cache_dir, base_url=base_url, progress=True)
    typer.echo(str(path))


@app.command("split")
def split(
    path: Path = typer.Argument(..., help="Dataset (any layout medlens opens)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the splits JSON."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of cross-validation folds."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same split."),
    split_name: str | None = typer.Option(None, "--split", help="MedMNIST split to divide."),
) -> None:
    """Stratified k-fold splits grouped by subject, saved as JSON."""
    from medlens._atomic import ensure_outside
    from medlens.data import kfold_splits, open_dataset, save_splits

    ensure_outside(output, path)
    kwargs = {"split": split_name} if split_name else {}
    dataset = open_dataset(path, **kwargs)
    save_splits(output, kfold_splits(dataset, folds, seed=seed))
    typer.echo(f"{folds} folds of {len(dataset)} samples written to {output}")


@app.command("simulate-lesions")
def simulate_lesions(
    src: Path = typer.Argument(
        ..., help="Real volumes: a NIfTI file, a DICOM series folder or a folder tree of them."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="New (or empty) output folder, not inside SRC."
    ),
    count: int = typer.Option(..., "--count", "-n", help="Number of volumes to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same dataset."),
    lesions_per_volume: str = typer.Option(
        "0-3",
        "--lesions-per-volume",
        help="Lesions per volume, MIN-MAX or N; with MIN 0 some volumes are lesion-free.",
    ),
    size: int = typer.Option(128, "--size", help="Crop at most this many voxels per axis."),
    min_mm: float = typer.Option(3.0, "--min-mm", help="Smallest equivalent diameter (mm)."),
    max_mm: float = typer.Option(30.0, "--max-mm", help="Largest equivalent diameter (mm)."),
    negatives: float = typer.Option(
        0.15, "--negatives", help="Share of lesion-free volumes when MIN is 0."
    ),
) -> None:
    """Insert SIMULATED 3D lesions into crops of real volumes: a detection dataset."""
    from medlens.data.simulate_lesions import simulate_lesion_dataset

    summary = simulate_lesion_dataset(
        src,
        output,
        count=count,
        seed=seed,
        lesions_per_volume=lesions_per_volume,
        size=size,
        min_mm=min_mm,
        max_mm=max_mm,
        negative_fraction=negatives,
        progress=True,
    )
    typer.echo(json.dumps(summary, default=str))


@app.command("simulate-cine")
def simulate_cine(
    src: Path = typer.Argument(
        ..., help="Real cine MRI: a Sunnybrook folder (dicoms/ + contourfiles/) or cine files."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="New (or empty) output folder, not inside SRC."
    ),
    count: int = typer.Option(..., "--count", "-n", help="Number of cines to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same dataset."),
    size: int = typer.Option(96, "--size", help="Crop this many pixels around the heart."),
    ef_min: float = typer.Option(20.0, "--ef-min", help="Lowest ejection fraction (%)."),
    ef_max: float = typer.Option(70.0, "--ef-max", help="Highest ejection fraction (%)."),
    subject: list[str] | None = typer.Option(
        None, "--subject", help="Use only this background patient (repeat for several)."
    ),
) -> None:
    """SIMULATED beating hearts with known EF painted over real cine MRI: a cine dataset."""
    from medlens.data.cine_phantom import simulate_cine_dataset

    summary = simulate_cine_dataset(src, output, count=count, seed=seed, size=size,
                                    ef_range=(ef_min, ef_max), subjects=subject or None,
                                    progress=True)  # fmt: skip
    typer.echo(json.dumps(summary, default=str))
