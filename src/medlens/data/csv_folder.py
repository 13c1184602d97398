"""A folder of images plus a CSV of labels (CheXpert style).

The CSV names one image per row (a path column) and either one column per finding (multi-label,
values 1 / 0 / -1 = uncertain / blank = not mentioned) or a single ``label`` column (multi-class).

Uncertain and blank findings follow an explicit, selectable policy, as compared in the CheXpert
paper (Irvin et al., AAAI 2019): ``uncertain="ones"`` (U-Ones, the default), ``"zeros"``
(U-Zeros) or ``"ignore"`` (masked); blanks are negatives by CheXpert's convention
(``blank="zeros"``) or masked (``blank="ignore"``). Masked entries are NaN in the label vector so
a loss can skip them.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io
from medlens.errors import DatasetError

__all__ = ["BLANK_POLICIES", "UNCERTAIN_POLICIES", "CSVFolderDataset"]

UNCERTAIN_POLICIES = {"ones": 1.0, "zeros": 0.0, "ignore": float("nan")}
BLANK_POLICIES = {"zeros": 0.0, "ignore": float("nan")}

PATH_COLUMNS = ("Path", "path", "filename", "image", "file")
LABEL_COLUMNS = ("label", "class", "target")
SUBJECT_COLUMNS = ("patient", "patient_id", "patientid", "subject", "subject_id", "subjectid")
STUDY_COLUMNS = ("study", "study_id", "studyid")
_PATIENT_IN_PATH = re.compile(r"(?:^|[/\\])(patient\d+)(?=[/\\])", re.IGNORECASE)
_STUDY_IN_PATH = re.compile(r"(?:^|[/\\])(patient\d+)[/\\](study\d+)(?=[/\\])", re.IGNORECASE)
_FINDING_VALUES = {"1", "0", "-1", "1.0", "0.0", "-1.0"}
_MAX_LISTED = 3


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


class CSVFolderDataset(Dataset):
    """Images listed in a CSV with their labels.

    Args:
        csv_path: the CSV file.
        image_root: folder the paths are relative to; default the CSV's folder (and, for
            CheXpert paths that start with that folder's own name, its parent).
        path_column: column holding image paths; default the first of ``Path``, ``path``,
            ``filename``, ``image``, ``file``.
        label_columns: finding columns for a multi-label dataset; default every column whose
            values are all 1 / 0 / -1 / blank.
        label_column: single multi-class label column; default ``label`` when present.
        classes: class names in index order for ``label_column`` (default: the values, sorted).
        uncertain: policy for -1: ``"ones"`` (U-Ones), ``"zeros"`` (U-Zeros), ``"ignore"`` (NaN).
        blank: policy for empty findings: ``"zeros"`` (negative) or ``"ignore"`` (NaN).
        subject_column: patient id column; default ``patient``/``patient_id``/``PatientID`` or
            the ``patientNNNNN`` folder in CheXpert paths.
        modality: modality code given to loaded images (``"DX"``, ``"US"``, ...).
        check_files: check up front that every listed image exists.
    """

    def __init__(
        self,
        csv_path: str | Path,
        *,
        image_root: str | Path | None = None,
        path_column: str | None = None,
        label_columns: list[str] | None = None,
        label_column: str | None = None,
        classes: list[str] | None = None,
        uncertain: str = "ones",
        blank: str = "zeros",
        subject_column: str | None = None,
        modality: str | None = None,
        check_files: bool = True,
    ) -> None:
        csv_path = Path(csv_path)
        if uncertain not in UNCERTAIN_POLICIES:
            raise DatasetError(
                f"unknown uncertain-label policy {uncertain!r}; use one of "
                f"{sorted(UNCERTAIN_POLICIES)}",
                csv_path,
            )
        if blank not in BLANK_POLICIES:
            raise DatasetError(
                f"unknown blank-label policy {blank!r}; use one of {sorted(BLANK_POLICIES)}",
                csv_path,
            )
        self.source = csv_path
        self.name = csv_path.stem
        self.modality = modality
        self.uncertain = uncertain
        self.blank = blank
        header, rows = _read_csv(csv_path)
        self.path_column = _find_column(header, path_column, PATH_COLUMNS, csv_path, "path")
        subject = _find_column(header, subject_column, SUBJECT_COLUMNS, csv_path, "subject", False)
        study = _find_column(header, None, STUDY_COLUMNS, csv_path, "study", False)
        self.subject_column = subject
        if label_columns is None and label_column is None:
            label_column = _find_column(header, None, LABEL_COLUMNS, csv_path, "label", False)
            if label_column is None:
                reserved = {self.path_column, subject, study}
                label_columns = _finding_columns(header, rows, reserved)
                if not label_columns:
                    raise DatasetError(
                        "no label columns: expected a 'label' column or finding columns of "
                        "1/0/-1/blank values",
                        csv_path,
                    )
        for column in [*(label_columns or []), *([label_column] if label_column else [])]:
            if column not in header:
                raise DatasetError(f"no column {column!r}; columns: {', '.join(header)}", csv_path)

        if label_columns is not None:
            self.task = "multilabel"
            self.label_columns = list(label_columns)
            self.class_names = list(label_columns)
            labels = [
                _findings(row, line, self.label_columns, uncertain, blank, csv_path)
                for line, row in rows
            ]
        else:
            assert label_column is not None
            self.task = "classification"
            self.label_columns = [label_column]
            self.class_names, labels = _classes(rows, label_column, classes, csv_path)

        root = Path(image_root) if image_root is not None else None
        self.entries = []
        seen: dict[str, int] = {}
        missing: list[tuple[int, str]] = []
        for (line, row), label in zip(rows, labels, strict=True):
            raw = (row.get(self.path_column) or "").strip()
            if not raw:
                raise DatasetError(f"line {line}: empty {self.path_column!r}", csv_path)
            sample_id = raw.replace("\\", "/")
            if sample_id in seen:
                raise DatasetError(
                    f"line {line}: {raw} is listed again (first on line {seen[sample_id]})",
                    csv_path,
                )
            seen[sample_id] = line
            path = _resolve(raw, csv_path.parent, root)
            if check_files and not path.is_file():
                missing.append((line, raw))
            patient = (row.get(subject) or "").strip() if subject else ""
            if not patient and (match := _PATIENT_IN_PATH.search(raw)):
                patient = match.group(1)
            exam = (row.get(study) or "").strip() if study else ""
            if not exam and (match := _STUDY_IN_PATH.search(raw)):
                exam = f"{match.group(1)}/{match.group(2)}"
            self.entries.append(
                Entry(
                    id=sample_id,
                    paths=(path,),
                    label=label,
                    subject=patient or None,
                    study=exam or None,
                    meta={"line": line, "row": dict(row)},
                )
            )
        if missing:
            listed = "; ".join(f"line {n}: {p}" for n, p in missing[:_MAX_LISTED])
            more = ", ..." if len(missing) > _MAX_LISTED else ""
            raise DatasetError(
                f"{len(missing)} of {len(rows)} listed image files are missing ({listed}{more})",
                csv_path,
            )

    @property
    def policy(self) -> str:
        """The label policy in words, for logs and reports."""
        if self.task != "multilabel":
            return "single label column"
        return f"uncertain (-1) -> {self.uncertain}, blank -> {self.blank}"

    def _load(self, index: int) -> Sample:
        load_image, _ = _lazy_io()
        entry = self.entries[index]
        image = load_image(entry.paths[0], **self.load_options)
        if self.modality is not None:
            image.modality = self.modality
        label = entry.label.copy() if isinstance(entry.label, np.ndarray) else entry.label
        meta = {"path": str(entry.paths[0]), **entry.meta}
        return Sample(image, label, None, entry.id, entry.subject, entry.study, meta)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not path.is_file():
        raise DatasetError("CSV file does not exist", path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h for h in (reader.fieldnames or []) if h is not None]
            rows = []
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                rows.append((reader.line_num, row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable CSV file ({exc})", path) from None
    if not header:
        raise DatasetError("CSV has no header row", path)
    if not rows:
        raise DatasetError("CSV has a header but no rows", path)
    return header, rows


def _find_column(
    header: list[str],
    given: str | None,
    candidates: tuple[str, ...],
    path: Path,
    what: str,
    required: bool = True,
) -> str | None:
    if given is not None:
        if given not in header:
            raise DatasetError(f"no {what} column {given!r}; columns: {', '.join(header)}", path)
        return given
    for name in candidates:  # exact spelling first, then any case
        if name in header:
            return name
    by_key = {_key(h): h for h in header}
    for name in candidates:
        if _key(name) in by_key:
            return by_key[_key(name)]
    if required:
        raise DatasetError(
            f"no {what} column: looked for {', '.join(candidates)}; columns: {', '.join(header)}",
            path,
        )
    return None


def _finding_columns(
    header: list[str], rows: list[tuple[int, dict[str, str]]], reserved: set[str | None]
) -> list[str]:
    """Columns whose values are all 1 / 0 / -1 / blank, with at least one value."""
    found = []
    for column in header:
        if column in reserved:
            continue
        values = {(row.get(column) or "").strip() for _, row in rows} - {""}
        if values and values <= _FINDING_VALUES:
            found.append(column)
    return found


def _findings(
    row: dict[str, str], line: int, columns: list[str], uncertain: str, blank: str, path: Path
) -> np.ndarray:
    out = np.empty(len(columns), dtype=np.float32)
    for k, column in enumerate(columns):
        text = (row.get(column) or "").strip()
        if not text:
            out[k] = BLANK_POLICIES[blank]
            continue
        try:
            value = float(text)
        except ValueError:
            value = None
        if value == 1.0 or value == 0.0:
            out[k] = value
        elif value == -1.0:
            out[k] = UNCERTAIN_POLICIES[uncertain]
        else:
            raise DatasetError(
                f"line {line}: column {column!r} has {text!r}, expected 1, 0, -1 or blank", path
            )
    return out


def _classes(
    rows: list[tuple[int, dict[str, str]]], column: str, classes: list[str] | None, path: Path
) -> tuple[list[str], list[int]]:
    values = []
    for line, row in rows:
        text = (row.get(column) or "").strip()
        if not text:
            raise DatasetError(f"line {line}: empty {column!r}", path)
        values.append((line, text))
    if classes is None:
        distinct = {text for _, text in values}
        try:
            ordered = sorted(distinct, key=lambda t: (float(t), t))
        except ValueError:
            ordered = sorted(distinct)
        classes = ordered
    index = {str(name): i for i, name in enumerate(classes)}
    labels = []
    for line, text in values:
        if text not in index:
            raise DatasetError(
                f"line {line}: {column!r} value {text!r} is not among the classes {list(index)}",
                path,
            )
        labels.append(index[text])
    return [str(c) for c in classes], labels


def _resolve(raw: str, folder: Path, root: Path | None) -> Path:
    path = Path(raw.replace("\\", "/"))
    if path.is_absolute():
        return path
    if root is not None:
        return root / path
    direct = folder / path
    # CheXpert writes "CheXpert-v1.0-small/train/..." beside a CSV that sits in that folder.
    if not direct.exists() and path.parts and path.parts[0] == folder.name:
        return folder.parent / path
    return direct
