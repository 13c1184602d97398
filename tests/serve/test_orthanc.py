"""End to end with a real PACS: Orthanc (with DICOMweb and authentication) on loopback.

The real MR T1 series and the real JPEG 2000 CT series are stored into Orthanc by C-STORE;
Orthanc routes them to the DICOM node (C-STORE to a registered modality), which predicts with
a model trained in seconds and sends a DICOM SEG or SR back. Orthanc then lists the result in
the source's study; it is read back with highdicom and compared with ``medlens predict``. The
same through DICOMweb: ``medlens predict --input dicomweb://... --output dicomweb://...``.
Skipped with the reason where Orthanc or its DICOMweb plugin is not installed.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("dicomweb_client")

from medlens.cli.main import main
from medlens.io.dicomweb import parse_dicomweb
from medlens.serve.dicom_node import DicomNode, NodeSettings, Peer, parse_peer, send_c_store
from medlens.tasks.registry import load_predictor

from .conftest import dicom_files


def _store(pacs, folder: Path) -> tuple[str, str]:
    """C-STORE a series into Orthanc; its (study id, series id) there."""
    files = dicom_files(folder)
    send_c_store(files, Peer(pacs.aet, "127.0.0.1", pacs.dicom_port), "SCANNER")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return pacs.lookup(str(ds.StudyInstanceUID)), pacs.lookup(str(ds.SeriesInstanceUID))


def _results(pacs, study: str, modality: str, old: set[str], timeout: float = 120) -> list:
    """The instances of the ``modality`` series that appear in the study beyond ``old``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            s
            for s in pacs.series_of_study(study)
            if s["MainDicomTags"].get("Modality") == modality and s["ID"] not in old
        ]
        if found:
            return [
                pydicom.dcmread(io.BytesIO(pacs.rest("GET", f"/instances/{i}/file", raw=True)))
                for s in found
                for i in s["Instances"]
            ]
        time.sleep(0.2)
    raise AssertionError(f"no new {modality} series appeared in Orthanc's study {study}")


def _series_ids(pacs, study: str) -> set[str]:
    return {s["ID"] for s in pacs.series_of_study(study)}


def _route(pacs, run: Path, series_ids: list[str], modality_name: str) -> DicomNode:
    """A node for ``run`` sending to Orthanc; Orthanc routes the series to it."""
    predictor = load_predictor(run)
    node = DicomNode(
        predictor,
        NodeSettings(port=0, send_to=parse_peer(pacs.peer), settle_s=0.5),
        model_name=run.name,
        model_version=run.name,
        log=lambda line: None,
    )
    node.start()
    pacs.add_modality(modality_name, "MEDLENS", node.port)
    pacs.send(modality_name, series_ids)
    return node


def _round_trip(pacs, run: Path, folder: Path, name: str, modality: str):
    """Store ``folder``'s series in Orthanc, have Orthanc route it to a node for ``run``, and
    wait for the node's one result (of ``modality``) in the study: ``(result, node)``."""
    study, series = _store(pacs, folder)
    old = _series_ids(pacs, study)
    node = _route(pacs, run, [series], name)
    try:
        (result,) = _results(pacs, study, modality, old)
    finally:
        node.stop()
    return result, node


def _expected(run: Path, series: Path):
    """What ``medlens predict``'s predictor answers for the series, and the series' image."""
    predictor = load_predictor(run)
    image = predictor.read(series)[0]
    return predictor.predict([image])[0], image


def _instance_uids(image) -> list[str]:
    return [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in image.meta["files"]
    ]


def test_mr_series_routed_to_the_node_comes_back_as_a_seg_in_its_study(pacs, mr_segmenter, t1_dir):
    seg, node = _round_trip(pacs, mr_segmenter, t1_dir, "medlens-seg", "SEG")
    prediction, image = _expected(mr_segmenter, t1_dir)
    assert prediction.labels.array.any()
    assert seg.StudyInstanceUID == image.meta["study_uid"]
    assert seg.FrameOfReferenceUID == image.meta["frame_of_reference_uid"]
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "bright"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "run"
    uids = _instance_uids(image)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == image.meta["series_uid"]
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(uids)
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, prediction.labels.array)
    assert [h["status"] for h in node.history] == ["sent"]


