"""``medlens explain``: attribution maps of a run's predictions, with faithfulness checks."""

from __future__ import annotations

from pathlib import Path

import typer


def explain(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    input_path: Path = typer.Option(..., "--input", help=".npz, image folder, image or DICOM."),
    output: Path = typer.Option(
        ..., "--output", help="Folder for the maps, PNGs and explain.html."
    ),
    split: str | None = typer.Option(None, "--split", help="The .npz split when it has several."),
    method: list[str] = typer.Option(
        ["gradcam"],
        "--method",
        help="gradcam, gradcam++, ig, smoothgrad, occlusion, lime, shap, gradshap or all; "
        "repeatable or comma-separated.",
    ),
    target: str | None = typer.Option(
        None, "--target", help="Class (name or index) / label value to explain; default: predicted."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Explain only the first N images."),
    layer: str | None = typer.Option(
        None, "--layer", help="Grad-CAM layer by module name (e.g. blocks.2, decoder.3)."
    ),
    faithfulness: bool = typer.Option(
        True,
        "--faithfulness/--no-faithfulness",
        help="Deletion/insertion and randomisation checks.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling methods."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Explain each image's prediction with attribution maps; check how faithful they are."""
    from medlens.tasks.explaining import explain_run

    explain_run(
        run,
        input_path,
        output,
        methods=method,
        split=split,
        target=target,
        limit=limit,
        faithfulness=faithfulness,
        layer=layer,
        progress=progress,
        seed=seed,
        log=typer.echo,
    )
