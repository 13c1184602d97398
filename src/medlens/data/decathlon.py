"""Medical Segmentation Decathlon and nnU-Net folders (``dataset.json`` + imagesTr/labelsTr).

Two forms of ``dataset.json`` are read:

* MSD (and nnU-Net v1): ``training: [{"image": ..., "label": ...}]``, ``test: [...]``,
  ``modality: {"0": "MRI"}``, ``labels: {"0": "background", "1": "tumour"}``.
* nnU-Net v2: ``channel_names: {"0": "CT"}``, ``labels: {"background": 0, "liver": 1}``,
  ``file_ending``, ``numTraining``; cases are found on disk as ``labelsTr/<case><ending>`` with
  one image per channel ``imagesTr/<case>_0000<ending>``, ``_0001`` ...

A label map must lie on its image's grid; this is checked on every load, never assumed. An
optional ``subjects.json`` (case id -> subject id, a medlens convention) groups cases by subject.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io, as_label_map
from medlens.errors import DatasetError
from medlens.io.discover import IMAGE_SUFFIXES

__all__ = ["DecathlonDataset", "read_dataset_json"]

#: File endings of case files: the images medlens reads, and nnU-Net's other formats (named,
#: so that a case's id never keeps half of ``.nii.gz``).
_ENDINGS = (*IMAGE_SUFFIXES, ".nrrd", ".mha")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MAX_LISTED = 3


def read_dataset_json(root: str | Path) -> dict[str, Any]:
    """The parsed ``dataset.json`` of a Decathlon/nnU-Net folder."""
    root = Path(root)
    path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError("dataset folder does not exist", root)
    if not path.is_file():
        raise DatasetError("no dataset.json (expected a Decathlon / nnU-Net dataset folder)", root)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path) from None
    if not isinstance(spec, dict):
        raise DatasetError("expected a JSON object at the top level", path)
    return spec


class DecathlonDataset(Dataset):
    """Image/label pairs of a Decathlon or nnU-Net v2 folder.

    Args:
        root: the folder holding ``dataset.json``.
        split: ``"train"`` (imagesTr + labelsTr) or ``"test"`` (imagesTs, no labels).
        check_files: check up front that every listed file exists.
    """

    def __init__(self, root: str | Path, split: str = "train", *, check_files: bool = True) -> None:
        root = Path(root)
        if split not in ("train", "training", "test"):
            raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'", root)
        self.split = "test" if split == "test" else "train"
        self.spec = spec = read_dataset_json(root)
        json_path = root / "dataset.json"
        self.source = root
        self.name = str(spec.get("name") or root.name)
        self.task = "segmentation"
        self.channel_names = _channel_names(spec)
        self.modality = self.channel_names[0] if len(self.channel_names) == 1 else None
        self.label_values, self.class_names = _labels(spec, json_path)
        self.file_ending = str(spec.get("file_ending") or "")
        subjects = _subjects(root)

        if "training" in spec or "test" in spec:
            cases = _listed_cases(root, spec, self.split, len(self.channel_names), json_path)
        else:
            cases = _discovered_cases(root, spec, self.split, len(self.channel_names), json_path)
        if check_files:
            missing = [
                (case, p)
                for case, paths, label in cases
                for p in (*paths, label)
                if p and not p.is_file()
            ]
            if missing:
                listed = "; ".join(f"{c}: {_rel(p, root)}" for c, p in missing[:_MAX_LISTED])
                more = ", ..." if len(missing) > _MAX_LISTED else ""
                raise DatasetError(
                    f"{len(missing)} files named by the {self.split} cases are missing "
                    f"({listed}{more})",
                    json_path,
                )
        self.entries = [
            Entry(
                id=case,
                paths=tuple(paths),
                mask_path=label,
                subject=subjects.get(case),
                meta={"case": case},
            )
            for case, paths, label in cases
        ]

    def _load(self, index: int) -> Sample:
        load_image, _ = _lazy_io()
        entry = self.entries[index]
        channels = [load_image(p) for p in entry.paths]
        image = channels[0]
        if len(channels) > 1:
            for path, channel in zip(entry.paths[1:], channels[1:], strict=True):
                image.check_same_grid(channel, name=str(path))
                if channel.leading:
                    raise DatasetError(f"channel file has leading axes {channel.leading}", path)
            image = image.with_array(np.stack([c.array for c in channels]), leading=("channel",))
        elif len(self.channel_names) > 1 and image.leading == ("time",):
            # MSD stores multi-modal cases as one 4D NIfTI: its fourth axis is the modality.
            image = image.replace(leading=("channel",))
        if image.modality is None and self.modality is not None:
            image.modality = self.modality
        image.meta["paths"] = [str(p) for p in entry.paths]
        mask = None
        if entry.mask_path is not None:
            # 0/255 masks become 0/1 unless 255 is a declared label (nnU-Net's ignore label).
            binary = 255 not in self.label_values.values()
            mask = as_label_map(load_image(entry.mask_path), binary_255=binary)
            if mask.leading:
                raise DatasetError(
                    f"label map has {mask.array.shape[0]} {mask.leading[0]} points; one needed",
                    entry.mask_path,
                )
            image.check_same_grid(mask, name=str(entry.mask_path))
        meta = {"paths": [str(p) for p in entry.paths], **entry.meta}
        if entry.mask_path is not None:
            meta["label_path"] = str(entry.mask_path)
        return Sample(image, None, mask, entry.id, entry.subject, None, meta)


def _channel_names(spec: dict[str, Any]) -> list[str]:
    raw = spec.get("channel_names") or spec.get("modality") or {"0": "unknown"}
    if not isinstance(raw, dict):
        return [str(raw)]
    return [str(raw[k]) for k in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0)]


def _labels(spec: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """Label name -> value (int, or list of ints for nnU-Net regions) and names by value."""
    raw = spec.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError("dataset.json has no 'labels' mapping", path)
    keys_numeric = all(str(k).strip().lstrip("-").isdigit() for k in raw)
    values: dict[str, Any] = {}
    if keys_numeric:  # MSD: {"0": "background", "1": "tumour"}
        for k, name in raw.items():
            values[str(name)] = int(k)
    else:  # nnU-Net v2: {"background": 0, "tumour": 1} or regions {"whole": [1, 2, 3]}
        for name, value in raw.items():
            if isinstance(value, (list, tuple)):
                values[str(name)] = [int(v) for v in value]
            elif isinstance(value, (int, float, str)) and str(value).strip().lstrip("-").isdigit():
                values[str(name)] = int(value)
            else:
                raise DatasetError(f"label {name!r} has value {value!r}, expected an integer", path)
    plain = sorted((v, n) for n, v in values.items() if isinstance(v, int))
    names = [n for _, n in plain] + [n for n, v in values.items() if not isinstance(v, int)]
    return values, names


def _subjects(root: Path) -> dict[str, str]:
    path = root / "subjects.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise DatasetError("expected an object mapping case id to subject id", path)
    return {str(k): str(v) for k, v in data.items()}


def _strip_ending(name: str) -> tuple[str, str]:
    for ending in _ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)], name[-len(ending) :]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix


def _listed_cases(
    root: Path, spec: dict[str, Any], split: str, n_channels: int, path: Path
) -> list[tuple[str, list[Path], Path | None]]:
    """Cases from MSD's ``training``/``test`` lists (nnU-Net v1 channel files resolved)."""
    items = spec.get("training" if split == "train" else "test") or []
    if not isinstance(items, list):
        raise DatasetError(f"'{'training' if split == 'train' else 'test'}' must be a list", path)
    cases = []
    for n, item in enumerate(items):
        if isinstance(item, dict):
            image, label = item.get("image"), item.get("label")
        else:
            image, label = item, None
        if not isinstance(image, str):
            raise DatasetError(f"entry {n} has no image path", path)
        image_path = root / image
        stem, ending = _strip_ending(image_path.name)
        paths = [image_path]
        if not image_path.exists():  # nnU-Net v1 lists "la_003.nii.gz" but stores la_003_0000...
            candidates = [
                image_path.with_name(f"{stem}_{c:04d}{ending}") for c in range(n_channels)
            ]
            if candidates[0].exists():
                paths = candidates
        label_path = root / label if split == "train" and isinstance(label, str) else None
        cases.append((stem, paths, label_path))
    return cases


