"""Seed inputs for the fuzz harness, built from the real data folder (``MEDLENS_DATA``).

Every reader medlens has gets one or more seeds: a small tree of files held in memory (relative
path -> bytes), the path the command line is given, the files a mutation may change, and the
markers planted in its identifying attributes (:func:`medlens.deid.markers.plant_markers` for
DICOM, the header text fields and an extension for NIfTI). Nothing is written into the data
folder; folders that must be built on disk first (a DICOMDIR) are built in ``scratch``.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["READERS", "Seed", "build_corpus"]


@dataclass
class Seed:
    """One seed input: a file tree, the path the CLI is given, and what a mutation may touch."""

    reader: str
    name: str
    files: dict[str, bytes]
    target: str  # relative path handed to ``medlens info`` (a file or a folder)
    mutable: list[str]  # files a mutation may change, the first the most often
    anonymize: bool = False  # also ``medlens anonymize`` (DICOM and NIfTI)
    also_info: list[str] = field(default_factory=list)  # further paths for ``medlens info``
    markers: dict[str, str] = field(default_factory=dict)  # planted marker -> where


def _dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _planted(path: Path, instance: int, markers: dict[str, str]):
    import pydicom

    from medlens.deid.markers import plant_markers

    ds = pydicom.dcmread(path)
    markers.update(plant_markers(ds, instance=instance))
    return ds


def _dicom_file(root: Path, scratch: Path) -> list[Seed]:
    seeds = []
    for name, folder in (
        ("mr", "dicom/mr_t1_brain"),
        ("ct-j2k", "totalsegmentator/ct_dicom_series/dicom"),
        ("fmri", "dicom/fmri_epi_human"),
    ):
        files = sorted(p for p in (root / folder).iterdir() if p.is_file())
        markers: dict[str, str] = {}
        data = _dicom_bytes(_planted(files[len(files) // 2], 1, markers))
        seeds.append(
            Seed(
                "dicom-file",
                name,
                {"slice.dcm": data},
                "slice.dcm",
                ["slice.dcm"],
                anonymize=True,
                markers=markers,
            )
        )
    return seeds


def _dicom_series(root: Path, scratch: Path) -> list[Seed]:
    files = sorted((root / "dicom/mr_t1_brain").glob("*.dcm"))[10:14]
    markers: dict[str, str] = {}
    tree = {f"series/{p.name}": _dicom_bytes(_planted(p, n, markers)) for n, p in enumerate(files)}
    names = sorted(tree)
    return [
        Seed(
            "dicom-series",
            "mr-4-slices",
            tree,
            "series",
            [names[1], *names],
            anonymize=True,
            markers=markers,
        )
    ]


def _dicomdir(root: Path, scratch: Path) -> list[Seed]:
    from pydicom.fileset import FileSet

    files = sorted((root / "dicom/mr_t1_brain").glob("*.dcm"))[:3]
    markers: dict[str, str] = {}
    fileset = FileSet()
    for n, path in enumerate(files):
        ds = _planted(path, n, markers)
        if "RTPlanLabel" in ds:  # else pydicom files the MR slice under an RT PLAN record
            markers.pop(str(ds.RTPlanLabel), None)
            del ds.RTPlanLabel
        fileset.add(ds)
    folder = scratch / "dicomdir"
    shutil.rmtree(folder, ignore_errors=True)
    fileset.write(folder)
    fileset._stage["t"].cleanup()  # its staging folder, now rather than when collected
    tree = {
        f"fs/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    slices = [k for k in tree if not k.endswith("DICOMDIR")]
    return [
        Seed(
            "dicomdir",
            "mr-3-slices",
            tree,
            "fs",
            ["fs/DICOMDIR", "fs/DICOMDIR", *slices],
            anonymize=True,
            also_info=["fs/DICOMDIR"],
            markers=markers,
        )
    ]


def _multiframe(root: Path, scratch: Path) -> list[Seed]:
    """Four real slices as one enhanced-style multi-frame file, and pydicom's bundled RT dose."""
    import pydicom
    from pydicom.dataset import Dataset

    files = sorted((root / "dicom/mr_t1_brain").glob("*.dcm"))[12:16]
    markers: dict[str, str] = {}
    slices = [pydicom.dcmread(p) for p in files]
    ds = _planted(files[0], 0, markers)
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = ds.ImageOrientationPatient
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = ds.PixelSpacing
    shared.PixelMeasuresSequence[0].SliceThickness = ds.SliceThickness
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for s in slices:
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = s.ImagePositionPatient
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    seeds = [
        Seed(
            "dicom-multiframe",
            "mr-4-frames",
            {"multi.dcm": _dicom_bytes(ds)},
            "multi.dcm",
            ["multi.dcm"],
            anonymize=True,
            markers=markers,
        )
    ]
    try:
        from pydicom.data import get_testdata_file

        bundled = get_testdata_file("rtdose.dcm", download=False)  # ships inside the wheel
    except Exception:
        bundled = None
    if bundled:
        data = Path(bundled).read_bytes()
        seeds.append(
            Seed(
                "dicom-multiframe",
                "rtdose",
                {"dose.dcm": data},
                "dose.dcm",
                ["dose.dcm"],
                anonymize=True,
            )
        )
    return seeds


