"""Parsers of the detection formats: each turns its annotation files into :class:`Record` s.

A record is one image with its boxes, checked here (finite numbers, positive size, a known
image) and converted to one of two coordinate systems: continuous *index* coordinates of the
image as read (pixel formats) or LPS *world* millimetres (``units="mm"`` CSVs, LUNA16). Which one
is kept per box; :mod:`medlens.data.detection` converts with the loaded image's geometry.
Every problem raises :class:`~medlens.errors.DatasetError` naming the file and the row/object.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.data.csv_folder import PATH_COLUMNS, SUBJECT_COLUMNS, _read_csv
from medlens.errors import DatasetError

#: volume endings of LUNA16-style folders (``.mhd``/``.nrrd``/``.mha`` are read with SimpleITK)
VOLUME_ENDINGS = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd")
UNITS = {"pixels": False, "pixel": False, "px": False, "mm": True}
_XYZ = ("x", "y", "z")
_MAX_LISTED = 3


@dataclass
class Record:
    """One image and its boxes ``(N, 2 * ndim)`` as ``(min..., max...)`` corners."""

    id: str
    image: Path
    boxes: list[tuple[float, ...]] = field(default_factory=list)
    world: list[bool] = field(default_factory=list)  # per box: LPS mm (True) or index (False)
    names: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "object 3", "line 12", "annotation 7"
    ignore: list[bool] | None = None
    subject: str | None = None
    size: tuple[int, ...] | None = None  # the image size (x, y[, z]) the annotation states
    named_at: str = ""  # where the annotation names the image ("line 3", "image 7")
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, box, world: bool, name: str, where: str, ignore: bool = False) -> None:
        self.boxes.append(tuple(float(v) for v in box))
        self.world.append(world)
        self.names.append(name)
        self.where.append(where)
        if self.ignore is not None:
            self.ignore.append(bool(ignore))


def check_box(box: tuple[float, ...], where: str, path: Path) -> tuple[float, ...]:
    """``box`` when finite with ``min < max`` on every axis, else a one-line error."""
    n = len(box) // 2
    shown = ", ".join(f"{v:g}" for v in box)
    if not all(math.isfinite(v) for v in box):
        raise DatasetError(f"{where}: box ({shown}) has a non-finite coordinate", path)
    if any(box[n + d] <= box[d] for d in range(n)):
        raise DatasetError(f"{where}: box ({shown}) has zero or negative size", path)
    return box


# ---------------------------------------------------------------------------------- Pascal VOC
def voc_records(root: Path, ids: list[str] | None) -> list[Record]:
    """Records of ``Annotations/<id>.xml`` (every XML when ``ids`` is None).

    VOC counts pixels from 1 and both corners are inclusive: pixels ``xmin..xmax`` become the
    index box ``[xmin - 1.5, xmax - 0.5]`` (pixel ``xmin`` has index ``xmin - 1``).
    """
    from medlens.io.annotations import read_voc

    folder = root / "Annotations"
    if ids is None:
        paths = sorted(p for p in folder.glob("*.xml") if not p.name.startswith("."))
        if not paths:
            raise DatasetError("no *.xml annotations", folder)
    else:
        paths = [folder / f"{i}.xml" for i in ids]
    records = []
    for path in paths:
        voc = read_voc(path)  # ImageReadError: one line naming the XML
        record = Record(id=path.stem, image=_voc_image(root, path.stem, voc.filename))
        record.size = voc.size[:2]
        record.ignore = []
        record.meta["truncated"] = [b.truncated for b in voc.objects]
        for n, b in enumerate(voc.objects, 1):
            box = (b.xmin - 1.5, b.ymin - 1.5, b.xmax - 0.5, b.ymax - 0.5)
            box = check_box(box, f"object {n} ({b.name})", path)
            record.add(box, False, b.name, f"object {n}", b.difficult)
        record.meta["annotation"] = str(path)
        records.append(record)
    return records


def voc_split_ids(root: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt``, each with its annotation checked."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise DatasetError(
            f"no split {split!r} (no ImageSets/Main/{split}.txt); splits: {known or 'none'}", root
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"not a readable split list ({exc})", path) from None
    ids = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if not (root / "Annotations" / f"{image_id}.xml").is_file():
            raise DatasetError(f"line {number}: no Annotations/{image_id}.xml", path)
        ids.append(image_id)
    if not ids:
        raise DatasetError("split list is empty", path)
    if len(set(ids)) != len(ids):
        raise DatasetError("split list names an image twice", path)
    return ids


def _voc_image(root: Path, stem: str, filename: str) -> Path:
    folder = root / "JPEGImages"
    if filename and (folder / filename).is_file():
        return folder / filename
    for suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return folder / (filename or f"{stem}.jpg")


# ---------------------------------------------------------------------------------------- COCO
def coco_records(path: Path, image_root: Path | None) -> tuple[list[Record], list[str]]:
    """Records and category names in category-id order of a COCO ``instances`` JSON.

    ``bbox = [x, y, w, h]`` is continuous with 0 at the outer edge of the first pixel, so the
    index box is ``[x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5]``; ``iscrowd`` marks ignore.
    """
    spec = _json(path)
    images, annotations, categories = (spec.get(k) for k in ("images", "annotations", "categories"))
    lists = {"images": images, "annotations": annotations or [], "categories": categories}
    for key, value in lists.items():
        if not isinstance(value, list):
            raise DatasetError(f"no {key!r} list (not a COCO annotation file)", path)
    if not images:
        raise DatasetError("'images' is empty: no image to detect in", path)
    names: dict[Any, str] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise DatasetError(f"category {n} lacks an 'id' or a 'name'", path)
        if cat["id"] in names:
            raise DatasetError(f"category id {cat['id']!r} is defined twice", path)
        names[cat["id"]] = cat["name"]
    order = sorted(names, key=lambda c: (not isinstance(c, int), c if isinstance(c, int) else 0))
    records: dict[Any, Record] = {}
    for n, item in enumerate(images):
        if (
            not isinstance(item, dict)
            or "id" not in item
            or not isinstance(item.get("file_name"), str)
        ):
            raise DatasetError(f"image {n} lacks an 'id' or a 'file_name'", path)
        if item["id"] in records:
            raise DatasetError(f"image id {item['id']!r} is listed twice", path)
        name = item["file_name"].replace("\\", "/")
        subject = item.get("subject", item.get("patient_id"))
        image = _coco_image(path, name, image_root)
        record = Record(id=name, image=image, ignore=[], named_at=f"image {item['id']}")
        record.subject = None if subject is None else str(subject)
        if isinstance(item.get("width"), int) and isinstance(item.get("height"), int):
            record.size = (item["width"], item["height"])
        record.meta.update(annotation=str(path), image_id=item["id"])
        records[item["id"]] = record
    if len({r.id for r in records.values()}) != len(records):
        raise DatasetError("two images share a file_name", path)
    for n, ann in enumerate(annotations or []):
        where = f"annotation {ann.get('id', n) if isinstance(ann, dict) else n}"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object", path)
        if ann.get("image_id") not in records:
            raise DatasetError(f"{where}: image_id {ann.get('image_id')!r} is not listed", path)
        if ann.get("category_id") not in names:
            raise DatasetError(f"{where}: category_id {ann.get('category_id')!r} unknown", path)
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(f"{where}: bbox {str(bbox)[:60]} is not [x, y, w, h]", path)
        x, y, w, h = (float(v) for v in bbox)
        box = check_box((x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5), where, path)
        name = names[ann["category_id"]]
        records[ann["image_id"]].add(box, False, name, where, bool(ann.get("iscrowd", 0)))
    return list(records.values()), [names[c] for c in order]


def _coco_image(path: Path, name: str, image_root: Path | None) -> Path:
    if image_root is not None or Path(name).is_absolute():
        return (image_root or Path()) / name
    candidates = [path.parent / name, path.parent / "images" / name]
    candidates.append(path.parent.parent / "images" / name)
    return next((c for c in candidates if c.is_file()), candidates[0])


def _json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError("file does not exist", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot be read as text ({exc})", path) from None
    if not text.strip():
        raise DatasetError("annotation file is empty", path)
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path) from None
    if not isinstance(spec, dict):
        raise DatasetError("expected a JSON object at the top level", path)
    return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ CSV of boxes
def csv_header(path: Path) -> list[str]:
    """The header row of a CSV file, lower-cased (empty when unreadable)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            row = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [c.strip().lower() for c in row]


