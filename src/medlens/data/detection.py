"""Object detection datasets: Pascal VOC, COCO JSON, CSVs of boxes and LUNA16-style folders.

Every reader gives :class:`Sample` s laid out for the detection task:

* ``sample.image``: the image (2D RGB keeps its channels; 3D volumes).
* ``sample.fields["boxes"]``: float32 ``(N, 2 * ndim)`` boxes ``(x_min, y_min[, z_min], x_max,
  y_max[, z_max])`` in continuous index coordinates of ``sample.image`` (index order ``x, y, z``,
  voxel centres at integers: a box covering pixels ``a..b`` spans ``[a - 0.5, b + 0.5]``), with
  ``sample.kinds["boxes"] = "boxes"``.
* ``sample.label``: int64 ``(N,)`` class indices into ``dataset.class_names``. An image without
  boxes is a valid negative: ``(0, 2 * ndim)`` boxes and ``(0,)`` labels.
* ``sample.meta["boxes_world"]``: float64 ``(N, 2 * ndim)`` the same boxes as LPS world corners
  in mm (a plain 2D photo has spacing 1 and origin 0: pixels). Boxes given in mm are the truth
  and are converted with the loaded image's geometry, so a resampled or reoriented image still
  gets them right. ``meta["ignore"]`` (VOC ``difficult``, COCO ``iscrowd``): bool ``(N,)``;
  ``meta["clipped"]``: bool ``(N,)`` boxes cut back to the image (their ``boxes_world`` too);
  ``meta["box_sources"]``: where each box was read (``"object 3"``, ``"line 12"``).

A world box is the axis-aligned box of the corners; for oblique images the conversion takes the
bounding box of the 2**ndim converted corners (exact for axis-aligned grids, flips included).
A box entirely outside its image is refused; one partly outside is clipped and noted in
``meta["notes"]``. Annotations are read when the dataset is opened (to check them and to know
classes and counts); images are read in ``__getitem__``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data import _detection_formats as formats
from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io
from medlens.errors import DatasetError, ImageReadError
from medlens.image import Image

__all__ = [
    "BoxCSVDataset",
    "COCODataset",
    "DetectionDataset",
    "LUNA16Dataset",
    "VOCDataset",
    "boxes_index_to_world",
    "boxes_world_to_index",
    "detection_format",
    "voc_splits",
]

_SITK_ENDINGS = (".mhd", ".mha", ".nrrd")
_MAX_LISTED = 3
_CLIP_TOLERANCE = 1e-3  # voxels: closer than this to the edge is rounding, not clipping


def boxes_index_to_world(image: Image, boxes: np.ndarray) -> np.ndarray:
    """Index boxes ``(N, 2n)`` of ``image`` as axis-aligned LPS world boxes (mm)."""
    return _map_boxes(np.asarray(boxes, dtype=np.float64), image.index_to_world)


def boxes_world_to_index(image: Image, boxes: np.ndarray) -> np.ndarray:
    """LPS world boxes ``(N, 2n)`` (mm) as index boxes of ``image``."""
    return _map_boxes(np.asarray(boxes, dtype=np.float64), image.world_to_index)


def _map_boxes(boxes: np.ndarray, transform) -> np.ndarray:
    n = boxes.shape[-1] // 2
    picks = np.array(list(itertools.product((0, 1), repeat=n)), dtype=bool)  # (2**n, n)
    corners = np.where(picks[None], boxes[:, None, n:], boxes[:, None, :n])  # (N, 2**n, n)
    points = transform(corners)
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1).reshape(-1, 2 * n)


def is_voc_folder(root: str | Path) -> bool:
    """Whether ``root`` has ``Annotations/`` and ``JPEGImages/`` (Pascal VOC)."""
    root = Path(root)
    return (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir()


def voc_splits(root: str | Path) -> list[str]:
    """The predefined splits of a VOC folder: ``ImageSets/Main/<split>.txt`` names (class
    lists such as ``RBC_train.txt`` left out)."""
    folder = Path(root) / "ImageSets" / "Main"
    names = [p.stem for p in folder.glob("*.txt") if "_" not in p.stem] if folder.is_dir() else []
    order = {name: i for i, name in enumerate(("train", "val", "trainval", "test"))}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def detection_format(path: str | Path) -> str | None:
    """``"voc"``, ``"coco"``, ``"boxes"`` (CSV of boxes) or ``"luna"`` when ``path`` is a
    detection dataset these readers take, else ``None``. A folder is VOC or LUNA16-style; a
    CSV is told by its header, a ``.json`` other than ``dataset.json`` is taken for COCO."""
    path = Path(path)
    if path.is_dir():
        if formats.luna_csv(path) is not None:
            return "luna"
        return "voc" if is_voc_folder(path) else None
    name = path.name.lower()
    if name == "dataset.json":
        return "luna" if formats.luna_csv(path.parent) is not None else None
    if name.endswith(".json"):
        return "coco"
    if not name.endswith(".csv"):
        return None
    header = formats.csv_header(path)
    if formats.is_luna_header(header):
        return "luna"
    paths = {c.lower() for c in formats.PATH_COLUMNS}
    if paths & set(header) and {"x1", "y1", "x2", "y2"} <= set(header):
        return "boxes"
    return None


class DetectionDataset(Dataset):
    """Images with boxes and class labels (see the module docstring for the sample layout).

    Attributes:
        ndim: 2 or 3, the boxes' dimensions.
        meta: dataset-level information (``format``; LUNA16: ``dataset.json``'s keys, e.g.
            ``simulated``).
    """

    task = "detection"
    ndim = 2
    meta: dict[str, Any]

    def _setup(
        self,
        records: list[formats.Record],
        source: Path,
        classes: Sequence[str] | None,
        order: list[str] | None = None,
        *,
        check_files: bool = True,
    ) -> None:
        """Entries from parsed records; class names from ``classes``, else the format's order,
        else the sorted names found."""
        if classes is not None:
            self.class_names = [str(c) for c in classes]
            if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
                raise DatasetError(f"classes {self.class_names} are empty or repeat", source)
        elif order is not None:
            self.class_names = list(order)
        else:
            self.class_names = sorted({name for r in records for name in r.names})
        index = {name: i for i, name in enumerate(self.class_names)}
        self.entries = []
        for r in records:
            annotation = Path(r.meta.pop("annotation", source))
            for name, where in zip(r.names, r.where, strict=True):
                if name not in index:
                    raise DatasetError(
                        f"{where}: class {name!r} is not among the classes {self.class_names}",
                        annotation,
                    )
            boxes = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 2 * self.ndim)
            meta = {
                "annotation": str(annotation),
                "boxes": boxes,
                "world": np.asarray(r.world, dtype=bool),
                "box_sources": list(r.where),
                "size": r.size,
                **r.meta,
            }
            if r.ignore is not None:
                meta["ignore"] = np.asarray(r.ignore, dtype=bool)
            labels = np.asarray([index[name] for name in r.names], dtype=np.int64)
            self.entries.append(Entry(r.id, (r.image,), labels, subject=r.subject, meta=meta))
        if len({e.id for e in self.entries}) != len(self.entries):
            raise DatasetError("two images have the same id", source)
        pairs = zip(records, self.entries, strict=True)
        missing = [(r, e) for r, e in pairs if check_files and not r.image.is_file()]
        if missing:
            listed = "; ".join(
                f"{r.named_at or Path(e.meta['annotation']).name}: {r.image.name}"
                for r, e in missing[:_MAX_LISTED]
            )
            more = ", ..." if len(missing) > _MAX_LISTED else ""
            raise DatasetError(
                f"{len(missing)} of {len(records)} images are missing ({listed}{more})",
                missing[0][1].meta["annotation"] if len(missing) == 1 else source,
            )

    # ------------------------------------------------------------------ metadata
    def labels(self) -> None:
        """``None``: a detection target is a set of boxes, not one label per sample."""
        return None

    def class_counts(self) -> dict[str, int]:
        """Boxes per class name over the whole dataset (no image is read)."""
        counts = Counter(int(v) for e in self.entries for v in e.label)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def num_boxes(self) -> np.ndarray:
        """Boxes per sample ``(len,)`` (no image is read)."""
        return np.asarray([len(e.label) for e in self.entries], dtype=np.int64)

    # ------------------------------------------------------------------ loading
    def _load(self, index: int) -> Sample:
        entry = self.entries[index]
        path = entry.paths[0]
        image = _read_image(path, self.load_options)
        if self.modality is not None and image.modality is None:
            image.modality = self.modality
        annotation = Path(entry.meta["annotation"])
        if image.spatial_dims != self.ndim:
            raise DatasetError(
                f"{self.ndim}D boxes, but image {path.name} is {image.spatial_dims}D", annotation
            )
        size = entry.meta["size"]
        if size is not None and tuple(image.size[: len(size)]) != tuple(size):
            raise DatasetError(
                f"states image size {_by(size)}, but {path.name} is {_by(image.size)}", annotation
            )
        boxes, world = entry.meta["boxes"], entry.meta["world"]
        index_boxes, world_boxes = boxes.copy(), boxes.copy()
        if world.any():
            index_boxes[world] = boxes_world_to_index(image, boxes[world])
        if (~world).any():
            world_boxes[~world] = boxes_index_to_world(image, boxes[~world])
        index_boxes, clipped = _clip(index_boxes, image, entry.meta["box_sources"], annotation)
        notes = []
        if clipped.any():
            world_boxes[clipped] = boxes_index_to_world(image, index_boxes[clipped])
            sources = [s for s, c in zip(entry.meta["box_sources"], clipped, strict=True) if c]
            notes.append(f"clipped to the image: {', '.join(sources)}")
        meta: dict[str, Any] = {"path": str(path)}
        for key, value in entry.meta.items():
            if key not in ("boxes", "world", "size"):
                meta[key] = value.copy() if isinstance(value, (np.ndarray, list, dict)) else value
        meta.update(boxes_world=world_boxes, clipped=clipped)
        if notes:
            meta["notes"] = notes
        return self._sample(image, entry, index_boxes, meta)

    def _sample(self, image: Image, entry: Entry, boxes: np.ndarray, meta: dict) -> Sample:
        """The detection sample of ``entry``: ``boxes`` in ``image``'s index coordinates."""
        if getattr(self, "split", None):
            meta["split"] = self.split
        fields = {"boxes": np.asarray(boxes, dtype=np.float32)}
        label = entry.label.copy()
        return Sample(
            image,
            label,
            None,
            entry.id,
            entry.subject,
            entry.study,
            meta,
            fields=fields,
            kinds={"boxes": "boxes"},
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, task=detection, "
            f"boxes={int(self.num_boxes().sum())}, classes={self.class_names})"
        )


