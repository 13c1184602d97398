"""``medlens measure``: clinical measurements from predicted masks (fetal head circumference,
left-ventricular volumes and ejection fraction from cine MRI)."""

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


@app.command("cardiac")
def cardiac(
    run: Path = typer.Argument(..., help="A 2D segmentation run of the left ventricle."),
    source: Path = typer.Option(
        ...,
        "--input",
        "-i",
        help="A short-axis cine: DICOM series folder (or a folder of several), 4D NIfTI.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the measurements."),
    label: str | None = typer.Option(
        None, "--label", help="The cavity's class (name or value); default 'left ventricle'."
    ),
    mirror: bool = typer.Option(
        False, "--mirror/--no-mirror", help="Mirroring test-time augmentation (4x the time)."
    ),
    precision: str = typer.Option(
        "bf16", "--precision", help="bf16 (where the CPU computes it natively) or float32."
    ),
    video: bool = typer.Option(True, "--video/--no-video", help="Write the MP4 overlay."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Segment every phase and slice; write EDV, ESV, SV, EF, the volume curve and an overlay."""
    from medlens.tasks.segmentation.cardiac import measure_cardiac

    if precision not in ("bf16", "float32"):
        raise typer.BadParameter(f"{precision}: use bf16 or float32", param_hint="--precision")
    rows = measure_cardiac(run, source, output, label=label, mirror=mirror, precision=precision,
                           video=video, progress=progress, log=typer.echo)  # fmt: skip
    typer.echo(f"{len(rows)} cine(s) measured: {output / 'measurements.csv'}")
