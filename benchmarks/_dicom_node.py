"""The DICOM node against a real PACS: seconds from the last image stored to the SEG back.

Orthanc (``medlens.testing.orthanc``: loopback, authentication, DICOMweb) holds the real
32-slice MR T1 series, stored by C-STORE as a scanner would. ``medlens dicom-node`` runs as its
own process, as a hospital runs it, with ``--send-to`` Orthanc. Each repeat: Orthanc sends the
series to the node (a routed C-STORE, synchronous: it returns when the node has stored the last
instance); the clock runs from then until the new SEG series is listed in the study in Orthanc.
That time holds the node's ``--settle-s`` wait (when a series counts as complete), reading the
series, the 3D U-Net's prediction, writing the DICOM SEG and sending it back. Beside it, the
same reading, prediction and SEG on the local series in this process
(``dicom_node_offline_seconds``): what the node adds beyond its settle time is the difference.

The model: ``--dicom-segmenter RUN``, or the plan's default 3D U-Net for the MR volume trained
here for one epoch (``medlens.testing.tiny.mr_volumes``: labels from an intensity threshold;
its speed, not its accuracy, is measured).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from _common import log

SETTLE_S = 1.0


def measure_node(root: Path, work: Path, run: Path | None, repeats: int = 3) -> dict:
    """The node's figures (``dicom_node_seconds`` the median over ``repeats``), or a status."""
    from medlens.testing.orthanc import orthanc, orthanc_missing

    missing = orthanc_missing()
    if missing is not None:
        return {"dicom_node_seconds": None, "dicom_node_status": missing}
    series = root / "dicom" / "mr_t1_brain"
    run = run or _train_default(work / "mr-segmenter", series)
    files = sorted(p for p in series.iterdir() if p.is_file())
    with orthanc() as pacs:
        from medlens.serve.dicom_node import Peer, send_c_store
        from medlens.testing.orthanc import node_process

        send_c_store(files, Peer(pacs.aet, "127.0.0.1", pacs.dicom_port), "SCANNER")
        study = pacs.rest("GET", "/studies")[0]
        source = pacs.series_of_study(study)[0]["ID"]
        options = ("--send-to", pacs.peer, "--settle-s", str(SETTLE_S))
        with node_process(run, *options) as (node, port):
            pacs.add_modality("medlens", "MEDLENS", port)
            seconds = []
            for i in range(repeats + 1):  # the first, a warm-up
                before = _segs(pacs, study)
                pacs.send("medlens", [source])
                stored = time.perf_counter()
                while _segs(pacs, study) == before:
                    if node.poll() is not None or time.perf_counter() - stored > 600:
                        raise RuntimeError("no SEG came back from the node")
                    time.sleep(0.02)
                took = time.perf_counter() - stored
                if i:
                    seconds.append(took)
                log(f"dicom node: SEG back {took:.2f} s after the last instance")
    offline = _offline(run, series, work / "offline-seg")
    median = statistics.median(seconds)
    return {
        "dicom_node_offline_seconds": round(offline, 2),
        "dicom_node_seconds": round(median, 2),
        "dicom_node_seconds_all": [round(s, 2) for s in seconds],
        "dicom_node_settle_s": SETTLE_S,
        "dicom_node_seconds_beyond_settle": round(median - SETTLE_S, 2),
        "dicom_node_series": f"{len(files)}-slice MR T1 (real), routed by Orthanc",
        "dicom_node_model": str(run),
        "dicom_node_status": "measured",
    }


def _offline(run: Path, series: Path, out: Path) -> float:
    """Seconds for the same work on the local series, as ``medlens predict`` does it (reading,
    predicting, writing the SEG): the second of two runs (the first warms up)."""
    from medlens.tasks.registry import load_predictor

    predictor = load_predictor(run)
    context = {"model_name": "bench", "model_version": "bench"}
    took = []
    for _ in range(2):
        start = time.perf_counter()
        predictor.dicom_results(series, out, **context)
        took.append(time.perf_counter() - start)
    return took[-1]


def _segs(pacs, study: str) -> int:
    return sum(s["MainDicomTags"].get("Modality") == "SEG" for s in pacs.series_of_study(study))


def _train_default(run: Path, series: Path) -> Path:
    """The plan's default 3D U-Net for the MR volume, one short epoch."""
    from medlens.tasks.registry import get_task
    from medlens.testing.tiny import mr_volumes

    if (run / "run.json").is_file():
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    data, _ = mr_volumes(run.parent, series)
    log(f"training the default 3D U-Net on {series.name} for one short epoch into {run} ...")
    get_task("segmentation").train(
        data,
        run,
        epochs=1,
        overrides=["train.batches_per_epoch=2"],
        progress=False,
        log=lambda line: None,
    )
    return run