def test_jpeg2000_ct_series_routed_to_the_node_comes_back_as_a_structured_report(
    pacs, volume_classifier, ct_for_pacs
):
    report, _ = _round_trip(pacs, volume_classifier, ct_for_pacs, "medlens-sr", "SR")
    series = pacs.lookup(str(pydicom.dcmread(dicom_files(ct_for_pacs)[0]).SeriesInstanceUID))
    stored = pacs.rest("GET", f"/series/{series}/instances")
    syntax = pacs.rest("GET", f"/instances/{stored[0]['ID']}/metadata/TransferSyntax", raw=True)
    assert syntax.decode().strip() == "1.2.840.10008.1.2.4.90"  # kept as JPEG 2000 lossless
    prediction, image = _expected(volume_classifier, ct_for_pacs)
    assert report.StudyInstanceUID == image.meta["study_uid"]
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == image.meta["series_uid"]
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == set(
        _instance_uids(image)
    )
    sr = hd.sr.Comprehensive3DSR.from_dataset(report)
    group = sr.content.get_image_measurement_groups()[0]
    probabilities = {
        m.name.meaning: float(m.value)
        for m in group.get_measurements()
        if m.name.meaning.startswith("Probability")
    }
    expected = prediction.to_json()["probabilities"]
    assert len(probabilities) == len(expected) >= 2
    for name, p in expected.items():
        found = [v for k, v in probabilities.items() if name in k]
        assert found and abs(found[0] - p) < 1e-4


def test_predict_reads_a_study_and_stores_its_seg_through_dicomweb(
    pacs, mr_segmenter, t1_dir, tmp_path, capsys
):
    study, _ = _store(pacs, t1_dir)
    study_uid = pacs.rest("GET", f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    before = len(pacs.series_of_study(study))
    source = f"{pacs.dicomweb}/studies/{study_uid}"
    code = main(["predict", str(mr_segmenter), "--input", source, "--output", pacs.dicomweb])
    assert code == 0, capsys.readouterr().err
    assert "1 DICOM SEG stored" in capsys.readouterr().out
    assert len(pacs.series_of_study(study)) == before + 1
    # found again by QIDO-RS, and its pixels are those of medlens predict on the local series
    client = parse_dicomweb(pacs.dicomweb).client()
    found = client.search_for_series(study_uid, search_filters={"Modality": "SEG"})
    assert found
    seg_series = found[-1]["0020000E"]["Value"][0]
    (seg,) = client.retrieve_series(study_uid, seg_series)
    prediction, image = _expected(mr_segmenter, t1_dir)
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        _instance_uids(image), combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, prediction.labels.array)
    # and a study read into masks on disk, as from a folder
    assert (
        main(["predict", str(mr_segmenter), "--input", source, "--output", str(tmp_path / "masks")])
        == 0
    )
    assert len(list((tmp_path / "masks").rglob("*.seg.dcm"))) == 1


def test_dicomweb_failures_are_one_clear_line(pacs, mr_segmenter, tmp_path, capsys):
    wrong = pacs.dicomweb.replace(pacs.password, "not-the-password")
    out = str(tmp_path / "masks")
    assert (
        main(["predict", str(mr_segmenter), "--input", f"{wrong}/studies/1.2.3", "--output", out])
        == 1
    )
    err = capsys.readouterr().err
    assert "DICOMweb retrieve failed: HTTP 401" in err and "not-the-password" not in err
    assert (
        main(
            [
                "predict",
                str(mr_segmenter),
                "--input",
                f"{pacs.dicomweb}/studies/1.2.3",
                "--output",
                out,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "1.2.3" in err and pacs.password not in err
    assert not Path(out).exists()


def test_the_node_command_sends_its_seg_by_stow_rs(pacs, mr_segmenter, t1_dir):
    """``medlens dicom-node --dicomweb`` as its own process, as a hospital runs it."""
    from medlens.testing.orthanc import node_process

    study, series = _store(pacs, t1_dir)
    old = _series_ids(pacs, study)
    options = ("--dicomweb", pacs.dicomweb, "--settle-s", "0.5")
    with node_process(mr_segmenter, *options) as (node, port):
        pacs.add_modality("medlens-stow", "MEDLENS", port)
        pacs.send("medlens-stow", [series])
        (seg,) = _results(pacs, study, "SEG", old)
    assert len(pacs.series_of_study(study)) == len(old) + 1
    assert seg.Modality == "SEG"
    assert "takes MR" in node.log and "1 SEG sent to http://127.0.0.1" in node.log
    assert pacs.password not in node.log
