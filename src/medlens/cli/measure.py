"""``medlens measure``: clinical measurements from predicted masks (fetal head circumference)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Clinical measurements from predicted masks.", no_args_is_help=True)


@app.command("head-circumference")
def head_circumference(
    masks_dir: Path = typer.Argument(
        ..., help="Folder of head masks named like the images (000_HC.png), head > 0."
    ),
    pixel_size: Path = typer.Option(
        ..., "--pixel-size", help="CSV in the HC18 layout: filename,pixel size(mm)[,...]."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="CSV to write: filename,head_circumference_mm."
    ),
    correction: float | None = typer.Option(
        None,
        "--correction",
        help="Pixels taken off both semi-axes (default: the HC18 annotation line's half width, "
        "for masks like the filled HC18 ones; 0 to measure the region's boundary itself).",
    ),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Write images without a mask with an empty value."
    ),
) -> None:
    """Fit an ellipse to each head, as HC18 measures it, and write its circumference in mm."""
    from medlens.measure import LINE_HALF_WIDTH_PX, measure_directory

    summary = measure_directory(
        masks_dir,
        pixel_size,
        output,
        correction=LINE_HALF_WIDTH_PX if correction is None else correction,
        skip_missing=skip_missing,
    )
    missing = summary["missing"]
    note = f", {len(missing)} without a mask left empty" if missing else ""
    typer.echo(f"{summary['measured']} head circumferences{note}: {output}")
