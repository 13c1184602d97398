"""DICOM de-identification speed and safety: medlens against dicognito, in one process.

Run from the repository root in the benchmark environment (see benchmarks/README.md)::

    .venv-bench/bin/python benchmarks/deid.py            # full run: ~3,000 files, ~4.5 minutes
    .venv-bench/bin/python benchmarks/deid.py --quick    # smoke run: ~200 files, ~40 s

Input: copies of the two real DICOM series of the shared data folder (MR 256x256 uncompressed,
CT 512x512 JPEG 2000), written into a temporary folder (never the data folder or the repository).
Every copy of a series gets its own Study, Series and Frame of Reference UIDs and every file its
own SOP Instance UID, and every file carries the markers of :func:`medlens.deid.markers.
plant_markers` (every plantable attribute of Table E.1-1, nested sequences, private attributes,
an overlay's comments). Pixel data is never decoded.

The folder is cut into batches of equal composition. Each round de-identifies one batch with
each tool (medlens in this process, medlens with 2 worker processes, dicognito the way its command
line does it), starting with a different tool each round, into fresh output folders, until the
time budget is spent; medlens then de-identifies the batches left (untimed), so that its leak check
covers the whole folder. Figures are files per second from the median batch time.

Then every output file is searched for every marker and for the source files' own identifying
values, its pixel data is compared byte for byte with the input's, and one file of each series is
compared attribute by attribute between the two tools, with Table E.1-1's action for each
attribute. The last line of stdout is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Timing,
    emit_json,
    environment,
    fmt_rate,
    fmt_ratio,
    log,
    print_table,
    require_data,
    round_robin,
)

BENCHMARK = "deid"
PACKAGES = ("medlens", "pydicom", "dicognito", "pylibjpeg", "pylibjpeg-openjpeg")
SERIES = {  # kind -> (folder under the data root, file pattern)
    "mr": ("dicom/mr_t1_brain", "*.dcm"),
    "ct": ("totalsegmentator/ct_dicom_series/dicom", "*"),
}
KEY = bytes(range(32))  # medlens's secret key: fixed, so that every run gives the same outputs
TOOLS = {
    "medlens": "medlens anonymize(workers=1)",
    "medlens-2w": "medlens anonymize(workers=2)",
    "dicognito": "dicognito Anonymizer (CLI pipeline)",
}
PIXEL_TAG = 0x7FE00010
# Same-width placeholders, so that each copy's UIDs are written by substituting bytes in a
# template saved once per source slice: 1,000,000+ in the template, 2,000,000+ in the copies.
PLACEHOLDER, FIRST_NEW = 1_000_000, 2_000_000
COPY_UIDS = (  # keyword, last UID component, where (as plant_markers names it)
    ("StudyInstanceUID", 1, "(0020,000D) StudyInstanceUID"),
    ("SeriesInstanceUID", 2, "(0020,000E) SeriesInstanceUID"),
    ("FrameOfReferenceUID", 3, "(0020,0052) FrameOfReferenceUID"),
)
WARMUP_SLICES = 4  # of each series
MAX_ROWS = 80  # longer difference tables are grouped
ALLOWED = {  # Table E.1-1 action -> treatments that conform to it (Table E.1-1a)
    "X": {"removed"},
    "Z": {"emptied", "replaced"},  # zero length, or a dummy value consistent with the VR
    "D": {"replaced"},
    "U": {"replaced"},
    "K": {"kept"},
    "X/Z": {"removed", "emptied", "replaced"},
    "X/D": {"removed", "replaced"},
    "Z/D": {"emptied", "replaced"},
    "X/Z/D": {"removed", "emptied", "replaced"},
    "X/Z/U*": {"removed", "emptied", "replaced"},
}


# --------------------------------------------------------------------------------------- inputs
@dataclass
class Template:
    """One source slice with its markers planted, saved once; copies substitute its UIDs."""

    kind: str
    index: int  # over all source slices
    data: bytes
    pixel: bytes  # raw value of Pixel Data, as stored (encapsulated JPEG 2000 stays so)
    placeholders: dict[str, str]  # "sop", "StudyInstanceUID", ... -> value in ``data``


@dataclass
class Inputs:
    folder: Path
    batches: list[Path]
    batch_files: int
    files: int
    copies: Counter  # kind -> copies of that series, in all batches
    units_per_batch: int  # copies of each series in one batch
    templates: list[Template]
    markers: dict[str, str]  # marker -> where it was planted
    originals: dict[str, str]  # identifying value of a source file -> "kind Keyword"
    warmup: Path
    samples: dict[str, Path]  # kind -> one planted input file (behaviour comparison)


def source_files(root: Path) -> dict[str, list[Path]]:
    found = {}
    for kind, (relative, pattern) in SERIES.items():
        found[kind] = sorted(p for p in (root / relative).glob(pattern) if p.is_file())
    return found


def identifying_values(ds, kind: str) -> dict[str, str]:
    """The source file's own values that a de-identification must not let through.

    Every non-private attribute (file meta, top level, inside sequences) that Table E.1-1
    changes, or whose VR is PN, AE or a non-standard UI, with a value of at least 5 characters
    (8 for numbers and UIDs); times of day (TM) are left out as too short and common to search
    for.
    """
    from pydicom.uid import UID_dictionary

    from medlens.deid.profile import Profile

    rules = Profile().rules()
    found: dict[str, str] = {}

    def visit(dataset) -> None:
        for elem in dataset:
            tag = int(elem.tag)
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            if (tag >> 16) & 1 or elem.VR == "TM" or tag == PIXEL_TAG:
                continue
            action = rules.action(tag)
            keyword = elem.keyword or ""
            if elem.VR == "UI":
                if keyword.endswith("ClassUID") or keyword in (
                    "TransferSyntaxUID",
                    "ImplementationClassUID",
                ):
                    continue
            elif elem.VR not in ("PN", "AE") and action in (None, "K"):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                text = str(value if value is not None else "").strip("\0 ")
                # short numbers turn up by chance in any replacement UID
                shortest = 8 if re.fullmatch(r"[\d.]+", text) else 5
                if len(text) >= shortest and text not in UID_dictionary:
                    found.setdefault(text, f"{kind} {keyword or elem.name}")

    visit(ds.file_meta)
    visit(ds)
    return found


def make_template(path: Path, kind: str, index: int, markers: dict[str, str]) -> Template:
    import pydicom

    from medlens.deid.markers import UID_ROOT, plant_markers

    ds = pydicom.dcmread(path)
    source_pixel = ds.get_item(PIXEL_TAG).value
    planted = plant_markers(ds, instance=PLACEHOLDER + index)
    placeholders = {"sop": f"{UID_ROOT}9.{PLACEHOLDER + index}"}
    del planted[placeholders["sop"]]  # each copy plants its own
    for keyword, number, _ in COPY_UIDS:
        planted.pop(str(ds.get(keyword, "")), None)  # replaced by each copy's own
        placeholders[keyword] = f"{UID_ROOT}7.{PLACEHOLDER}.{number}"
        setattr(ds, keyword, placeholders[keyword])
    for value, where in planted.items():
        markers.setdefault(value, where)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for name, value in placeholders.items():
        expected = 2 if name == "sop" else 1  # the SOP Instance UID is in the file meta too
        found = data.count(value.encode())
        if found != expected:
            raise RuntimeError(f"{path.name}: {name} placeholder found {found} times")
    written = pydicom.dcmread(io.BytesIO(data)).get_item(PIXEL_TAG)
    if written.value != source_pixel:
        raise RuntimeError(f"{path.name}: pixel data changed when writing the template")
    return Template(kind, index, data, source_pixel, placeholders)


def copy_bytes(template: Template, copy: int, file_no: int) -> tuple[bytes, dict[str, str]]:
    """The template with one copy's UIDs: plant_markers(ds, instance=FIRST_NEW + file_no)."""
    from medlens.deid.markers import UID_ROOT

    data = template.data
    new = {"sop": (f"{UID_ROOT}9.{FIRST_NEW + file_no}", "(0008,0018) SOPInstanceUID")}
    for keyword, number, where in COPY_UIDS:
        new[keyword] = (f"{UID_ROOT}7.{FIRST_NEW + copy}.{number}", where)
    for name, (value, _) in new.items():
        data = data.replace(template.placeholders[name].encode(), value.encode())
    return data, dict(new.values())


