"""Raw k-space files read into one :class:`KSpaceData`: medlens' ``.npz``, fastMRI and ISMRMRD.

Every reader returns k-space ``(S, C, H, W)`` complex64 (slices, coils, readout, phase encode;
the conventions of :mod:`medlens.reconstruction.kspace`), the ``(W,)`` mask of measured
phase-encode lines (``None``: fully sampled), optional coil maps and magnitude reference, and
what the file says about itself in ``meta``. Formats, chosen by extension and content:

- ``.npz``: medlens' own (:func:`write_kspace_npz`): arrays ``kspace``, ``mask``, ``maps``,
  ``target`` and ``meta`` (a 0-d string array holding JSON), loaded without pickle;
- ``.h5`` with a root dataset ``kspace``: fastMRI (single-coil ``(S, H, W)`` gains the coil axis;
  a root ``mask`` marks a test file, already undersampled; ``reconstruction_rss`` or
  ``reconstruction_esc`` is the target; file attributes go into ``meta``);
- ``.h5`` with a group ``dataset`` holding ``data`` and ``xml``: ISMRMRD raw data, 2D Cartesian
  only, assembled line by line from its acquisitions.

Every problem with a file is a one-line :class:`~medlens.errors.DatasetError` naming it, raised
by :func:`check_kspace` before anything downstream sees the arrays. h5py and ismrmrd are in the
``recon`` extra and imported only when an ``.h5`` file is read.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import DatasetError, MedlensError

__all__ = ["KSpaceData", "check_kspace", "read_kspace", "write_kspace_npz"]

_NPZ_KEYS = ("kspace", "mask", "maps", "target", "meta")
_ISMRMRD_NS = "{http://www.ismrm.org/ISMRMRD}"
# Acquisitions that carry no imaging line: noise, navigators, phase correction and friends.
_SKIPPED = ("NOISE_MEASUREMENT", "NAVIGATION_DATA", "PHASECORR_DATA", "HPFEEDBACK_DATA",
            "DUMMYSCAN_DATA", "RTFEEDBACK_DATA", "SURFACECOILCORRECTIONSCAN_DATA",
            "PHASE_STABILIZATION_REFERENCE", "PHASE_STABILIZATION")  # fmt: skip


@dataclass
class KSpaceData:
    """One file's k-space, with what reconstructions and metrics need beside it.

    ``kspace`` is what was measured, and ``mask`` the phase-encode lines a reconstruction may
    use (``None``: every line). A real undersampled file holds zeros off the mask; a
    retrospective one (``medlens simulate kspace``, fastMRI's training files with a mask given)
    holds every line, so training can draw new masks (:attr:`fully_sampled`), while evaluation
    applies the stored one (:meth:`undersampled`). ``maps`` are coil sensitivities ``(C, H, W)`` or
    ``(S, C, H, W)``; ``target`` a float32 magnitude reference ``(S, h, w)`` (fastMRI's are
    centre-cropped to 320 x 320). ``meta`` holds what the file says: ``simulated``,
    ``source``, ``subject``, ``acceleration``, matrix sizes...
    """

    kspace: np.ndarray
    mask: np.ndarray | None = None
    maps: np.ndarray | None = None
    target: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``: readout by phase encode."""
        return int(self.kspace.shape[-2]), int(self.kspace.shape[-1])

    @property
    def fully_sampled(self) -> bool:
        """Whether every phase-encode line holds data (new masks can be drawn from it)."""
        if self.mask is None or self.mask.all():
            return True
        return bool(np.abs(self.kspace[..., ~self.mask.astype(bool)]).max() > 0)

    def undersampled(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The k-space with only ``mask``'s lines kept (zeros elsewhere), ``self.mask`` by
        default; a copy of the k-space when neither is given (fully sampled)."""
        mask = self.mask if mask is None else mask
        if mask is None:
            return self.kspace.copy()
        mask, width = np.asarray(mask), self.kspace.shape[-1]
        if mask.shape != (width,):
            raise MedlensError(f"mask of shape {mask.shape} for k-space {self.kspace.shape}")
        zero = np.zeros((), dtype=self.kspace.dtype)
        return np.where(mask.astype(bool), self.kspace, zero)


def check_kspace(data: KSpaceData) -> KSpaceData:
    """``data`` validated, with its arrays in their canonical dtypes (complex64 k-space and maps,
    bool mask, float32 target), so that a bad file fails here in one line and not deep inside a
    reconstruction. Raises :class:`DatasetError` naming ``data.path``."""
    path = data.path
    k = np.asarray(data.kspace)
    if not np.iscomplexobj(k):
        raise DatasetError(f"k-space is {k.dtype}, not complex", path)
    if k.ndim != 4:
        raise DatasetError(
            f"k-space of shape {k.shape}: need 4 dimensions (slices, coils, readout, phase encode)",
            path,
        )
    if k.size == 0:
        raise DatasetError(f"k-space of shape {k.shape} is empty", path)
    k = k.astype(np.complex64, copy=False)
    bad = int(k.size - np.count_nonzero(np.isfinite(k)))
    if bad:
        raise DatasetError(f"k-space holds {bad} NaN or infinite value(s)", path)
    s, c, h, w = k.shape
    mask = None if data.mask is None else _check_mask(np.asarray(data.mask), k.shape, path)
    maps = None
    if data.maps is not None:
        maps = np.asarray(data.maps)
        if maps.shape not in ((c, h, w), (s, c, h, w)) or not _numeric(maps):
            raise DatasetError(
                f"coil maps of shape {maps.shape} ({maps.dtype}) for k-space {k.shape}: "
                f"need {(c, h, w)} or {(s, c, h, w)}, numeric",
                path,
            )
        maps = maps.astype(np.complex64, copy=False)
        if not np.isfinite(maps).all():
            raise DatasetError("coil maps hold NaN or infinite values", path)
    target = None
    if data.target is not None:
        target = np.asarray(data.target)
        if target.ndim != 3 or not target.size or not _numeric(target) or np.iscomplexobj(target):
            raise DatasetError(
                f"target of shape {target.shape} ({target.dtype}): need a non-empty real "
                f"(slices, h, w) magnitude image",
                path,
            )
        if target.shape[0] != s:
            raise DatasetError(
                f"target of shape {target.shape} has {target.shape[0]} slice(s), the k-space {s}",
                path,
            )
        target = target.astype(np.float32, copy=False)
        if not np.isfinite(target).all():
            raise DatasetError("target holds NaN or infinite values", path)
    if not isinstance(data.meta, Mapping):
        raise DatasetError(f"meta is {type(data.meta).__name__}, not a dict", path)
    return dataclasses.replace(
        data, kspace=k, mask=mask, maps=maps, target=target, meta=dict(data.meta)
    )


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], path: Path | None) -> np.ndarray:
    width = shape[-1]
    if mask.ndim != 1 or mask.shape[0] != width:
        raise DatasetError(
            f"mask of shape {mask.shape} for k-space {shape}: need ({width},), "
            "one value per phase-encode line",
            path,
        )
    if mask.dtype != bool:
        if not _numeric(mask) or not np.isin(mask, (0, 1)).all():
            raise DatasetError(f"mask holds values other than 0 and 1 ({mask.dtype})", path)
        mask = mask != 0
    if not mask.any():
        raise DatasetError("mask measures no phase-encode line", path)
    return mask


def _numeric(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.number))


def read_kspace(path: str | Path) -> KSpaceData:
    """The k-space of a medlens ``.npz``, a fastMRI ``.h5`` or an ISMRMRD ``.h5`` file."""
    path = Path(path)
    if not path.exists():
        raise DatasetError("no such k-space file", path)
    if not path.is_file():
        raise DatasetError("not a file: expected a k-space .npz or .h5", path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".h5", ".hdf5"):
        return _read_h5(path)
    raise DatasetError(
        f"unsupported k-space file {suffix or '(no extension)'}: "
        "use .npz (medlens) or .h5 (fastMRI or ISMRMRD)",
        path,
    )


def write_kspace_npz(path: str | Path, data: KSpaceData) -> Path:
    """Write ``data`` in medlens' own ``.npz`` layout, atomically; the data is validated first,
    so that a file written here always reads back."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise MedlensError("a medlens k-space file ends in .npz", path)
    data = check_kspace(dataclasses.replace(data, path=path))
    try:
        meta = json.dumps(data.meta, default=_json_default)
    except (TypeError, ValueError) as error:
        raise MedlensError(f"meta cannot be stored as JSON ({error})", path) from None
    arrays = {"kspace": data.kspace, "meta": np.array(meta)}
    for name in ("mask", "maps", "target"):
        if getattr(data, name) is not None:
            arrays[name] = getattr(data, name)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _reason(error: BaseException) -> str:
    """The first line of an error's message, for a one-line DatasetError."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_npz(path: Path) -> KSpaceData:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError("not a .npz archive (a single .npy array?)", path)
        with archive:
            if "kspace" not in archive.files:
                raise DatasetError(
                    f"no 'kspace' array (found {', '.join(archive.files) or 'none'}): "
                    f"a medlens k-space .npz holds {', '.join(_NPZ_KEYS)}",
                    path,
                )
            arrays = {key: archive[key] for key in _NPZ_KEYS if key in archive.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DatasetError(f"cannot read the .npz file ({_reason(error)})", path) from None
    meta = _npz_meta(arrays.get("meta"), path)
    meta.setdefault("simulated", False)
    meta.setdefault("source", "medlens")
    meta.setdefault("subject", path.stem)
    maps, target = arrays.get("maps"), arrays.get("target")
    return check_kspace(KSpaceData(arrays["kspace"], arrays.get("mask"), maps, target, meta, path))


def _npz_meta(array: np.ndarray | None, path: Path) -> dict:
    if array is None:
        return {}
    if array.ndim != 0 or array.dtype.kind not in "US":
        raise DatasetError(f"meta is {array.dtype} {array.shape}: need a 0-d JSON string", path)
    text = array[()]
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        meta = json.loads(str(text))
    except json.JSONDecodeError as error:
        raise DatasetError(f"meta is not valid JSON ({error})", path) from None
    if not isinstance(meta, dict):
        raise DatasetError(f"meta is a JSON {type(meta).__name__}, not an object", path)
    return meta


def _needs(module: str) -> Any:
    """``module``, imported on first use: h5py and ismrmrd are in the ``recon`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        name = module.split(".")[0]
        raise MedlensError(
            f"reading .h5 k-space needs {name}: pip install 'medlens[recon]'"
        ) from error


def _read_h5(path: Path) -> KSpaceData:
    h5py = _needs("h5py")
    try:
        with h5py.File(path, "r") as handle:
            if isinstance(handle.get("kspace"), h5py.Dataset):
                return _read_fastmri(handle, path)
            group = handle.get("dataset")
            ismrmrd = isinstance(group, h5py.Group) and "data" in group and "xml" in group
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"cannot read the HDF5 file ({_reason(error)})", path) from None
    if ismrmrd:
        return _read_ismrmrd(path)
    raise DatasetError(
        "neither fastMRI (a root dataset 'kspace') nor ISMRMRD "
        "(a group 'dataset' holding 'data' and 'xml')",
        path,
    )


def _read_fastmri(handle, path: Path) -> KSpaceData:
    kspace = handle["kspace"][()]
    if kspace.ndim == 3:  # single-coil: (S, H, W)
        kspace = kspace[:, None]
    elif kspace.ndim != 4:
        raise DatasetError(
            f"k-space of shape {kspace.shape}: fastMRI files hold (slices, readout, phase "
            "encode) or (slices, coils, readout, phase encode)",
            path,
        )
    mask = handle["mask"][()] if "mask" in handle else None
    name = next((n for n in ("reconstruction_rss", "reconstruction_esc") if n in handle), None)
    target = None if name is None else handle[name][()]
    meta = {str(key): _plain(value) for key, value in handle.attrs.items()}
    meta["simulated"] = bool(meta.get("simulated", False))
    meta.setdefault("source", "fastmri")
    patient = meta.get("patient_id")
    meta["subject"] = str(patient) if patient not in (None, "") else path.stem
    if "ismrmrd_header" in handle:
        meta.update(_xml_sizes(handle["ismrmrd_header"][()]))
    data = KSpaceData(kspace=kspace, mask=mask, target=target, meta=meta, path=path)
    return check_kspace(data)


def _plain(value: Any) -> Any:
    """An HDF5 attribute as plain JSON-able Python: numbers, strings, lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()] if value.ndim else _plain(value[()])
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _xml_sizes(xml: Any) -> dict:
    """Encoded and reconstructed matrix sizes and field of view from an ISMRMRD XML header
    (fastMRI ships one beside the k-space); nothing when it does not parse."""
    if isinstance(xml, np.ndarray):
        xml = xml.reshape(-1)[0] if xml.size else b""
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, TypeError, ValueError):
        return {}
    meta: dict = {}
    ns = _ISMRMRD_NS
    fields = (("matrixSize", "matrix", int), ("fieldOfView_mm", "fov_mm", float))
    for space, key in (("encodedSpace", "encoded"), ("reconSpace", "recon")):
        for element, name, kind in fields:
            node = root.find(f"{ns}encoding/{ns}{space}/{ns}{element}")
            if node is None:
                continue
            try:
                meta[f"{key}_{name}"] = [kind(node.findtext(f"{ns}{axis}")) for axis in "xyz"]
            except (TypeError, ValueError):
                continue
    return meta


def _read_ismrmrd(path: Path) -> KSpaceData:
    _needs("ismrmrd.xsd")
    ismrmrd = _needs("ismrmrd")
    try:
        with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r") as dset:
            try:
                header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
            except Exception as error:  # xsdata raises its own parser errors
                raise DatasetError(
                    f"cannot parse the ISMRMRD XML header ({_reason(error)})", path
                ) from None
            layout = _ismrmrd_layout(header, path)
            lines = _ismrmrd_lines(ismrmrd, dset, layout, path)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, LookupError, TypeError) as error:
        raise DatasetError(f"cannot read the ISMRMRD file ({_reason(error)})", path) from None
    kspace, mask = _assemble(lines, layout, path)
    data = KSpaceData(kspace=kspace, mask=mask, meta=layout["meta"], path=path)
    return check_kspace(data)


def _ismrmrd_layout(header: Any, path: Path) -> dict:
    """Phase-encode width, slice count, k-space centre offset and meta of encoding 0."""
    if not header.encoding:
        raise DatasetError("ISMRMRD header has no encoding", path)
    encoding = header.encoding[0]
    trajectory = getattr(encoding.trajectory, "value", encoding.trajectory)
    if trajectory != "cartesian":
        raise DatasetError(f"{trajectory} trajectory: only Cartesian k-space is read", path)
    encoded = encoding.encodedSpace.matrixSize
    if encoded.z > 1:
        raise DatasetError(
            f"3D encoding (matrix z = {encoded.z}): only 2D multi-slice k-space is read", path
        )
    width = int(encoded.y)
    limits = encoding.encodingLimits
    ky_limits, slice_limits = limits.kspace_encoding_step_1, limits.slice
    # fastMRI's convention: the line the limits call the centre goes to the middle of W
    offset = width // 2 - ky_limits.center if ky_limits is not None and ky_limits.center else 0
    meta: dict = {"simulated": False, "source": "ismrmrd"}
    subject = header.subjectInformation
    meta["subject"] = subject.patientID if subject and subject.patientID else path.stem
    for space, key in ((encoding.encodedSpace, "encoded"), (encoding.reconSpace, "recon")):
        size = space.matrixSize
        meta[f"{key}_matrix"] = [int(size.x), int(size.y), int(size.z)]
        fov = space.fieldOfView_mm
        if fov is not None:
            meta[f"{key}_fov_mm"] = [float(fov.x), float(fov.y), float(fov.z)]
    parallel = encoding.parallelImaging
    if parallel is not None and parallel.accelerationFactor.kspace_encoding_step_1 > 1:
        meta["acceleration"] = int(parallel.accelerationFactor.kspace_encoding_step_1)
    system = header.acquisitionSystemInformation
    if system is not None and system.systemFieldStrength_T is not None:
        meta["field_strength_T"] = float(system.systemFieldStrength_T)
    if offset:
        meta["ky_offset"] = int(offset)
    slices = None if slice_limits is None else int(slice_limits.maximum) + 1
    return {"width": width, "slices": slices, "offset": offset, "meta": meta}


def _ismrmrd_lines(ismrmrd: Any, dset: Any, layout: dict, path: Path) -> list:
    """``(slice, line, data (C, samples))`` of each imaging acquisition, in file order."""
    skipped = [getattr(ismrmrd, f"ACQ_IS_{flag}", None) for flag in _SKIPPED]
    skipped = [flag for flag in skipped if flag is not None]  # older versions lack some
    lines = []
    for number in range(dset.number_of_acquisitions()):
        acq = dset.read_acquisition(number)
        if any(acq.is_flag_set(flag) for flag in skipped) or acq.encoding_space_ref != 0:
            continue
        idx = acq.idx
        if idx.kspace_encode_step_2 > 0:
            raise DatasetError(
                f"acquisition {number} has kspace_encode_step_2 = {idx.kspace_encode_step_2}: "
                "3D encodings are not read",
                path,
            )
        for name in ("contrast", "phase", "repetition", "set"):
            if getattr(idx, name) > 0:
                raise DatasetError(
                    f"acquisition {number} has {name} {getattr(idx, name)}: only one image per "
                    "slice is read (one contrast, phase, repetition and set)",
                    path,
                )
        line = int(idx.kspace_encode_step_1) + layout["offset"]
        if not 0 <= line < layout["width"]:
            raise DatasetError(
                f"acquisition {number}: phase-encode line {idx.kspace_encode_step_1} lies "
                f"outside the encoded matrix (y = {layout['width']})",
                path,
            )
        lines.append((int(idx.slice), line, np.array(acq.data, dtype=np.complex64)))
    if not lines:
        raise DatasetError("no imaging acquisitions (only noise or none at all)", path)
    return lines


def _assemble(lines: list, layout: dict, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``(S, C, H, W)`` k-space and mask from the acquired lines; repeated lines (averages)
    are averaged."""
    coils, samples = lines[0][2].shape
    for _, _, data in lines:
        if data.shape != (coils, samples):
            raise DatasetError(
                f"acquisitions of shapes {(coils, samples)} and {data.shape} "
                "(coils, samples): need one shape for all",
                path,
            )
    seen = max(index for index, _, _ in lines) + 1
    slices = max(seen, layout["slices"] or 0)
    width = layout["width"]
    kspace = np.zeros((slices, coils, samples, width), np.complex64)
    counts = np.zeros((slices, width), np.int64)
    for index, line, data in lines:
        kspace[index, :, :, line] += data
        counts[index, line] += 1
    empty = np.flatnonzero(counts.sum(axis=1) == 0)
    if empty.size:
        raise DatasetError(f"slice(s) {empty.tolist()} have no acquisitions", path)
    measured = counts > 0
    if (counts > 1).any():
        kspace /= np.maximum(counts, 1)[:, None, None, :]
    mask = measured.any(axis=0)
    if not (measured == mask).all():
        layout["meta"]["lines_differ_by_slice"] = True
    return kspace, None if mask.all() else mask