NIFTI_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")


def _nifti(root: Path, scratch: Path) -> list[Seed]:
    import nibabel as nib

    from medlens.deid.markers import TEXT_MARK

    seeds = []
    sources = (
        ("hippocampus", root / "msd_hippocampus/imagesTr/hippocampus_001.nii.gz"),
        ("ct-small", root / "totalsegmentator/ct_small/example_ct_sm.nii.gz"),
    )
    for number, (name, path) in enumerate(sources):
        nii = nib.load(path)
        image = nib.Nifti1Image(np.asanyarray(nii.dataobj), nii.affine, nii.header)
        markers = {}
        for k, key in enumerate(NIFTI_FIELDS):
            marker = f"{TEXT_MARK}{90000 + 10 * number + k:05d}"
            image.header[key] = marker.encode()
            markers[marker] = f"header:{key}"
        marker = f"{TEXT_MARK}{90009 + 10 * number:05d}"
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, f"{marker} comment".encode()))
        markers[marker] = "header:extensions"
        raw = image.to_bytes()
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        seeds.append(
            Seed(
                "nifti-gz",
                name,
                {"image.nii.gz": packed},
                "image.nii.gz",
                ["image.nii.gz"],
                anonymize=True,
                markers=markers,
            )
        )
        if number == 0:
            seeds.append(
                Seed(
                    "nifti",
                    name,
                    {"image.nii": raw},
                    "image.nii",
                    ["image.nii"],
                    anonymize=True,
                    markers=dict(markers),
                )
            )
    return seeds


def _raster(root: Path, scratch: Path) -> list[Seed]:
    import tifffile
    from PIL import Image as PILImage

    from medlens import load_image, save_image

    hc18 = sorted((root / "hc18/images").glob("*.png"))[0]
    jpeg = sorted((root / "bccd/JPEGImages").glob("*.jpg"))[0]
    seeds = [
        Seed("png", "hc18", {hc18.name: hc18.read_bytes()}, hc18.name, [hc18.name]),
        Seed("jpeg", "bccd", {jpeg.name: jpeg.read_bytes()}, jpeg.name, [jpeg.name]),
    ]
    small = load_image(hc18).array[::4, ::4]  # a real image, smaller for speed
    made = scratch / "medlens.png"
    save_image(load_image(hc18).with_array(small.copy()), made)  # with the geometry text chunk
    seeds.append(Seed("png", "medlens-png", {"geo.png": made.read_bytes()}, "geo.png", ["geo.png"]))
    rgb = np.asarray(PILImage.open(jpeg))[::4, ::4]
    mr = [load_image(p).array[0] for p in sorted((root / "dicom/mr_t1_brain").glob("*.dcm"))[12:15]]
    for name, array in (("rgb", rgb), ("mr-stack", np.stack(mr).astype(np.uint16))):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array)
        seeds.append(
            Seed("tiff", name, {f"{name}.tif": buffer.getvalue()}, f"{name}.tif", [f"{name}.tif"])
        )
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="BMP")
    seeds.append(Seed("bmp", "bccd", {"cells.bmp": buffer.getvalue()}, "cells.bmp", ["cells.bmp"]))
    return seeds


