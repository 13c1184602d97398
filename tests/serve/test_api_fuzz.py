"""Schemathesis against the running server's ``/openapi.json``: no 5xx but 503 under load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def test_schemathesis_finds_no_server_error(served, tmp_path):
    pytest.importorskip("schemathesis")
    runner = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if runner is None:
        pytest.skip("the schemathesis command is not installed beside this Python")
    url, _, settings = served
    done = subprocess.run(
        [runner, "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
         "--header", f"X-API-Key: {settings.api_key}", "--max-examples", "100", "--seed", "1",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