def generate(root: Path, tmp: Path, files: int, batch: int) -> Inputs:
    """Templates from the real series, then whole copies of each series, in batches."""
    import pydicom

    sources = source_files(root)
    markers: dict[str, str] = {}
    originals: dict[str, str] = {}
    templates: dict[str, list[Template]] = {kind: [] for kind in sources}
    index = 0
    for kind, paths in sources.items():
        for path in paths:
            originals.update(identifying_values(pydicom.dcmread(path), kind))
            templates[kind].append(make_template(path, kind, index, markers))
            index += 1
    unit = sum(len(paths) for paths in sources.values())  # one copy of each series
    units_per_batch = max(1, round(batch / unit))
    n_batches = max(1, round(files / (unit * units_per_batch)))
    folder = tmp / "input"
    copies: Counter = Counter()
    counter = {"copy": 0, "file": 0}

    def write_unit(target: Path, slices: int | None = None) -> None:
        for kind, series in templates.items():
            copy = counter["copy"]
            counter["copy"] += 1
            copies[kind] += 1
            out = target / f"copy{copy:05d}_{kind}"
            out.mkdir(parents=True)
            for slice_no, template in enumerate(series[:slices]):
                data, planted = copy_bytes(template, copy, counter["file"])
                counter["file"] += 1
                markers.update(planted)
                (out / f"{slice_no:04d}.dcm").write_bytes(data)

    warmup = tmp / "warmup"  # for the untimed first call of each tool, and the comparison
    write_unit(warmup, WARMUP_SLICES)
    copies.clear()
    batches = []
    for number in range(n_batches):
        target = folder / f"batch{number:03d}"
        for _ in range(units_per_batch):
            write_unit(target)
        batches.append(target)
    samples = {kind: next(warmup.glob(f"copy*_{kind}/0000.dcm")) for kind in templates}
    return Inputs(
        folder=folder,
        batches=batches,
        batch_files=unit * units_per_batch,
        files=unit * units_per_batch * n_batches,
        copies=copies,
        units_per_batch=units_per_batch,
        templates=[t for series in templates.values() for t in series],
        markers=markers,
        originals=originals,
        warmup=warmup,
        samples=samples,
    )


# ---------------------------------------------------------------------------------------- tools
def run_medlens(folder: Path, out: Path, workers: int):
    from medlens.deid import anonymize

    return anonymize(folder, out, key=KEY, workers=workers, progress=False)


def walk(folder: Path) -> Iterator[str]:
    """Files under ``folder`` as dicognito's command line lists them (os.walk)."""
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            yield os.path.join(dirpath, filename)


