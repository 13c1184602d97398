"""``medlens demo``: the main job on a default that needs no network.

With the real example data (``MEDLENS_DATA``, default ``../shared/data``) it describes a real DICOM
series, a NIfTI volume with its label map and a MedMNIST dataset, then trains and evaluates a
classifier on BreastMNIST with the defaults a user gets from ``medlens train`` and prints where the
report is. Without the data it writes a synthetic phantom in the same formats (and a small 2D set
with "lesions" to classify) and does the same with those.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def demo(
    output: Path = typer.Option(Path("demo_out"), "--output", "-o", help="Folder for outputs."),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Use the phantom even if data exist."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs of the demo classifier (default: planned)."
    ),
    train: bool = typer.Option(True, "--train/--no-train", help="Train the demo classifier."),
) -> None:
    """Describe DICOM, NIfTI and dataset inputs; train, evaluate and report a classifier."""
    from rich.console import Console

    from medlens._atomic import atomic_write_text
    from medlens._data_path import data_root
    from medlens.cli.info import _render, describe

    console = Console()
    root = data_root()
    if not synthetic and (root / "dicom" / "mr_t1_brain").is_dir():
        console.print(f"[bold]Real data[/bold] from {root}")
        inputs = {
            "dicom_series": root / "dicom" / "mr_t1_brain",
            "dicom_jpeg2000": root / "totalsegmentator" / "ct_dicom_series" / "dicom",
            "nifti": root / "totalsegmentator" / "ct_small" / "example_ct_sm.nii.gz",
            "label_map": root / "totalsegmentator" / "ct_small" / "example_seg.nii.gz",
            "dataset": root / "medmnist" / "breastmnist.npz",
        }
    else:
        from medlens.synthetic import write_demo_data

        console.print(f"No real data at {root}: writing a synthetic phantom into {output}")
        made = write_demo_data(output / "inputs")
        inputs = {"dicom_series": made["dicom"], "nifti": made["nifti"],
                  "label_map": made["label"], "dataset": made["npz"]}  # fmt: skip
    summaries = {}
    for name, path in inputs.items():
        if not path.exists():
            console.print(f"[yellow]skipped {name}: {path} is missing[/yellow]")
            continue
        summaries[name] = describe(path)
        _render(summaries[name])
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "summary.json", json.dumps(summaries, indent=2, default=str))
    console.print(f"Summaries written to {output / 'summary.json'}")
    if train and "dataset" in summaries:
        _train_classifier(inputs["dataset"], output / "classifier", epochs, console)


def _train_classifier(data: Path, run: Path, epochs: int | None, console) -> None:
    """Train (or finish, or reuse) the demo classifier and say where its report is."""
    import json as _json

    from medlens.tasks.classification import train_classification

    status = None
    if (run / "run.json").is_file():
        status = _json.loads((run / "run.json").read_text()).get("status")
    if status != "complete":
        console.print(f"[bold]Training a classifier[/bold] on {data.name} into {run}")
        train_classification(data, run, epochs=epochs, resume=status is not None, log=console.print)
    else:
        console.print(f"Classifier already trained in {run}")
    metrics = _json.loads((run / "metrics.json").read_text())
    auc, acc = metrics["auc"], metrics["accuracy"]
    which = "out-of-fold" if "out-of-fold" in str(metrics.get("split", "")) else "held-out"
    console.print(
        f"{which} AUC {auc['value']:.3f} (95% CI {auc['low']:.3f}-{auc['high']:.3f}), "
        f"accuracy {acc['value']:.3f} (95% CI {acc['low']:.3f}-{acc['high']:.3f})"
    )
    if metrics.get("split"):
        console.print(f"figures from: {metrics['split']}")
    console.print(f"[bold]Report:[/bold] {(run / 'report.html').resolve()}")
