"""``medlens serve``: model cards, answers equal to the predictor's, formats, batching, metrics."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

import medlens

from .conftest import running

KEY = {"Authorization": "Bearer " + "k" * 32}
_post = functools.partial(httpx.post, timeout=120)
_get = functools.partial(httpx.get, timeout=120)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _blob(seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, 16)] * 2, indexing="ij")
    blob = np.exp(-sum(x**2 for x in g) * 4) * 120 * (seed % 2)
    return np.clip(r.normal(60, 20, (16, 16)) + blob, 0, 255).astype(np.uint8)


def test_health_ready_and_model_cards(served, tiny_runs):
    url, _, _ = served
    assert _get(f"{url}/health").json() == {"status": "ok"}
    assert _get(f"{url}/ready").json()["models"] == ["classifier", "segmenter"]
    cards = _get(f"{url}/v1/models", headers=KEY).json()["models"]
    assert [c["name"] for c in cards] == ["classifier", "segmenter"]
    classifier, segmenter = cards
    assert classifier["task"] == "classification" and segmenter["task"] == "segmentation"
    assert classifier["input"]["shape"] == [16, 16] and segmenter["input"]["spatial_dims"] == 2
    assert segmenter["answers"] == ["json", "nifti", "png"] and classifier["answers"] == [
        "json",
        "sr",
    ]
    for card, run in zip(
        cards, (tiny_runs["classification"], tiny_runs["segmentation"]), strict=True
    ):
        for weights in card["weights"]:
            data = (run / weights["file"]).read_bytes()
            assert weights["sha256"] == hashlib.sha256(data).hexdigest()
        assert card["held_out_metrics"] and card["served_by"]["medlens"] == medlens.__version__
        assert "/" not in str(card["training_data"].get("source", ""))  # no server paths


def test_classification_answers_as_the_predictor_does(served, tiny_runs, tmp_path):
    url, models, _ = served
    predictor = models[0].predictor
    for seed in range(4):
        image = _blob(seed)
        path = tmp_path / f"b{seed}.png"
        path.write_bytes(_png(image))
        answer = _post(
            f"{url}/v1/models/classifier/predict",
            headers=KEY,
            files={"file": (path.name, path.read_bytes(), "image/png")},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"model", "probabilities", "predicted", "threshold"}
        expected = predictor.predict([medlens.load_image(path)])[0]
        assert body["model"] == "classifier" and body["predicted"] == expected.label
        got = np.array([body["probabilities"][n] for n in expected.class_names])
        np.testing.assert_allclose(got, expected.probabilities, atol=1e-6)
        assert "network;dur=" in answer.headers["server-timing"]


def test_segmentation_json_png_and_nifti_on_a_real_image(served, real, tmp_path):
    url, models, _ = served
    path = real("hc18", "images", "000_HC.png")
    expected = models[1].predictor.predict([medlens.load_image(path)])[0].labels.array
    endpoint = f"{url}/v1/models/segmenter/predict"
    files = {"file": (path.name, path.read_bytes(), "image/png")}
    png = _post(endpoint, headers={**KEY, "Accept": "image/png"}, files=files)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(png.content))) > 0, expected > 0)
    nifti = _post(f"{endpoint}?format=nifti", headers=KEY, files=files)
    assert nifti.status_code == 200
    (tmp_path / "m.nii.gz").write_bytes(nifti.content)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj).T > 0, expected > 0)
    body = _post(endpoint, headers=KEY, files=files).json()
    assert body["shape"] == list(expected.shape)
    counted = sum(entry["voxels"] for entry in body["labels"].values())
    assert counted == int((expected > 0).sum())
    refused = _post(f"{endpoint}?format=tiff", headers=KEY, files=files)
    assert refused.status_code == 400 and "json, nifti, png" in refused.json()["error"]


def test_a_dicom_slice_and_a_raw_body_are_read_as_predict_reads_them(served, t1_dir):
    url, models, _ = served
    first = sorted(p for p in t1_dir.iterdir() if p.is_file())[0]
    expected = models[1].predictor.predict([medlens.load_image(first)])[0].labels.array
    answer = _post(
        f"{url}/v1/models/segmenter/predict?format=png&filename=slice.dcm",
        headers={**KEY, "Content-Type": "application/octet-stream"},
        content=first.read_bytes(),
    )
    assert answer.status_code == 200, answer.text
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(answer.content))) > 0, expected > 0)


def test_a_zipped_series_for_a_2d_model_is_refused_by_name(served, t1_dir):
    import zipfile

    url, _, _ = served
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p in sorted(t1_dir.iterdir())[:3]:
            archive.write(p, p.name)
    answer = _post(
        f"{url}/v1/models/segmenter/predict",
        headers=KEY,
        files={"file": ("series.zip", buffer.getvalue())},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("series.zip: holds 3 images or series; send one")


def test_concurrent_requests_are_batched_and_answered_as_alone(served, tmp_path):
    url, models, _ = served
    images = [_png(_blob(seed)) for seed in range(12)]

    async def burst():
        async with httpx.AsyncClient(headers=KEY, timeout=60) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"{url}/v1/models/classifier/predict",
                        files={"file": (f"b{i}.png", data, "image/png")},
                    )
                    for i, data in enumerate(images)
                ]
            )

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers)
    sizes = [int(a.headers["server-timing"].split("batch;desc=")[1]) for a in answers]
    assert max(sizes) > 1  # gathered within max_wait_ms
    predictor = models[0].predictor
    for i, (data, answer) in enumerate(zip(images, answers, strict=True)):
        (tmp_path / f"b{i}.png").write_bytes(data)
        alone = predictor.predict([medlens.load_image(tmp_path / f"b{i}.png")])[0]
        got = [answer.json()["probabilities"][n] for n in alone.class_names]
        np.testing.assert_allclose(got, alone.probabilities, atol=1e-5)
    metrics = _get(f"{url}/metrics", headers=KEY).text
    assert 'medlens_requests_total{model="classifier",status="200"}' in metrics
    assert "medlens_batch_size_bucket" in metrics and "medlens_queue_depth" in metrics


def test_openapi_documents_the_upload(served):
    url, _, _ = served
    spec = _get(f"{url}/openapi.json").json()
    body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    assert json.dumps(spec)  # plain JSON


def test_the_command_serves_and_refuses_bad_settings(tiny_runs, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from medlens.cli.main import main

    short = tmp_path / "short.key"
    short.write_text("abc\n")
    run = str(tiny_runs["classification"])
    assert main(["serve", run, "--api-key-file", str(short)]) == 1
    assert main(["serve", str(tmp_path / "missing")]) == 1
    key = tmp_path / "api.key"
    key.write_text("s" * 40 + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "medlens.cli.main", "serve", run, "--name", "c",
               "--port", str(port), "--api-key-file", str(key)]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.2)
        assert _get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        cards = _get(f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": "s" * 40})
        assert cards.json()["models"][0]["name"] == "c"
    finally:
        server.terminate()
        server.wait(30)


def test_a_dicom_input_classified_answers_a_structured_report(served, t1_dir):
    import pydicom

    url, _, _ = served
    first = sorted(p for p in t1_dir.iterdir() if p.is_file())[0]
    source = pydicom.dcmread(first, stop_before_pixels=True)
    endpoint = f"{url}/v1/models/classifier/predict"
    files = {"file": ("slice.dcm", first.read_bytes(), "application/dicom")}
    as_json = _post(endpoint, headers=KEY, files=files).json()
    answer = _post(endpoint, headers={**KEY, "Accept": "application/dicom"}, files=files)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(answer.content))
    assert ds.Modality == "SR" and ds.StudyInstanceUID == source.StudyInstanceUID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    import highdicom as hd

    group = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()[0]
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    for name, p in as_json["probabilities"].items():
        assert abs(values[f"Probability of {name}"] - p) < 1e-5
    png = _post(f"{endpoint}?format=sr", headers=KEY,
                files={"file": ("a.png", _png(_blob(1)), "image/png")})  # fmt: skip
    assert png.status_code == 400
    assert png.json()["error"].startswith("a.png: no DICOM instance")


def test_a_registration_run_takes_fixed_and_moving_and_answers_as_predict(tiny_runs, tmp_path):
    """A learned registration is served like any run: the two images as the multipart fields
    ``fixed`` and ``moving``, JSON as its prediction's, the warped image and the displacement
    as NIfTI equal to the predictor's, and a request without ``moving`` refused by name."""
    from medlens.serve import ServeSettings, create_app, load_models

    run = tiny_runs["registration"]
    images = sorted((run.parent / "disks" / "images").glob("*.png"))
    fixed, moving = images[0], images[3]
    models = load_models([run], names=["aligner"])
    predictor = models[0].predictor
    expected = predictor.predict([medlens.load_image(fixed), medlens.load_image(moving)])[0]
    files = {
        "fixed": (fixed.name, fixed.read_bytes(), "image/png"),
        "moving": (moving.name, moving.read_bytes(), "image/png"),
    }
    with running(create_app(models, ServeSettings(max_upload_mb=8))) as url:
        card = _get(f"{url}/v1/models").json()["models"][0]
        assert card["input_fields"] == ["fixed", "moving"]
        assert card["answers"] == ["json", "nifti", "displacement"]
        endpoint = f"{url}/v1/models/aligner/predict"
        body = _post(endpoint, files=files)
        assert body.status_code == 200, body.text
        answer = body.json()
        assert answer["id"] == moving.stem and answer["model"] == "aligner"
        assert answer["folding_fraction"] == expected.row()["folding_fraction"]
        np.testing.assert_allclose(answer["affine_world"], expected.result.world, atol=1e-5)
        warped = _post(f"{endpoint}?format=nifti", files=files)
        assert warped.status_code == 200 and warped.headers["content-type"] == "application/gzip"
        (tmp_path / "w.nii.gz").write_bytes(warped.content)
        got = medlens.load_image(tmp_path / "w.nii.gz").array
        np.testing.assert_allclose(got, expected.result.warp().array, atol=1e-3)
        field = _post(f"{endpoint}?format=displacement", files=files)
        assert field.status_code == 200
        assert "displacement.nii.gz" in field.headers["content-disposition"]
        (tmp_path / "d.nii.gz").write_bytes(field.content)
        vectors = np.asarray(nib.load(tmp_path / "d.nii.gz").dataobj)
        assert vectors.shape[:2] == (48, 40)  # x, y of the fixed image
        one = _post(endpoint, files={"fixed": files["fixed"]})
        assert one.status_code == 400 and "'moving'" in one.json()["error"]
        raw = _post(endpoint, content=fixed.read_bytes())
        assert raw.status_code == 400 and "'fixed' and 'moving'" in raw.json()["error"]
        # the server stays up
        assert _post(endpoint, files=files).status_code == 200


