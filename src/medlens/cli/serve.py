"""``medlens export`` (a run's networks as ONNX), ``medlens serve`` (REST) and ``medlens
dicom-node`` (a DICOM node for a PACS)."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    output: Path | None = typer.Option(
        None, "--output", help="Folder for fold-K.onnx and export.json (default: RUN/onnx)."
    ),
) -> None:
    """Write one ONNX graph per fold and export.json (what stays outside the graph, parity)."""
    from medlens.errors import MedlensError
    from medlens.tasks.export import export_onnx

    if fmt != "onnx":
        raise MedlensError(f"--format {fmt}: medlens exports onnx")
    record = export_onnx(run, output, log=lambda line: typer.echo(line, err=True))
    where = Path(output) if output is not None else Path(run) / "onnx"
    worst = max(fold["parity"]["max_abs_diff"] for fold in record["folds"])
    typer.echo(
        f"{len(record['folds'])} ONNX graph(s) and export.json: {where} "
        f"(ONNX Runtime within {worst:.1e} of torch)"
    )


def serve(
    runs: list[Path] = typer.Argument(..., help="Run folders written by medlens train."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    port: int = typer.Option(8000, "--port"),
    name: list[str] = typer.Option(
        [], "--name", help="A run's model name (in order; default: its folder's name)."
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", help="Images per forward pass (1: no dynamic batching)."
    ),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", help="How long a batch waits to fill."
    ),
    max_queue: int = typer.Option(
        256, "--max-queue", help="Waiting requests per model before 503."
    ),
    max_upload_mb: int = typer.Option(512, "--max-upload-mb", help="Larger uploads get 413."),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="Per request; then 504."),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="A file holding the key requests must send."
    ),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="torch, onnx (the run's export) or auto (the faster, measured at load).",
    ),
) -> None:
    """Serve runs over HTTP: model cards, predictions, Prometheus metrics (FastAPI + uvicorn)."""
    from medlens.errors import MedlensError

    try:
        import uvicorn

        from medlens.serve import ServeSettings, create_app, load_models
    except ImportError as exc:
        raise MedlensError(_extra_missing("medlens serve", exc)) from None
    key = None
    if api_key_file is not None:
        key = api_key_file.read_text().strip()
        if len(key) < 16:
            raise MedlensError(f"{api_key_file}: the API key must be at least 16 characters")
    settings = ServeSettings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        timeout_s=timeout_s,
        api_key=key,
    )
    echo = lambda line: typer.echo(line, err=True)  # noqa: E731
    models = load_models(runs, names=name, backend=backend, log_line=echo)
    for model in models:
        echo(f"serving {model.name}: a {model.card['task']} run on {model.card['backend']}")
    if host not in ("127.0.0.1", "localhost", "::1") and key is None:
        echo(
            f"warning: listening on {host} without --api-key-file: anyone who reaches it can "
            "use the models"
        )
    uvicorn.run(create_app(models, settings), host=host, port=port, log_level="warning")


def dicom_node(
    run: Path = typer.Argument(..., help="Run folder written by medlens train."),
    ae_title: str = typer.Option("MEDLENS", "--ae-title", help="The node's AE title."),
    port: int = typer.Option(11112, "--port", help="DICOM port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    send_to: str | None = typer.Option(
        None, "--send-to", help="Where results go by C-STORE: AET@HOST:PORT (the PACS)."
    ),
    dicomweb: str | None = typer.Option(
        None, "--dicomweb", help="Send results by STOW-RS instead: dicomweb://HOST:PORT/ROOT."
    ),
    settle_s: float = typer.Option(
        5.0,
        "--settle-s",
        help="A series is complete this many seconds after its last image (sender done).",
    ),
    modality: str | None = typer.Option(
        None, "--modality", help="Modalities to take, e.g. MR,CT (default: the run's)."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name in results (default: run's)."),
    spool: Path | None = typer.Option(
        None, "--spool", help="Folder for received images (default: a private temporary one)."
    ),
    backend: str = typer.Option("torch", "--backend", help="torch, onnx or auto."),
) -> None:
    """Receive series from a PACS (C-STORE), predict, send DICOM SEG/SR back (C-STORE or STOW)."""
    from medlens.errors import MedlensError
    from medlens.io.dicomweb import parse_dicomweb
    from medlens.tasks.export import use_backend
    from medlens.tasks.registry import load_predictor

    try:
        from medlens.serve.dicom_node import DicomNode, NodeSettings, dicom_modalities, parse_peer
    except ImportError as exc:
        raise MedlensError(_extra_missing("medlens dicom-node", exc)) from None
    if send_to is None and dicomweb is None:
        raise MedlensError("medlens dicom-node: give --send-to AET@HOST:PORT or --dicomweb URL")
    echo = lambda line: typer.echo(line, err=True)  # noqa: E731
    predictor = load_predictor(run)
    use_backend(predictor, backend, log=echo)
    allowed = dicom_modalities(modality or predictor.input_spec().get("modality"))
    settings = NodeSettings(
        ae_title=ae_title,
        host=host,
        port=port,
        send_to=parse_peer(send_to) if send_to else None,
        dicomweb=dicomweb,
        settle_s=settle_s,
        modalities=allowed,
        spool=spool,
    )
    node = DicomNode(
        predictor,
        settings,
        model_name=name or Path(run).resolve().name,
        model_version=predictor.run.algorithm_version(),
        log=echo,
    )
    takes = ", ".join(sorted(allowed)) if allowed else "any modality"
    where = str(parse_dicomweb(dicomweb)) if dicomweb else send_to  # never the password
    echo(
        f"DICOM node {ae_title} on {host}:{port}: a {predictor.task} run, takes {takes}; "
        f"results to {where}; a series is complete {settle_s:g} s after its last "
        "image once its sender is done (Ctrl-C stops)"
    )
    try:
        node.serve_forever()
    except KeyboardInterrupt:
        echo("stopped")


def _extra_missing(command: str, exc: ImportError) -> str:
    return f"{command} needs the serve extra ({exc.name} is missing): pip install 'medlens[serve]'"
