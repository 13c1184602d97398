"""The ``medlens`` command line: summaries, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medlens._data_path import data_root
from medlens.cli.main import main

DATA = data_root()
needs_data = pytest.mark.skipif(
    not (DATA / "dicom").is_dir(), reason=f"real data not found at {DATA} (set MEDLENS_DATA)"
)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, medlens.cli.main as m\n"
        "names = ('torch', 'pydicom', 'nibabel', 'scipy', 'sklearn')\n"
        "heavy = [n for n in names if n in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = subprocess.run(
        [sys.executable, "-m", "medlens.cli.main", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "info" in result.stdout and "datasets" in result.stdout


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("medlens ")


@needs_data
def test_info_dicom_series_json(capsys):
    code, out, _ = run(capsys, "info", DATA / "dicom" / "mr_t1_brain", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["shape"] == [32, 256, 256]
    assert summary["spacing"] == pytest.approx([1.0547, 1.0547, 1.2])
    assert summary["modality"] == "MR"
    assert len(summary["origin"]) == 3 and len(summary["direction"]) == 3
    assert summary["orientation"] == "PIR"
    assert "patient_id" not in summary  # summaries never carry identifiers


@needs_data
def test_info_nifti_and_table(capsys):
    path = DATA / "totalsegmentator" / "ct_small" / "example_ct_sm.nii.gz"
    code, out, _ = run(capsys, "info", path, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["shape"] == [30, 101, 122] and summary["spacing"] == [3, 3, 3]
    assert summary["intensity"]["min"] < -500  # Hounsfield units: air
    code, out, _ = run(capsys, "info", path)
    assert code == 0 and "spacing" in out and "orientation" in out


@needs_data
def test_info_medmnist_dataset(capsys):
    code, out, _ = run(capsys, "info", DATA / "medmnist" / "breastmnist.npz", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["kind"] == "dataset"
    assert summary["splits"]["train"]["num_samples"] == 546
    assert summary["splits"]["val"]["num_samples"] == 78


@needs_data
def test_info_lists_several_series(tmp_path, capsys):
    shutil.copytree(DATA / "dicom" / "fmri_epi_human", tmp_path / "a")
    shutil.copytree(DATA / "dicom" / "mr_t1_brain", tmp_path / "b")
    code, out, _ = run(capsys, "info", tmp_path, "--json")
    assert code == 0
    series = json.loads(out)["series"]
    assert sorted(s["files"] for s in series) == [32, 45]
    uid = next(s["series_uid"] for s in series if s["files"] == 32)
    code, out, _ = run(capsys, "info", tmp_path, "--series", uid, "--json")
    assert code == 0 and json.loads(out)["shape"] == [32, 256, 256]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
        (lambda p: (p / "x.dcm").write_bytes(os.urandom(600)) and p / "x.dcm", "DICOM"),
        (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "not a recognised"),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    code, _, err = run(capsys, "info", path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in err


def test_debug_shows_traceback(tmp_path, capsys):
    code, _, err = run(capsys, "--debug", "info", tmp_path / "missing.nii")
    assert code == 1 and "Traceback" in err


def test_usage_error_exit_code(capsys):
    code, _, _ = run(capsys, "info")
    assert code == 2


def test_demo_synthetic(tmp_path, capsys):
    code, out, _ = run(
        capsys, "demo", "--synthetic", "--output", tmp_path / "demo", "--epochs", "3"
    )
    assert code == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["dicom_series"]["shape"] == [24, 64, 64]
    assert summary["dicom_series"]["modality"] == "CT"
    assert summary["nifti"]["spacing"] == summary["dicom_series"]["spacing"]
    assert summary["dataset"]["splits"]["train"]["num_samples"] == 320
    run_folder = tmp_path / "demo" / "classifier"
    assert (run_folder / "report.html").is_file() and "Report:" in out
    assert json.loads((run_folder / "metrics.json").read_text())["auc"]["value"] > 0.8
    # a second demo reuses the finished run
    code, out, _ = run(capsys, "demo", "--synthetic", "--output", tmp_path / "demo")
    assert code == 0 and "already trained" in out


def test_datasets_split(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    np.savez(
        tmp_path / "in" / "toy.npz",
        train_images=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8),
        train_labels=np.repeat([[0], [1]], 20, axis=0),
    )
    out_file = tmp_path / "out" / "splits.json"
    code, _, err = run(
        capsys, "datasets", "split", tmp_path / "in/toy.npz", "-o", out_file, "-k", "4"
    )
    assert code == 0, err
    folds = json.loads(out_file.read_text())
    assert len(folds["folds"] if isinstance(folds, dict) else folds) == 4
    before = (tmp_path / "in/toy.npz").read_bytes()
    # a new file beside an input file is fine; over the input, or inside an input folder, not
    code, _, err = run(
        capsys, "datasets", "split", tmp_path / "in/toy.npz", "-o", tmp_path / "in/s.json"
    )
    assert code == 0, err
    code, _, err = run(
        capsys, "datasets", "split", tmp_path / "in/toy.npz", "-o", tmp_path / "in/toy.npz"
    )
    assert code == 1 and "would overwrite the input file" in err
    assert (tmp_path / "in/toy.npz").read_bytes() == before
    code, _, err = run(capsys, "datasets", "split", tmp_path / "in", "-o", tmp_path / "in/t.json")
    assert code == 1 and "input folder" in err and not (tmp_path / "in/t.json").exists()


@needs_data
def test_convert_hc18_refuses_to_write_into_input(tmp_path, capsys):
    src = tmp_path / "hc18"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    lines = (DATA / "hc18" / "labels.csv").read_text().splitlines()[:3]
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    for line in lines[1:]:
        name = line.split(",")[0]
        shutil.copy(DATA / "hc18" / "images" / name, src / "images" / name)
        note = name.replace(".png", "_Annotation.png")
        shutil.copy(DATA / "hc18" / "annotations" / note, src / "annotations" / note)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    code, _, err = run(capsys, "datasets", "convert", "hc18", src, src / "out")
    assert code == 1 and "input" in err
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


@needs_data
def test_convert_hc18_small(tmp_path, capsys):
    code, _, err = run(
        capsys, "datasets", "convert", "hc18", DATA / "hc18", tmp_path / "hc", "--limit", "3"
    )
    assert code == 0, err
    spec = json.loads((tmp_path / "hc" / "dataset.json").read_text())
    assert spec["labels"] == {"background": 0, "head": 1}
    assert len(list((tmp_path / "hc" / "labelsTr").iterdir())) == 3
    code, out, _ = run(capsys, "info", tmp_path / "hc", "--json")
    assert code == 0 and json.loads(out)["num_samples"] == 3


def test_download_against_local_server(tmp_path, capsys):
    import hashlib
    import http.server
    import threading

    payload = b"medlens test payload" * 100
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "breastmnist.npz").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "srv"), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from medlens.data import download

        md5 = hashlib.md5(payload).hexdigest()
        original = dict(download.MEDMNIST_MD5["breastmnist"])
        download.MEDMNIST_MD5["breastmnist"][28] = md5
        try:
            code, out, err = run(
                capsys, "datasets", "download", "medmnist", "breastmnist",
                "--cache-dir", tmp_path / "cache",
                "--base-url", f"http://127.0.0.1:{server.server_port}",
            )  # fmt: skip
        finally:
            download.MEDMNIST_MD5["breastmnist"].update(original)
    finally:
        server.shutdown()
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == payload
