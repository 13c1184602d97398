"""Image loading speed: medlens against nibabel, SimpleITK and MONAI, in one process.

Run from the repository root in the benchmark environment (see benchmarks/README.md)::

    .venv-bench/bin/python benchmarks/io.py            # full run, about 2 minutes
    .venv-bench/bin/python benchmarks/io.py --quick    # smoke run, seconds

Inputs are the real NIfTI files and DICOM series of the shared data folder, plus larger ones
generated from them into a temporary folder (never into the data folder or the repository): a
512x512x200 CT and label map as ``.nii.gz``, and a 200-slice uncompressed CT DICOM series.

Every library must return the voxels in memory (decompressed, decoded). Before timing, each
library's array is checked against SimpleITK's (after transposing ``(x, y, z)`` layouts). The
libraries are then timed round-robin on each input; figures are volumes per second from the median
time, and ratios are medlens over each peer (above 1: medlens is faster). The last line of stdout is
one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    configure_threads,
    emit_json,
    environment,
    fmt_rate,
    fmt_ratio,
    log,
    print_table,
    require_data,
    round_robin,
)

BENCHMARK = "io"
PACKAGES = (
    "medlens", "numpy", "torch", "nibabel", "SimpleITK", "monai", "itk", "pydicom",
    "pylibjpeg", "pylibjpeg-openjpeg", "imagecodecs", "isal",
)  # fmt: skip
REAL_NIFTI = {
    "ct_small": "totalsegmentator/ct_small/example_ct_sm.nii.gz",
    "ct_small_seg": "totalsegmentator/ct_small/example_seg.nii.gz",
    "mr_small": "totalsegmentator/mr_small/example_mr_sm.nii.gz",
    "mr_small_seg": "totalsegmentator/mr_small/example_seg_mr.nii.gz",
    "ct_dicom_seg": "totalsegmentator/ct_dicom_series/example_seg_dicom.nii.gz",
}
REAL_DICOM = {
    "mr_t1_brain": "dicom/mr_t1_brain",
    "ct_j2k": "totalsegmentator/ct_dicom_series/dicom",
}
CT_SERIES = REAL_DICOM["ct_j2k"]
CT_SEG = REAL_NIFTI["ct_dicom_seg"]


@dataclass(eq=False)
class Case:
    """One input: its file or folder, a description, and the readers to time on it."""

    name: str
    kind: str  # "nifti" or "dicom"
    path: Path
    description: str
    generated: bool
    readers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    dtype: str = ""
    verification: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    repeats: int = 0


# ------------------------------------------------------------------------------------- readers
def nifti_readers(path: Path, peers: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    from medlens.io import load_image

    p = str(path)
    readers: dict[str, Callable[[], Any]] = {"medlens": lambda: load_image(p).array}
    if "nibabel" in peers:
        nib = peers["nibabel"]
        readers["nibabel"] = lambda: np.asanyarray(nib.load(p).dataobj)
    if "SimpleITK" in peers:
        sitk = peers["SimpleITK"]
        readers["SimpleITK"] = lambda: sitk.GetArrayFromImage(sitk.ReadImage(p))
    if "monai" in peers:
        loader = peers["monai"].LoadImage(image_only=True)  # NibabelReader for .nii.gz
        readers["MONAI"] = lambda: loader(p)
    return readers


def dicom_readers(path: Path, peers: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    from medlens.io import load_image

    p = str(path)
    readers: dict[str, Callable[[], Any]] = {"medlens": lambda: load_image(p).array}
    if "SimpleITK" in peers:
        sitk = peers["SimpleITK"]

        def simpleitk_series() -> np.ndarray:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(p))
            return sitk.GetArrayFromImage(reader.Execute())

        readers["SimpleITK"] = simpleitk_series
    if "monai" in peers:
        load_image_transform = peers["monai"].LoadImage
        pydicom_loader = load_image_transform(image_only=True, reader="PydicomReader")
        readers["MONAI-pydicom"] = lambda: pydicom_loader(p)
        if "itk" in peers:
            itk_loader = load_image_transform(image_only=True, reader="ITKReader")
            readers["MONAI-itk"] = lambda: itk_loader(p)
    return readers


def as_zyx(library: str, result: Any) -> np.ndarray:
    """A library's result as a NumPy array in medlens/SimpleITK layout ``(z, y, x)``."""
    if hasattr(result, "detach"):  # MONAI MetaTensor
        result = result.detach().cpu().numpy()
    array = np.asarray(result)
    if library == "nibabel" or library.startswith("MONAI"):
        array = array.T  # (x, y, z) -> (z, y, x)
    return array


