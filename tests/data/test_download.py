"""Tests of the MedMNIST downloader against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from medlens.data import download
from medlens.data.download import (
    MEDMNIST_MD5,
    DownloadError,
    download_medmnist,
    medmnist_filename,
    medmnist_url,
)
from medlens.errors import MedlensError

NAME = "tinymnist"


def _make_npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, size=(64, 1), dtype=np.uint8),
    )
    return buf.getvalue()


PAYLOAD = _make_npz()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
CHECKSUMS = {NAME: {28: PAYLOAD_MD5}}


class FileServer:
    """A threaded HTTP server for a few files that honours ``Range: bytes=N-`` (switchable).

    ``drop_after``: on the first request, send only that many body bytes, then hang up.
    ``ignore_range``: always answer 200 with the whole file.
    ``fail_first_with``: answer the first request with this HTTP status.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[dict[str, str | None]] = []
        self.drop_after: int | None = None
        self.ignore_range = False
        self.fail_first_with: int | None = None
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/files"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                first = not server.requests
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if first and server.fail_first_with:
                    self.send_error(server.fail_first_with)
                    return
                name = self.path.split("?", 1)[0].removeprefix("/files/")
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if first and server.drop_after is not None:
                    body = body[: server.drop_after]
                self.wfile.write(body)

        return Handler

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_RETRY_BACKOFF_S", 0.0)
    monkeypatch.delenv(download.MEDMNIST_URL_ENV, raising=False)
    monkeypatch.delenv(download.CACHE_ENV, raising=False)


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({f"{NAME}.npz": PAYLOAD}) as srv:
        yield srv


def _get(server: FileServer, cache: Path, **kwargs: object) -> Path:
    options: dict = {"checksums": CHECKSUMS, "progress": False, "timeout": 5}
    options.update(kwargs)
    return download_medmnist(NAME, 28, cache_dir=cache, base_url=server.url, **options)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_table_has_every_official_file() -> None:
    assert MEDMNIST_MD5["breastmnist"][28] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert set(MEDMNIST_MD5["adrenalmnist3d"]) == {28, 64}
    assert len(MEDMNIST_MD5) == 18
    for name, sizes in MEDMNIST_MD5.items():
        expected = {28, 64} if name.endswith("3d") else {28, 64, 128, 224}
        assert set(sizes) == expected, name
        for md5 in sizes.values():
            assert re.fullmatch(r"[0-9a-f]{32}", md5), (name, md5)
    all_md5 = [md5 for sizes in MEDMNIST_MD5.values() for md5 in sizes.values()]
    assert len(set(all_md5)) == len(all_md5) == 60


def test_official_urls() -> None:
    record = "https://zenodo.org/records/10519652/files"
    assert medmnist_filename("breastmnist", 28) == "breastmnist.npz"
    assert medmnist_url("breastmnist") == f"{record}/breastmnist.npz?download=1"
    assert medmnist_url("pathmnist", 224) == f"{record}/pathmnist_224.npz?download=1"
    assert medmnist_url("a", 64, "http://m/x/") == "http://m/x/a_64.npz?download=1"


def test_full_download(server: FileServer, tmp_path: Path) -> None:
    path = _get(server, tmp_path / "cache")
    assert path == tmp_path / "cache" / f"{NAME}.npz"
    assert path.read_bytes() == PAYLOAD
    with np.load(path) as npz:
        assert npz["train_images"].shape == (64, 28, 28)
    assert _leftovers(tmp_path / "cache") == [f"{NAME}.npz"]
    assert server.requests == [{"path": f"/files/{NAME}.npz?download=1", "range": None}]


