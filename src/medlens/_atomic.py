"""Output paths: atomic writes, guarded against escaping their folder or replacing special files.

A crash or an error half-way leaves either the old file or none, never a truncated one. Every
writer goes through :func:`atomic_path`, which refuses a target outside the chosen output root
(after resolving symlinks) and a target that exists but is not a regular file (a device, FIFO,
socket or symbolic link), naming the user's path in the message, never the temporary file's.
File names derived from data (UIDs, patient names, descriptions) go through :func:`safe_name`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_rows",
    "atomic_write_text",
    "check_output",
    "ensure_outside",
    "safe_name",
    "safe_uid",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SPECIAL = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a folder",
}


class OutputError(MedlensError):
    """An output cannot be written where it was asked to go."""


def check_output(path: str | Path, root: str | Path | None = None) -> Path:
    """Refuse to write ``path`` outside ``root`` or over anything but a regular file.

    ``root`` (when given) and ``path`` are resolved with their symlinks, so a link inside the
    output folder cannot lead a write elsewhere. Returns ``path`` unchanged.
    """
    path = Path(path)
    if root is not None:
        base = Path(root).resolve()
        final = path.resolve()
        if final != base and base not in final.parents:
            raise OutputError(f"refusing to write outside the output folder {root}", path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror})", path) from None
    if not stat.S_ISREG(mode):
        kind = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
        raise OutputError(f"is {kind}: refusing to replace it with an output file", path)
    return path


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, suffix: str | None = None, root: str | Path | None = None
) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``) so writers
    that choose a format by extension still do so. ``root``: the output folder ``path`` must
    stay inside (see :func:`check_output`). An ``OSError`` while writing (a full disk, no
    permission) becomes an :class:`OutputError` naming ``path``.
    """
    path = check_output(path, root)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    suffix = suffix[-32:]  # a long data-derived name must not make the temporary name too long
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if root is not None:  # a folder made on the way could be a link planted meanwhile
            check_output(path, root)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        check_output(path, root)  # the target may have appeared while we wrote
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> None:
    with atomic_path(path, root=root) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, *, root: str | Path | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), root=root)


def atomic_write_json(path: str | Path, payload: Any, *, root: str | Path | None = None) -> None:
    """Write ``payload`` as indented JSON, atomically; NumPy scalars and arrays become plain."""
    import json

    text = json.dumps(payload, indent=1, default=_plain) + "\n"
    atomic_write_text(path, text, root=root)


def atomic_write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], *,
                      floats: str = "{}") -> Path:  # fmt: skip
    """Write ``rows`` as a CSV, atomically: the columns every row's keys in first-seen order, a
    missing value or None empty, floats formatted by ``floats`` (``"{:.6g}"``)."""
    import csv
    import io

    header = list(dict.fromkeys(k for row in rows for k in row))

    def text(value: Any) -> Any:
        if value is None:
            return ""
        return floats.format(value) if isinstance(value, float) else value

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([text(row.get(k)) for k in header] for row in rows)
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def safe_name(text: str, *, max_length: int = 64, default: str = "unnamed") -> str:
    """``text`` as one file-name component: ``[A-Za-z0-9._-]``, no leading dot, bounded length.

    Other characters (path separators, ``..``, control characters, spaces) become ``_``. A name
    cut to ``max_length`` ends in a short hash of the whole, so distinct long names stay distinct.
    """
    name = _UNSAFE.sub("_", str(text)).lstrip(".")
    if not name.strip("_"):
        return default
    if len(name) > max_length:
        digest = hashlib.sha256(str(text).encode("utf-8", "surrogateescape")).hexdigest()[:10]
        name = f"{name[: max_length - 11]}_{digest}"
    return name


def safe_uid(uid: str) -> str:
    """A DICOM UID as a file-name component: kept when valid (digits and dots, 64 at most)."""
    text = str(uid).strip().rstrip("\0")
    if len(text) <= 64 and _UID.match(text):
        return text
    return safe_name(text, max_length=64, default="unknown")


def ensure_outside(output: str | Path, *inputs: str | Path) -> None:
    """Refuse an ``output`` that would write into an input folder or over an input file.

    Each input must exist. A folder given as input is read-only as a whole: nothing is written
    inside it. A file given as input may have new files written beside it, but not over it.
    """
    out = Path(output).resolve()
    for item in inputs:
        given = Path(item)
        if not given.exists():
            raise MedlensError("no such file or folder", given)
        src = given.resolve()
        if src.is_dir():
            if out == src or src in out.parents:
                raise MedlensError(f"output would be written inside the input folder {src}", output)
        elif out == src:
            raise MedlensError(f"output would overwrite the input file {src}", output)
