"""``medlens train``, ``medlens evaluate`` and ``medlens predict``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

TASKS = ("classification", "segmentation")
MIRROR_HELP = (
    "Segmentation: mirroring test-time augmentation (default: on for 2D models, off for 3D, "
    "where it costs 8 passes)."
)


def train(
    task: str = typer.Option(..., "--task", help="What to learn: classification, segmentation."),
    data: Path = typer.Option(..., "--data", help="Dataset: MedMNIST .npz, CSV of labels, folder."),
    output: Path = typer.Option(..., "--output", help="Run folder to create (or resume)."),
    model: str | None = typer.Option(None, "--model", help="Model name; default: chosen."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs; default: planned."),
    folds: int | None = typer.Option(None, "--folds", help="K-fold cross-validation, K models."),
    seed: int = typer.Option(0, "--seed", help="Seed of splits, weights, batches, augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Training setting key=value (e.g. --set lr=0.001); repeatable."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    plan: Path | None = typer.Option(
        None, "--plan", help="Segmentation: a plan.json (from medlens plan) instead of planning."
    ),
    positive_class: str | None = typer.Option(
        None,
        "--positive-class",
        help="Binary classification: the positive class, by name or index (default: index 1); "
        "sensitivity, specificity and the threshold refer to it.",
    ),
) -> None:
    """Train, tune and evaluate a model; write the run folder with its report."""
    from medlens.errors import MedlensError

    if task not in TASKS:
        raise MedlensError(f"--task {task}: not available (tasks: {', '.join(TASKS)})")
    if task == "segmentation":
        from medlens.tasks.segmentation.train import train_segmentation

        if positive_class is not None:
            raise MedlensError("--positive-class is for binary classification, not segmentation")
        if model is not None:  # the plan's U-Net with a plain or residual encoder
            encoders = {"unet": "plain", "resunet": "residual"}
            if model not in encoders:
                raise MedlensError(f"--model {model}: not a segmentation model (unet, resunet)")
            overrides = [f"network.encoder={encoders[model]}", *(overrides or [])]
        info = train_segmentation(data, output, plan=plan, epochs=epochs, folds=folds,
                                  seed=seed, resume=resume, overrides=overrides,
                                  progress=progress, log=typer.echo)  # fmt: skip
        typer.echo(f"run folder: {output} ({info['train_seconds']:.0f} s)")
        return
    if model is not None:
        from medlens.models import list_models

        known = list_models(task="classification")
        if model not in known:
            raise MedlensError(f"--model {model}: not a classification model ({', '.join(known)})")
    from medlens.tasks.classification import train_classification

    info = train_classification(
        data,
        output,
        model=model,
        epochs=epochs,
        folds=folds,
        seed=seed,
        resume=resume,
        overrides=overrides,
        progress=progress,
        log=typer.echo,
        positive_class=positive_class,
    )
    typer.echo(f"run folder: {output} ({info['train_seconds']:.0f} s)")


def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    data: Path = typer.Option(..., "--data", help="Labelled images: .npz, CSV, folder."),
    split: str | None = typer.Option(
        None,
        "--split",
        help="The .npz split (train, val, test). Segmentation: val (the run's validation cases; "
        "the default on its training data) or all.",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write the metrics here as JSON."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the CIs."),
    output: Path | None = typer.Option(
        None, "--output", help="Segmentation: evaluation folder; default RUN/evaluation."
    ),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", help=MIRROR_HELP),
    tolerance_mm: float | None = typer.Option(
        None, "--tolerance-mm", help="Segmentation: surface Dice tolerance in mm (default 1)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Metrics with 95% bootstrap confidence intervals on labelled data."""
    from medlens._atomic import atomic_write_text
    from medlens.errors import MedlensError

    if _is_segmentation_run(run):
        from medlens.tasks.segmentation.evaluate import evaluate_segmentation, format_table

        result = evaluate_segmentation(
            run,
            data,
            split=split,
            tolerance_mm=1.0 if tolerance_mm is None else tolerance_mm,
            output=output,
            n_boot=n_boot,
            mirror=mirror,
            progress=progress,
        )
        typer.echo(format_table(result))
        files = result["files"]
        typer.echo(f"metrics: {files['metrics']}")
        typer.echo(f"per case: {files['per_case']}")
        typer.echo(f"report: {files['report']}")
        if json_path is not None:
            metrics = {k: v for k, v in result.items() if k != "files"}
            atomic_write_text(json_path, json.dumps(metrics, indent=1) + "\n")
            typer.echo(f"metrics (copy): {json_path}")
        return
    if output is not None or mirror is not None or tolerance_mm is not None:
        raise MedlensError("--output, --mirror and --tolerance-mm are for segmentation runs")
    from medlens.metrics import evaluate_classification
    from medlens.tasks.classification import load_run, predict_probs, read_inputs
    from medlens.tasks.classification.data import load_labelled

    trained = load_run(run)
    if data.suffix.lower() == ".npz":
        images = read_inputs(data, trained.spec, split=split)
    else:
        images = load_labelled(data, size=trained.spec.shape,
                               presentation=trained.spec.presentation)  # fmt: skip
    if images.labels is None:
        raise MedlensError(f"{data}: no labels to evaluate against")
    probs = predict_probs(trained.networks, images.images, trained.task)
    labels = images.labels
    if trained.metric_task != "multilabel":
        labels = labels.reshape(-1).astype(int)
    result = evaluate_classification(
        labels,
        probs,
        trained.metric_task,
        class_names=trained.class_names,
        threshold=trained.threshold,
        n_boot=n_boot,
        positive=trained.positive,
    )
    result["data"] = str(data)
    result["split"] = split or images.split
    if trained.positive is not None:
        typer.echo(f"positive class: {trained.class_names[trained.positive]!r}")
    for name in ("auc", "accuracy", "sensitivity", "specificity", "f1"):
        typer.echo(f"{name:<12} {_interval(result[name])}")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
        typer.echo(f"metrics: {json_path}")