def box_csv_records(
    path: Path, units: str, image_root: Path | None, default_label: str
) -> tuple[list[Record], int]:
    """Records of a CSV with ``image,x1,y1,x2,y2[,z1,z2][,label][,units][,subject]``.

    Pixel coordinates are continuous with 0 at the outer edge of the first pixel (COCO,
    torchvision): index = pixel - 0.5. ``mm`` corners are LPS world positions. Rows whose box
    cells are all empty list a negative image. Returns the records and ``ndim``.
    """
    if units not in UNITS:
        raise DatasetError(f"unknown units {units!r}; use 'pixels' or 'mm'", path)
    header, rows = _read_csv(path)
    column = {h.strip().lower(): h for h in header}
    image_col = next((column[c.lower()] for c in PATH_COLUMNS if c.lower() in column), None)
    ndim = 3 if "z1" in column or "z2" in column else 2
    corners = [f"{a}{k}" for k in "12" for a in _XYZ[:ndim]]
    lacking = [c for c in corners if c not in column]
    if image_col is None or lacking:
        wanted = "image, " + ", ".join(lacking or corners)
        raise DatasetError(f"not a box CSV: no column(s) {wanted}; columns: {header}", path)
    subject_col = next((column[c.lower()] for c in SUBJECT_COLUMNS if c.lower() in column), None)
    records: dict[str, Record] = {}
    for line, row in rows:
        where = f"line {line}"
        raw = (row.get(image_col) or "").strip().replace("\\", "/")
        if not raw:
            raise DatasetError(f"{where}: empty {image_col!r}", path)
        record = records.get(raw)
        if record is None:
            image = Path(raw) if Path(raw).is_absolute() else (image_root or path.parent) / raw
            record = records[raw] = Record(id=raw, image=image, named_at=where)
        subject = (row.get(subject_col) or "").strip() if subject_col else ""
        record.subject = subject or record.subject
        cells = [(row.get(column[c]) or "").strip() for c in corners]
        if not any(cells):
            continue  # an image without boxes: a negative
        if not all(cells):
            empty = [c for c, v in zip(corners, cells, strict=True) if not v]
            raise DatasetError(f"{where}: box cells {', '.join(empty)} are empty", path)
        values = [_number(v, c, where, path) for c, v in zip(corners, cells, strict=True)]
        unit = (row.get(column["units"]) or "").strip().lower() if "units" in column else ""
        if unit and unit not in UNITS:
            raise DatasetError(f"{where}: units {unit!r} is neither 'pixels' nor 'mm'", path)
        world = UNITS[unit or units]
        box = check_box(tuple(values), where, path)
        if not world:
            box = tuple(v - 0.5 for v in box)
        label = (row.get(column["label"]) or "").strip() if "label" in column else ""
        record.add(box, world, label or default_label, where)
    return list(records.values()), ndim


