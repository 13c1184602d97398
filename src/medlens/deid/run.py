"""De-identify a file, a folder tree or a DICOMDIR file-set: ``medlens anonymize``.

* The input is never modified; outputs are written atomically. A file that fails or is not
  DICOM is reported and the rest go on; images that may carry burned-in text are skipped
  unless allowed (:func:`burned_in_reason`).
* Files are streamed one at a time (optionally in worker processes): memory does not grow.
* The audit log (CSV) lists, per file, each attribute and the action taken, never a value; it
  is written beside the output (``OUTPUT.audit.csv``), not inside it, because it names input
  files. The mapping file (``--map``), which re-identifies patients, is written only when asked
  and never inside the output.

Output layout ``uids`` (default) names files by their new identifiers,
``<pseudonym>/<study UID>/<series UID>/<instance UID>.dcm``, since input file and folder names
often hold UIDs or patient names; ``keep`` keeps the input's relative paths (and is used for a
file-set with a DICOMDIR, whose records name the files).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medlens._atomic import atomic_path, ensure_outside, safe_name, safe_uid
from medlens.deid import _instance as instance
from medlens.deid.engine import Deidentifier, Outcome
from medlens.deid.profile import Profile
from medlens.errors import ImageReadError, MedlensError

__all__ = ["Summary", "anonymize", "burned_in_reason", "read_key"]

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_BURNED_IN_MODALITIES = {"US": "ultrasound", "XC": "external camera", "ES": "endoscopy",
                         "OT": "other", "DOC": "document", "SC": "secondary capture"}  # fmt: skip
_IMPLEMENTATION_UID = "2.25.163479236151016389917540476911624427062"
_AUDIT_COLUMNS = ["input", "status", "output", "tag", "attribute", "action"]
_REPLACED = ("emptied", "dummy", "uid", "pseudonym", "date-shifted")
_KEPT = ("kept", "kept-safe-private")


@dataclass
class Summary:
    """What a run did; ``lines()`` is the text printed at the end."""

    files: int = 0
    written: int = 0
    nifti: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_dicom: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    actions: Counter = field(default_factory=Counter)
    patients: int = 0
    seconds: float = 0.0
    output: str = ""
    audit: str = ""

    @property
    def removed(self) -> int:
        return self.actions["removed"]

    @property
    def replaced(self) -> int:
        return sum(self.actions[name] for name in _REPLACED)

    @property
    def kept(self) -> int:
        return sum(self.actions[name] for name in _KEPT)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "written": self.written,
            "nifti": self.nifti,
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "not_dicom": len(self.not_dicom),
            "duplicates": len(self.duplicates),
            "patients": self.patients,
            "attributes_removed": self.removed,
            "attributes_replaced": self.replaced,
            "attributes_kept": self.kept,
            "actions": dict(self.actions),
            "seconds": round(self.seconds, 3),
            "output": self.output,
            "audit": self.audit,
        }

    def lines(self) -> list[str]:
        rate = self.files / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"{self.files} files in {self.seconds:.1f} s ({rate:.0f} files/s): "
            f"{self.written} written ({self.nifti} NIfTI), {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed, {len(self.not_dicom)} not DICOM",
            f"attributes: {self.removed} removed, {self.replaced} replaced, {self.kept} kept "
            f"by options; {self.patients} patients",
        ]
        out += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        out += [f"failed {path}: {reason}" for path, reason in self.failed]
        out += [f"not DICOM {path}" for path in self.not_dicom]
        out += [f"duplicate instance {path}" for path in self.duplicates]
        out += [f"output: {self.output}", f"audit log: {self.audit}"]
        return out


def read_key(path: str | Path) -> bytes:
    """The secret key in ``path`` (its bytes; at least 16)."""
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise MedlensError(
            "key file not found (make one with: head -c 32 /dev/urandom > KEYFILE)", path
        ) from None
    if len(key.strip()) < 16:
        raise MedlensError("key file holds fewer than 16 bytes", path)
    return key


def burned_in_reason(ds) -> str | None:
    """Why an image may carry burned-in identifying text, or None.

    Burned In Annotation (0028,0301) = YES always counts. Where it does not say NO: secondary
    captures and the modalities that routinely burn text into the pixels (ultrasound, external
    camera, endoscopy, documents, other) count too.
    """
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "Burned In Annotation is YES"
    if flag == "NO" or "PixelData" not in ds:
        return None
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE):
        return "secondary capture image without Burned In Annotation = NO"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _BURNED_IN_MODALITIES:
        return f"{_BURNED_IN_MODALITIES[modality]} image without Burned In Annotation = NO"
    return None


def anonymize(
    input: str | Path,
    output: str | Path,
    *,
    profile: Profile | None = None,
    key: bytes | None = None,
    mapping: str | Path | None = None,
    audit: str | Path | None = None,
    allow_burned_in: bool = False,
    layout: Literal["uids", "keep"] = "uids",
    workers: int = 1,
    progress: bool = False,
) -> Summary:
    """De-identify ``input`` (a DICOM or NIfTI file, a folder tree, or a DICOMDIR) into ``output``.

    Args:
        output: a folder (created); for a single input file, a file path ending in ``.dcm``
            (or ``.nii``/``.nii.gz``) is written as that file.
        key: secret key for UIDs, pseudonyms and date shifts (:func:`read_key`); None draws a
            random one, so nothing is consistent across runs.
        mapping: CSV for the data owner: pseudonym, original Patient ID and Name, date shift.
        audit: the audit log; default ``<output>.audit.csv``.
        workers: processes (1: this one).
    """
    started = time.perf_counter()
    source, target = Path(input), Path(output)
    if not source.exists():
        raise MedlensError("no such file or folder", source)
    ensure_outside(target, source)
    single = source.is_file() and target.suffix.lower() in (".dcm", ".nii", ".gz", ".dicom")
    audit_path = Path(audit) if audit is not None else _default_audit(target)
    ensure_outside(audit_path, source)
    if not single:
        _check_new_export(target, key)
    if mapping is not None:
        ensure_outside(mapping, source)
        if not single and target.resolve() in Path(mapping).resolve().parents:
            # it re-identifies patients: never among the outputs that will be shared
            raise MedlensError("the mapping file must not be written inside the output", mapping)
    deid = Deidentifier(profile, key)
    root, files, dicomdirs = _inputs(source)
    if dicomdirs:
        layout = "keep"  # DICOMDIR records name the files by their paths
    summary = Summary(output=str(target), audit=str(audit_path))
    patients: dict[str, tuple[str, str, int]] = {}
    produced: dict[str, str] = {}
    jobs = [(path, _relative(path, root), layout) for path in files]
    earlier = _earlier_audit(audit_path)
    with atomic_path(audit_path, suffix=".csv") as tmp_audit, tmp_audit.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_AUDIT_COLUMNS)
        writer.writerows(earlier)  # a run adding to an export keeps the earlier runs' rows
        task = _Task(deid, target, single, allow_burned_in)
        results = _results(task, jobs, workers)
        pairs = zip(jobs, results, strict=True)
        for (_, rel, _), result in _with_progress(pairs, len(jobs), progress):
            summary.files += 1
            _record(summary, writer, rel, result, patients, produced)
        for dicomdir in dicomdirs:
            summary.files += 1
            rel = _relative(dicomdir, root)
            result = _guard(lambda d=dicomdir, r=rel: _dicomdir(deid, d, target / r, target), rel)
            _record(summary, writer, rel, result, patients, produced)
    summary.patients = len(patients)
    if mapping is not None:
        _write_mapping(Path(mapping), patients)
    summary.seconds = time.perf_counter() - started
    return summary


def _default_audit(target: Path) -> Path:
    """``OUTPUT.audit.csv`` beside the output folder (named from the resolved folder for ``.``)."""
    named = target if target.name not in ("", ".", "..") else target.resolve()
    if not named.name:
        raise MedlensError("choose an output folder with a name (the audit log goes beside it)",
                           target)  # fmt: skip
    return named.with_name(f"{named.name}.audit.csv")


def _check_new_export(target: Path, key: bytes | None) -> None:
    """Refuse to add to an existing export unless its key is given (pseudonyms would differ)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise MedlensError("output exists and is not a folder", target)
    if key is None and any(target.iterdir()):
        raise MedlensError(
            "output folder already holds files: without the --key of that export the same "
            "patients would get second pseudonyms; choose an empty folder or give its --key",
            target,
        )


