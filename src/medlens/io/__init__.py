"""Reading and writing medical images.

:func:`load_image` chooses the reader by content; :func:`save_image` chooses the writer by the
file name's extension and writes atomically.
"""

from __future__ import annotations

from pathlib import Path

from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image, Role

__all__ = ["load_image", "save_image"]


def load_image(
    path: str | Path,
    *,
    role: Role | str | None = None,
    series_uid: str | None = None,
    presentation: bool | str = False,
    suv: str | None = None,
    philips_scale: bool = False,
) -> Image:
    """Read one image from a file or folder, whatever its format.

    Args:
        path: a DICOM file, a folder of DICOM files or a DICOMDIR (one series, or pick it with
            ``series_uid``), a NIfTI file, PNG/JPEG/TIFF/BMP, ``.npy``, a medlens ``.npz``, or a
            video (MP4/MOV/AVI/MKV: every frame; :func:`medlens.io.video.read_video` for ranges).
        role: ``"label"`` for label maps (nearest-neighbour interpolation downstream); by default
            an intensity image (DICOM Segmentation objects excepted).
        series_uid: the SeriesInstanceUID to read when a folder holds several series.
        presentation: DICOM: ``True`` gives what the viewer shows, in [0, 1] (VOI window or
            LUT, MONOCHROME1 inverted: brighter is denser); ``"auto"`` does so for projection
            X-ray only. Other formats hold display values already and are returned as read.
        suv: DICOM PET: ``"bw"``, ``"lbm"`` or ``"bsa"`` standardised uptake values.
        philips_scale: DICOM Philips MR: quantitative values with the private Scale Slope.

    Raises:
        ImageReadError: one line naming the file and what is wrong with it.
    """
    from medlens.io._detect import sniff

    path = Path(path)
    kind = sniff(path)
    if kind in ("dicom", "dicom-folder"):
        from medlens.io.dicom import read_dicom

        image = read_dicom(path, series_uid=series_uid, presentation=presentation, suv=suv,
                           philips_scale=philips_scale)  # fmt: skip
        return image if role is None else image.replace(role=Role(role))
    if suv is not None:
        raise ImageReadError("SUV needs a DICOM PET image (Units, dose, times, weight)", path)
    kwargs = {"role": Role(role) if role is not None else Role.INTENSITY}
    if kind == "nifti":
        from medlens.io.nifti import read_nifti

        return read_nifti(path, **kwargs)
    if kind == "tiff":
        from medlens.io.raster import read_tiff

        return read_tiff(path, **kwargs)
    if kind in ("png", "jpeg", "bmp"):
        from medlens.io.raster import read_raster

        # None: the role stored in a medlens PNG; an explicit role (even "intensity") wins
        return read_raster(path, role=role)
    if kind == "npy":
        from medlens.io.arrays import read_npy

        return read_npy(path, **kwargs)
    if kind == "npz":
        from medlens.io.arrays import read_npz

        return read_npz(path, role=role)
    if kind == "video":
        from medlens.io.video import read_video

        return read_video(path)
    if kind in ("voc", "contour"):
        what = "a Pascal VOC annotation" if kind == "voc" else "a contour (x y per line)"
        reader = "read_voc" if kind == "voc" else "read_contour"
        raise ImageReadError(f"is {what}, not an image (medlens.io.annotations.{reader})", path)
    raise ImageReadError(f"no reader for format {kind}", path)  # pragma: no cover


def save_image(image: Image, path: str | Path) -> Path:
    """Write ``image`` by extension (``.nii``, ``.nii.gz``, ``.png``, ``.npz``), atomically."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from medlens.io.nifti import write_nifti

        return write_nifti(image, path)
    if name.endswith(".png"):
        from medlens.io.raster import write_png

        return write_png(image, path)
    if name.endswith(".npz"):
        from medlens.io.arrays import write_npz

        return write_npz(image, path)
    raise MedlensError("unknown output format: use .nii, .nii.gz, .png or .npz", path)