def _number(text: str, column: str, where: str, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {column} is {text[:40]!r}, not a number", path) from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {column} is {text!r}, not a finite number", path)
    return value


# ------------------------------------------------------------------------------------ LUNA16
def luna_csv(root: Path) -> Path | None:
    """The annotation CSV of a LUNA16-style folder: ``annotations.csv``, else the one CSV whose
    header has ``seriesuid`` and centre or corner columns; ``None`` when there is none."""
    if not (root / "images").is_dir() and not any(p.is_dir() for p in root.glob("subset*")):
        return None
    csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
    csvs.sort(key=lambda p: p.name.lower() != "annotations.csv")
    return next((p for p in csvs if is_luna_header(csv_header(p))), None)


def is_luna_header(header: list[str]) -> bool:
    centre = {"coordx", "coordy", "coordz", "diameter_mm"}
    corners = {f"{a}{k}" for a in _XYZ for k in "12"}
    return "seriesuid" in header and (centre <= set(header) or corners <= set(header))


def luna_volumes(root: Path) -> dict[str, Path]:
    """``seriesuid -> volume`` of ``images/`` and ``subset*/`` (``.mhd`` headers, not ``.raw``)."""
    found: dict[str, Path] = {}
    folders = [root / "images", *sorted(p for p in root.glob("subset*") if p.is_dir())]
    for folder in folders:
        for file in sorted(folder.iterdir()) if folder.is_dir() else []:
            ending = next((e for e in VOLUME_ENDINGS if file.name.lower().endswith(e)), None)
            if ending is None or file.name.startswith("."):
                continue
            uid = file.name[: -len(ending)]
            if uid in found:
                raise DatasetError(f"series {uid} has two volumes ({found[uid].name})", file)
            found[uid] = file
    if not found:
        raise DatasetError(f"no volumes ({', '.join(VOLUME_ENDINGS)}) in images/", root)
    return found