def _earlier_audit(path: Path) -> list[list[str]]:
    """The rows of an existing audit log (kept when a run adds to its export)."""
    if not path.exists():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedlensError(f"cannot read the existing audit log ({exc})", path) from None
    if not rows or rows[0] != _AUDIT_COLUMNS:
        raise MedlensError("exists and is not a medlens audit log: choose another --audit", path)
    return rows[1:]


def _inputs(source: Path) -> tuple[Path, list[Path], list[Path]]:
    """(root for relative paths, files to process, DICOMDIR files) under ``source``."""
    if source.is_file():
        if source.name.upper() == "DICOMDIR":
            root = source.parent
            files = [p for p in _walk(root) if p.name.upper() != "DICOMDIR"]
            return root, files, [source]
        return source.parent, [source], []
    files, dicomdirs = [], []
    for path in _walk(source):
        (dicomdirs if path.name.upper() == "DICOMDIR" else files).append(path)
    if not files and not dicomdirs:
        raise MedlensError("folder holds no files", source)
    return source, files, dicomdirs


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


@dataclass(frozen=True)
class _Task:
    """What every file's work needs (picklable, for worker processes)."""

    deid: Deidentifier
    target: Path
    single: bool
    allow_burned_in: bool

    def __call__(self, job: tuple[Path, str, str]) -> dict:
        path, rel, layout = job
        return _guard(lambda: _process(self, path, rel, layout), rel)


