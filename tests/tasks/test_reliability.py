"""Issue 16's findings on the learning commands: each a regression test that failed before.

NaN inputs, special files as outputs, misleading messages, a full disk during training, a
deleted best checkpoint, foreign pickles, progress when piped, and the inputs predict accepts.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
import stat
from pathlib import Path

import numpy as np
import pytest

from medlens.cli.main import main
from medlens.tasks.classification import train_classification

from .test_classification import _blobs, _npz

QUIET = {"progress": False, "n_boot": 50, "log": lambda line: None}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliable")
    (root / "data").mkdir()
    data = _npz(root / "data" / "blobs.npz", n=(64, 24))
    run = root / "run"
    train_classification(data, run, epochs=2, seed=0, **QUIET)
    return data, run


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _one_line_error(err: str) -> None:
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in err and "unexpected" not in err, err


# ------------------------------------------------------------------------------ NaN inputs
def _nan_npz(path: Path) -> Path:
    x, y = _blobs(24, (16, 16), 2)
    images = x.astype(np.float32)
    images[0] = np.nan  # an all-NaN image
    images[3, 2, 2] = np.inf
    np.savez(path, train_images=images, train_labels=y, val_images=images, val_labels=y)
    return path


def test_nan_in_an_npz_is_refused_by_predict_evaluate_and_train(trained, tmp_path, capsys):
    _data, run = trained
    (tmp_path / "in").mkdir()
    bad = _nan_npz(tmp_path / "in" / "nan.npz")
    for args in (
        ("predict", run, "--input", bad, "--split", "val", "--output", tmp_path / "p.csv"),
        ("evaluate", run, "--data", bad, "--split", "val"),
        ("train", "--task", "classification", "--data", bad, "--output", tmp_path / "r",
         "--epochs", "1"),
    ):  # fmt: skip
        code, out, err = _cli(capsys, *args)
        assert code == 1, (args, out)
        _one_line_error(err)
        assert "nan.npz" in err and "non-finite" in err and "256 NaN, 1 infinite" in err, err
        assert "RuntimeWarning" not in err
    assert not (tmp_path / "p.csv").exists()
    assert not (tmp_path / "r").exists()  # no half-made run folder


def test_every_reader_refuses_nan(tmp_path):
    import nibabel as nib
    import tifffile

    from medlens.errors import ImageReadError
    from medlens.io import load_image

    array = np.ones((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "b.npz", image=array)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "c.nii.gz"))
    tifffile.imwrite(tmp_path / "d.tif", array, photometric="minisblack")
    for name in ("a.npy", "b.npz", "c.nii.gz", "d.tif"):
        with pytest.raises(ImageReadError, match=r"holds 1 non-finite values \(1 NaN"):
            load_image(tmp_path / name)


def test_nan_rescale_slope_in_dicom_is_refused(real, tmp_path):
    import pydicom

    from medlens.errors import ImageReadError
    from medlens.io import load_image

    source = sorted(real("dicom", "mr_t1_brain").iterdir())[0]
    ds = pydicom.dcmread(source)
    with pytest.warns(UserWarning):  # pydicom's own note on an invalid DS value
        ds.RescaleSlope, ds.RescaleIntercept = "NaN", "0"
    ds.save_as(tmp_path / "slice.dcm")
    with pytest.raises(ImageReadError, match=r"slice\.dcm: RescaleSlope 'NaN' is not a usable"):
        load_image(tmp_path / "slice.dcm")
    # float pixel data with NaN (Float Pixel Data, as parametric maps store it)
    ds = pydicom.dcmread(source)
    values = ds.pixel_array.astype(np.float32)
    values[:2, :3] = np.nan
    ds.FloatPixelData = values.tobytes()
    ds.BitsAllocated, ds.BitsStored = 32, 32
    for keyword in ("PixelData", "HighBit", "PixelRepresentation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(tmp_path / "float.dcm")
    with pytest.raises(ImageReadError, match=r"float.dcm: image holds 6 non-finite values"):
        load_image(tmp_path / "float.dcm")


# -------------------------------------------------------------------- outputs that are not files
def _specials(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep me\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    sock_path = tmp_path / "sock.csv"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return {"FIFO": fifo, "symbolic link": link, "socket": sock_path}


def test_predict_refuses_to_replace_special_files(trained, tmp_path, capsys):
    data, run = trained
    for kind, path in _specials(tmp_path).items():
        mode = os.lstat(path).st_mode
        code, _, err = _cli(capsys, "predict", run, "--input", data, "--split", "val",
                            "--output", path)  # fmt: skip
        assert code == 1
        _one_line_error(err)
        assert f"{path}: is a {kind}: refusing to replace it" in err
        assert os.lstat(path).st_mode == mode  # still the same kind of file
    assert (tmp_path / "elsewhere.csv").read_text() == "keep me\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_device_nodes_are_never_replaced():
    from medlens._atomic import OutputError, check_output

    for device in ("/dev/null", "/dev/full"):
        if os.path.exists(device):
            with pytest.raises(OutputError, match="is a character device"):
                check_output(device)
            assert stat.S_ISCHR(os.lstat(device).st_mode)


# ------------------------------------------------------------------ messages that misled
def test_missing_input_is_named_as_missing(trained, tmp_path, capsys):
    _, run = trained
    code, _, err = _cli(capsys, "predict", run, "--input", tmp_path / "nope",
                        "--output", tmp_path / "p.csv")  # fmt: skip
    assert code == 1 and err == f"error: {tmp_path / 'nope'}: no such file or folder"


def test_dicom_truncated_inside_its_header_says_truncated(real, tmp_path, capsys):
    source = sorted(real("dicom", "mr_t1_brain").iterdir())[0]
    for size in (400, 900, 3000):
        (tmp_path / "cut.dcm").write_bytes(source.read_bytes()[:size])
        code, _, err = _cli(capsys, "info", tmp_path / "cut.dcm")
        assert code == 1 and "truncated DICOM file" in err and "no pixel data" not in err, err


def test_foreign_pickle_is_refused_without_suggesting_unsafe_loading(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    import torch

    torch.save({"model": Payload()}, copy / "fold-0" / "best.pt")
    code, _out, err = _cli(capsys, "predict", copy, "--input", data, "--split", "val",
                          "--output", tmp_path / "p.csv")  # fmt: skip
    assert code == 1
    _one_line_error(err)
    assert "best.pt: refused" in err and "weights_only" not in err and "False" not in err
    (copy / "fold-0" / "best.pt").write_bytes(pickle.dumps(Payload()))
    code, _, err = _cli(capsys, "predict", copy, "--input", data, "--split", "val",
                        "--output", tmp_path / "p.csv")  # fmt: skip
    assert code == 1 and "best.pt: cannot read checkpoint" in err and "weights_only" not in err


def test_deleted_best_checkpoint_is_refused_not_replaced_by_last(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "fold-0" / "best.pt").unlink()
    code, _, err = _cli(capsys, "predict", copy, "--input", data, "--split", "val",
                        "--output", tmp_path / "p.csv")  # fmt: skip
    assert code == 1 and "best.pt is missing" in err and not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------------- a full disk in training
def _disk_fills_at(monkeypatch, save_number: int) -> None:
    """From the ``save_number``-th checkpoint on, writing it fails as a full disk does."""
    import builtins

    from medlens import _atomic

    calls = {"n": 0}

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith(".pt"):
            calls["n"] += 1
            if calls["n"] >= save_number:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(_atomic, "open", full, raising=False)


def test_full_disk_marks_the_run_failed_and_resume_finishes_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    data = _npz(tmp_path / "in" / "blobs.npz", n=(64, 24))
    run = tmp_path / "run"
    _disk_fills_at(monkeypatch, 3)  # epoch 1 writes last.pt and best.pt, epoch 2 fails
    code, _, err = _cli(capsys, "train", "--task", "classification", "--data", data,
                        "--output", run, "--epochs", "3", "--no-progress")  # fmt: skip
    assert code == 1
    _one_line_error(err)
    assert err.endswith("fold-0/last.pt: cannot write (No space left on device)"), err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "No space left on device" in info["error"]
    code, _, err = _cli(capsys, "predict", run, "--input", data, "--split", "val",
                        "--output", tmp_path / "p.csv")  # fmt: skip
    assert code == 1 and "training failed" in err and "--resume" in err
    monkeypatch.undo()
    code, _, err = _cli(capsys, "train", "--task", "classification", "--data", data,
                        "--output", run, "--epochs", "3", "--resume", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_full_disk_before_any_checkpoint_removes_the_run_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    data = _npz(tmp_path / "in" / "blobs.npz", n=(64, 24))
    _disk_fills_at(monkeypatch, 1)
    code, _, err = _cli(capsys, "train", "--task", "classification", "--data", data,
                        "--output", tmp_path / "run", "--epochs", "2", "--no-progress")  # fmt: skip
    assert code == 1 and "No space left on device" in err
    assert not (tmp_path / "run").exists()
    made = tmp_path / "made"  # a folder the user made stays, emptied of what the job wrote
    made.mkdir()
    (made / "notes.txt").write_text("mine")
    code, _, _ = _cli(capsys, "train", "--task", "classification", "--data", data,
                      "--output", made, "--epochs", "2", "--no-progress")  # fmt: skip
    assert code == 1 and [p.name for p in made.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------- expectations
def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    data = _npz(tmp_path / "in" / "blobs.npz", n=(64, 24))
    code, _, err = _cli(capsys, "train", "--task", "classification", "--data", data,
                        "--output", tmp_path / "run", "--epochs", "2")  # fmt: skip
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(",")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], err
    assert all("loss" in line and line.endswith(" s)") for line in lines)


def test_predict_reads_npy_and_writes_beside_a_single_input(trained, tmp_path, capsys):
    _data, run = trained
    images, _ = _blobs(2, (16, 16), 5)
    (tmp_path / "cases").mkdir()
    np.save(tmp_path / "cases" / "one.npy", images[0])
    (tmp_path / "cases" / "two.png").write_bytes(b"")  # unreadable, but not asked for
    out = tmp_path / "cases" / "one.csv"  # beside the single input file: fine
    code, _, err = _cli(capsys, "predict", run, "--input", tmp_path / "cases" / "one.npy",
                        "--output", out)  # fmt: skip
    assert code == 0, err
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("one.npy,")
    np.save(tmp_path / "cases" / "two.npy", images[1])
    (tmp_path / "cases" / "two.png").unlink()
    code, _, err = _cli(capsys, "predict", run, "--input", tmp_path / "cases",
                        "--output", tmp_path / "all.csv")  # fmt: skip
    assert code == 0, err
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 3
    code, _, err = _cli(capsys, "predict", run, "--input", tmp_path / "cases",
                        "--output", tmp_path / "cases" / "x.csv")  # fmt: skip
    assert code == 1 and "inside the input folder" in err