class VOCDataset(DetectionDataset):
    """A Pascal VOC folder: ``Annotations/*.xml`` + ``JPEGImages/`` (+ ``ImageSets/Main``).

    VOC pixels count from 1 with inclusive corners: ``xmin..xmax`` is the index box
    ``[xmin - 1.5, xmax - 0.5]``, so ``xmin == xmax`` is a one-pixel box, not an empty one.
    XMLs are read with :func:`medlens.io.annotations.read_voc` (safe parsing; boxes more than
    a pixel outside the stated size are refused there). ``difficult`` -> ``meta["ignore"]``.

    Args:
        root: the VOC folder.
        split: a predefined split (``ImageSets/Main/<split>.txt``; see :func:`voc_splits`);
            ``None``: every annotation.
        classes: class names in index order; default the sorted names of *all* annotations,
            so every split of a folder numbers its classes alike.
        modality: modality code given to loaded images.
        check_files: check up front that every image exists.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        classes: Sequence[str] | None = None,
        modality: str | None = None,
        check_files: bool = True,
    ) -> None:
        root = Path(root)
        if not is_voc_folder(root):
            raise DatasetError("not a Pascal VOC folder (Annotations/ + JPEGImages/)", root)
        self.source, self.name, self.modality, self.split = root, root.name, modality, split
        self.meta = {"format": "voc"}
        ids = formats.voc_split_ids(root, split) if split is not None else None
        if classes is None and ids is not None:
            everything = {r.id: r for r in formats.voc_records(root, None)}
            order = sorted({name for r in everything.values() for name in r.names})
            records = [everything[i] for i in ids]
        else:
            order, records = None, formats.voc_records(root, ids)
        self._setup(records, root, classes, order, check_files=check_files)
        for entry in self.entries:
            entry.meta["truncated"] = np.asarray(entry.meta["truncated"], dtype=bool)


class COCODataset(DetectionDataset):
    """A COCO ``instances`` JSON: ``images``, ``annotations`` (``bbox = [x, y, w, h]`` pixels,
    0 at the first pixel's outer edge) and ``categories`` (class order: category id).

    Args:
        path: the JSON file.
        image_root: folder ``file_name`` is relative to; default the JSON's folder, its
            ``images/`` or the ``images/`` beside that folder, whichever has the file.
        classes: class names in index order (categories are matched by name).
        modality: modality code given to loaded images.
        check_files: check up front that every image exists.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        modality: str | None = None,
        check_files: bool = True,
    ) -> None:
        path = Path(path)
        self.source, self.name, self.modality = path, path.stem, modality
        self.meta = {"format": "coco"}
        root = Path(image_root) if image_root is not None else None
        records, order = formats.coco_records(path, root)
        self._setup(records, path, classes, order, check_files=check_files)


