"""The REST server: any task's runs behind one FastAPI app (``medlens serve``).

Routes: ``GET /health`` (alive), ``GET /ready`` (models loaded, batchers running), ``GET
/v1/models`` (``{"models": [model card, ...]}``), ``POST /v1/models/{name}/predict`` (one image
as the multipart field ``file`` or as the body; a model whose predictions take several images,
a registration, takes them as the multipart fields its card's ``input_fields`` names, ``fixed``
and ``moving``; answers JSON, or the mask, the warped image or the displacement as NIfTI/PNG by
``?format=`` or ``Accept``), ``GET /metrics`` (Prometheus text) and ``GET /openapi.json``.

Every request goes through the platform's predictor (``load_predictor(run).predict``), so a
task served needs nothing here. Uploads are streamed into a private temporary folder (mode
0700) removed after the request, checked before decoding (:mod:`medlens.serve.uploads`), read
as ``medlens predict`` reads files, and queued for the model's :class:`~medlens.serve.batching.
Batcher`. Errors are one JSON object ``{"error": "..."}`` with a status: 400 bad input, 401
no or wrong key, 404 no such model, 413 too large, 503 queue full (with ``Retry-After``), 504
timed out; never a traceback. Each answer carries a ``Server-Timing`` header: ``total``,
``read`` (receiving and reading the image), ``queue``, ``predict`` (the batch's predictor call,
preprocessing included), ``network`` (its networks' forward passes) and ``batch`` (its size).
"""

import asyncio
import hmac
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.serve.batching import Batcher, QueueFull
from medlens.serve.uploads import (
    Limits,
    UploadError,
    check_upload,
    receive_upload,
    receive_uploads,
)

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_models"]

log = logging.getLogger("medlens.serve")

MEDIA = {
    "json": "application/json",
    "nifti": "application/gzip",
    "png": "image/png",
    "sr": "application/dicom",
    "seg": "application/dicom",
    "displacement": "application/gzip",
}
SUFFIX = {
    "png": ".png",
    "nifti": ".nii.gz",
    "sr": ".sr.dcm",
    "seg": ".seg.dcm",
    "displacement": ".displacement.nii.gz",
}
ACCEPT = {
    "application/json": "json",
    "image/png": "png",
    "application/gzip": "nifti",
    "application/x-nifti": "nifti",
    "application/x-gzip": "nifti",
    "application/dicom": "dicom",  # the model's DICOM form: SR or SEG
}
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "DICOM file, zip of a DICOM series, NIfTI, "
                            "PNG/JPEG/TIFF or .npy",
                        },
                        "fixed": {
                            "type": "string",
                            "format": "binary",
                            "description": "registration models: the image to align to",
                        },
                        "moving": {
                            "type": "string",
                            "format": "binary",
                            "description": "registration models: the image to align",
                        },
                    },
                    "anyOf": [{"required": ["file"]}, {"required": ["fixed", "moving"]}],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@dataclass
class ServeSettings:
    """``medlens serve``'s options (see its ``--help``)."""

    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_upload_mb: int = 512
    timeout_s: float = 60.0
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.limits = Limits(
            max_bytes=int(self.max_upload_mb) << 20,
            max_pixels=self.limits.max_pixels,
            max_inflated=max(self.limits.max_inflated, int(self.max_upload_mb) << 20),
        )


class _NetworkClock:
    """Seconds spent in the predictor's networks' forward passes (forward hooks)."""

    def __init__(self, networks: list[Any]) -> None:
        self.total = 0.0
        self._start = threading.local()
        for network in networks:
            if hasattr(network, "register_forward_pre_hook"):
                network.register_forward_pre_hook(self._pre)
                network.register_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        self._start.value = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.total += time.perf_counter() - getattr(self._start, "value", time.perf_counter())


@dataclass
class ServedModel:
    """One run served under ``name``."""

    name: str
    predictor: Any
    card: dict[str, Any]
    batcher: Batcher | None = None
    clock: _NetworkClock | None = None

    def predict(self, images: list) -> list:
        """One answer per request; a request of several images (a tuple) is one prediction."""
        assert self.clock is not None
        before = self.clock.total
        flat = [x for item in images for x in (item if isinstance(item, tuple) else (item,))]
        results = self.predictor.predict(flat)
        network = self.clock.total - before
        return [(result, network) for result in results]