def _arrays(root: Path, scratch: Path) -> list[Seed]:
    from medlens import load_image, save_image

    with np.load(root / "medmnist/adrenalmnist3d.npz") as archive:
        cube = archive["train_images"][0]
    buffer = io.BytesIO()
    np.save(buffer, cube)
    seeds = [Seed("npy", "adrenal-cube", {"cube.npy": buffer.getvalue()}, "cube.npy", ["cube.npy"])]
    made = scratch / "image.npz"
    save_image(load_image(root / "msd_hippocampus/imagesTr/hippocampus_001.nii.gz"), made)
    seeds.append(
        Seed("npz", "medlens-npz", {"image.npz": made.read_bytes()}, "image.npz", ["image.npz"])
    )
    with np.load(root / "medmnist/breastmnist.npz") as archive:
        subset = {k: archive[k][:24] for k in archive.files}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **subset)
    seeds.append(
        Seed(
            "medmnist",
            "breastmnist-24",
            {"breastmnist.npz": buffer.getvalue()},
            "breastmnist.npz",
            ["breastmnist.npz"],
        )
    )
    return seeds


def _datasets(root: Path, scratch: Path) -> list[Seed]:
    hc18 = root / "hc18"
    names = ["000_HC.png", "001_HC.png", "002_HC.png"]
    tree = {f"csvset/images/{n}": (hc18 / "images" / n).read_bytes() for n in names}
    rows = ["image,label,patient"] + [f"images/{n},{k % 2},p{k}" for k, n in enumerate(names)]
    tree["csvset/labels.csv"] = ("\n".join(rows) + "\n").encode()
    seeds = [
        Seed(
            "csv-dataset",
            "hc18-pngs",
            tree,
            "csvset/labels.csv",
            ["csvset/labels.csv", "csvset/labels.csv", f"csvset/images/{names[0]}"],
            also_info=["csvset"],
        )
    ]
    lines = (hc18 / "labels.csv").read_text().splitlines()
    tree = {"hc18/labels.csv": ("\n".join(lines[:3]) + "\n").encode()}
    for line in lines[1:3]:
        name = line.split(",")[0]
        tree[f"hc18/images/{name}"] = (hc18 / "images" / name).read_bytes()
        annotation = name.replace(".png", "_Annotation.png")
        tree[f"hc18/annotations/{annotation}"] = (hc18 / "annotations" / annotation).read_bytes()
    seeds.append(Seed("hc18", "2-cases", tree, "hc18", ["hc18/labels.csv", *sorted(tree)[1:]]))
    msd = root / "msd_hippocampus"
    spec = json.loads((msd / "dataset.json").read_text())
    spec["training"] = spec["training"][:2]
    spec["numTraining"] = 2
    tree = {"task/dataset.json": json.dumps(spec, indent=1).encode()}
    for case in spec["training"]:
        for key in ("image", "label"):
            rel = case[key].removeprefix("./")
            tree[f"task/{rel}"] = (msd / rel).read_bytes()
    others = sorted(k for k in tree if not k.endswith(".json"))
    seeds.append(
        Seed(
            "decathlon",
            "hippocampus-2",
            tree,
            "task",
            ["task/dataset.json"] * 3 + others,
            also_info=["task/dataset.json"],
        )
    )
    return seeds


def _annotations(root: Path, scratch: Path) -> list[Seed]:
    xml = sorted((root / "bccd/Annotations").glob("*.xml"))[:2]
    seeds = [Seed("voc", p.stem, {p.name: p.read_bytes()}, p.name, [p.name]) for p in xml]
    contour = sorted((root / "sunnybrook/contourfiles").glob("*/i-contours/*.txt"))[0]
    seeds.append(
        Seed(
            "contour",
            contour.stem,
            {"contour.txt": contour.read_bytes()},
            "contour.txt",
            ["contour.txt"],
        )
    )
    return seeds


_BUILDERS: tuple[Callable[[Path, Path], list[Seed]], ...] = (
    _dicom_file,
    _dicom_series,
    _dicomdir,
    _multiframe,
    _nifti,
    _raster,
    _arrays,
    _datasets,
    _annotations,
)
READERS = (
    "dicom-file",
    "dicom-series",
    "dicomdir",
    "dicom-multiframe",
    "nifti-gz",
    "nifti",
    "png",
    "jpeg",
    "tiff",
    "bmp",
    "npy",
    "npz",
    "medmnist",
    "csv-dataset",
    "hc18",
    "decathlon",
    "voc",
    "contour",
)


def build_corpus(root: Path, scratch: Path) -> dict[str, list[Seed]]:
    """Reader name -> its seeds, from the real data under ``root``; ``scratch`` for building."""
    import warnings

    scratch.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, list[Seed]] = {name: [] for name in READERS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on the planted values' lengths
        for build in _BUILDERS:
            for seed in build(root, scratch):
                corpus[seed.reader].append(seed)
    return {name: seeds for name, seeds in corpus.items() if seeds}
