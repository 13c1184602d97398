"""Errors raised by medlens for bad input.

Every error that reaches a user names the file (or folder) and the problem in one line; the CLI
prints ``str(error)`` and exits non-zero, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

from pathlib import Path


class MedlensError(Exception):
    """Base class of the errors medlens raises for bad input or bad requests."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class ImageReadError(MedlensError):
    """A file or folder could not be read as an image (missing, corrupt, unsupported)."""


class SeriesError(ImageReadError):
    """A DICOM series cannot be assembled into a consistent volume."""


class MultipleSeriesError(SeriesError):
    """A folder holds several series and none was chosen."""


class GeometryError(MedlensError):
    """Two images that must share a grid (image and mask, say) do not."""


class DatasetError(MedlensError):
    """A dataset folder, CSV or split file is malformed or names missing files."""