def load_models(
    runs: list[Path], *, names: list[str] | None = None, backend: str = "torch", log_line=None
) -> list[ServedModel]:
    """Each run's predictor and card; a run's name is its folder's name unless ``names``."""
    from medlens.errors import MedlensError
    from medlens.serve.cards import model_card
    from medlens.tasks.registry import load_predictor

    names = list(names or [])
    if len(names) > len(runs):
        raise MedlensError(f"{len(names)} --name for {len(runs)} runs")
    names += [Path(run).resolve().name for run in runs[len(names) :]]
    if len(set(names)) != len(names):
        raise MedlensError(f"two runs served under one name ({', '.join(names)}): use --name")
    models = []
    for run, name in zip(runs, names, strict=True):
        predictor = load_predictor(run, backend=backend, log=log_line)
        models.append(ServedModel(name, predictor, model_card(name, predictor)))
    return models


def create_app(models: list[ServedModel], settings: ServeSettings | None = None):
    """The FastAPI app serving ``models`` (see the module's notes)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from medlens.serve.metrics import Metrics

    settings = settings or ServeSettings()
    by_name = {model.name: model for model in models}
    metrics = Metrics(by_name)
    state = {"ready": False}

    async def lifespan(app):
        for model in models:
            model.clock = _NetworkClock(list(model.predictor.networks))
            # batching only where the predictor runs images through its networks together
            batch = settings.max_batch if model.predictor.batches_images else 1
            model.card["max_batch"] = batch
            model.batcher = Batcher(
                model.predict,
                max_batch=batch,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                observe=metrics.observer(model.name),
            )
            model.batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        for model in models:
            await model.batcher.stop()

    app = FastAPI(
        title="medlens", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None
    )

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.exception("unexpected error answering %s", request.url.path)
        return error(500, "internal error (logged by the server)")

    def authorise(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if given is None and bearer[:7].lower() == "bearer ":
            given = bearer[7:].strip()
        expected = settings.api_key.encode()
        if not hmac.compare_digest((given or "").encode(), expected):
            raise HTTPException(
                401,
                "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health", summary="The server is alive")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Models loaded and accepting requests")
    async def ready():
        if not state["ready"]:
            return error(503, "not ready", {"Retry-After": "1"})
        return {"status": "ready", "models": list(by_name)}

    @app.get("/v1/models", dependencies=[Depends(authorise)], summary="Model cards")
    async def list_models() -> dict:
        return {"models": [model.card for model in models]}

    @app.get("/metrics", dependencies=[Depends(authorise)], response_class=PlainTextResponse)
    async def prometheus():
        body, media = metrics.render()
        return Response(body, media_type=media)

    @app.post(
        "/v1/models/{name}/predict",
        dependencies=[Depends(authorise)],
        openapi_extra=UPLOAD_SCHEMA,
        summary="Predict one image",
        responses={200: {"content": {MEDIA[k]: {} for k in MEDIA}}},
    )
    async def predict(
        name: str, request: Request, format: str | None = None, filename: str | None = None
    ):
        started = time.perf_counter()
        model = by_name.get(name)
        if model is None:
            return error(404, f"no model {name!r} (models: {', '.join(by_name)})")
        fmt = _answer_format(format, request.headers.get("accept", ""), model)
        if isinstance(fmt, JSONResponse):
            return fmt
        status, answer = 200, None
        folder = Path(tempfile.mkdtemp(prefix="medlens-serve-"))  # mode 0700
        try:
            answer = await _answer(model, request, folder, fmt, filename, started)
        except UploadError as exc:
            status, answer = exc.status, error(exc.status, _clean(exc.message, folder))
        except QueueFull:
            status, answer = (
                503,
                error(503, f"model {name!r} is busy: its queue is full", {"Retry-After": "1"}),
            )
        except asyncio.TimeoutError:
            status, answer = 504, error(504, f"no answer within {settings.timeout_s:g} s")
        except ClientDisconnect:
            status, answer = 499, Response(status_code=400)  # nobody is there to read it
        except Exception as exc:
            from medlens.errors import MedlensError

            if not isinstance(exc, MedlensError | ValueError):
                raise
            status, answer = 400, error(400, _clean(str(exc), folder))
        finally:
            metrics.request(name, status, time.perf_counter() - started)
            if answer is None:  # an unexpected error on its way to the 500 handler
                shutil.rmtree(folder, ignore_errors=True)
        # the upload's folder goes once the answer is sent (an encoded mask is read from it)
        answer.background = BackgroundTask(shutil.rmtree, folder, True)
        return answer

    def openapi() -> dict:
        """FastAPI's spec, with the served model names as the ``name`` parameter's values."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for parameter in spec["paths"]["/v1/models/{name}/predict"]["post"]["parameters"]:
                if parameter["name"] == "name":
                    parameter["schema"]["enum"] = list(by_name)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    async def _answer(
        model: ServedModel,
        request: Request,
        folder: Path,
        fmt: str,
        filename: str | None,
        started: float,
    ):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.limits.max_bytes:
            raise UploadError(
                413,
                f"upload of {int(length) >> 20} MB over the limit of {settings.max_upload_mb} MB",
            )
        fields = model.predictor.input_fields
        content_type = request.headers.get("content-type", "")
        with model.batcher.expect():  # the batch being gathered may wait for it
            if fields == ("file",):
                upload = await receive_upload(
                    request.stream(), content_type, folder, settings.limits, filename
                )
                image = await asyncio.to_thread(_read, model, upload, settings.limits)
            else:  # several images make one prediction: a tuple in the order of the fields
                uploads = await receive_uploads(
                    request.stream(), content_type, folder, settings.limits, fields
                )
                image = tuple(
                    [
                        await asyncio.to_thread(_read, model, uploads[f], settings.limits)
                        for f in fields
                    ]
                )
        read_done = time.perf_counter()
        result, info = await asyncio.wait_for(model.batcher.submit(image), settings.timeout_s)
        prediction, network = result
        if fmt == "json":
            body = {"model": model.name, **prediction.to_json()}
            response: Any = JSONResponse(body)
        else:
            context = {"model_name": model.name, "model_version": model.card["version"]}
            written = await asyncio.to_thread(prediction.encode, fmt, folder / "answer", **context)
            suffix = SUFFIX[fmt]
            response = Response(
                written.read_bytes(),
                media_type=MEDIA[fmt],
                headers={"Content-Disposition": f'attachment; filename="{model.name}{suffix}"'},
            )
        timing = {
            "total": time.perf_counter() - started,
            "read": read_done - started,
            "queue": info["queue_s"],
            "predict": info["compute_s"],
            "network": network,
        }
        response.headers["Server-Timing"] = ", ".join(
            [f"{k};dur={v * 1000:.2f}" for k, v in timing.items()] + [f"batch;desc={info['batch']}"]
        )
        return response

    return app