class BoxCSVDataset(DetectionDataset):
    """A CSV of boxes, one row per box: ``image,x1,y1,x2,y2,label`` (3D: ``z1,z2`` too).

    Optional columns: ``units`` (``pixels``/``mm`` per row), ``subject``. A row with empty box
    cells lists an image without boxes (a negative). Pixels are continuous with 0 at the first
    pixel's outer edge (as COCO): index = pixel - 0.5. Millimetres are LPS world corners,
    converted with each image's geometry when it is loaded.

    Args:
        path: the CSV file; image paths are relative to its folder.
        units: ``"pixels"`` (default) or ``"mm"`` for rows without a ``units`` value.
        image_root: folder image paths are relative to, instead of the CSV's.
        classes: class names in index order; default the sorted labels.
        default_label: class of boxes whose row has no label (or when there is no column).
        modality: modality code given to loaded images.
        check_files: check up front that every image exists.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        units: str = "pixels",
        image_root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        default_label: str = "object",
        modality: str | None = None,
        check_files: bool = True,
    ) -> None:
        path = Path(path)
        self.source, self.name, self.modality, self.units = path, path.stem, modality, units
        root = Path(image_root) if image_root is not None else None
        records, self.ndim = formats.box_csv_records(path, units, root, default_label)
        self.meta = {"format": "boxes", "units": units}
        self._setup(records, path, classes, check_files=check_files)


class LUNA16Dataset(DetectionDataset):
    """A LUNA16-style folder: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,
    diameter_mm`` in LPS mm, or corners ``x1,y1,z1,x2,y2,z2``; ``label`` optional) beside
    ``images/`` (or ``subset*/``) of ``<seriesuid>.nii.gz|.nii|.mhd|.mha|.nrrd`` volumes.

    A box is the given corners, else the cube of side ``diameter_mm`` around the centre
    (``meta["diameter_mm"]``: the CSV's diameter, NaN for corner boxes without one). Volumes
    without rows are negatives.
    ``series.csv`` (``seriesuid,subject,...``) gives subjects, so that volumes simulated from one
    source never straddle a split; ``dataset.json`` goes into :attr:`meta` (``simulated``).

    Args:
        path: the folder, its annotation CSV or its ``dataset.json`` (whose ``annotations``
            names the CSV when there are several).
        classes: class names in index order; default the sorted labels.
        default_label: class of rows without a label.
        modality: modality code of the volumes; default ``dataset.json``'s; ``"CT"`` (LUNA16)
            when there is no ``dataset.json``, none when it does not say (simulated sets).
        check_files: kept for symmetry: volumes are found on disk, so always exist.
    """

    ndim = 3

    def __init__(
        self,
        path: str | Path,
        *,
        classes: Sequence[str] | None = None,
        default_label: str = "lesion",
        modality: str | None = None,
        check_files: bool = True,
    ) -> None:
        path = Path(path)
        root = path if path.is_dir() else path.parent
        info = formats.read_dataset_info(root)
        named = info.get("annotations")
        if path.is_file() and path.name.lower() != "dataset.json":
            table: Path | None = path
        elif isinstance(named, str) and (root / named).is_file():
            table = root / named
        else:
            table = formats.luna_csv(root)
        if table is None:
            raise DatasetError(
                "not a LUNA16-style folder (a CSV with seriesuid and coordX/Y/Z + diameter_mm "
                "or x1..z2 beside images/ or subset*/)",
                root,
            )
        self.meta = {**info, "format": "luna"}
        self.simulated = bool(info.get("simulated", False))
        self.source, self.name = root, str(info.get("name") or root.name)
        self.modality = modality or _modality(info.get("modality")) or (None if info else "CT")
        records = formats.luna_records(root, table, default_label)
        self._setup(records, table, classes, check_files=check_files)
        for entry in self.entries:
            entry.meta["diameter_mm"] = np.asarray(entry.meta["diameter_mm"], dtype=np.float64)


def _modality(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return value if isinstance(value, str) and value else None


def _clip(
    boxes: np.ndarray, image: Image, sources: list[str], annotation: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes cut to the image's extent ``[-0.5, size - 0.5]`` and which ones were cut; a box
    wholly outside is refused."""
    n = image.spatial_dims
    low = np.full(n, -0.5)
    high = np.asarray(image.size, dtype=np.float64) - 0.5
    outside = np.any((boxes[:, n:] <= low) | (boxes[:, :n] >= high), axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        shown = ", ".join(f"{v:.1f}" for v in boxes[k])
        raise DatasetError(
            f"{sources[k]}: box ({shown}) lies outside the {_by(image.size)} image "
            f"{Path(image.meta.get('path', '')).name}",
            annotation,
        )
    clipped_boxes = np.concatenate(
        [np.clip(boxes[:, :n], low, high), np.clip(boxes[:, n:], low, high)], axis=1
    )
    clipped = np.any(np.abs(clipped_boxes - boxes) > _CLIP_TOLERANCE, axis=1)
    return clipped_boxes, clipped


def _read_image(path: Path, options: Any) -> Image:
    """``load_image``, or SimpleITK for the MetaImage/NRRD volumes of LUNA16."""
    if not path.name.lower().endswith(_SITK_ENDINGS):
        load_image, _ = _lazy_io()
        return load_image(path, **options)
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ImageReadError("reading this format needs SimpleITK", path) from None
    try:
        volume = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-160:]
        raise ImageReadError(f"not readable by SimpleITK ({reason})", path) from None
    n = volume.GetDimension()
    if volume.GetNumberOfComponentsPerPixel() != 1 or n not in (2, 3):
        raise ImageReadError("expected a one-component 2D or 3D image", path)
    return Image(
        sitk.GetArrayFromImage(volume),
        spacing=volume.GetSpacing(),
        origin=volume.GetOrigin(),
        direction=np.asarray(volume.GetDirection()).reshape(n, n),
        meta={"path": str(path), "format": path.suffix.lower().lstrip(".")},
    )


def _by(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)
