"""Synthetic phantoms written in real formats, for the demo and tests when no real data is present.

The phantom is an ellipsoidal "body" of soft tissue (40 HU) in air (-1000 HU) with a brighter
"organ" (label 1) and a dense "bone" (label 2). It is written as a genuine DICOM CT series
(pydicom, one file per slice, rescale intercept -1024), as NIfTI with its label map, and as a
MedMNIST-style ``.npz`` of small 2D images with a binary label: the same readers as for real data
read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.image import Image, Role

__all__ = ["ct_phantom", "write_demo_data", "write_dicom_series"]


def ct_phantom(
    shape: tuple[int, int, int] = (24, 64, 64),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    *,
    seed: int = 0,
) -> tuple[Image, Image]:
    """A CT-like volume in HU (int16) and its label map, ``shape`` in ``(z, y, x)``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 + (z / 1.1) ** 2 <= 1
    organ = ((x - 0.25) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2 + (z / 0.6) ** 2 <= 1
    bone = (x / 0.12) ** 2 + ((y - 0.45) / 0.12) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = 40.0
    hu[organ & body] = 90.0
    hu[bone & body] = 700.0
    hu += rng.normal(0, 12, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[organ & body] = 1
    labels[bone & body] = 2
    origin = (-0.5 * spacing[0] * (shape[2] - 1), -0.5 * spacing[1] * (shape[1] - 1), -100.0)
    image = Image(np.round(hu).astype(np.int16), spacing=spacing, origin=origin, modality="CT")
    label = image.with_array(labels, role=Role.LABEL)
    return image, label


def write_dicom_series(image: Image, folder: str | Path, *, seed: int = 0) -> list[Path]:
    """Write a 3D CT image as an uncompressed DICOM series (files named in shuffled order)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    stored = (image.array.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    direction = image.direction
    names = np.random.default_rng(seed).permutation(image.spatial_shape[0])
    paths = []
    for k in range(image.spatial_shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName = "Phantom^Synthetic"
        ds.PatientID = "PHANTOM"
        ds.SeriesDescription = "medlens synthetic CT phantom"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in image.index_to_world([0, 0, k])]
        ds.PixelSpacing = [image.spacing[1], image.spacing[0]]
        ds.SliceThickness = image.spacing[2]
        ds.Rows, ds.Columns = image.spatial_shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[k].tobytes()
        path = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_demo_data(folder: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the phantom as a DICOM series, NIfTI image + label, and a small 2D ``.npz`` set."""
    from medlens.io import save_image

    folder = Path(folder)
    image, label = ct_phantom(seed=seed)
    out = {
        "dicom": folder / "phantom_dicom",
        "nifti": folder / "phantom_ct.nii.gz",
        "label": folder / "phantom_label.nii.gz",
        "npz": folder / "phantom2d.npz",
    }
    write_dicom_series(image, out["dicom"], seed=seed)
    save_image(image, out["nifti"])
    save_image(label, out["label"])
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", 320), ("val", 80)):
        labels = rng.integers(0, 2, size=(count, 1))
        yy, xx = np.mgrid[:28, :28]
        images = rng.normal(100, 20, size=(count, 28, 28))
        for i, has_blob in enumerate(labels[:, 0]):
            if has_blob:  # a bright round "lesion" at a random place
                cy, cx = rng.integers(8, 20, size=2)
                images[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] += 80
        splits[f"{split}_images"] = images.clip(0, 255).astype(np.uint8)
        splits[f"{split}_labels"] = labels.astype(np.uint8)
    np.savez_compressed(out["npz"], **splits)
    return out
