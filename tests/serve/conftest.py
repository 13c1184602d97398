"""Runs trained in seconds for the server's tests, and a real uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run per task (``medlens.testing.tiny``), trained one epoch."""
    from medlens.testing.tiny import TINY, train_tiny

    return {name: train_tiny(name, tmp_path_factory.mktemp(f"serve-{name}"))[1] for name in TINY}


@contextmanager
def running(app):
    """``app`` served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(tiny_runs):
    """Both tiny runs behind one server (names ``classifier`` and ``segmenter``), with a key."""
    from medlens.serve import ServeSettings, create_app, load_models

    models = load_models(
        [tiny_runs["classification"], tiny_runs["segmentation"]], names=["classifier", "segmenter"]
    )
    settings = ServeSettings(max_wait_ms=20, api_key="k" * 32, max_upload_mb=8)
    with running(create_app(models, settings)) as url:
        yield url, models, settings