def run_dicognito(folder: Path, out: Path) -> int:
    """What ``dicognito -o OUT FOLDER`` does, without its printed summary.

    Its command line reads each file with ``pydicom.dcmread(force=False)``, runs the burned-in
    annotation guard (default: warn if Burned In Annotation is YES), anonymizes the dataset with
    one :class:`Anonymizer` for the whole run, and saves it as ``OUT/<SOP Instance UID>.dcm``
    with ``save_as(enforce_file_format=True)``: the same filters are used here.
    """
    import pydicom
    from dicognito.anonymizer import Anonymizer
    from dicognito.filters import BurnedInAnnotationGuard, SaveToSOPInstanceUID
    from dicognito.pipeline import Pipeline

    anonymizer = Anonymizer()
    pipeline = Pipeline()
    pipeline.add(BurnedInAnnotationGuard("if-yes", "warn"))
    pipeline.add(SaveToSOPInstanceUID(str(out)))
    pipeline.before_any()
    done = 0
    for filename in list(walk(folder)):
        try:
            with pydicom.dcmread(filename, force=False) as dataset:
                pipeline.before_each(dataset)
                anonymizer.anonymize(dataset)
                pipeline.after_each(dataset)
                done += 1
        except pydicom.errors.InvalidDicomError:
            continue
    pipeline.after_all()
    return done


def tool_runner(tool: str) -> Callable[[Path, Path], Any]:
    if tool == "medlens":
        return lambda folder, out: run_medlens(folder, out, 1)
    if tool == "medlens-2w":
        return lambda folder, out: run_medlens(folder, out, 2)
    return run_dicognito


# ------------------------------------------------------------------------------------- scanning
class Needles:
    """Exact search for many strings (markers, original values) in DICOM files.

    Finds what :func:`medlens.deid.markers.find_leaks` finds (a needle anywhere in the raw
    bytes) at a fraction of its cost: every needle is indexed by its first 3 bytes, and the
    Pixel Data value is skipped where it is byte-identical to the input's (which holds no
    needle; checked). The skip also checks that the pixel data came through unchanged.
    """

    def __init__(self, needles: Iterable[str], templates: list[Template]) -> None:
        self.needles = {n.encode("latin-1") for n in needles}
        lengths: dict[bytes, set[int]] = defaultdict(set)
        for needle in self.needles:
            lengths[needle[:3]].add(len(needle))
        self.prefixes = [(prefix, sorted(sizes)) for prefix, sizes in lengths.items()]
        self.templates = templates
        for template in templates:
            if self._find(template.pixel):
                raise RuntimeError("a needle occurs inside the source pixel data")

    def _find(self, data: bytes) -> set[bytes]:
        found = set()
        needles = self.needles
        for prefix, sizes in self.prefixes:
            at = data.find(prefix)
            while at != -1:
                for size in sizes:
                    piece = data[at : at + size]
                    if piece in needles:
                        found.add(piece)
                at = data.find(prefix, at + 1)
        return found

    def pixel_source(self, data: bytes) -> tuple[int | None, int, int]:
        """(template index, start, end) of the Pixel Data value if it equals a source's."""
        for vr in (b"OW", b"OB"):
            start = data.find(b"\xe0\x7f\x10\x00" + vr + b"\0\0")
            if start != -1:
                break
        else:
            return None, 0, 0
        value = start + 12
        for template in self.templates:
            pixel = template.pixel
            end = value + len(pixel)
            if data[end - 64 : end] == pixel[-64:] and data[value:end] == pixel:
                return template.index, value, end
        return None, 0, 0

    def scan(self, path: Path) -> tuple[set[bytes], int | None]:
        """Needles found in the file, and the source slice whose pixel data it holds."""
        data = path.read_bytes()
        source, start, end = self.pixel_source(data)
        if source is None:  # not the input's pixel data: search everything
            return self._find(data), None
        return self._find(data[:start]) | self._find(data[end:]), source


def output_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@dataclass
class Scan:
    batches: int = 0  # batches of the folder whose outputs are scanned
    files: int = 0
    found: Counter = field(default_factory=Counter)  # needle -> files holding it
    files_with: Counter = field(default_factory=Counter)  # "markers"/"originals" -> files
    pixel_sources: Counter = field(default_factory=Counter)  # source slice -> files
    pixel_mismatch: list[str] = field(default_factory=list)
    examples: dict[bytes, str] = field(default_factory=dict)  # needle -> one file holding it


def scan_files(needles: Needles, files: Iterable[Path], markers: set[bytes], scan: Scan) -> None:
    for path in files:
        found, source = needles.scan(path)
        scan.files += 1
        scan.found.update(found)
        for needle in found:
            scan.examples.setdefault(needle, str(path))
        if found & markers:
            scan.files_with["markers"] += 1
        if found - markers:
            scan.files_with["originals"] += 1
        if path.suffix == ".dcm":
            if source is None:
                scan.pixel_mismatch.append(str(path))
            else:
                scan.pixel_sources[source] += 1


# ------------------------------------------------------------------------ behaviour comparison
@dataclass
class Attr:
    keyword: str
    vr: str
    value: Any
    empty: bool
    parent: str | None  # keyword of the enclosing sequence
    items: int = -1  # sequences: number of items


def flatten(ds, prefix: str = "", parent: str | None = None, out=None) -> dict[str, Attr]:
    """Every attribute of ``ds`` (and its file meta) by tag path, e.g. (0008,1140)[0](0008,1155)."""
    out = {} if out is None else out
    if not prefix and getattr(ds, "file_meta", None) is not None:
        flatten(ds.file_meta, "", None, out)
    for elem in ds:
        tag = int(elem.tag)
        path = f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        keyword = elem.keyword or (
            "private creator" if (tag >> 16) & 1 and (tag & 0xFFFF) < 0x100 else "private"
        )
        if elem.VR == "SQ":
            items = list(elem.value or [])
            out[path] = Attr(keyword, "SQ", len(items), not items, parent, len(items))
            for number, item in enumerate(items):
                flatten(item, f"{path}[{number}]", keyword, out)
            continue
        value = elem.value
        if isinstance(value, bytes | bytearray):
            value = bytes(value)
        elif elem.VM > 1:
            value = tuple(str(v) for v in value)
        else:
            value = str(value) if value is not None else ""
        out[path] = Attr(keyword, elem.VR, value, elem.is_empty, parent)
    return out


