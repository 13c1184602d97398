"""Runs trained in seconds for the server's tests, and a real uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run per task (``medlens.testing.tiny``), trained one epoch."""
    from medlens.testing.tiny import TINY, train_tiny

    return {name: train_tiny(name, tmp_path_factory.mktemp(f"serve-{name}"))[1] for name in TINY}


@contextmanager
def running(app):
    """``app`` served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(tiny_runs):
    """Both tiny runs behind one server (names ``classifier`` and ``segmenter``), with a key."""
    from medlens.serve import ServeSettings, create_app, load_models

    models = load_models(
        [tiny_runs["classification"], tiny_runs["segmentation"]], names=["classifier", "segmenter"]
    )
    settings = ServeSettings(max_wait_ms=20, api_key="k" * 32, max_upload_mb=8)
    with running(create_app(models, settings)) as url:
        yield url, models, settings


# ----------------------------------------------------------------------------- DICOM node, PACS
@pytest.fixture(scope="session")
def mr_segmenter(tmp_path_factory, t1_dir) -> Path:
    """A 3D segmenter (modality MR) trained in seconds on the real T1 series' own volume."""
    from medlens.testing.tiny import mr_volumes, train_tiny

    root = tmp_path_factory.mktemp("mr-segmenter")
    return train_tiny("segmentation", root, lambda r: mr_volumes(r, t1_dir))[1]


@pytest.fixture(scope="session")
def volume_classifier(tmp_path_factory) -> Path:
    """A 3D classifier (any modality; volumes resized) trained in seconds."""
    from medlens.testing.tiny import train_tiny, volume_blobs

    return train_tiny("classification", tmp_path_factory.mktemp("volume-cls"), volume_blobs)[1]


@pytest.fixture(scope="session")
def ct_for_pacs(tmp_path_factory, ct_dir) -> Path:
    """The real JPEG 2000 CT series, its blank UIDs filled so that a PACS stores it.

    The shared copy was anonymised with SOP Class/Instance, Study and Series UIDs left empty;
    the instance UIDs come from the file meta, the study and series UIDs are derived from the
    Frame of Reference UID. The pixel data stays JPEG 2000 as it was, undecoded."""
    import pydicom
    from pydicom.uid import generate_uid

    out = tmp_path_factory.mktemp("ct-for-pacs")
    for file in sorted(p for p in ct_dir.iterdir() if p.is_file()):
        ds = pydicom.dcmread(file)
        anchor = str(ds.FrameOfReferenceUID)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[anchor, "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[anchor, "series"])
        ds.PatientID = ds.PatientID or "ANON-CT"
        ds.save_as(out / f"{file.name}.dcm", enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def pacs():
    """A real Orthanc with DICOMweb on loopback for the module (skipped where not installed)."""
    from medlens.testing.orthanc import orthanc, orthanc_missing

    missing = orthanc_missing()
    if missing is not None:
        pytest.skip(missing)
    with orthanc() as server:
        yield server


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())
