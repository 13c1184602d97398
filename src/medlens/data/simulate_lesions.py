"""A detection dataset of SIMULATED lesions inserted into crops of real 3D volumes.

:func:`simulate_lesion_dataset` finds the volumes under a source path (the same discovery as every
other command: NIfTI files, DICOM series, a Decathlon folder, the TotalSegmentator folder), takes
a random crop of at most ``size`` voxels per axis from each (native spacing kept), and inserts
0..k lesions rendered by :mod:`medlens.data.lesion_render`. Files whose path says they are label
maps (``seg``, ``label``, ``mask`` in a name, a ``labelsTr`` folder) are not sources: they are
paired with the image beside them (same file name in a sibling folder, or a map on the same grid
in its folder or the one above), and a share of the lesions is placed on an organ's edge.

The output folder::

    images/sim-0000.nii.gz      the volumes (the source's dtype and geometry, cropped)
    masks/sim-0000.nii.gz       lesion instance ids 1..k, for checking
    annotations.csv             seriesuid,coordX,coordY,coordZ,diameter_mm,x1,y1,z1,x2,y2,z2,label
    series.csv                  seriesuid,source,subject,lesions,shape,spacing
    lesions.csv                 per lesion: shape, contrast, edge, pattern, organ label
    dataset.json, README.txt    say plainly that the lesions are simulated

Coordinates are LPS world millimetres (:mod:`medlens.image`); the box is the ellipsoid's
axis-aligned world box. The folder is written under a temporary name and renamed at the end, so
a failure leaves nothing behind. The same seed gives the same dataset.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, ImageReadError, MedlensError
from medlens.image import Image, Role

__all__ = ["ANNOTATION_COLUMNS", "SERIES_COLUMNS", "parse_range", "simulate_lesion_dataset"]

_ANNOTATION_HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm,x1,y1,z1,x2,y2,z2,label"
_LESION_HEADER = "seriesuid,lesion,diameter_mm,semi_axes_mm,pattern,delta,edge_mm,organ,cnr"
ANNOTATION_COLUMNS = tuple(_ANNOTATION_HEADER.split(","))
SERIES_COLUMNS = ("seriesuid", "source", "subject", "lesions", "shape", "spacing")
LESION_COLUMNS = tuple(_LESION_HEADER.split(","))
_LABEL_WORDS = {"seg", "segs", "segmentation", "segmentations", "label", "labels", "mask", "masks"}
_LABEL_FOLDERS = _LABEL_WORDS | {"labelstr", "labelsts", "labelsva"}
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz", ".dcm")
_README = """SIMULATED LESIONS - NOT REAL FINDINGS

Every lesion in this dataset is simulated: a sphere or ellipsoid of {min_mm:g}-{max_mm:g} mm
(equivalent diameter) blended into a crop of a real image by medlens (`medlens datasets
simulate-lesions`). The images around the lesions are real; the lesions are not. Use the data to
test and benchmark detection pipelines, never as clinical evidence.

Source: {source}
Seed: {seed}; volumes: {count}; lesions: {lesions}; lesion-free volumes: {negatives}.