def compare(reference: np.ndarray, other: np.ndarray) -> str:
    """'equal', or how ``other`` differs from ``reference``."""
    if other.shape == reference.shape and np.array_equal(other, reference):
        return "equal" if other.dtype == reference.dtype else f"equal values ({other.dtype})"
    if other.shape != reference.shape:
        return f"differs: shape {other.shape} vs {reference.shape}"
    for axis, label in ((0, "z"), (1, "y"), (2, "x")):
        if np.array_equal(np.flip(other, axis), reference):
            return f"differs: equal after reversing {label} (slice order)"
    diff = np.abs(other.astype(np.float64) - reference.astype(np.float64))
    return f"differs: {int((diff > 0).sum())} voxels, max |difference| {diff.max():g}"


def verify(case: Case, peers: dict[str, Any]) -> None:
    """Check every library's array (and medlens's geometry) against SimpleITK's, once.

    This first call of each reader is also the warm-up of the timing.
    """
    arrays = {}
    for name, fn in list(case.readers.items()):
        try:
            arrays[name] = as_zyx(name, fn())
        except Exception as exc:  # a reader that cannot read this input is reported, not timed
            message = " ".join(str(exc).split())[:300] or type(exc).__name__
            case.errors[name] = f"{type(exc).__name__}: {message}"
            print(f"  ERROR {case.name}: {name} failed, left out: {case.errors[name]}")
            del case.readers[name]
    if "medlens" not in arrays:
        return
    reference_name = "SimpleITK" if "SimpleITK" in arrays else "medlens"
    reference = arrays[reference_name]
    case.shape, case.dtype = tuple(reference.shape), str(arrays["medlens"].dtype)
    for name, array in arrays.items():
        if name == reference_name:
            continue
        verdict = compare(reference, array)
        case.verification[name] = verdict
        if verdict.startswith("differs"):
            print(f"  VERIFY {case.name}: {name} vs {reference_name}: {verdict}")
    if "SimpleITK" in peers and reference_name == "SimpleITK":
        geometry = medlens_geometry_vs_sitk(case, peers["SimpleITK"])
        case.verification["medlens_geometry"] = geometry
        if geometry != "equal":
            print(f"  VERIFY {case.name}: medlens geometry vs SimpleITK: {geometry}")


def medlens_geometry_vs_sitk(case: Case, sitk) -> str:
    from medlens.io import load_image

    image = load_image(case.path)
    if case.kind == "dicom":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(case.path)))
        ref = reader.Execute()
    else:
        ref = sitk.ReadImage(str(case.path))
    problems = []
    for what, ours, theirs, atol in (
        ("spacing", image.spacing, ref.GetSpacing(), 1e-4),
        ("origin", image.origin, ref.GetOrigin(), 1e-3),
        ("direction", image.direction.ravel(), ref.GetDirection(), 1e-4),
    ):
        if not np.allclose(ours, theirs, atol=atol):
            problems.append(
                f"{what} {np.round(ours, 4).tolist()} vs {np.round(theirs, 4).tolist()}"
            )
    return "; ".join(problems) if problems else "equal"


