"""The server under bad requests: each refused with a clear status and one JSON line, and the
next good request answered correctly, with memory bounded."""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import resource
import socket
import struct
import time
import zlib

import httpx
import numpy as np
from PIL import Image as PILImage

from .conftest import running

KEY = {"X-API-Key": "k" * 32}
_post = functools.partial(httpx.post, timeout=120)


def _good_png() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((16, 16), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _still_serving(url: str) -> None:
    answer = _post(f"{url}/v1/models/classifier/predict", headers=KEY,
                   files={"file": ("ok.png", _good_png(), "image/png")})  # fmt: skip
    assert answer.status_code == 200 and set(answer.json()["probabilities"]) == {"0", "1"}


def _refused(url: str, status: int, *, name="x", content=None, files=None, headers=None) -> str:
    answer = _post(f"{url}/v1/models/classifier/predict", headers={**KEY, **(headers or {})},
                   content=content, files=files, params={"filename": name})  # fmt: skip
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert "\n" not in message and "Traceback" not in message and "/tmp" not in message
    return message


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header for ``width x height`` grey pixels, with almost no data after it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))  # fmt: skip


def test_wrong_keys_are_refused_in_bulk_and_memory_stays_bounded(served):
    url, _, _ = served
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with httpx.Client(timeout=30) as client:
        for i in range(1000):
            key = {"X-API-Key": "k" * 31 + "j"} if i % 2 else {"Authorization": "Bearer nope"}
            answer = client.get(f"{url}/v1/models", headers=key)
            assert answer.status_code == 401 and "API key" in answer.json()["error"]
        assert client.get(f"{url}/v1/models").status_code == 401  # no key at all
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert growth_mb < 64
    _still_serving(url)


def test_oversized_uploads_get_413_without_being_read(served):
    url, _, settings = served
    big = b"\0" * ((settings.max_upload_mb << 20) + 1)
    assert "over the limit" in _refused(url, 413, content=big)

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(settings.max_upload_mb + 2):
            yield b"\0" * (1 << 20)

    assert "over the limit" in _refused(url, 413, content=chunks())
    _still_serving(url)


def test_malformed_bodies_and_files_get_400(served, t1_dir, tmp_path):
    url, _, _ = served
    bad = b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc\r\n--Q'
    assert "malformed multipart" in _refused(
        url, 400, content=bad, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    assert "no boundary" in _refused(url, 400, content=b"x",
                                     headers={"Content-Type": "multipart/form-data"})  # fmt: skip
    assert "empty body" in _refused(url, 400, content=b"")
    dicom = sorted(p for p in t1_dir.iterdir() if p.is_file())[0].read_bytes()
    message = _refused(url, 400, name="cut.dcm", content=dicom[: len(dicom) - 5000])
    assert message.startswith("cut.dcm: truncated DICOM")
    assert _refused(url, 400, name="notes.txt", content=b"hello").startswith("notes.txt")
    assert _refused(url, 400, name="junk.png", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _still_serving(url)


def test_decompression_bombs_get_400(served, t1_dir):
    url, _, _ = served
    message = _refused(url, 400, name="bomb.png", content=_png_bomb(60000, 60000))
    assert "bomb.png" in message and "decompression bomb" in message
    import pydicom

    ds = pydicom.dcmread(sorted(p for p in t1_dir.iterdir() if p.is_file())[0])
    ds.Rows = ds.Rows // 2  # the pixel data is now twice what the header says
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert "larger than its header says" in _refused(url, 400, name="big.dcm",
                                                     content=buffer.getvalue())  # fmt: skip
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (100000, 100000)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    assert "decompression bomb" in _refused(url, 400, name="a.npy", content=npy.getvalue())
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "pickles are never loaded" in _refused(url, 400, name="o.npy", content=obj.getvalue())
    _still_serving(url)


def test_a_nifti_gzip_bomb_gets_400(tiny_runs):
    from medlens.serve import ServeSettings, create_app, load_models
    from medlens.serve.uploads import Limits

    models = load_models([tiny_runs["classification"]], names=["classifier"])
    settings = ServeSettings(api_key="k" * 32, max_upload_mb=1, limits=Limits(max_inflated=4 << 20))
    bomb = gzip.compress(b"\0" * (16 << 20), compresslevel=9)  # 16 KB that inflate to 16 MB
    with running(create_app(models, settings)) as url:
        message = _refused(url, 400, name="x.nii.gz", content=bomb)
        assert "x.nii.gz: decompresses past 4 MB" in message
        _still_serving(url)


def test_a_client_that_disconnects_mid_upload_leaves_the_server_serving(served):
    url, _, _ = served
    host, port = url.removeprefix("http://").split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/models/classifier/predict?filename=a.png HTTP/1.1\r\n"
                         b"Host: x\r\nX-API-Key: " + b"k" * 32 + b"\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Length: 1000000\r\n\r\n" + b"\0" * 5000)  # fmt: skip
    time.sleep(0.2)
    _still_serving(url)


def test_a_full_queue_answers_503_with_retry_after_and_slow_answers_504(tiny_runs):
    from medlens.serve import ServeSettings, create_app, load_models

    models = load_models([tiny_runs["classification"]], names=["classifier"])
    predict = models[0].predictor.predict

    def slow(images):
        time.sleep(0.4)
        return predict(images)

    models[0].predictor.predict = slow
    settings = ServeSettings(api_key="k" * 32, max_batch=1, max_queue=2, timeout_s=30)
    with running(create_app(models, settings)) as url:

        async def burst():
            async with httpx.AsyncClient(headers=KEY, timeout=60) as client:
                return await asyncio.gather(*[
                    client.post(f"{url}/v1/models/classifier/predict",
                                files={"file": ("a.png", _good_png(), "image/png")})
                    for _ in range(10)])  # fmt: skip

        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        assert codes.count(503) >= 5 and 200 in codes and set(codes) <= {200, 503}
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue is full" in busy.json()["error"]
    settings = ServeSettings(api_key="k" * 32, timeout_s=0.1)
    with running(create_app(models, settings)) as url:
        message = _refused(url, 504, name="a.png", content=_good_png())
        assert "no answer within 0.1 s" in message


def test_unknown_models_and_routes_answer_json(served):
    url, _, _ = served
    answer = _post(f"{url}/v1/models/nope/predict", headers=KEY, content=b"x")
    assert answer.status_code == 404 and "classifier, segmenter" in answer.json()["error"]
    assert httpx.get(f"{url}/v2/whatever").json() == {"error": "Not Found"}