def test_resume_after_interrupted_transfer(server: FileServer, tmp_path: Path) -> None:
    server.drop_after = 1000
    path = _get(server, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-"]
    assert _leftovers(tmp_path) == [f"{NAME}.npz"]


def test_resume_part_left_by_earlier_run(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.npz.part").write_bytes(PAYLOAD[:777])
    path = _get(server, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=777-"]


def test_complete_part_is_finished_without_refetching(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.npz.part").write_bytes(PAYLOAD)
    path = _get(server, tmp_path)  # the server answers 416: nothing left to send
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert _leftovers(tmp_path) == [f"{NAME}.npz"]


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.ignore_range = True
    (tmp_path / f"{NAME}.npz.part").write_bytes(b"\xff" * 500)  # wrong bytes: must be dropped
    path = _get(server, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=500-"]


def test_interrupted_and_range_ignored(server: FileServer, tmp_path: Path) -> None:
    server.drop_after = 1000
    server.ignore_range = True
    assert _get(server, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_checksum_mismatch_deletes_download(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="MD5 mismatch") as info:
        _get(server, tmp_path, checksums={NAME: {28: "0" * 32}})
    assert "0" * 32 in str(info.value) and PAYLOAD_MD5 in str(info.value)
    assert server.url in str(info.value)
    assert _leftovers(tmp_path) == []


def test_cached_file_not_fetched_again(server: FileServer, tmp_path: Path) -> None:
    first = _get(server, tmp_path)
    second = _get(server, tmp_path)
    assert first == second
    assert len(server.requests) == 1


def test_corrupt_cached_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.npz").write_bytes(b"not the file")
    assert _get(server, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_unknown_name_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(MedlensError, match="unknown MedMNIST dataset 'nosuchmnist'") as info:
        download_medmnist("nosuchmnist", cache_dir=tmp_path, progress=False)
    assert "breastmnist" in str(info.value) and "adrenalmnist3d" in str(info.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "size", "valid"),
    [("breastmnist", 512, "28, 64, 128, 224"), ("adrenalmnist3d", 128, "28, 64")],
)
def test_unknown_size_lists_valid_ones(tmp_path: Path, name: str, size: int, valid: str) -> None:
    with pytest.raises(MedlensError, match=f"valid sizes: {valid}$"):
        download_medmnist(name, size, cache_dir=tmp_path, progress=False)


def test_name_is_case_insensitive(server: FileServer, tmp_path: Path) -> None:
    path = download_medmnist(
        "TinyMNIST", cache_dir=tmp_path, base_url=server.url, checksums=CHECKSUMS, progress=False
    )
    assert path.name == f"{NAME}.npz"


def test_bad_checksum_override_rejected(tmp_path: Path) -> None:
    with pytest.raises(MedlensError, match="not an MD5"):
        download_medmnist(NAME, cache_dir=tmp_path, checksums={NAME: {28: "abc"}})


def test_http_404_is_a_clear_error(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_medmnist(
            "missingmnist",
            cache_dir=tmp_path,
            base_url=server.url,
            checksums={"missingmnist": {28: PAYLOAD_MD5}},
            progress=False,
            timeout=5,
        )
    assert "missingmnist.npz" in str(info.value)
    assert len(server.requests) == 1  # not retried
    assert _leftovers(tmp_path) == []


def test_http_503_is_retried(server: FileServer, tmp_path: Path) -> None:
    server.fail_first_with = 503
    assert _get(server, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_connection_refused_gives_up_after_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="failed after 3 attempts"):
        download_medmnist(
            NAME,
            cache_dir=tmp_path,
            base_url=f"http://127.0.0.1:{port}/files",
            checksums=CHECKSUMS,
            progress=False,
            timeout=5,
            retries=2,
        )


def test_environment_variables(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLENS_MEDMNIST_URL", server.url)
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path))
    path = download_medmnist(NAME, checksums=CHECKSUMS, progress=False, timeout=5)
    assert path == tmp_path / "medmnist" / f"{NAME}.npz"
    assert path.read_bytes() == PAYLOAD


def test_progress_bar_goes_to_stderr(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.drop_after = 1000
    assert _get(server, tmp_path, progress=True).read_bytes() == PAYLOAD
    captured = capsys.readouterr()
    assert captured.out == ""
    assert NAME in captured.err
