"""``medlens info PATH``: what is in an image file, a DICOM folder or a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def info(
    path: Path = typer.Argument(
        ..., help="Image file, DICOM folder/DICOMDIR, dataset, or annotation (VOC XML, contour)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID to describe."),
    split: str | None = typer.Option(
        None, "--split", help="Dataset split (MedMNIST: train/val/test)."
    ),
    max_samples: int | None = typer.Option(
        None, "--max-samples", help="Fingerprint at most this many samples of a dataset."
    ),
    presentation: bool = typer.Option(
        False, "--presentation", help="DICOM: intensities as the viewer shows them (VOI, [0, 1])."
    ),
    suv: str | None = typer.Option(None, "--suv", help="DICOM PET: intensities as SUV bw|lbm|bsa."),
) -> None:
    """Summarise an image (shape, spacing, orientation, intensities, modality) or a dataset
    (samples, classes and counts, spacing and size statistics: its fingerprint)."""
    summary = describe(path, series=series, split=split, max_samples=max_samples,
                       presentation=presentation, suv=suv)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _render(summary)


def describe(
    path: Path,
    *,
    series: str | None = None,
    split: str | None = None,
    max_samples: int | None = None,
    presentation: bool = False,
    suv: str | None = None,
) -> dict[str, Any]:
    """The summary ``medlens info`` prints, as a plain dict."""
    from medlens.errors import ImageReadError, MultipleSeriesError
    from medlens.io import load_image
    from medlens.summary import image_summary

    if not path.exists():
        raise ImageReadError("no such file or folder", path)
    kind = _dataset_kind(path)
    if kind is not None:
        return _dataset_summary(path, kind, split=split, max_samples=max_samples)
    annotation = _annotation_kind(path)
    if annotation is not None:  # Pascal VOC XML, contour text: not images
        from medlens.io.annotations import describe_annotation

        return describe_annotation(path, annotation)
    try:
        image = load_image(path, series_uid=series, presentation=presentation, suv=suv)
    except MultipleSeriesError:  # only then read the headers again to list the series
        from medlens.io.dicom import list_series

        found = list_series(path)
        return {"path": str(path), "kind": "dicom-folder", "series": [s.as_dict() for s in found]}
    summary = {"kind": "image", **image_summary(image)}
    if image.modality == "PT" and suv is None:
        summary["suv_factor"] = _suv_note(image)
    return summary


def _suv_note(image) -> float | str:
    """The SUVbw factor of a PET series from its headers, or why there is none."""
    from medlens.errors import ImageReadError
    from medlens.io._dicom_frames import read_dataset
    from medlens.io._dicom_suv import suv_factor

    try:
        headers = [read_dataset(Path(f), stop_before_pixels=True) for f in image.meta["files"]]
        return round(suv_factor(headers, "bw", image.meta["path"])[0], 9)
    except (ImageReadError, KeyError) as exc:
        return f"none: {getattr(exc, 'problem', exc)}"


def _dataset_kind(path: Path) -> str | None:
    from medlens.data import detect_format
    from medlens.errors import DatasetError

    name = path.name.lower()
    if path.is_file() and not (name.endswith((".npz", ".csv")) or name == "dataset.json"):
        return None
    if path.is_file() and name.endswith(".npz"):
        import numpy as np

        try:  # our own handle: np.load leaves the file open when the zip is broken
            with open(path, "rb") as handle:
                if handle.read(2) != b"PK":
                    return None  # not an archive: the image reader says what it is
                handle.seek(0)
                with np.load(handle, allow_pickle=False) as archive:
                    if not any(k.endswith("_images") for k in archive.files):
                        return None
        except Exception:
            return None
    try:
        return detect_format(path)
    except DatasetError:
        if path.is_dir():
            return None  # maybe a DICOM folder; the image path reports what is wrong
        raise


def _annotation_kind(path: Path) -> str | None:
    from medlens.io._detect import sniff_annotation

    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return None  # the image path reports what is wrong
    return sniff_annotation(path, head)


def _dataset_summary(path: Path, kind: str, *, split: str | None, max_samples: int | None) -> dict:
    from medlens.data import fingerprint, open_dataset

    summary: dict[str, Any] = {"path": str(path), "kind": "dataset", "format": kind}
    if kind == "medmnist":
        from medlens.data import available_splits

        splits = [split] if split else available_splits(path)
        summary["splits"] = {}
        for name in splits:
            dataset = open_dataset(path, split=name)
            summary["splits"][name] = fingerprint(dataset, max_samples=max_samples)
        return summary
    kwargs = {"split": split} if split else {}
    dataset = open_dataset(path, **kwargs)
    summary.update(fingerprint(dataset, max_samples=max_samples, progress=True))
    return summary


def _render(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if summary.get("kind") == "dicom-folder":
        table = Table(title=f"{summary['path']}: {len(summary['series'])} DICOM series")
        for column in ("series_uid", "modality", "description", "files", "frames", "rows x cols"):
            table.add_column(column)
        for s in summary["series"]:
            size = f"{s['rows']} x {s['columns']}"
            cells = (s["modality"] or "", s["description"] or "", str(s["files"]), str(s["frames"]))
            table.add_row(s["series_uid"], *cells, size)
        console.print(table)
        console.print("Describe one with --series UID.")
        return
    if summary.get("kind") == "dataset" and "splits" in summary:
        for name, part in summary["splits"].items():
            _render_mapping(console, f"{summary['path']} [{name}]", part)
        return
    _render_mapping(console, str(summary.get("path")), summary)


def _render_mapping(console, title: str, mapping: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in mapping.items():
        if key in ("path",):
            continue
        table.add_row(key, _short(value))
    console.print(table)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in value) + "]"
        text = ", ".join(_short(v) for v in value[:12])
        return text + (f", ... ({len(value)} values)" if len(value) > 12 else "")
    return str(value)