# -------------------------------------------------------------------------------------- inputs
def reflect_indices(n_source: int, n_out: int) -> np.ndarray:
    """0, 1, ..., n-1, n-1, ..., 0, 0, 1, ...: a long stack without jumps between repeats."""
    period = np.concatenate([np.arange(n_source), np.arange(n_source)[::-1]])
    return np.resize(period, n_out)


def write_big_nifti(root: Path, tmp: Path, slices: int) -> dict[str, Path]:
    """A 512x512xN CT (from the real CT DICOM series) and label map (its real label map)."""
    import nibabel as nib

    from medlens.io import load_image

    ct = load_image(root / CT_SERIES)
    ct_array = ct.array[reflect_indices(ct.array.shape[0], slices)]
    seg = nib.load(str(root / CT_SEG))
    seg_array = np.asanyarray(seg.dataobj)
    seg_array = seg_array[:, :, reflect_indices(seg_array.shape[2], slices)]
    out = {}
    for name, data, affine, dtype in (
        (f"ct_512x512x{slices}", ct_array.T, ct.ras_affine, np.int16),
        (f"seg_512x512x{slices}", seg_array, seg.affine, np.uint8),
    ):
        nii = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        nii.header.set_qform(affine, code=1)
        nii.header.set_sform(affine, code=1)
        nii.header.set_xyzt_units("mm")
        out[name] = tmp / f"{name}.nii.gz"
        nib.save(nii, str(out[name]))
    return out