def classify(before: Attr | None, after: Attr | None) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    if after.empty and not before.empty:
        return "emptied"
    if before.vr == "SQ":
        return "kept" if after.items == before.items else "replaced"
    return "kept" if after.value == before.value else "replaced"


def table_action(path: str, attr: Attr, iod: str | None) -> tuple[str, str]:
    """Table E.1-1's Basic Profile action for the attribute, and its resolution here."""
    from medlens.deid.profile import Profile, resolve_compound

    tag = int(path[-10:-6] + path[-5:-1], 16)
    rules = Profile().rules()
    action = rules.action(tag)
    if action is None and (tag >> 16) & 1:
        action = rules.private
    if action is None:
        return "-", "-"
    resolved = action
    if "/" in action:
        resolved = resolve_compound(action, iod, attr.keyword, attr.parent)
    return action, resolved


@dataclass
class Row:
    series: str
    path: str
    keyword: str
    medlens: str
    dicognito: str
    action: str
    resolved: str


@dataclass
class Comparison:
    """Both tools' treatment of every attribute of one planted file."""

    rows: list[Row]  # where the treatments differ (not inside a sequence one tool dropped)
    conformance: dict[str, Counter]  # tool -> conforming / not conforming, listed attributes
    nonconforming: dict[str, list[Row]]  # tool -> the listed attributes it does not conform on
    outputs: dict[str, dict[str, Attr]]  # tool -> its output, flattened
    files: dict[str, Path]  # tool -> its output file


def compare_one(kind: str, sample: Path, tmp: Path) -> Comparison:
    """De-identify one planted file with both tools and compare them attribute by attribute."""
    import pydicom
    from dicognito.anonymizer import Anonymizer

    from medlens.deid import anonymize
    from medlens.deid.profile import iod_of

    folder = tmp / "compare"
    folder.mkdir(exist_ok=True)
    files = {
        "medlens": folder / f"medlens_{kind}.dcm",
        "dicognito": folder / f"dicognito_{kind}.dcm",
    }
    summary = anonymize(sample, files["medlens"], key=KEY)
    if summary.written != 1:
        raise RuntimeError(f"medlens did not write {sample}: {summary.lines()}")
    with pydicom.dcmread(sample) as ds:
        Anonymizer().anonymize(ds)
        ds.save_as(files["dicognito"], enforce_file_format=True)
    source = pydicom.dcmread(sample)
    iod = iod_of(source.get("SOPClassUID") or source.file_meta.get("MediaStorageSOPClassUID"))
    before = flatten(source)
    outputs = {tool: flatten(pydicom.dcmread(path)) for tool, path in files.items()}
    paths = sorted(set(before).union(*outputs.values()))
    classes = {
        tool: {p: classify(before.get(p), out.get(p)) for p in paths}
        for tool, out in outputs.items()
    }
    result = Comparison([], {t: Counter() for t in files}, {t: [] for t in files}, outputs, files)
    for path in paths:
        attr = before.get(path) or outputs["medlens"].get(path) or outputs["dicognito"][path]
        action, resolved = table_action(path, attr, iod) if path in before else ("-", "-")
        treatment = {tool: found[path] for tool, found in classes.items()}
        row = Row(
            kind, path, attr.keyword, treatment["medlens"], treatment["dicognito"], action, resolved
        )
        judged = [tool for tool in files if within_kept(path, classes[tool])]
        if action in ALLOWED:
            for tool in judged:
                name = treatment[tool]
                # a sequence kept with its items cleaned conforms to D and U* (Table E.1-1a)
                ok = name in ALLOWED[action] or (
                    attr.vr == "SQ" and name == "kept" and ("U" in action or "D" in action)
                )
                result.conformance[tool]["conforming" if ok else "not conforming"] += 1
                if not ok:
                    result.nonconforming[tool].append(row)
        if treatment["medlens"] != treatment["dicognito"] and len(judged) == len(files):
            result.rows.append(row)
    return result


def within_kept(path: str, classes: dict[str, str]) -> bool:
    """Whether every sequence enclosing ``path`` was kept (its items then are judged)."""
    return all(
        classes.get(path[: match.start()]) == "kept" for match in re.finditer(r"\[\d+\]", path)
    )


def where_path(where: str) -> str | None:
    """The tag path of a marker's ``where`` (as plant_markers writes it)."""
    from pydicom.datadict import tag_for_keyword

    parts = []
    for segment in re.split(r"(\[\d+\])", where):
        if not segment:
            continue
        if segment.startswith("["):
            parts.append(segment)
            continue
        found = re.match(r"\s*\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)", segment)
        if found:
            parts.append(f"({found[1].upper()},{found[2].upper()})")
            continue
        tag = tag_for_keyword(segment.strip())
        if tag is None:
            return None
        parts.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
    return "".join(parts)


def in_place(marker: str, where: str, samples: list[dict[str, Attr]]) -> bool:
    """Whether a leaked marker is still in the attribute it was planted in (vs. a date shift
    that happened to land on another date marker's value)."""
    path = where_path(where)
    if path is None:
        return True
    for flat in samples:
        attr = flat.get(path)
        if attr is not None and marker in str(attr.value):
            return True
    return False


