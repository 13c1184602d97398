"""Download MedMNIST v2 ``.npz`` files from their official Zenodo record, verified and resumable.

The files are large (up to several GB at 224 px) and Zenodo connections do drop, so a download
goes to ``<file>.part``, continues from where it stopped with an HTTP ``Range`` request, is checked
against the MD5 the official ``medmnist`` package publishes, and only then is renamed into place:
the cache never holds a file that has not been verified. Only the standard library does HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from medlens.errors import MedlensError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "CACHE_ENV",
    "MEDMNIST_MD5",
    "MEDMNIST_RECORD_URL",
    "MEDMNIST_URL_ENV",
    "DownloadError",
    "default_cache_dir",
    "download_file",
    "download_medmnist",
    "file_md5",
    "medmnist_filename",
    "medmnist_url",
]

#: The MedMNIST v2 record on Zenodo (the one the official ``medmnist`` 3.x package downloads from).
MEDMNIST_RECORD_URL = "https://zenodo.org/records/10519652/files"
#: Environment variable that replaces :data:`MEDMNIST_RECORD_URL` (a mirror, a local server).
MEDMNIST_URL_ENV = "MEDLENS_MEDMNIST_URL"
#: Environment variable naming medlens's cache root (MedMNIST files go in its ``medmnist`` folder).
CACHE_ENV = "MEDLENS_CACHE"

#: MD5 of every official MedMNIST v2 file, by dataset name and image size, as published in the
#: ``INFO`` table of the official ``medmnist`` package (v3.0.2, ``medmnist/info.py``: keys ``MD5``
#: for 28 px and ``MD5_64``/``MD5_128``/``MD5_224``). 2D sets come at 28/64/128/224 px, 3D sets
#: at 28/64 px.
MEDMNIST_MD5: dict[str, dict[int, str]] = {
    "pathmnist": {
        28: "a8b06965200029087d5bd730944a56c1",
        64: "55aa9c1e0525abe5a6b9d8343a507616",
        128: "ac42d08fb904d92c244187169d1fd1d9",
        224: "2c51a510bcdc9cf8ddb2af93af1eadec",
    },
    "chestmnist": {
        28: "02c8a6516a18b556561a56cbdd36c4a8",
        64: "9de6cd0b934ebb5b7426cfba5efbae16",
        128: "db107e5590b27930b62dbaf558aebee3",
        224: "45bd33e6f06c3e8cdb481c74a89152aa",
    },
    "dermamnist": {
        28: "0744692d530f8e62ec473284d019b0c7",
        64: "b70a2f5635c6199aeaa28c31d7202e1f",
        128: "2defd784463fa5243564e855ed717de1",
        224: "8974907d8e169bef5f5b96bc506ae45d",
    },
    "octmnist": {
        28: "c68d92d5b585d8d81f7112f81e2d0842",
        64: "e229e9440236b774d9f0dfef9d07bdaf",
        128: "0a97e76651ace45c5d943ee3f65b63ae",
        224: "abc493b6d529d5de7569faaef2773ba3",
    },
    "pneumoniamnist": {
        28: "28209eda62fecd6e6a2d98b1501bb15f",
        64: "8f4eceb4ccffa70c672198ea285246c6",
        128: "05b46931834c231683c68f40c47b2971",
        224: "d6a3c71de1b945ea11211b03746c1fe1",
    },
    "retinamnist": {
        28: "bd4c0672f1bba3e3a89f0e4e876791e4",
        64: "afda852cc34dcda56f86ad2b2457dbcc",
        128: "e48e916a24454daf90583d4e6efb1a18",
        224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
    },
    "breastmnist": {
        28: "750601b1f35ba3300ea97c75c52ff8f6",
        64: "742edef2a1fd1524b2efff4bd7ba9364",
        128: "363e4b3f8d712e9b5de15470a2aaadf1",
        224: "b56378a6eefa9fed602bb16d192d4c8b",
    },
    "bloodmnist": {
        28: "7053d0359d879ad8a5505303e11de1dc",
        64: "2b94928a2ae4916078ca51e05b6b800b",
        128: "adace1e0ed228fccda1f39692059dd4c",
        224: "b718ff6835fcbdb22ba9eacccd7b2601",
    },
    "tissuemnist": {
        28: "ebe78ee8b05294063de985d821c1c34b",
        64: "123ece2eba09d0aa5d698fda57103344",
        128: "61b955355d7425a89687b06cca3ce0c2",
        224: "b077128c4a949f0a4eb01517f9037b9c",
    },
    "organamnist": {
        28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
        64: "2dcccc29b88e6da5a01161ef20cda288",
        128: "eeae80d0a227a8d099027e1b3cfd3b60",
        224: "50747347e05c87dd3aaf92c49f9f3170",
    },
    "organcmnist": {
        28: "b9ceb9546e10131b32923c5bbeaea2b1",
        64: "3ce34a8724ea6f548e6db4744d03b6a9",
        128: "773c1f009daa3fe5d9a2a201b2a7ed94",
        224: "050f5e875dc056f6768abf94ec9995d1",
    },
    "organsmnist": {
        28: "9ab87b696fb54e2a387ebe992d6ed5f1",
        64: "53a6d115339d874c25e309a994ff46d3",
        128: "ded0c5fa01a95dc4978b956f613e9b8e",
        224: "b354719e553fbbb2513d5533f52a4cb1",
    },
    "organmnist3d": {
        28: "a0c5a1ff56af4f155c46d46fbb45a2fe",
        64: "58a2205adf14a9d0a189cb06dc78bf10",
    },
    "nodulemnist3d": {
        28: "8755a7e9e05a4d9ce80a24c3e7a256f3",
        64: "c47c5b7d457bf6332200d2ea6d64ecd8",
    },
    "adrenalmnist3d": {
        28: "bbd3c5a5576322bc4cdfea780653b1ce",
        64: "17721accfe9fb005146a47d33bc54b2f",
    },
    "fracturemnist3d": {
        28: "6aa7b0143a6b42da40027a9dda61302f",
        64: "f01d7e6316aedf4210da0da5b7437b42",
    },
    "vesselmnist3d": {
        28: "b41fd4f7e7e2feedddb201585ecafa1b",
        64: "6bb274a8846e1097066dcd64e2c4520f",
    },
    "synapsemnist3d": {
        28: "1235b78a3cd6280881dd7850a78eadb6",
        64: "43bd14ebf3af9d3dd072446fedc14d5e",
    },
}

_CHUNK = 1 << 20
_RETRY_BACKOFF_S = 1.0
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "medlens-downloader (Python urllib)"
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class DownloadError(MedlensError):
    """A download failed: HTTP error, network failure after retries, or checksum mismatch."""


class _Retry(Exception):
    """A transient failure (connection dropped, timeout, HTTP 5xx): worth another attempt."""


def medmnist_filename(name: str, size: int = 28) -> str:
    """Official file name: 28 px files have no suffix, larger ones add ``_{size}``."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def medmnist_url(name: str, size: int = 28, base_url: str | None = None) -> str:
    """URL of one file under ``base_url``, else ``$MEDLENS_MEDMNIST_URL``, else Zenodo's record."""
    base = base_url or os.environ.get(MEDMNIST_URL_ENV) or MEDMNIST_RECORD_URL
    return f"{base.rstrip('/')}/{medmnist_filename(name, size)}?download=1"