def write_big_dicom(root: Path, tmp: Path, slices: int) -> Path:
    """An uncompressed N-slice CT series from the real JPEG 2000 one: decoded with pydicom,
    new SOPInstanceUIDs, positions advanced along the slice normal, one SeriesInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = []
    for file in sorted((root / CT_SERIES).iterdir()):
        ds = pydicom.dcmread(file)
        ds.decompress()  # to explicit VR little endian, PixelData rewritten
        sources.append(ds)
    orientation = np.array(sources[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    sources.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    first = np.array(sources[0].ImagePositionPatient, dtype=float)
    step = float(np.dot(normal, np.array(sources[1].ImagePositionPatient, float) - first))
    folder = tmp / f"ct_raw_{slices}"
    folder.mkdir()
    for k, index in enumerate(reflect_indices(len(sources), slices)):
        ds = copy.deepcopy(sources[index])
        position = first + k * step * normal
        ds.ImagePositionPatient = [f"{v:.6f}".rstrip("0").rstrip(".") for v in position]
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{float(np.dot(normal, position)):.6f}".rstrip("0").rstrip(".")
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"CT{k + 1:04d}", enforce_file_format=True)
    return folder


def describe(kind: str, path: Path) -> str:
    if kind == "dicom":
        files = [f for f in path.iterdir() if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        return f"{len(files)} files, {size / 1e6:.1f} MB"
    return f"{path.stat().st_size / 1e6:.1f} MB .nii.gz"


# ------------------------------------------------------------------------------------- results
def summarise(cases: list[Case]) -> dict[str, Any]:
    per_input: dict[str, Any] = {}
    best: dict[str, list[float]] = {"nifti": [], "dicom": []}
    best_min: dict[str, list[float]] = {"nifti": [], "dicom": []}
    for case in cases:
        ours = case.timings["medlens"]
        peers = {name: t for name, t in case.timings.items() if name != "medlens"}
        ratio_vs = {name: t.median / ours.median for name, t in peers.items()}
        ratio_vs_min = {name: t.min / ours.min for name, t in peers.items()}
        entry: dict[str, Any] = {
            "kind": case.kind,
            "generated": case.generated,
            "shape_zyx": list(case.shape),
            "dtype": case.dtype,
            "description": case.description,
            "repeats": case.repeats,
            "libraries": {name: t.as_dict() for name, t in case.timings.items()},
            "volumes_per_s": {name: t.per_second for name, t in case.timings.items()},
            "ratio_vs": ratio_vs,
            "ratio_vs_min_time": ratio_vs_min,
            "verification": case.verification,
        }
        if peers:
            fastest = min(peers, key=lambda name: peers[name].median)
            entry["fastest_peer"] = fastest
            entry["ratio_vs_fastest"] = ratio_vs[fastest]
            entry["ratio_vs_fastest_min_time"] = min(ratio_vs_min.values())
            best[case.kind].append(ratio_vs[fastest])
            best_min[case.kind].append(entry["ratio_vs_fastest_min_time"])
        per_input[case.name] = entry
    summary: dict[str, Any] = {}
    for kind in ("nifti", "dicom"):
        summary[f"ratio_vs_fastest_{kind}"] = min(best[kind]) if best[kind] else None
        summary[f"ratio_vs_fastest_{kind}_min_time"] = (
            min(best_min[kind]) if best_min[kind] else None
        )
        summary[f"ratios_vs_fastest_{kind}"] = {
            case.name: per_input[case.name].get("ratio_vs_fastest")
            for case in cases
            if case.kind == kind
        }
    summary["per_input"] = per_input
    return summary


def print_tables(cases: list[Case]) -> None:
    for kind, title in (("nifti", "NIfTI volume loading"), ("dicom", "DICOM series loading")):
        chosen = [case for case in cases if case.kind == kind]
        if not chosen:
            continue
        libraries = list(dict.fromkeys(name for case in chosen for name in case.timings))
        peers = [name for name in libraries if name != "medlens"]
        rows = []
        for case in chosen:
            rate = {name: t.per_second for name, t in case.timings.items()}
            shape = "x".join(str(n) for n in case.shape[::-1])
            row = [case.name, f"{shape} {case.dtype}", str(case.repeats)]
            row += [fmt_rate(rate.get(name)) for name in libraries]
            ours = case.timings["medlens"].median
            row += [
                fmt_ratio(case.timings[p].median / ours) if p in case.timings else "-"
                for p in peers
            ]
            rows.append(row)
        headers = ["input", "size (x*y*z) dtype", "runs"]
        headers += [f"{name} vol/s" for name in libraries]
        headers += [f"/{name}" for name in peers]
        print_table(
            f"{title}: volumes per second (median of interleaved runs); "
            "/peer = medlens speed over the peer's (>1: medlens faster)",
            headers,
            rows,
        )


def profile_medlens(case: Case, calls: int = 3, top: int = 20) -> str:
    """cProfile of medlens loading ``case`` (main thread only; worker threads show as waits)."""
    fn = case.readers["medlens"]
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------------------------------- main
def import_peers() -> dict[str, Any]:
    peers: dict[str, Any] = {}
    for name, module in (
        ("nibabel", "nibabel"),
        ("SimpleITK", "SimpleITK"),
        ("monai", "monai.transforms"),
        ("itk", "itk"),
    ):
        try:
            peers[name] = __import__(module, fromlist=["_"])
        except ImportError:
            print(f"note: {name} is not installed; it is left out (see benchmarks/README.md)")
    return peers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per input (default: chosen per input for --budget seconds, 7 to 51)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small generated inputs, 1 round"
    )
    parser.add_argument(
        "--slices", type=int, default=None, help="slices of the generated inputs (default 200)"
    )
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds of timed rounds per input (default 10)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a cProfile of medlens (to stderr) on every input where a peer is faster",
    )
    args = parser.parse_args(argv)
    if args.slices is None:
        args.slices = 40 if args.quick else 200
    if args.quick and args.repeats is None:
        args.repeats = 1
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = require_data(BENCHMARK, *REAL_NIFTI.values(), *REAL_DICOM.values())
    threads = configure_threads()
    started = time.perf_counter()
    peers = import_peers()
    print(
        f"medlens I/O benchmark: {threads['cpu_count']} cores, torch threads "
        f"{threads['torch_threads']}, SimpleITK threads {threads['sitk_threads']}; "
        f"data {root}"
    )
    if "monai" in peers:
        print(
            "MONAI readers: NIfTI LoadImage(image_only=True) -> NibabelReader (float32 output, its "
            "default); DICOM PydicomReader"
            + (
                " and ITKReader (LoadImage's default for folders when itk is installed)"
                if "itk" in peers
                else " (itk not installed)"
            )
        )
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="medlens-bench-io-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"generating {args.slices}-slice inputs in {tmp} ...")
        big_nifti = write_big_nifti(root, tmp, args.slices)
        big_dicom = write_big_dicom(root, tmp, args.slices)
        log(f"  done in {time.perf_counter() - started:.1f} s")
        for name, relative in REAL_NIFTI.items():
            cases.append(Case(name, "nifti", root / relative, "", False))
        for name, path in big_nifti.items():
            cases.append(Case(name, "nifti", path, "", True))
        for name, relative in REAL_DICOM.items():
            cases.append(Case(name, "dicom", root / relative, "", False))
        cases.append(Case(big_dicom.name, "dicom", big_dicom, "", True))

        for case in cases:
            case.description = describe(case.kind, case.path)
            make = nifti_readers if case.kind == "nifti" else dicom_readers
            case.readers = make(case.path, peers)
            case_start = time.perf_counter()
            verify(case, peers)
            if "medlens" not in case.readers:
                continue
            case.timings, case.repeats = round_robin(
                case.readers, repeats=args.repeats, budget_s=args.budget, warmed_up=True
            )
            log(
                f"{case.name} ({case.description}): {', '.join(case.readers)}; "
                f"{case.repeats} rounds, {time.perf_counter() - case_start:.1f} s"
            )

        errors = {case.name: case.errors for case in cases if case.errors}
        cases = [case for case in cases if "medlens" in case.timings]
        print_tables(cases)
        slower = [
            (case, name)
            for case in cases
            for name, t in case.timings.items()
            if name != "medlens" and t.median < case.timings["medlens"].median
        ]
        if slower:
            print()
            for case, name in slower:
                ratio = case.timings[name].median / case.timings["medlens"].median
                print(f"medlens slower than {name} on {case.name}: {ratio:.3f}x")
            if not args.profile:
                print("(run with --profile for a cProfile of medlens on those inputs)")
        differing = [
            (case.name, name, verdict)
            for case in cases
            for name, verdict in case.verification.items()
            if verdict.startswith("differs") or (name == "medlens_geometry" and verdict != "equal")
        ]
        print()
        for case_name, failures in errors.items():
            for name, message in failures.items():
                print(f"error: {case_name}: {name} could not read it: {message}")
        if differing:
            for case_name, name, verdict in differing:
                print(f"verification: {case_name}: {name}: {verdict}")
        else:
            print("verification: every library gave SimpleITK's voxel values and shape")
        if any("reversing z" in verdict for _, name, verdict in differing if "pydicom" in name):
            print(
                "  (MONAI's PydicomReader stacks slices by InstanceNumber; SimpleITK and medlens "
                "by position along the slice normal)"
            )
        if args.profile:
            for case in dict.fromkeys(case for case, _ in slower):
                log(f"\n==== cProfile of medlens on {case.name} ====")
                log(profile_medlens(case))

    payload: dict[str, Any] = {"benchmark": BENCHMARK}
    payload.update(summarise(cases))
    payload["errors"] = errors
    payload.update(environment(PACKAGES))
    payload.update(
        {
            "torch_threads": threads["torch_threads"],
            "sitk_threads": threads["sitk_threads"],
            "statistic": "median",
            "quick": args.quick,
            "slices_generated": args.slices,
            "repeats_requested": args.repeats,
            "monai_readers": {
                "nifti": "NibabelReader",
                "dicom": ["PydicomReader", *(["ITKReader"] if "itk" in peers else [])],
            },
            "total_s": time.perf_counter() - started,
        }
    )
    print(f"\ntotal {payload['total_s']:.0f} s")
    emit_json(payload)


if __name__ == "__main__":
    main(sys.argv[1:])