def _results(task: _Task, jobs, workers: int) -> Iterator[dict]:
    if workers <= 1 or len(jobs) < 2 * workers:
        yield from map(task, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(task, jobs, chunksize=max(1, min(32, len(jobs) // (8 * workers))))


def _with_progress(items, total: int, enabled: bool):
    from medlens._progress import progress

    yield from progress(items, "anonymizing", enabled=enabled, total=total)


def _guard(work, rel: str) -> dict:
    try:
        return work()
    except MedlensError as exc:
        return {"status": "failed", "reason": exc.problem}
    except Exception as exc:  # a bug of ours, named as one (one line), and the rest go on
        text = " ".join(str(exc).split())[:300]
        return {"status": "failed", "reason": f"unexpected {type(exc).__name__}: {text}"}


def _process(task: _Task, path: Path, rel: str, layout: str) -> dict:
    deid, target, single = task.deid, task.target, task.single
    kind = _kind(path)
    if kind == "nifti":
        from medlens.deid.nifti import anonymize_nifti

        out = target if single else target / rel
        entries = anonymize_nifti(path, out, root=None if single else target)
        counts = Counter(action for _, _, action in entries)
        shown = _shown(out, target, single)
        return {"status": "nifti", "output": shown, "entries": entries, "counts": counts}
    if kind != "dicom":
        return {"status": "not-dicom"}
    from medlens.io._dicom_frames import read_dataset

    try:
        ds = read_dataset(path)
    except ImageReadError as exc:
        return {"status": "failed", "reason": exc.problem}
    if "DirectoryRecordSequence" in ds:
        return {"status": "failed", "reason": "a DICOMDIR not named DICOMDIR: rename it"}
    problem = _incomplete(ds)
    if problem is not None:
        return {"status": "failed", "reason": problem}
    if not task.allow_burned_in:
        reason = burned_in_reason(ds)
        if reason is not None:
            return {"status": "skipped", "reason": reason}
    outcome = instance.deidentify(deid, ds, path)
    if instance.drop_command_set(ds):  # a Command Set has no place in a stored instance
        outcome.log("(0000,xxxx)", "CommandSet", "removed")
    _new_meta(ds, deid)
    outcome.log("(0002,xxxx)", "FileMetaInformation", "replaced")
    if single:
        out = target
    elif layout == "keep":
        out = target / rel
    else:
        out = target / _uid_path(ds, outcome)
    with atomic_path(out, suffix=".dcm", root=None if single else target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return {
        "status": "written",
        "output": _shown(out, target, single),
        "entries": [(e.path, e.keyword, e.action) for e in outcome.entries],
        "counts": outcome.counts,
        "patient": outcome.patient,
    }


def _incomplete(ds) -> str | None:
    """Why ``ds`` cannot be a whole DICOM instance (pydicom reads some damage silently)."""
    meta = getattr(ds, "file_meta", None) or {}
    if not (ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")):
        return "not a DICOM instance (no SOP Class UID in the dataset or file meta)"
    problem = instance.instance_problem(ds)  # no instance UID, bad transfer syntax, no pixels
    if problem is not None:
        return problem
    syntax = instance.written_syntax(ds)  # a UID now (the file's may be a plain string)
    if "PixelData" not in ds or syntax.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return "image without Rows, Columns or Bits Allocated"
    expected = (count * bits + 7) // 8
    found = len(ds.PixelData or b"")
    if found < expected:
        return f"truncated DICOM file (pixel data holds {found} of {expected} bytes)"
    return None


def _shown(out: Path, target: Path, single: bool) -> str:
    return out.name if single else out.relative_to(target).as_posix()


def _kind(path: Path) -> str:
    from medlens.io._detect import looks_like_raw_dicom

    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head[128:132] == b"DICM":
        return "dicom"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if path.suffix.lower() in (".dcm", ".dicom", ".ima") or looks_like_raw_dicom(head):
        return "dicom"
    return "other"


def _uid_path(ds, outcome: Outcome) -> str:
    """``pseudonym/study/series/instance.dcm``, each part a safe name (``--retain uids`` keeps
    the data's own UIDs, which must not steer where files go)."""
    parts = [safe_name(outcome.patient[2] if outcome.patient else "ANONYMOUS")]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        parts.append(safe_uid(str(ds.get(keyword, "") or "unknown")))
    parts.append(f"{safe_uid(str(ds.file_meta.MediaStorageSOPInstanceUID))}.dcm")
    return "/".join(parts)


def _new_meta(ds, deid: Deidentifier) -> None:
    """Replace the File Meta Information (and preamble) with medlens's own (PS3.15 E.1.1)."""
    from pydicom.dataset import FileMetaDataset

    from medlens import __version__

    old = getattr(ds, "file_meta", None)
    syntax = instance.written_syntax(ds)
    old = old if old is not None else {}
    old_instance = old.get("MediaStorageSOPInstanceUID")
    if old_instance and ("uids" not in deid.profile.retain or not instance.valid_uid(old_instance)):
        old_instance = deid.uid(str(old_instance))  # retained only when it is a UID at all
    old_class = old.get("MediaStorageSOPClassUID")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or (
        old_class if instance.valid_uid(old_class) else None)  # fmt: skip
    if not meta.MediaStorageSOPClassUID:
        raise MedlensError("no valid SOP Class UID (in the data set or the file meta)")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or old_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDLENS_{__version__}"[:16]
    ds.file_meta = meta
    ds.preamble = b"\0" * 128


def _record(summary: Summary, writer, rel: str, result: dict, patients, produced) -> None:
    status = result["status"]
    if status in ("written", "nifti"):
        summary.written += 1
        summary.nifti += status == "nifti"
        out = result["output"]
        if out in produced:
            summary.duplicates.append(f"{rel} (same instance as {produced[out]})")
        produced[out] = rel
        writer.writerow([rel, status, out, "", "", ""])
        for tag, keyword, action in result["entries"]:
            writer.writerow([rel, "", "", tag, keyword, action])
        summary.actions.update(result["counts"])
        patient = result.get("patient")
        if patient is not None:
            patients.setdefault(patient[2], (patient[0], patient[1], patient[3]))
        return
    if status == "not-dicom":
        summary.not_dicom.append(rel)
        writer.writerow([rel, status, "", "", "", "not a DICOM or NIfTI file"])
        return
    (summary.skipped if status == "skipped" else summary.failed).append((rel, result["reason"]))
    writer.writerow([rel, status, "", "", "", result["reason"]])


def _write_mapping(path: Path, patients: dict[str, tuple[str, str, int]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["pseudonym", "patient_id", "patient_name", "date_shift_days"])
    for pseudonym in sorted(patients):
        writer.writerow([pseudonym, *patients[pseudonym]])
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)  # it re-identifies patients


def _dicomdir(deid: Deidentifier, path: Path, out: Path, root: Path) -> dict:
    from medlens.deid.dicomdir import anonymize_dicomdir

    entries, counts = anonymize_dicomdir(deid, path, out, root=root)
    return {"status": "written", "output": out.name, "entries": entries, "counts": counts}


def print_summary(summary: Summary) -> None:
    for line in summary.lines():
        print(line, file=sys.stderr if line.startswith(("failed", "skipped")) else sys.stdout)
