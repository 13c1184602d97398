"""``medlens train``, ``medlens evaluate`` and ``medlens predict``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

MIRROR_HELP = (
    "Segmentation: mirroring test-time augmentation (default: on for 2D models, off for 3D, "
    "where it costs 8 passes)."
)

ADAPT_HELP = (
    "Classification: adapt to these images' class prior, estimated from them by EM (Saerens et "
    "al. 2002; their labels are not used); decisions are then the most probable class."
)


def train(
    task: str = typer.Option(
        ..., "--task", help="What to learn: classification, segmentation (any registered task)."
    ),
    data: Path = typer.Option(..., "--data", help="Dataset: MedMNIST .npz, CSV of labels, folder."),
    output: Path = typer.Option(..., "--output", help="Run folder to create (or resume)."),
    model: str | None = typer.Option(None, "--model", help="Model name; default: chosen."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs; default: planned."),
    folds: int | None = typer.Option(None, "--folds", help="K-fold cross-validation, K models."),
    fold: int | None = typer.Option(
        None,
        "--fold",
        help="Segmentation: train only this fold (0 to K-1) of --folds K, validated on it.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of splits, weights, batches, augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="Plan setting key=value: a training setting (lr=0.001, train.epochs=5) or a plan "
        "entry (patch_size=96,96,96); repeatable.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    plan: Path | None = typer.Option(
        None, "--plan", help="A plan file (from medlens plan) instead of planning."
    ),
    select: str | None = typer.Option(
        None,
        "--select",
        help="Classification: auto (small 2D sets choose their plan by cross-validation over "
        "train + val and predict with the fold ensemble), cv (always) or off.",
    ),
    column: str | None = typer.Option(
        None,
        "--column",
        help="Sequence classification and regression: the cases.csv column to learn (default "
        "label, or ef_percent / the first numeric column).",
    ),
    positive_class: str | None = typer.Option(
        None,
        "--positive-class",
        help="Binary classification: the positive class, by name or index (default: index 1); "
        "sensitivity, specificity and the threshold refer to it.",
    ),
) -> None:
    """Train, tune and evaluate a model; write the run folder with its report."""
    from medlens.tasks.base import check_options
    from medlens.tasks.registry import get_task

    chosen = get_task(task)
    given = {"model": model, "positive_class": positive_class, "select": select, "fold": fold,
             "column": column}  # fmt: skip
    options = check_options(chosen, "train", given)
    info = chosen.train(data, output, plan=plan, epochs=epochs, folds=folds, seed=seed,
                        resume=resume, overrides=overrides, progress=progress, log=typer.echo,
                        **options)  # fmt: skip
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
        None,
        "--output",
        help="Segmentation, detection, registration: evaluation folder; default RUN/evaluation.",
    ),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", help=MIRROR_HELP),
    adapt_prior: bool | None = typer.Option(None, "--adapt-prior", help=ADAPT_HELP),
    tolerance_mm: float | None = typer.Option(
        None, "--tolerance-mm", help="Segmentation: surface Dice tolerance in mm (default 1)."
    ),
    refine: int | None = typer.Option(
        None, "--refine", help="Registration: steps of instance optimisation per pair."
    ),
    baselines: str | None = typer.Option(
        None,
        "--baselines",
        help="Reconstruction: comma-separated baselines beside the network (default all that "
        "apply: zero_filled, sense (multi-coil), cs_wavelet, cs_tv; super-resolution: nearest, "
        "cubic).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Metrics with 95% bootstrap confidence intervals on labelled data."""
    from medlens._atomic import atomic_write_text
    from medlens.tasks.base import check_options
    from medlens.tasks.registry import task_for_run

    task, folder = task_for_run(run)
    given = {"output": output, "mirror": mirror, "tolerance_mm": tolerance_mm,
             "adapt_prior": adapt_prior, "refine": refine, "baselines": baselines}  # fmt: skip
    options = check_options(task, "evaluate", given)
    result = task.evaluate(folder, data, split=split, n_boot=n_boot, progress=progress, **options)
    for line in result.lines:
        typer.echo(line)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.metrics, indent=1) + "\n")
        typer.echo(f"metrics{' (copy)' if result.files else ''}: {json_path}")


