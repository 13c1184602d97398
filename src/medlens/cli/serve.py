"""``medlens export``: a run's networks as ONNX, for ONNX Runtime and other runtimes."""

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