def _read(model: ServedModel, upload: Path, limits: Limits):
    """The uploaded image, read as ``medlens predict`` reads a file or series folder."""
    from medlens.errors import MedlensError

    images = model.predictor.read(check_upload(upload, limits))
    if len(images) != 1:
        raise MedlensError(f"{upload.name}: holds {len(images)} images or series; send one")
    images[0].meta["path"] = upload.name
    return images[0]


def _answer_format(fmt: str | None, accept: str, model: ServedModel):
    from fastapi.responses import JSONResponse

    offered = ("json", *model.predictor.answer_formats)
    if fmt is None:
        kinds = [ACCEPT.get(part.split(";")[0].strip().lower()) for part in accept.split(",")]
        dicom = next((k for k in offered if MEDIA.get(k) == "application/dicom"), None)
        kinds = [dicom if k == "dicom" else k for k in kinds]
        fmt = next((k for k in kinds if k in offered), "json")
    if fmt not in offered:
        return JSONResponse(
            {"error": f"format {fmt!r}: model {model.name!r} answers {', '.join(offered)}"},
            status_code=400,
        )
    return fmt


def _clean(message: str, folder: Path) -> str:
    """A message without the server's temporary paths (the uploaded file's name stays)."""
    return message.replace(f"{folder}/", "").replace(str(folder), "upload").splitlines()[0]


def _version() -> str:
    import medlens

    return medlens.__version__