def test_a_reconstruction_run_is_served_kspace_in_volume_out(tiny_runs, tmp_path):
    """k-space uploaded as the simulation writes it (``.npz``): JSON with the figures against
    its reference, the magnitude volume as NIfTI equal to the predictor's; an image upload, a
    corrupt file and NaN k-space are refused by name, and the server stays up."""
    from medlens.serve import ServeSettings, create_app, load_models

    run = tiny_runs["reconstruction"]
    upload = sorted((run.parent / "kspace").glob("*.npz"))[0]
    models = load_models([run], names=["recon"])
    expected = models[0].predictor.predict(models[0].predictor.read(upload))[0]
    files = {"file": (upload.name, upload.read_bytes(), "application/octet-stream")}
    with running(create_app(models, ServeSettings(max_upload_mb=8))) as url:
        endpoint = f"{url}/v1/models/recon/predict"
        body = _post(endpoint, files=files)
        assert body.status_code == 200, body.text
        assert body.json()["psnr"] == expected.row()["psnr"]
        volume = _post(f"{endpoint}?format=nifti", files=files)
        assert volume.status_code == 200
        (tmp_path / "v.nii.gz").write_bytes(volume.content)
        got = medlens.load_image(tmp_path / "v.nii.gz").array
        np.testing.assert_allclose(got, expected.image.array, rtol=1e-4, atol=1e-4)
        with np.load(upload) as stored:
            arrays = dict(stored)
        arrays["kspace"][0, 0, 0, 0] = np.nan
        np.savez(tmp_path / "nan.npz", **arrays)
        nan = _post(endpoint, files={"file": ("nan.npz", (tmp_path / "nan.npz").read_bytes())})
        assert nan.status_code == 400 and "NaN" in nan.json()["error"], nan.text
        broken = _post(endpoint, files={"file": ("k.npz", b"PK\x03\x04 not a zip", "x/y")})
        assert broken.status_code == 400
        picture = io.BytesIO()
        PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(picture, format="PNG")
        png = _post(endpoint, files={"file": ("a.png", picture.getvalue(), "image/png")})
        assert png.status_code == 400, png.text
        assert _post(endpoint, files=files).status_code == 200


