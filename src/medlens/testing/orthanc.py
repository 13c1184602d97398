"""A real PACS for tests and benchmarks: Orthanc on loopback, with DICOMweb and authentication;
and ``medlens dicom-node`` as its own process (:func:`node_process`).

:func:`orthanc` starts Debian's ``Orthanc`` (packages ``orthanc`` and ``orthanc-dicomweb``) with
a generated configuration: free DICOM and HTTP ports, loopback only, HTTP authentication on, its
storage in a temporary folder, the DICOMweb plugin enabled; it stops it afterwards. Its REST API
is reached with the standard library only.
"""

from __future__ import annotations

import base64
import glob
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Orthanc", "free_port", "node_process", "orthanc", "orthanc_missing"]

BINARY = "Orthanc"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)


def orthanc_missing() -> str | None:
    """Why Orthanc with DICOMweb cannot run here (None: it can)."""
    if shutil.which(BINARY) is None and not Path("/usr/sbin/Orthanc").exists():
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if _plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian: orthanc-dicomweb)"
    return None


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, ports and credentials, and a small REST client."""

    aet: str
    dicom_port: int
    http_port: int
    username: str
    password: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """Its DICOMweb root as medlens writes it (credentials in the address)."""
        return f"dicomweb://{self.username}:{self.password}@127.0.0.1:{self.http_port}/dicom-web"

    @property
    def peer(self) -> str:
        """``AET@HOST:PORT`` for ``--send-to``."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def rest(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One REST call; JSON in and out (``raw``: the answer's bytes)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as answer:
            content = answer.read()
        return content if raw else (json.loads(content) if content else None)

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Make ``aet`` at ``host:port`` known to Orthanc as modality ``name``."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def lookup(self, uid: str) -> str:
        """Orthanc's id of the study, series or instance with DICOM UID ``uid``."""
        request = urllib.request.Request(
            self.url + "/tools/lookup", data=uid.encode(), method="POST"
        )
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as answer:
            found = json.loads(answer.read())
        if not found:
            raise KeyError(f"Orthanc holds nothing with UID {uid}")
        return found[0]["ID"]

    def send(self, modality: str, resources: list[str]) -> None:
        """Orthanc sends the resources to ``modality`` by C-STORE (a routed C-STORE)."""
        self.rest(
            "POST", f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True}
        )

    def series_of_study(self, study_id: str) -> list[dict[str, Any]]:
        return self.rest("GET", f"/studies/{study_id}/series")


@contextmanager
def orthanc(aet: str = "ORTHANC") -> Iterator[Orthanc]:
    """A fresh Orthanc on free loopback ports, stopped and removed on exit.

    Raises:
        RuntimeError: Orthanc is missing or did not start (its log's tail in the message).
    """
    missing = orthanc_missing()
    if missing is not None:
        raise RuntimeError(missing)
    root = Path(tempfile.mkdtemp(prefix="medlens-orthanc-"))
    password = secrets.token_hex(12)
    server = Orthanc(aet, free_port(), free_port(), "medlens", password, root / "orthanc.log")
    config = {
        "Name": "medlens-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "DicomAet": aet,
        "DicomPort": server.dicom_port,
        "HttpPort": server.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {server.username: password},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "Plugins": [_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "StorageCompression": False,
        "SaveJobs": False,
        "HttpDescribeErrors": True,
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=1))
    binary = shutil.which(BINARY) or "/usr/sbin/Orthanc"
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            [binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: Orthanc, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            server.rest("GET", "/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    tail = server.log.read_text(errors="replace").splitlines()[-15:]
    raise RuntimeError("Orthanc did not start:\n" + "\n".join(tail))


def _plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def free_port() -> int:
    """A loopback TCP port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def node_process(run: str | Path, *options: str, timeout: float = 300.0):
    """``medlens dicom-node RUN --port P OPTIONS...`` as its own process, as a hospital runs it,
    once it answers C-ECHO; yields ``(process, port)`` and stops it on exit. Its log (stderr)
    is ``process.log`` afterwards."""
    import sys

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "medlens.cli.main",
        "dicom-node",
        str(run),
        "--port",
        str(port),
        *options,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        deadline = time.monotonic() + timeout
        while not (assoc := ae.associate("127.0.0.1", port, ae_title="MEDLENS")).is_established:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"medlens dicom-node did not start: {process.stderr.read()}")
            time.sleep(0.2)
        status = assoc.send_c_echo()
        assoc.release()
        if getattr(status, "Status", None) != 0:
            raise RuntimeError("medlens dicom-node did not answer C-ECHO")
        yield process, port
    finally:
        process.terminate()
        process.log = process.communicate(timeout=60)[1]  # type: ignore[attr-defined]
