"""Atomic file output: write to a temporary file beside the target, then rename over it.

A crash or an error half-way leaves either the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``) so writers
    that choose a format by extension still do so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically; NumPy scalars and arrays become plain."""
    import json

    atomic_write_text(path, json.dumps(payload, indent=1, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ensure_outside(output: str | Path, *inputs: str | Path) -> None:
    """Refuse to write ``output`` inside any of the ``inputs`` folders (inputs are read-only).

    An input file's folder counts as an input folder: outputs go elsewhere.
    """
    from medlens.errors import MedlensError

    out = Path(output).resolve()
    for item in inputs:
        src = Path(item).resolve()
        base = src if src.is_dir() else src.parent
        if out == base or base in out.parents:
            raise MedlensError(f"output would be written inside the input folder {base}", output)
