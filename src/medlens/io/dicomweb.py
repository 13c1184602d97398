"""DICOMweb: studies and series read from a PACS (QIDO-RS, WADO-RS), results stored (STOW-RS).

Addresses are written ``dicomweb://HOST:PORT/PATH/studies/UID[/series/UID]`` (plain HTTP) or
``dicomwebs://...`` (HTTPS); ``PATH`` is the server's DICOMweb root (Orthanc: ``/dicom-web``).
Credentials come from the address (``dicomweb://user:password@host...``) or, to keep them off
the command line, from ``MEDLENS_DICOMWEB_USER`` and ``MEDLENS_DICOMWEB_PASSWORD``. The work is
done by ``dicomweb-client`` (the ``serve`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medlens.errors import MedlensError

__all__ = ["DicomWebAddress", "is_dicomweb", "parse_dicomweb", "retrieve", "store"]

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}


def is_dicomweb(text: str | Path) -> bool:
    """Whether ``text`` is a ``dicomweb://`` or ``dicomwebs://`` address."""
    return str(text).split("://", 1)[0].lower() in SCHEMES and "://" in str(text)


@dataclass(frozen=True)
class DicomWebAddress:
    """A parsed address: the service's base URL, and the study and series it names (if any)."""

    base: str
    study: str | None = None
    series: str | None = None
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never the password
        where = f"/studies/{self.study}" if self.study else ""
        where += f"/series/{self.series}" if self.series else ""
        return self.base + where

    def client(self):
        """A ``dicomweb_client.DICOMwebClient`` for the service (authenticated if given)."""
        try:
            from dicomweb_client.api import DICOMwebClient
            from dicomweb_client.session_utils import create_session, create_session_from_user_pass
        except ImportError as exc:
            raise MedlensError(
                f"DICOMweb needs the serve extra ({exc.name} is missing): "
                "pip install 'medlens[serve]'"
            ) from None
        if self.username is not None:
            session = create_session_from_user_pass(self.username, self.password or "")
        else:
            session = create_session()
        return DICOMwebClient(self.base, session=session, timeout=(10, 300))


def parse_dicomweb(text: str | Path) -> DicomWebAddress:
    """``dicomweb://[user:password@]host[:port]/root[/studies/UID[/series/UID]]`` parsed.

    Raises:
        MedlensError: not such an address, or a ``series`` without its ``studies``.
    """
    text = str(text)
    if not is_dicomweb(text):
        raise MedlensError(f"{text}: not a dicomweb:// or dicomwebs:// address")
    parts = urlsplit(text)
    if not parts.hostname:
        raise MedlensError(f"{text}: no host in the DICOMweb address")
    segments = [s for s in parts.path.split("/") if s]
    study = series = None
    if "studies" in segments:
        at = segments.index("studies")
        rest, segments = segments[at + 1 :], segments[:at]
        if not rest:
            raise MedlensError(f"{text}: 'studies' without a Study Instance UID")
        study = rest[0]
        if len(rest) >= 3 and rest[1] == "series":
            series = rest[2]
        elif len(rest) != 1:
            raise MedlensError(f"{text}: expected .../studies/UID or .../studies/UID/series/UID")
    elif "series" in segments:
        raise MedlensError(f"{text}: a series needs its study (.../studies/UID/series/UID)")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = f"{SCHEMES[parts.scheme.lower()]}://{netloc}/" + "/".join(segments)
    user = unquote(parts.username) if parts.username else os.environ.get("MEDLENS_DICOMWEB_USER")
    password = (
        unquote(parts.password)
        if parts.password is not None
        else os.environ.get("MEDLENS_DICOMWEB_PASSWORD")
    )
    return DicomWebAddress(base.rstrip("/"), study, series, user, password)


def retrieve(address: DicomWebAddress, folder: Path, *, log=None) -> list[Path]:
    """Every image series of the study (or the one series) the address names, each written
    into ``folder/<SeriesInstanceUID>/``; returns the series folders. Series without pixels
    (SR, SEG, presentation states) are left on the server.

    Raises:
        MedlensError: no study in the address, the server unreachable or refusing, or no series.
    """
    if address.study is None:
        raise MedlensError(f"{address}: name a study to read (.../studies/UID)")
    client = address.client()
    try:
        if address.series is not None:
            wanted = [address.series]
        else:
            found = client.search_for_series(study_instance_uid=address.study)
            wanted = [
                s["0020000E"]["Value"][0]
                for s in found
                if s.get("00080060", {}).get("Value", [""])[0] not in NO_PIXELS
            ]
        if not wanted:
            raise MedlensError(f"{address}: the study holds no image series")
        folders = []
        for uid in wanted:
            target = folder / uid
            target.mkdir(parents=True, exist_ok=True)
            count = 0
            for ds in client.iter_series(address.study, uid):
                ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
                count += 1
            if log is not None:
                log(f"retrieved series {uid}: {count} instances")
            folders.append(target)
    except MedlensError:
        raise
    except Exception as exc:  # requests' and the server's errors, named once
        raise MedlensError(f"{address}: DICOMweb retrieve failed: {_reason(exc)}") from None
    return folders


def store(address: DicomWebAddress, files: Sequence[Path]) -> int:
    """Store DICOM files on the server (STOW-RS); returns how many it accepted.

    Raises:
        MedlensError: the server unreachable, or refusing any instance.
    """
    import pydicom

    if not files:
        return 0
    datasets = [pydicom.dcmread(f) for f in files]
    try:
        answer = address.client().store_instances(datasets)
    except Exception as exc:
        raise MedlensError(f"{address}: DICOMweb store failed: {_reason(exc)}") from None
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
        raise MedlensError(f"{address}: the server refused {len(failed)} instance(s) ({reasons})")
    return len(datasets)


#: modalities of series that hold no image for a model
NO_PIXELS = frozenset({"SR", "SEG", "PR", "KO", "RTSTRUCT", "RTPLAN", "DOC", "REG"})


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