def test_sequence_runs_are_served_a_cine_or_a_video_in(tiny_runs, tmp_path):
    """A 4D NIfTI cine to a sequence regression, an MP4 loop to a sequence classification and
    a cine to a sequence segmentation (JSON and the 4D label NIfTI): the predictor's answers;
    a still image and a one-frame video are refused by name, and the server stays up."""
    pytest.importorskip("av")
    from medlens.io.video import write_video
    from medlens.serve import ServeSettings, create_app, load_models

    names = ("sequence-regression", "sequence-classification", "sequence-segmentation")
    models = load_models([tiny_runs[n] for n in names], names=["ef", "beat", "lv"])
    cine = tiny_runs["sequence-regression"].parent / "cines" / "cines" / "c00.nii.gz"
    frames = medlens.load_image(cine).array[:, 0]
    u8 = np.clip(frames / frames.max() * 255, 0, 255).astype(np.uint8)
    write_video(u8, tmp_path / "loop.mp4", fps=25)
    write_video(u8[:1], tmp_path / "one.mp4", fps=25)
    nifti = {"file": ("c00.nii.gz", cine.read_bytes(), "application/gzip")}
    video = {"file": ("loop.mp4", (tmp_path / "loop.mp4").read_bytes(), "video/mp4")}
    with running(create_app(models, ServeSettings(max_upload_mb=8))) as url:
        ef = _post(f"{url}/v1/models/ef/predict", files=nifti)
        assert ef.status_code == 200, ef.text
        regression = models[0].predictor
        expected = regression.predict(regression.read(cine))[0].to_json()
        assert ef.json()["ef_percent"] == expected["ef_percent"] and ef.json()["frames"] == 8
        beat = _post(f"{url}/v1/models/beat/predict", files=video)
        assert beat.status_code == 200, beat.text
        assert beat.json()["label"] in ("strong", "weak")
        assert abs(sum(beat.json()["probabilities"].values()) - 1) < 1e-5
        lv = _post(f"{url}/v1/models/lv/predict", files=nifti)
        assert lv.status_code == 200 and lv.json()["slices"] == 2, lv.text
        maps = _post(f"{url}/v1/models/lv/predict?format=nifti", files=nifti)
        assert maps.status_code == 200
        (tmp_path / "maps.nii.gz").write_bytes(maps.content)
        assert medlens.load_image(tmp_path / "maps.nii.gz").array.shape == (8, 2, 16, 16)
        still = _post(f"{url}/v1/models/ef/predict",
                      files={"file": ("a.png", _png(_blob(1)), "image/png")})  # fmt: skip
        assert still.status_code == 400 and "not a sequence" in still.json()["error"]
        one = _post(f"{url}/v1/models/beat/predict",
                    files={"file": ("one.mp4", (tmp_path / "one.mp4").read_bytes())})  # fmt: skip
        assert one.status_code == 400 and "one frame" in one.json()["error"], one.text
        assert _post(f"{url}/v1/models/ef/predict", files=nifti).status_code == 200