def luna_records(root: Path, path: Path, default_label: str) -> list[Record]:
    """One record per volume; a box is the given world corners ``x1..z2`` when a row has them,
    else the cube of side ``diameter_mm`` around ``coordX/Y/Z`` (LPS mm)."""
    volumes = luna_volumes(root)
    header, rows = _read_csv(path)
    column = {h.strip().lower(): h for h in header}
    if not is_luna_header(list(column)):
        raise DatasetError(
            "not a LUNA16 annotation CSV: needs seriesuid with coordX, coordY, coordZ, "
            f"diameter_mm or x1..z2; columns: {header}",
            path,
        )
    series = _series(root / "series.csv")
    records = {
        uid: Record(id=uid, image=file, subject=series.get(uid, {}).get("subject") or None)
        for uid, file in volumes.items()
    }
    for uid, record in records.items():
        record.meta["diameter_mm"] = []
        if uid in series:
            record.meta["series"] = series[uid]
    missing = []
    for line, row in rows:
        where = f"line {line}"
        uid = (row.get(column["seriesuid"]) or "").strip()
        if uid not in records:
            missing.append(f"{where}: {uid or '(empty)'}")
            continue
        cells = {c: (row.get(column[c]) or "").strip() for c in column}
        corner_names = [f"{a}{k}" for k in "12" for a in _XYZ]
        diameter = math.nan
        if all(cells.get(c) for c in corner_names):
            box = tuple(_number(cells[c], c, where, path) for c in corner_names)
            if cells.get("diameter_mm"):  # the finding's size for FROC's hit radius
                diameter = _number(cells["diameter_mm"], "diameter_mm", where, path)
        else:
            names = ("coordx", "coordy", "coordz", "diameter_mm")
            if not all(cells.get(c) for c in names):
                raise DatasetError(f"{where}: needs coordX/Y/Z and diameter_mm, or x1..z2", path)
            *centre, diameter = (_number(cells[c], c, where, path) for c in names)
            if diameter <= 0:
                raise DatasetError(f"{where}: diameter_mm {diameter:g} is not positive", path)
            box = (*(c - diameter / 2 for c in centre), *(c + diameter / 2 for c in centre))
        record = records[uid]
        record.add(check_box(box, where, path), True, cells.get("label") or default_label, where)
        record.meta["diameter_mm"].append(diameter)
    if missing:
        more = ", ..." if len(missing) > _MAX_LISTED else ""
        raise DatasetError(
            f"{len(missing)} rows name a series without a volume ({'; '.join(missing[:3])}{more})",
            path,
        )
    return list(records.values())


def _series(path: Path) -> dict[str, dict[str, str]]:
    """``series.csv`` rows by ``seriesuid`` (``subject`` groups volumes from one source)."""
    if not path.is_file():
        return {}
    header, rows = _read_csv(path)
    if "seriesuid" not in header:
        raise DatasetError(f"no 'seriesuid' column; columns: {header}", path)
    out = {}
    for line, row in rows:
        uid = (row.get("seriesuid") or "").strip()
        if not uid or uid in out:
            raise DatasetError(f"line {line}: seriesuid is empty or listed again", path)
        out[uid] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    return out


def read_dataset_info(root: Path) -> dict[str, Any]:
    """``dataset.json`` of a LUNA16-style folder (e.g. ``simulated: true``), or ``{}``."""
    path = root / "dataset.json"
    return _json(path) if path.is_file() else {}
