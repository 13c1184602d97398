"""``medlens demo``: the main job on a default that needs no network.

With the real example data (``MEDLENS_DATA``, default ``../shared/data``) it describes a real DICOM
series, a NIfTI volume with its label map and a MedMNIST dataset; without it, it writes a synthetic
phantom in the same formats and describes that.
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
) -> None:
    """Describe real (or synthetic) DICOM, NIfTI and dataset inputs, writing summaries to OUTPUT."""
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