def leak_kind(where: str) -> str:
    from pydicom.datadict import dictionary_VR

    leaf = re.findall(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", where)
    if where.startswith("(0002,"):
        place = "file meta"
    elif where.startswith(("(0011,", "(6000,")):
        place = "private" if where.startswith("(0011,") else "overlay"
    elif "[" in where:
        place = "in sequences"
    else:
        place = "top level"
    vr = "?"
    if leaf:
        tag = int(leaf[-1][0] + leaf[-1][1], 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "LO" if place == "private" else "?"
    return f"{place} {vr}"


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: about 200 files in batches of 52"
    )
    parser.add_argument("--files", type=int, default=None, help="files to generate (3000)")
    parser.add_argument(
        "--batch", type=int, default=None, help="files per timed batch (default 260; 52 quick)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed rounds (default 150; 60 quick); at least 3 rounds, at most one "
        "per batch",
    )
    parser.add_argument(
        "--all-differences",
        action="store_true",
        help="print every differing attribute, not only the grouped summary",
    )
    args = parser.parse_args(argv)
    if args.files is None:
        args.files = 200 if args.quick else 3000
    if args.batch is None:
        args.batch = 52 if args.quick else 260
    if args.budget is None:
        args.budget = 60.0 if args.quick else 150.0
    if args.files < 1 or args.batch < 1:
        parser.error("--files and --batch must be at least 1")
    return args


def time_tools(
    inputs: Inputs, out_root: Path, budget: float
) -> tuple[dict[str, Timing], int, dict[str, list]]:
    """Round-robin over the batches: round r de-identifies batch r with every tool.

    Rounds go on until about ``budget`` seconds are spent (at least 3, at most every batch);
    returns the timings, the number of rounds and each call's result.
    """
    results: dict[str, list] = {tool: [] for tool in TOOLS}
    cases = {}
    for tool in TOOLS:
        runner = tool_runner(tool)
        batches = iter(inputs.batches)

        def case(tool=tool, runner=runner, batches=batches) -> None:
            batch = next(batches)
            results[tool].append(runner(batch, out_root / tool / batch.name))

        cases[tool] = case
    for tool in TOOLS:  # warm-up (imports, lazy tables), untimed, on the small warm-up folder
        tool_runner(tool)(inputs.warmup, out_root / "warmup" / tool)
    shutil.rmtree(out_root / "warmup")
    n = len(inputs.batches)
    timings, rounds = round_robin(
        cases, budget_s=budget, min_repeats=min(3, n), max_repeats=n, warmed_up=True
    )
    return timings, rounds, results


def time_plain(root: Path, tmp: Path, copies: int, repeats: int) -> dict[str, Any]:
    """Both tools on unplanted copies of the real series (real headers, about 150 attributes).

    The planted files carry about 820 extra attributes, which weighs on per-attribute work; this
    is the speed on files as a scanner writes them. Each copy of a series gets new Study, Series
    and SOP Instance UIDs (so that no output overwrites another); the folder is de-identified
    ``repeats`` times by each tool, interleaved.
    """
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp / "plain"
    for copy in range(copies):
        for kind, paths in source_files(root).items():
            study, series = generate_uid(), generate_uid()
            target = folder / f"copy{copy:03d}_{kind}"
            target.mkdir(parents=True)
            for number, path in enumerate(paths):
                ds = pydicom.dcmread(path)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(target / f"{number:04d}.dcm", enforce_file_format=True)
    files = len(output_files(folder))
    out = tmp / "plain-out"
    runs = {tool: 0 for tool in ("medlens", "dicognito")}

    def case(tool: str) -> Callable[[], None]:
        def call() -> None:
            runs[tool] += 1
            tool_runner(tool)(folder, out / f"{tool}{runs[tool]}")

        return call

    timings, rounds = round_robin(
        {tool: case(tool) for tool in runs}, repeats=repeats, warmed_up=False
    )
    shutil.rmtree(out)
    shutil.rmtree(folder)
    rate = {tool: files / t.median for tool, t in timings.items()}
    print_table(
        f"On plain copies of the real series ({files} files, no markers; {rounds} interleaved "
        "rounds of the whole folder; files/s from the median time)",
        ["tool", "files/s", "min s", "median s", "/dicognito"],
        [
            [
                TOOLS[tool],
                fmt_rate(rate[tool]),
                f"{t.min:.2f}",
                f"{t.median:.2f}",
                fmt_ratio(rate[tool] / rate["dicognito"]),
            ]
            for tool, t in timings.items()
        ],
    )
    return {
        "plain_files": files,
        "plain_files_per_s": rate,
        "plain_ratio_vs_dicognito": rate["medlens"] / rate["dicognito"],
    }


def check_counts(inputs: Inputs, results: dict[str, list]) -> list[str]:
    problems = []
    for tool, runs in results.items():
        for batch, result in zip(inputs.batches, runs, strict=False):
            if tool.startswith("medlens"):
                if result.written != inputs.batch_files or result.failed or result.skipped:
                    problems.append(f"{tool} {batch.name}: {'; '.join(result.lines()[:4])}")
            elif result != inputs.batch_files:
                problems.append(f"{tool} {batch.name}: {result} of {inputs.batch_files} files")
    return problems


def check_inputs(inputs: Inputs, needles: Needles, marker_bytes: set[bytes]) -> set[str]:
    """Every marker is in the inputs and every file holds its source's pixel data; returns the
    original identifying values still in the inputs (where planting did not overwrite them)."""
    scan = Scan()
    for folder in (inputs.warmup, *inputs.batches):
        scan_files(needles, output_files(folder), marker_bytes, scan)
    missing = marker_bytes - set(scan.found)
    if missing or scan.pixel_mismatch:
        raise RuntimeError(
            f"input check failed: {len(missing)} markers missing, "
            f"{len(scan.pixel_mismatch)} files without their source pixel data"
        )
    return {value for value in inputs.originals if value.encode("latin-1") in scan.found}


def cross_check(inputs: Inputs, needles: Needles, marker_bytes, out_root: Path) -> dict:
    """find_leaks itself on a few outputs per tool: does it find what the fast search finds?"""
    from medlens.deid.markers import find_leaks

    agrees = {}
    for tool in TOOLS:
        files = [p for p in output_files(out_root / tool) if p.suffix == ".dcm"]
        sample = files[:: max(1, len(files) // 3)][:3]
        fast = Scan()
        scan_files(needles, sample, marker_bytes, fast)
        ours = {m.decode() for m in fast.found if m in marker_bytes}
        theirs = set(find_leaks(inputs.markers, sample))
        agrees[tool] = ours == theirs
        if ours != theirs:
            print(f"VERIFY {tool}: find_leaks found {len(theirs)} markers, the search {len(ours)}")
    return agrees


def locate(value: str, flat: dict[str, Attr]) -> list[str]:
    """Tag paths and keywords of the attributes whose value contains ``value``."""
    raw = value.encode("latin-1")
    found = []
    for path, attr in flat.items():
        if attr.vr == "SQ" or path == "(7FE0,0010)":
            continue
        text = attr.value if isinstance(attr.value, bytes) else str(attr.value)
        if (raw if isinstance(text, bytes) else value) in text:
            found.append(f"{path} {attr.keyword}")
    return found


def report_speed(inputs: Inputs, timings: dict[str, Timing], rounds: int) -> dict[str, Any]:
    files_per_s = {tool: inputs.batch_files / t.median for tool, t in timings.items()}
    ratio = files_per_s["medlens"] / files_per_s["dicognito"]
    ratio_2w = files_per_s["medlens-2w"] / files_per_s["dicognito"]
    paired = statistics.median(
        d / m for m, d in zip(timings["medlens"].times, timings["dicognito"].times, strict=True)
    )
    print_table(
        f"De-identification speed: a folder of {inputs.files} files ({inputs.copies['mr']} copies "
        f"of the MR series, {inputs.copies['ct']} of the CT) in batches of {inputs.batch_files}; "
        f"{rounds} interleaved rounds of one batch per tool; files/s from the median batch time",
        ["tool", "files/s", "min s", "median s", "max s", "/dicognito"],
        [
            [
                TOOLS[tool],
                fmt_rate(files_per_s[tool]),
                f"{t.min:.2f}",
                f"{t.median:.2f}",
                f"{max(t.times):.2f}",
                fmt_ratio(files_per_s[tool] / files_per_s["dicognito"]),
            ]
            for tool, t in timings.items()
        ],
    )
    print(
        f"medlens (1 process) / dicognito: {ratio:.2f}x from median batch times, "
        f"{paired:.2f}x median of the per-batch ratios; medlens with 2 worker processes: "
        f"{ratio_2w:.2f}x"
    )
    return {
        "files_per_s": files_per_s,
        "ratio_vs_dicognito": ratio,
        "ratio_vs_dicognito_paired_median": paired,
        "ratio_vs_dicognito_min_time": timings["dicognito"].min / timings["medlens"].min,
        "ratio_2_workers_vs_dicognito": ratio_2w,
        "timings": {tool: t.as_dict() for tool, t in timings.items()},
    }


def examples_of(names: list[str], width: int = 60) -> str:
    """The first distinct names that fit in ``width`` characters, then ', ...' if any are left."""
    distinct = list(dict.fromkeys(names))
    shown: list[str] = []
    for name in distinct:
        if len(", ".join([*shown, name])) > width - 5:
            break
        shown.append(name)
    text = ", ".join(shown or [distinct[0][: width - 5]])
    return text + (", ..." if len(shown) < len(distinct) else "")


def padded(texts: list[str]) -> list[str]:
    """Left-align a last column that print_table would right-align."""
    width = max((len(t) for t in texts), default=0)
    return [t.ljust(width) for t in texts]


def report_leaks(
    inputs: Inputs,
    scans: dict[str, Scan],
    marker_bytes: set[bytes],
    originals_in_input: set[str],
    compared: list[Comparison],
) -> dict[str, Any]:
    leaked: dict[str, dict[str, str]] = {}
    split: dict[str, dict[str, int]] = {}
    originals: dict[str, list[str]] = {}
    rows = []
    for tool, scan in scans.items():
        flats = [c.outputs["dicognito" if tool == "dicognito" else "medlens"] for c in compared]
        leaked[tool] = {
            m.decode(): inputs.markers[m.decode()] for m in scan.found if m in marker_bytes
        }
        place = Counter()
        for marker, where in leaked[tool].items():
            if in_place(marker, where, flats):
                place["in place"] += 1
            elif re.fullmatch(r"19\d{6}(120000)?", marker):
                place["date shifted onto"] += 1
            else:
                place["elsewhere"] += 1
        split[tool] = {
            "in_place": place["in place"],
            "date_shift_collisions": place["date shifted onto"],
            "elsewhere": place["elsewhere"],
        }
        originals[tool] = sorted(
            inputs.originals[m.decode("latin-1")] for m in scan.found if m not in marker_bytes
        )
        pixels = not scan.pixel_mismatch and pixel_counts_ok(inputs, scan)
        rows.append(
            [
                TOOLS[tool],
                str(scan.files),
                str(len(leaked[tool])),
                str(place["in place"]),
                str(scan.files_with["markers"]),
                str(len(originals[tool])),
                "yes" if pixels else "NO",
            ]
        )
    print_table(
        f"Leak check of every output file: {len(inputs.markers)} distinct markers and "
        f"{len(inputs.originals)} identifying values of the source files "
        f"({len(originals_in_input)} of them not overwritten by the markers)",
        [
            "tool",
            "files",
            "markers found",
            "in place",
            "files w/ markers",
            "originals",
            "pixels identical",
        ],
        rows,
    )
    print(
        "files: output files, with medlens's audit logs; markers found: distinct markers "
        "anywhere in them (what find_leaks reports); in place: still in the attribute they were "
        "planted in (the others are date markers onto which a date shift moved another date "
        "marker: the markers are days close together, and dicognito shifts every date by one "
        "random 62-730 days). pixels identical: every file's Pixel Data value byte for byte the "
        "input's (JPEG 2000 kept encapsulated)."
    )
    for tool, found in leaked.items():
        if tool.startswith("medlens"):
            for marker, where in sorted(found.items(), key=lambda kv: kv[1])[:20]:
                example = scans[tool].examples[marker.encode()]
                print(f"LEAK {tool}: {where} = {marker!r}, e.g. in {example}")
    for value, label in sorted(inputs.originals.items(), key=lambda kv: kv[1]):
        holders = [tool for tool in TOOLS if label in originals[tool]]
        if not holders:
            continue
        where = []
        for comparison in compared:
            for tool, flat in comparison.outputs.items():
                where += [f"{tool}: {p}" for p in locate(value, flat)]
        print(
            f"ORIGINAL {label} ({value!r}) found in the output of {', '.join(holders)}"
            + (f"; in the compared files at {'; '.join(dict.fromkeys(where))}" if where else "")
        )
    kinds: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    flats = [c.outputs["dicognito"] for c in compared]
    for marker, where in sorted(leaked["dicognito"].items(), key=lambda kv: kv[1]):
        if in_place(marker, where, flats):
            kinds[leak_kind(where)] += 1
            examples[leak_kind(where)].append(re.sub(r".*\)\s*", "", where))
    if kinds:
        names = padded([examples_of(examples[kind], 72) for kind, _ in kinds.most_common()])
        print_table(
            "dicognito: markers left in place, by where they were planted and their VR",
            ["where, VR", "markers", "examples"],
            [
                [kind, str(n), name]
                for (kind, n), name in zip(kinds.most_common(), names, strict=True)
            ],
        )
    return {
        "markers": len(inputs.markers),
        "leaked_markers": {tool: split[tool]["in_place"] for tool in TOOLS},
        "leaked_markers_found": {tool: len(found) for tool, found in leaked.items()},
        "leak_split": split,
        "files_with_leaked_markers": {t: s.files_with["markers"] for t, s in scans.items()},
        "dicognito_leaked_kinds": dict(kinds.most_common()),
        "medlens_leaks": {m: w for t in ("medlens", "medlens-2w") for m, w in leaked[t].items()},
        "original_values": len(inputs.originals),
        "original_values_not_overwritten": len(originals_in_input),
        "leaked_originals": originals,
        "pixel_identical": {
            tool: not s.pixel_mismatch and pixel_counts_ok(inputs, s) for tool, s in scans.items()
        },
        "pixel_mismatches": {tool: len(s.pixel_mismatch) for tool, s in scans.items()},
    }


def report_differences(compared: list[Comparison], show_all: bool) -> dict[str, Any]:
    rows = [row for comparison in compared for row in comparison.rows]
    print_differences(rows, show_all)
    conformance = {tool: Counter() for tool in compared[0].conformance}
    for comparison in compared:
        for tool, counts in comparison.conformance.items():
            conformance[tool].update(counts)
    print(
        "Against Table E.1-1 (Basic Profile), over the listed attributes of both files outside "
        "sequences the tool dropped (a compound action accepts any of its parts; Z accepts a "
        "dummy value): "
        + "; ".join(
            f"{tool} conforms on {c['conforming']} of {c['conforming'] + c['not conforming']}"
            for tool, c in conformance.items()
        )
    )
    ours = [row for comparison in compared for row in comparison.nonconforming["medlens"]]
    if ours:
        print_table(
            "medlens treatments that do not match Table E.1-1's action",
            ["series", "tag path", "keyword", "medlens", "E.1-1"],
            [[r.series, r.path, r.keyword, r.medlens, f"{r.action}:{r.resolved}"] for r in ours],
        )
    theirs = Counter(
        (row.dicognito, row.action)
        for comparison in compared
        for row in comparison.nonconforming["dicognito"]
    )
    return {
        "attributes": len(rows),
        "by_series": dict(Counter(r.series for r in rows)),
        "by_treatment": {
            f"medlens {m} / dicognito {d}": n
            for (m, d), n in Counter((r.medlens, r.dicognito) for r in rows).most_common()
        },
        "by_treatment_and_action": {
            f"{m}/{d}/{a}": n
            for (m, d, a), n in Counter(
                (r.medlens, r.dicognito, r.action) for r in rows
            ).most_common()
        },
        "conformance": {tool: dict(c) for tool, c in conformance.items()},
        "medlens_nonconforming": [f"{r.series} {r.path} {r.keyword} {r.medlens}" for r in ours],
        "dicognito_nonconforming": {
            f"{t} where E.1-1 says {a}": n for (t, a), n in theirs.most_common()
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = require_data(BENCHMARK, *(relative for relative, _ in SERIES.values()))
    # pydicom warns on the source files (an SH value of 20 characters) and on dicognito's
    # look-ups of Time keywords that do not exist; neither concerns the comparison.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    started = time.perf_counter()
    print(
        f"medlens de-identification benchmark: {os.cpu_count()} cores; data {root}; medlens "
        "Basic Profile with a fixed key; dicognito's defaults"
    )
    with tempfile.TemporaryDirectory(prefix="medlens-bench-deid-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"generating about {args.files} files in {tmp} ...")
        inputs = generate(root, tmp, args.files, args.batch)
        size = sum(p.stat().st_size for b in inputs.batches for p in output_files(b))
        log(
            f"  {inputs.files} files ({size / 1e6:.0f} MB) in {len(inputs.batches)} batches of "
            f"{inputs.batch_files}, {len(inputs.markers)} distinct markers; "
            f"{time.perf_counter() - started:.1f} s"
        )
        marker_bytes = {m.encode() for m in inputs.markers}
        needles = Needles([*inputs.markers, *inputs.originals], inputs.templates)
        log("checking the inputs ...")
        originals_in_input = check_inputs(inputs, needles, marker_bytes)

        out_root = tmp / "output"
        log(f"timing {', '.join(TOOLS)} on {len(inputs.batches)} batches ...")
        timing_start = time.perf_counter()
        timings, rounds, results = time_tools(inputs, out_root, args.budget)
        log(f"  {rounds} rounds in {time.perf_counter() - timing_start:.1f} s")
        if rounds < len(inputs.batches):  # so that medlens's leak check covers every file
            log(f"medlens (1 process, untimed) on the other {len(inputs.batches) - rounds} ...")
            for batch in inputs.batches[rounds:]:
                results["medlens"].append(run_medlens(batch, out_root / "medlens" / batch.name, 1))
        count_problems = check_counts(inputs, results)
        done = {tool: len(runs) for tool, runs in results.items()}

        log("searching every output for markers and original values ...")
        scans: dict[str, Scan] = {}
        for tool in TOOLS:
            scans[tool] = Scan(batches=done[tool])
            # medlens's audit logs (OUTPUT.audit.csv beside each output folder) are searched too
            scan_files(needles, output_files(out_root / tool), marker_bytes, scans[tool])
        agrees = cross_check(inputs, needles, marker_bytes, out_root)
        shutil.rmtree(out_root)

        log("timing both tools on plain copies of the real series ...")
        plain = time_plain(root, tmp, 2 if args.quick else 5, 3 if args.quick else 5)
        log("comparing one file of each series attribute by attribute ...")
        compared = [compare_one(kind, sample, tmp) for kind, sample in inputs.samples.items()]

        payload: dict[str, Any] = {
            "benchmark": BENCHMARK,
            "files": inputs.files,
            "batches": len(inputs.batches),
            "batch_files": inputs.batch_files,
            "copies": dict(inputs.copies),
        }
        payload["timed_batches"] = rounds
        payload["files_timed_per_tool"] = rounds * inputs.batch_files
        payload.update(report_speed(inputs, timings, rounds))
        payload.update(plain)
        payload.update(report_leaks(inputs, scans, marker_bytes, originals_in_input, compared))
        payload["find_leaks_agrees"] = agrees
        payload["differences"] = report_differences(compared, args.all_differences)
    if count_problems:
        print()
        for problem in count_problems:
            print(f"problem: {problem}")
    payload["count_problems"] = count_problems
    payload["goal_met"] = (
        payload["ratio_vs_dicognito"] >= 1.0
        and not payload["leaked_markers_found"]["medlens"]
        and not payload["leaked_markers_found"]["medlens-2w"]
        and all(payload["pixel_identical"].values())
        and not count_problems
    )
    payload["quick"] = args.quick
    payload["total_s"] = time.perf_counter() - started
    payload.update(environment(PACKAGES))
    print(
        f"\ngoal (at least as fast as dicognito, no leaked marker): "
        f"{'met' if payload['goal_met'] else 'NOT met'}; total {payload['total_s']:.0f} s"
    )
    emit_json(payload)


def pixel_counts_ok(inputs: Inputs, scan: Scan) -> bool:
    """Every source slice's pixel data came out once per copy of its series."""
    copies = inputs.units_per_batch * scan.batches
    expected = Counter({t.index: copies for t in inputs.templates})
    return scan.pixel_sources == expected


def print_differences(rows: list[Row], show_all: bool) -> None:
    title = (
        "Where the two outputs differ (one planted file of each series; attributes inside a "
        "sequence that either tool dropped count with the sequence)"
    )
    if show_all or len(rows) <= MAX_ROWS:
        print_table(
            title,
            ["series", "tag path", "keyword", "medlens", "dicognito", "E.1-1"],
            [
                [
                    r.series,
                    r.path,
                    r.keyword[:40],
                    r.medlens,
                    r.dicognito,
                    r.action if r.resolved in ("-", r.action) else f"{r.action}:{r.resolved}",
                ]
                for r in rows
            ],
        )
        return
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.medlens, row.dicognito, row.action)].append(row)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    names = [examples_of([r.keyword for r in members]) for _, members in ordered]
    table = []
    for ((ours, theirs, action), members), name in zip(ordered, padded(names), strict=True):
        by_series = Counter(r.series for r in members)
        table.append([ours, theirs, action, str(by_series["mr"]), str(by_series["ct"]), name])
    print_table(
        f"{title}: {len(rows)} attributes, grouped (--all-differences lists them)",
        ["medlens", "dicognito", "E.1-1", "MR", "CT", "examples"],
        table,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
