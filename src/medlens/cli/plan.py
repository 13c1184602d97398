"""``medlens plan``: a task's self-configured plan for a dataset, as editable JSON."""

from __future__ import annotations

from pathlib import Path

import typer


def plan(
    data: Path = typer.Argument(..., help="Dataset (Decathlon folder, HC18, MedMNIST .npz, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="The plan JSON to write."),
    task: str | None = typer.Option(
        None, "--task", help="Task to plan for; default: what the dataset is labelled for."
    ),
    device: str = typer.Option("cpu", "--device", help="Budget to plan for: cpu or gpu."),
    max_samples: int | None = typer.Option(
        None, "--max-samples", help="Fingerprint at most this many cases (faster on big sets)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a plan entry, e.g. --set patch_size=96,96,96; repeatable."
    ),
) -> None:
    """Fingerprint the dataset and write its plan (segmentation: spacing, patch, network;
    classification: model, schedule, augmentation)."""
    from medlens._atomic import ensure_outside
    from medlens.data import open_dataset
    from medlens.tasks.registry import get_task, task_for_dataset

    ensure_outside(output, data)
    chosen = get_task(task) if task is not None else task_for_dataset(open_dataset(data).task)
    result = chosen.plan(data, device=device, max_samples=max_samples, overrides=overrides,
                         log=typer.echo)  # fmt: skip
    result.save(output)
    for line in result.describe():
        typer.echo(line)
    typer.echo(f"plan: {output}")