def _discovered_cases(
    root: Path, spec: dict[str, Any], split: str, n_channels: int, path: Path
) -> list[tuple[str, list[Path], Path | None]]:
    """nnU-Net v2: cases are the label files; images are ``<case>_<XXXX><ending>`` per channel."""
    ending = str(spec.get("file_ending") or "")
    images_dir = root / ("imagesTr" if split == "train" else "imagesTs")
    if not ending:
        raise DatasetError("dataset.json has neither a 'training' list nor a 'file_ending'", path)
    channels: dict[str, list[Path]] = {}
    if images_dir.is_dir():
        for file in sorted(images_dir.iterdir()):
            if not file.name.endswith(ending):
                continue
            match = _CHANNEL.match(file.name[: -len(ending)])
            if match:
                channels.setdefault(match["case"], []).append(file)
    if split == "test":
        return [
            (case, [images_dir / f"{case}_{c:04d}{ending}" for c in range(n_channels)], None)
            for case in sorted(channels)
        ]
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise DatasetError("no labelsTr folder", root)
    cases = []
    for file in sorted(labels_dir.iterdir()):
        if file.name.endswith(ending) and not file.name.startswith("."):
            case = file.name[: -len(ending)]
            files = [images_dir / f"{case}_{c:04d}{ending}" for c in range(n_channels)]
            cases.append((case, files, file))
    expected = spec.get("numTraining")
    if isinstance(expected, int) and expected != len(cases):
        raise DatasetError(f"numTraining is {expected} but labelsTr has {len(cases)} cases", path)
    return cases


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