def default_cache_dir() -> Path:
    """``$MEDLENS_CACHE/medmnist`` if set, else ``~/.cache/medlens/medmnist``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "medlens"
    return base / "medmnist"


def file_md5(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """MD5 hex digest of a file, read in chunks so multi-GB files do not fill memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_table(
    checksums: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    table = {name: dict(sizes) for name, sizes in MEDMNIST_MD5.items()}
    for name, sizes in (checksums or {}).items():
        entry = table.setdefault(name.strip().lower(), {})
        for size, md5 in sizes.items():
            if not _MD5_RE.match(md5.lower()):
                raise MedlensError(f"checksum for {name} size {size} is not an MD5: {md5!r}")
            entry[int(size)] = md5.lower()
    return table


def _lookup(name: str, size: int, table: Mapping[str, Mapping[int, str]]) -> tuple[str, str]:
    key = name.strip().lower()
    if key not in table:
        raise MedlensError(
            f"unknown MedMNIST dataset {name!r}; valid names: {', '.join(sorted(table))}"
        )
    sizes = table[key]
    if size not in sizes:
        valid = ", ".join(str(s) for s in sorted(sizes))
        raise MedlensError(f"MedMNIST {key} has no size {size!r}; valid sizes: {valid}")
    return key, sizes[size]


def download_medmnist(
    name: str,
    size: int = 28,
    *,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    checksums: Mapping[str, Mapping[int, str]] | None = None,
    retries: int = 3,
) -> Path:
    """Download one MedMNIST v2 file into the cache (once) and return its verified path.

    Args:
        name: dataset name, e.g. ``"breastmnist"`` or ``"adrenalmnist3d"`` (case-insensitive).
        size: image size in pixels: 28, 64, 128 or 224 for 2D sets, 28 or 64 for 3D sets.
        cache_dir: folder for the files; default :func:`default_cache_dir`.
        base_url: folder URL to fetch from instead of the Zenodo record (a mirror); default
            ``$MEDLENS_MEDMNIST_URL``, else :data:`MEDMNIST_RECORD_URL`.
        progress: show a progress bar (bytes, speed) on stderr.
        timeout: seconds a connect or a read may stall before the attempt counts as failed.
        checksums: extra or replacement ``{name: {size: md5}}`` entries, merged over
            :data:`MEDMNIST_MD5`, so mirrors of other files (and tests) can be verified too.
        retries: further attempts after a dropped connection, a timeout or an HTTP 5xx.

    Raises:
        MedlensError: unknown name or size (the message lists the valid ones).
        DownloadError: HTTP error, network failure after the retries, or MD5 mismatch.
    """
    key, md5 = _lookup(name, size, _checksum_table(checksums))
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = folder / medmnist_filename(key, size)
    url = medmnist_url(key, size, base_url)
    return download_file(url, dest, md5, progress=progress, timeout=timeout, retries=retries)


def download_file(
    url: str,
    dest: str | Path,
    md5: str,
    *,
    progress: bool = True,
    timeout: float = 60,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` unless a file with that MD5 is already there; resumable.

    Bytes go to ``dest.part``; an interrupted transfer continues from its end with a ``Range``
    request (a server that ignores ``Range`` is read from byte zero again); on a matching MD5 the
    part file is renamed to ``dest`` atomically, on a mismatch it is deleted and an error raised.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(dest.name + ".part"))
    with _progress_bar(progress, dest.name) as bar:
        failures = 0
        while True:
            try:
                _transfer(url, part, timeout, bar)
                break
            except _Retry as exc:
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"download failed after {failures} attempts: {exc}", url
                    ) from exc
                time.sleep(_RETRY_BACKOFF_S * failures)
    digest = part.hexdigest()
    if digest != md5:
        part.path.unlink(missing_ok=True)
        raise DownloadError(
            f"MD5 mismatch (got {digest}, expected {md5}); the downloaded file was deleted", url
        )
    part.sync()
    os.replace(part.path, dest)
    return dest


class _PartFile:
    """The ``.part`` file with a running MD5, so resuming does not re-read what is on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    self._md5.update(chunk)
                    self.size += len(chunk)

    def restart(self) -> None:
        """Drop what was downloaded: the next bytes are the file's first."""
        self.path.write_bytes(b"")
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def open(self) -> BinaryIO:
        try:
            return self.path.open("ab")
        except OSError as exc:
            raise DownloadError(f"cannot write: {exc.strerror or exc}", self.path) from exc

    def append(self, f: BinaryIO, chunk: bytes) -> None:
        try:
            f.write(chunk)
        except OSError as exc:
            raise DownloadError(f"cannot write: {exc.strerror or exc}", self.path) from exc
        self._md5.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def sync(self) -> None:
        """Flush to disk before the rename, so a crash cannot leave a verified-but-empty file."""
        if not self.path.exists():  # a zero-byte download never opened the file
            self.path.write_bytes(b"")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return str(exc) or type(exc).__name__


def _transfer(url: str, part: _PartFile, timeout: float, bar: _Bar) -> None:
    """One HTTP attempt, appending to ``part``; raises :class:`_Retry` on transient failures."""
    offset = part.size
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return  # nothing left to send: the part is complete (the MD5 check will tell)
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code in _RETRYABLE_STATUS:
            raise _Retry(message) from exc
        raise DownloadError(message, url) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise _Retry(_describe(exc)) from exc

    with response:
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                part.restart()
                raise _Retry("server resumed at another offset than asked; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            if offset:  # the server ignored Range and sends the whole file
                part.restart()
            total = body
        bar.start(total, part.size)
        with part.open() as f:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry(_describe(exc)) from exc
                if not chunk:
                    break
                part.append(f, chunk)
                bar.advance(len(chunk))
    if total is not None and part.size < total:
        raise _Retry(f"connection closed after {part.size} of {total} bytes")


class _Bar:
    """Progress display: a rich bar, or nothing when progress is off."""

    def __init__(self, progress: Progress | None = None, description: str = "") -> None:
        self._progress = progress
        self._description = description
        self._task: TaskID | None = None

    def start(self, total: int | None, completed: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._description, total=total)
        self._progress.update(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n)


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Bar(progress, description)
