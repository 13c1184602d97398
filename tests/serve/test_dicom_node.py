"""The DICOM node without a PACS: what it takes, what it skips, and that it stays up.

A pynetdicom C-STORE SCU plays the scanner; results are kept in a folder (the node's copy).
The end-to-end tests with a real PACS are in ``test_orthanc.py``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")

from medlens.cli.main import main
from medlens.errors import MedlensError
from medlens.io.dicomweb import parse_dicomweb
from medlens.serve.dicom_node import (
    DicomNode,
    NodeSettings,
    Peer,
    dicom_modalities,
    parse_peer,
    send_c_store,
)
from medlens.tasks.registry import load_predictor

from .conftest import dicom_files


def test_addresses_are_parsed_and_bad_ones_named():
    assert parse_peer("ORTHANC@127.0.0.1:4242") == Peer("ORTHANC", "127.0.0.1", 4242)
    assert parse_peer("PACS@[::1]:104") == Peer("PACS", "::1", 104)
    for bad in ("ORTHANC:4242", "A@host", "A@host:0", "SEVENTEEN_CHARS_AE@h:1"):
        with pytest.raises(MedlensError, match="AET@HOST:PORT"):
            parse_peer(bad)
    a = parse_dicomweb("dicomweb://u:p%40ss@pacs:8042/dicom-web/studies/1.2/series/3.4")
    assert (a.base, a.study, a.series, a.username, a.password) == (
        "http://pacs:8042/dicom-web",
        "1.2",
        "3.4",
        "u",
        "p@ss",
    )
    assert "p@ss" not in str(a) and str(a).endswith("/studies/1.2/series/3.4")
    assert parse_dicomweb("dicomwebs://pacs/dicom-web").base == "https://pacs/dicom-web"
    for bad in (
        "http://pacs/dicom-web",
        "dicomweb://pacs/dicom-web/studies",
        "dicomweb://pacs/dicom-web/series/1.2",
    ):
        with pytest.raises(MedlensError):
            parse_dicomweb(bad)
    assert dicom_modalities("MRI") == {"MR"} and dicom_modalities("CT,MR") == {"CT", "MR"}
    assert dicom_modalities(None) is None and dicom_modalities("unknown") is None


def _node(run: Path, tmp: Path, **settings) -> DicomNode:
    predictor = load_predictor(run)
    lines: list[str] = []
    options = {"port": 0, "settle_s": 0.3, "keep": tmp / "results", "spool": tmp / "spool"}
    node = DicomNode(
        predictor,
        NodeSettings(**{**options, **settings}),
        model_name="tiny",
        model_version="test",
        log=lines.append,
    )
    node.lines = lines  # type: ignore[attr-defined]
    node.start()
    return node


def test_node_predicts_series_skips_what_it_cannot_take_and_stays_up(
    mr_segmenter, t1_dir, ct_dir, tmp_path
):
    node = _node(mr_segmenter, tmp_path, modalities=frozenset({"MR"}))
    peer = Peer("MEDLENS", "127.0.0.1", node.port)
    try:
        # garbage on the port, then an association that is dropped: the node does not care
        with socket.create_connection(("127.0.0.1", node.port)) as s:
            s.sendall(b"\x01\x00GET / HTTP/1.1\r\n\r\n" * 10)
        # an instance without UIDs is refused with a failure status
        blank = pydicom.dcmread(dicom_files(t1_dir)[0])
        blank.SeriesInstanceUID = ""
        blank.save_as(tmp_path / "blank.dcm")
        with pytest.raises(MedlensError, match=r"did not store blank\.dcm"):
            send_c_store([tmp_path / "blank.dcm"], peer)
        # a CT series for an MR model, and a report (no pixels): accepted, skipped
        ct = pydicom.dcmread(dicom_files(ct_dir)[0])
        ct.SOPClassUID, ct.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
        ct.SeriesInstanceUID, ct.StudyInstanceUID = "1.2.3.4", "1.2.3"
        ct.save_as(tmp_path / "ct.dcm")
        send_c_store([tmp_path / "ct.dcm"], peer)
        report = pydicom.dcmread(dicom_files(t1_dir)[0])
        del report.PixelData
        report.SOPClassUID, report.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.9"
        report.SeriesInstanceUID, report.Modality = "1.2.3.8", "SR"
        report.save_as(tmp_path / "report.dcm")
        send_c_store([tmp_path / "report.dcm"], peer)
        # the wrong called AE title is refused at association
        with pytest.raises(MedlensError, match="refused"):
            send_c_store(dicom_files(t1_dir)[:1], Peer("OTHER", "127.0.0.1", node.port))
        started = time.monotonic()
        send_c_store(dicom_files(t1_dir), peer)  # the 32-slice MR series
        assert node.wait_idle(120)
        first = time.monotonic() - started
        send_c_store(dicom_files(t1_dir), peer)  # again: a new job, a second SEG
        assert node.wait_idle(120)
    finally:
        node.stop()
    text = "\n".join(node.lines)
    assert "refused an instance" in text and "no valid Series/SOP UID" in text
    assert "series 1.2.3.4 (CT): skipped, the model takes MR" in text
    assert "series 1.2.3.8 (SR): skipped, it holds no image" in text
    sent = [h for h in node.history if h["status"] == "sent"]
    assert len(sent) == 2 and all(h["instances"] == 32 and h["results"] == 1 for h in sent)
    assert first < 60
    segs = sorted((tmp_path / "results").glob("*.seg.dcm"))
    assert len(segs) == 1  # the same name both times: the copy kept is the newest
    # the SEG is what the predictor answers for the series, frame by frame on its instances
    predictor = load_predictor(mr_segmenter)
    image = predictor.read(t1_dir)[0]
    expected = predictor.predict([image])[0].labels.array
    assert expected.any()
    uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in image.meta["files"]
    ]
    seg = hd.seg.segread(segs[0])
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, expected)
    assert seg.StudyInstanceUID == image.meta["study_uid"]
    assert not any((tmp_path / "spool" / "incoming").iterdir())  # nothing left behind


def test_series_the_model_refuses_is_skipped_and_results_never_sent_are_kept(
    tiny_runs, mr_segmenter, t1_dir, tmp_path
):
    """A series to a 2D segmenter (no DICOM SEG of slices) is skipped, the node goes on; results
    a PACS does not take stay in the spool."""
    node = _node(tiny_runs["segmentation"], tmp_path / "2d")
    try:
        send_c_store(dicom_files(t1_dir)[:3], Peer("MEDLENS", "127.0.0.1", node.port))
        assert node.wait_idle(120)
    finally:
        node.stop()
    assert [h["status"] for h in node.history] == ["skipped"]
    assert "needs a 3D model and a DICOM series" in node.history[0]["reason"]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    node = _node(mr_segmenter, tmp_path, keep=None, send_to=Peer("PACS", "127.0.0.1", port))
    try:
        send_c_store(dicom_files(t1_dir), Peer("MEDLENS", "127.0.0.1", node.port))
        assert node.wait_idle(120)
    finally:
        node.stop()
    assert any("sending failed (try 3 of 3)" in line for line in node.lines)
    kept = list((tmp_path / "spool" / "unsent").rglob("*.seg.dcm"))
    assert len(kept) == 1 and pydicom.dcmread(kept[0]).Modality == "SEG"


def test_dicom_node_command_names_bad_options(mr_segmenter, capsys):
    assert main(["dicom-node", str(mr_segmenter)]) == 1
    assert "--send-to AET@HOST:PORT or --dicomweb" in capsys.readouterr().err
    assert main(["dicom-node", str(mr_segmenter), "--send-to", "PACS:104"]) == 1
    assert "expected AET@HOST:PORT" in capsys.readouterr().err
    assert main(["dicom-node", str(mr_segmenter), "--dicomweb", "http://x/dicom-web"]) == 1
    assert "not a dicomweb://" in capsys.readouterr().err


def test_server_answers_a_series_upload_with_a_dicom_seg(mr_segmenter, t1_dir, tmp_path):
    """``Accept: application/dicom`` gives a model's DICOM form: a SEG for a 3D segmenter."""
    import zipfile

    import httpx

    from medlens.serve import create_app, load_models

    from .conftest import running

    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in dicom_files(t1_dir):
            z.write(f, f"t1/{f.name}")
    models = load_models([mr_segmenter], names=["mr"])
    assert models[0].card["answers"] == ["json", "nifti", "seg"]
    with running(create_app(models)) as url:
        answer = httpx.post(
            f"{url}/v1/models/mr/predict",
            files={"file": archive.open("rb")},
            headers={"Accept": "application/dicom"},
            timeout=120,
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom"
    (tmp_path / "answer.dcm").write_bytes(answer.content)
    seg = pydicom.dcmread(tmp_path / "answer.dcm")
    assert seg.Modality == "SEG" and seg.SeriesDescription == "medlens segmentation"
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(dicom_files(t1_dir)[0], stop_before_pixels=True).SeriesInstanceUID
    )