def predict(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    input_path: Path = typer.Option(..., "--input", help=".npz, image folder, image or DICOM."),
    output: Path = typer.Option(
        ..., "--output", help="Classification: CSV to write. Segmentation: folder for the masks."
    ),
    split: str | None = typer.Option(None, "--split", help="The .npz split when it has several."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", help=MIRROR_HELP),
) -> None:
    """Classification: probabilities per image as CSV. Segmentation: one mask per image."""
    from medlens._atomic import ensure_outside

    if _is_segmentation_run(run):
        from medlens.tasks.segmentation.predict import load_segmentation_run, predict_inputs

        written = predict_inputs(load_segmentation_run(run), input_path, output, mirror=mirror)
        segs = sum(p.name.endswith(".seg.dcm") for p in written)
        extra = f" and {segs} DICOM SEG" if segs else ""
        typer.echo(f"{len(written) - segs} masks{extra}: {output}")
        return
    from medlens.tasks.classification import load_run, predict_probs, read_inputs
    from medlens.tasks.classification.bundle import write_predictions

    ensure_outside(output, input_path)
    trained = load_run(run)
    images = read_inputs(input_path, trained.spec, split=split)
    images.labels = None  # predictions do not need them; evaluate uses them
    probs = predict_probs(trained.networks, images.images, trained.task)
    write_predictions(
        output,
        images,
        probs,
        trained.class_names,
        trained.metric_task,
        trained.threshold,
        trained.positive,
    )
    typer.echo(f"{len(images)} predictions: {output}")


def _is_segmentation_run(run: Path) -> bool:
    try:
        return json.loads((run / "run.json").read_text()).get("task") == "segmentation"
    except (OSError, ValueError):
        return False


def _interval(metric: dict) -> str:
    if metric.get("value") is None:
        return "n/a"
    if metric.get("low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f}  (95% CI {metric['low']:.3f} to {metric['high']:.3f})"