images/<seriesuid>.nii.gz   cropped volumes (native spacing, the source's dtype)
masks/<seriesuid>.nii.gz    lesion instance ids 1..k on the same grid
annotations.csv             one row per lesion: centre (coordX, coordY, coordZ) and the axis-aligned
                            box (x1..z2) in LPS world millimetres, the equivalent sphere diameter
series.csv                  one row per volume: source file or series, subject (group splits by
                            it), number of lesions, shape (z y x voxels), spacing (x y z mm)
lesions.csv                 per lesion: semi-axes, pattern (solid, rim, core), intensity shift,
                            edge width, organ label where placed on an organ's edge, and cnr:
                            the shift over the standard deviation of the tissue around it
                            (1.5-4 by design, so a reader could see every lesion; lesions are
                            at least two voxels wide along the coarsest axis)

The images keep their source's licence and attribution (see the source dataset's terms).
"""


@dataclass
class _Source:
    """One source volume and the label maps that may belong to it."""

    input: Any  # medlens.io.discover.Input
    relative: str
    labels: list[Path]


def parse_range(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"0-3"`` -> ``(0, 3)``; ``"2"`` -> ``(2, 2)``."""
    if isinstance(text, tuple):
        low, high = text
    elif isinstance(text, int):
        low = high = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
        if not match:
            raise MedlensError(f"lesions per volume must be N or MIN-MAX, got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
    if not 0 <= low <= high:
        raise MedlensError(f"lesions per volume: need 0 <= MIN <= MAX, got {low}-{high}")
    return int(low), int(high)


def _is_label_map(path: Path) -> bool:
    """A label map by its name: ``seg``, ``label`` or ``mask`` as a word of the file's name
    (``example_seg.nii.gz``), or a file in a ``labelsTr``, ``labels``, ``masks``... folder."""
    from medlens.io.discover import file_stem

    words = re.split(r"[_.\-\s]+", file_stem(path.name).lower())
    return bool(_LABEL_WORDS.intersection(words)) or path.parent.name.lower() in _LABEL_FOLDERS


def _sources(src: Path) -> list[_Source]:
    """The volumes under ``src`` (label maps set aside and attached to their images)."""
    from medlens.io.discover import discover_inputs

    found = discover_inputs(src, spatial_dims=3)
    images, labels = [], []
    for item in found:
        if item.series_uid is not None:  # a DICOM series: its folder
            images.append((item, item.name))
            continue
        if not item.source.name.lower().endswith(_VOLUME_SUFFIXES):
            continue  # 2D raster formats hold no volume
        is_label = src.is_dir() and _is_label_map(item.source)  # a file given is the source
        (labels if is_label else images).append((item, item.id))
    out = []
    for item, relative in images:
        folder = item.source if item.series_uid is not None else item.source.parent
        same_name = [p.source for p, _ in labels if p.source.name == item.source.name]
        nearby = [
            p.source
            for p, _ in labels
            if p.source.parent in (folder, folder.parent) and p.source not in same_name
        ]
        out.append(_Source(item, relative, same_name + nearby))
    if not out:
        raise DatasetError("no 3D volumes to insert lesions into (NIfTI or DICOM series)", src)
    return out


def _load(source: _Source) -> tuple[Image, np.ndarray | None] | None:
    """The source as a 3D image and its label map (None when none fits), or None when it is not
    a 3D volume."""
    import warnings

    from medlens.io import load_image

    try:
        image = source.input.load()
    except ImageReadError as exc:  # one unreadable file (a MedMNIST .npz, say) does not stop us
        warnings.warn(f"{exc} (skipped)", stacklevel=3)
        return None
    if image.spatial_dims != 3 or image.leading or min(image.spatial_shape) < 4:
        warnings.warn(f"{source.input.source}: not a 3D volume, skipped", stacklevel=3)
        return None
    maps = []
    for path in source.labels:
        label = load_image(path, role=Role.LABEL)
        if label.spatial_dims == 3 and not label.leading:
            label = label.reorient(image.orientation)  # e.g. a map stored flipped
            if image.same_grid(label):
                return image, np.asarray(label.array)
            maps.append(label)
    if len(maps) == 1:  # the one map beside it, on another grid: nearest neighbour onto ours
        return image, np.asarray(maps[0].resample(like=image).array)
    return image, None


def _subsample(array: np.ndarray, voxels: float = 2e6) -> tuple[np.ndarray, int]:
    step = max(1, int(np.ceil((array.size / voxels) ** (1 / 3))))
    return array[::step, ::step, ::step], step


def _describe(image: Image) -> tuple[bool, float]:
    """Whether ``image`` is CT, and its body threshold (Otsu of the whole volume, subsampled)."""
    from medlens.data.lesion_render import is_ct_like, otsu_threshold

    sub, _ = _subsample(image.array)
    return is_ct_like(image.replace(array=sub)), otsu_threshold(sub)


def _crop(
    image: Image,
    labels: np.ndarray | None,
    size: int,
    threshold: float,
    rng: np.random.Generator,
) -> tuple[Image, np.ndarray | None]:
    """A random crop of at most ``size`` voxels per axis, centred near a body voxel."""
    shape = np.array(image.spatial_shape)
    extent = np.minimum(shape, size)
    if np.all(extent == shape):
        start = np.zeros(3, dtype=int)
    else:
        sub, step = _subsample(image.array)
        body = np.argwhere(sub > threshold) * step
        centre = body[rng.integers(len(body))] if len(body) else shape // 2
        centre = centre + rng.integers(-(extent // 4), extent // 4 + 1)
        start = np.clip(centre - extent // 2, 0, shape - extent)
    block = tuple(slice(int(a), int(a + n)) for a, n in zip(start, extent, strict=True))
    origin = image.index_to_world(start[::-1].astype(np.float64))
    meta = {"description": "SIMULATED lesions (medlens)"}
    array = np.ascontiguousarray(image.array[block])
    crop = image.replace(array=array, origin=tuple(origin), meta=meta)
    return crop, None if labels is None else np.ascontiguousarray(labels[block])


def _plan(count: int, low: int, high: int, negatives: float, rng: np.random.Generator) -> list:
    """Lesions per volume: ``round(negatives * count)`` lesion-free volumes when ``low`` is 0,
    the others ``max(low, 1)..high`` at random."""
    ks = rng.integers(max(low, 1), high + 1, size=count) if high > 0 else np.zeros(count, int)
    if low == 0 and high > 0:
        ks[rng.permutation(count)[: round(negatives * count)]] = 0
    return [int(k) for k in ks]


def _check_output(dst: Path, src: Path) -> None:
    from medlens._atomic import ensure_outside

    ensure_outside(dst, src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise MedlensError("exists and is not an empty folder: refusing to write into it", dst)


def simulate_lesion_dataset(
    src: str | Path,
    dst: str | Path,
    *,
    count: int,
    seed: int = 0,
    lesions_per_volume: str | tuple[int, int] = (0, 3),
    size: int = 128,
    min_mm: float = 3.0,
    max_mm: float = 30.0,
    negative_fraction: float = 0.15,
    boundary_fraction: float = 0.3,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``count`` volumes with simulated lesions from the real volumes under ``src``.

    Args:
        src: a volume file, a DICOM series folder or a folder tree of them.
        dst: the output folder; must not exist or be empty, and not lie inside ``src``.
        count: volumes to write (``sim-0000``, ...); sources are used in a seeded random order,
            cycled when ``count`` exceeds them.
        lesions_per_volume: ``"MIN-MAX"`` (or a pair); with MIN 0 a ``negative_fraction`` of the
            volumes are lesion-free, the others get 1..MAX.
        size: crop at most this many voxels per axis (native spacing kept).
        min_mm, max_mm: equivalent diameter range (log-uniform).
        boundary_fraction: share of lesions placed on an organ's edge where a label map exists.

    Returns:
        a summary: output folder, volumes, lesions, lesion-free volumes, sources used.

    Raises:
        MedlensError: one line naming the path: ``dst`` inside ``src`` or not empty, no volumes.
    """
    from medlens._atomic import atomic_write_text
    from medlens._progress import progress as show
    from medlens.data.lesion_render import place_lesions, render_lesions
    from medlens.io import save_image

    src, dst = Path(src), Path(dst)
    low, high = parse_range(lesions_per_volume)
    if count < 1 or size < 8 or not 0 < min_mm <= max_mm or not 0 <= negative_fraction <= 1:
        raise MedlensError(
            "need count >= 1, size >= 8, 0 < min-mm <= max-mm and negatives in 0..1 "
            f"(got {count}, {size}, {min_mm}, {max_mm}, {negative_fraction})"
        )
    _check_output(dst, src)
    sources = _sources(src)
    order = np.random.default_rng([seed, 1 << 30]).permutation(len(sources))
    plan = _plan(count, low, high, negative_fraction, np.random.default_rng([seed, 1 << 31]))
    width = max(4, len(str(count - 1)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private: the usual permissions instead
    cache: dict[int, Any] = {}
    missed = 0
    annotations, series, details = [], [], []
    try:
        for i in show(range(count), "simulating lesions", enabled=progress):
            rng = np.random.default_rng([seed, i])
            loaded, chosen = None, 0
            for j in range(len(sources)):  # the planned source, or the next 3D one
                chosen = int(order[(i + j) % len(sources)])
                if chosen not in cache:
                    if len(cache) >= 4:
                        cache.pop(next(iter(cache)))
                    one = _load(sources[chosen])
                    cache[chosen] = None if one is None else (*one, *_describe(one[0]))
                loaded = cache[chosen]
                if loaded is not None:
                    break
            if loaded is None:
                raise DatasetError("no 3D volumes to insert lesions into", src)
            image, labels, ct, threshold = loaded
            crop, crop_labels = _crop(image, labels, size, threshold, rng)
            lesions = place_lesions(
                crop,
                plan[i],
                rng,
                min_mm=min_mm,
                max_mm=max_mm,
                labels=crop_labels,
                boundary_fraction=boundary_fraction,
                threshold=threshold,
            )
            missed += plan[i] - len(lesions)
            array, mask = render_lesions(crop, lesions, rng, ct=ct)
            uid = f"sim-{i:0{width}d}"
            save_image(crop.with_array(array), tmp / "images" / f"{uid}.nii.gz")
            save_image(crop.with_array(mask, role=Role.LABEL), tmp / "masks" / f"{uid}.nii.gz")
            source = sources[chosen]
            series.append(
                [
                    uid,
                    source.relative,
                    source.input.name,
                    len(lesions),
                    " ".join(map(str, crop.spatial_shape)),
                    " ".join(f"{s:.6g}" for s in crop.spacing),
                ]
            )
            _lesion_rows(uid, lesions, annotations, details)
        total = len(annotations)
        if missed:
            import warnings

            warnings.warn(
                f"{missed} lesion(s) found no room in their crops and were left out "
                "(a larger --size or a smaller --max-mm makes room)",
                stacklevel=2,
            )
        negatives = sum(1 for row in series if row[3] == 0)
        atomic_write_text(tmp / "annotations.csv", _csv(ANNOTATION_COLUMNS, annotations))
        atomic_write_text(tmp / "series.csv", _csv(SERIES_COLUMNS, series))
        atomic_write_text(tmp / "lesions.csv", _csv(LESION_COLUMNS, details))
        facts = {
            "source": str(src),
            "seed": seed,
            "count": count,
            "lesions": total,
            "negatives": negatives,
            "lesions_per_volume": [low, high],
            "size": size,
            "min_mm": min_mm,
            "max_mm": max_mm,
        }
        _describe_dataset(tmp, src, facts)
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    used = sorted({row[1] for row in series})
    return {
        "output": str(dst),
        "count": count,
        "lesions": total,
        "negatives": negatives,
        "left_out": missed,
        "sources": used,
    }


def _lesion_rows(uid: str, lesions: list, annotations: list, details: list) -> None:
    """Append one row per lesion to ``annotations`` (centre, diameter, box rounded outward)
    and to ``details`` (shape and appearance)."""
    for k, lesion in enumerate(lesions, start=1):
        box = np.asarray(lesion.bbox)
        box = np.concatenate([np.floor(box[:3] * 1e4), np.ceil(box[3:] * 1e4)]) / 1e4
        centre = [f"{w:.4f}" for w in lesion.world]
        diameter = f"{lesion.diameter:.4f}"
        annotations.append([uid, *centre, diameter, *(f"{b:.4f}" for b in box), "lesion"])
        axes = " ".join(f"{a:.3f}" for a in lesion.semi_axes)
        details.append(
            [
                uid,
                k,
                diameter,
                axes,
                lesion.pattern,
                f"{lesion.delta:.4g}",
                f"{lesion.edge:.3f}",
                lesion.organ,
                f"{lesion.cnr:.3f}",
            ]
        )


def _describe_dataset(folder: Path, src: Path, facts: dict[str, Any]) -> None:
    """``dataset.json`` and ``README.txt``: what the dataset is, saying it is simulated."""
    from medlens._atomic import atomic_write_json, atomic_write_text

    name = src.resolve().name if src.is_dir() else src.name.split(".")[0]
    description = (
        "SIMULATED lesions inserted into real images: spheres and ellipsoids of "
        f"{facts['min_mm']:g}-{facts['max_mm']:g} mm blended into random crops of the source "
        "volumes. The lesions are not real findings."
    )
    atomic_write_json(
        folder / "dataset.json",
        {
            "name": f"{name}-simulated-lesions",
            "simulated": True,
            "task": "detection",
            "description": description,
            **facts,
            "coordinates": "LPS world millimetres",
            "annotations": "annotations.csv",
        },
    )
    atomic_write_text(folder / "README.txt", _README.format(**facts))


def _csv(columns: tuple[str, ...], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()
