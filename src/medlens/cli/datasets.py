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