def predict(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    input_path: str | None = typer.Option(
        None,
        "--input",
        help=".npz, image folder, image, DICOM, or a study on a PACS: "
        "dicomweb://HOST:PORT/ROOT/studies/UID (or .../studies/UID/series/UID). Registration: "
        "a pairs CSV (fixed,moving columns), or images to register to --fixed.",
    ),
    output: str = typer.Option(
        ...,
        "--output",
        help="Classification: CSV to write. Segmentation: folder for the masks. "
        "dicomweb://HOST:PORT/ROOT: the DICOM results (SEG, SR) stored on that PACS (STOW-RS).",
    ),
    split: str | None = typer.Option(None, "--split", help="The .npz split when it has several."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", help=MIRROR_HELP),
    adapt_prior: bool | None = typer.Option(None, "--adapt-prior", help=ADAPT_HELP),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="torch, onnx (the run's export by medlens export) or auto (the faster, measured).",
    ),
    fixed: Path | None = typer.Option(
        None, "--fixed", help="Registration: the image to align to (the output's grid)."
    ),
    moving: Path | None = typer.Option(
        None, "--moving", help="Registration: the image to move (one pair, with --fixed)."
    ),
    refine: int | None = typer.Option(
        None,
        "--refine",
        help="Registration: steps of instance optimisation from the network's output "
        "(default: the plan's).",
    ),
) -> None:
    """Classification: probabilities per image as CSV. Segmentation: one mask per image.
    Registration: warped images, displacement fields and metrics per pair."""
    import tempfile

    from medlens.errors import MedlensError
    from medlens.io.dicomweb import is_dicomweb, parse_dicomweb, retrieve
    from medlens.tasks.base import check_options
    from medlens.tasks.export import use_backend
    from medlens.tasks.registry import task_for_run

    task, folder = task_for_run(run)
    given = {"split": split, "mirror": mirror, "adapt_prior": adapt_prior, "fixed": fixed,
             "moving": moving, "refine": refine}  # fmt: skip
    options = check_options(task, "predict", given)
    if input_path is None and moving is None:
        raise MedlensError("--input is required (or --fixed and --moving for a registration)")
    if is_dicomweb(output) and (split is not None or adapt_prior or input_path is None):
        raise MedlensError(
            "--split, --adapt-prior and pairs without --input do not apply to a dicomweb:// output"
        )
    chosen = {"mirror": mirror} if options.get("mirror") is not None else {}
    predictor = task.load_predictor(folder, **chosen)  # as predict_path's options would
    echo = lambda line: typer.echo(line, err=True)  # noqa: E731
    use_backend(predictor, backend, log=echo)
    with tempfile.TemporaryDirectory(prefix="medlens-dicomweb-") as scratch:
        source = Path(input_path) if input_path is not None else None
        if input_path is not None and is_dicomweb(input_path):
            source = Path(scratch) / "retrieved"
            retrieve(parse_dicomweb(input_path), source, log=echo)
        if is_dicomweb(output):
            typer.echo(_store_results(predictor, run, source, output, Path(scratch) / "out"))
        else:
            typer.echo(predictor.predict_path(source, Path(output), **options))


def _store_results(predictor, run: Path, source: Path, output: str, scratch: Path) -> str:
    """Predict ``source``'s DICOM inputs and store their DICOM results on a PACS (STOW-RS)."""
    from medlens.io.dicomweb import parse_dicomweb, store

    target = parse_dicomweb(output)
    context = {"model_name": run.resolve().name, "model_version": predictor.run.algorithm_version()}
    results = predictor.dicom_results(source, scratch, **context)
    stored = store(target, results)
    kinds = sorted({p.name.rsplit(".", 2)[-2].upper() for p in results})
    return f"{stored} DICOM {'/'.join(kinds)} stored: {target}"