def test_series_received_before_a_stop_are_predicted_after_a_restart(
    mr_segmenter, t1_dir, tmp_path
):
    import shutil

    pending = (
        tmp_path
        / "spool"
        / "incoming"
        / "1.2.840.113713.20.159720262676693100123054613456403525435"
    )
    pending.mkdir(parents=True)
    for f in dicom_files(t1_dir):
        shutil.copy(f, pending / f.name)
    node = _node(mr_segmenter, tmp_path)
    try:
        assert node.wait_idle(120)
    finally:
        node.stop()
    assert "32 instances left from before, queued" in "\n".join(node.lines)
    assert [h["status"] for h in node.history] == ["sent"]
    assert len(list((tmp_path / "results").glob("*.seg.dcm"))) == 1


def test_a_series_is_not_complete_while_its_association_is_still_delivering_it(
    mr_segmenter, t1_dir, tmp_path
):
    """A pause longer than the settle time inside one association does not split the series."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    node = _node(mr_segmenter, tmp_path, settle_s=0.3)
    files = dicom_files(t1_dir)
    try:
        ae = AE(ae_title="SLOWSCANNER")
        ae.add_requested_context(pydicom.dcmread(files[0]).SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDLENS")
        assert assoc.is_established
        for i, f in enumerate(files):
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
            if i == 15:
                time.sleep(1.5)  # five settle times, the association still open
        assoc.release()
        assert node.wait_idle(120)
    finally:
        node.stop()
    assert [(h["status"], h["instances"]) for h in node.history] == [("sent", 32)]
