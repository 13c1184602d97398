"""ONNX export of any task's run, and predicting on ONNX Runtime.

``medlens export RUN --format onnx --output DIR`` writes ``fold-K.onnx`` per fold (dynamic
batch; dynamic spatial axes where the network is fully convolutional) and ``export.json``: the
input and output, what stays outside the graph (the task's :meth:`~medlens.tasks.base.Task.
export_spec`: normalisation, resampling, sliding window, calibration), the SHA-256 of each
checkpoint it came from and of each graph, and the parity measured at export (ONNX Runtime
against torch on the example input and on random inputs of other batch and spatial sizes).

``load_predictor(run, backend=...)`` predicts on torch (``"torch"``, the default), on the
run's ONNX export (``"onnx"``: the export at ``RUN/onnx``, checked against the run's
checkpoints), or on whichever a short measurement at load finds faster (``"auto"``; torch
where the run has no export). The prediction code is the same either way: the sessions stand
in for the networks (:class:`~medlens.inference.onnx.OnnxNetwork`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError

__all__ = ["BACKENDS", "EXPORT_FORMAT", "export_onnx", "use_backend"]

EXPORT_FORMAT = "medlens-onnx-export/1"
BACKENDS = ("torch", "onnx", "auto")
OPSET = 18


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(run_dir: str | Path, output: str | Path | None = None, *, log=print) -> dict:
    """Export the run at ``run_dir`` into ``output`` (default ``RUN/onnx``); returns
    ``export.json``'s content. Refuses an ``output`` inside the run's data or over a file."""
    from medlens import __version__
    from medlens._atomic import atomic_path, atomic_write_json
    from medlens.tasks.registry import task_for_run

    try:
        import onnxruntime as ort
    except ImportError:
        raise MedlensError(
            "ONNX export needs onnx and onnxruntime: pip install 'medlens[serve]'"
        ) from None
    # the exporter logs every torchvision operator it cannot find: medlens uses none of them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    task, folder = task_for_run(run_dir)
    out = Path(output) if output is not None else folder.path / "onnx"
    if out.exists() and not out.is_dir():
        raise MedlensError("exists and is not a folder", out)
    spec = task.export_spec(folder)
    checkpoints = folder.checkpoints()
    example = spec.example.to(torch.float32)
    dims = example.dim() - 2
    shapes = _dynamic_shapes(dims, spec.dynamic_spatial)
    folds = []
    for k, (network, checkpoint) in enumerate(zip(spec.networks, checkpoints, strict=True)):
        network = network.eval().float()
        target = out / f"fold-{k}.onnx"
        log(f"exporting fold {k} of {len(checkpoints)} to {target} ...")
        with atomic_path(target) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            program = torch.onnx.export(network, (example,), dynamo=True, opset_version=OPSET,
                                        dynamic_shapes=shapes, input_names=["image"],
                                        output_names=[spec.output], optimize=True,
                                        verbose=False, external_data=False)  # fmt: skip
            program.save(str(tmp), external_data=False)
        parity = _parity(network, target, example, spec, ort)
        folds.append({"file": target.name, "sha256": _sha256(target),
                      "checkpoint": str(checkpoint.relative_to(folder.path)),
                      "checkpoint_sha256": _sha256(checkpoint), "parity": parity})  # fmt: skip
        log(f"fold {k}: ONNX Runtime within {parity['max_abs_diff']:.2e} of torch")
    spatial = [f"s{i}" if spec.dynamic_spatial else int(n)
               for i, n in enumerate(example.shape[2:])]  # fmt: skip
    record = {
        "format": EXPORT_FORMAT,
        "task": task.name,
        "run": str(folder.path),
        "medlens_version": __version__,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": OPSET,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": ["batch", int(example.shape[1]), *spatial],
        },
        "output": {"name": spec.output, "shape": ["batch", "outputs", *spatial]},
        "example_shape": [int(n) for n in example.shape],
        "dynamic_spatial": spec.dynamic_spatial,
        "spatial_divisor": spec.spatial_divisor,
        "outside_the_graph": spec.outside,
        "folds": folds,
    }
    atomic_write_json(out / "export.json", record)
    return record


def _dynamic_shapes(dims: int, spatial: bool):
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
    if spatial:
        axes.update({2 + i: Dim.AUTO for i in range(dims)})
    return (axes,)


def _parity(network, path: Path, example: torch.Tensor, spec, ort) -> dict:
    """Largest absolute difference of ONNX Runtime's outputs to torch's on the example, a
    random batch of 3, and (fully convolutional networks) a larger random input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    inputs = [example, torch.randn((3, *example.shape[1:]), generator=generator)]
    if spec.dynamic_spatial:
        grow = [int(d) for d in (spec.spatial_divisor or [1] * (example.dim() - 2))]
        shape = [n + g for n, g in zip(example.shape[2:], grow, strict=True)]
        inputs.append(torch.randn((1, example.shape[1], *shape), generator=generator))
    worst = scale = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = network(x).float().numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise MedlensError(f"export gives shape {got.shape}, torch {expected.shape}", path)
        worst = max(worst, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    # outputs that are not probabilities (images in the measurements' units) compare relatively
    relative = worst / scale if scale > 0 else worst
    return {"max_abs_diff": worst, "max_rel_diff": relative,
            "inputs": [list(map(int, x.shape)) for x in inputs]}  # fmt: skip


def _valid_export(folder) -> tuple[Path, dict]:
    """The run's export at ``RUN/onnx`` whose checkpoints are the run's; else an error."""
    from medlens._json import read_json

    where = folder.path / "onnx"
    manifest = where / "export.json"
    hint = f"run `medlens export {folder.path} --format onnx` first"
    if not manifest.is_file():
        raise MedlensError(f"{folder.path}: no ONNX export at {where}; {hint}")
    record = read_json(manifest)
    checkpoints = folder.checkpoints()
    folds = record.get("folds") if record.get("format") == EXPORT_FORMAT else None
    if (
        not isinstance(folds, list)
        or len(folds) != len(checkpoints)
        or any(
            fold.get("checkpoint_sha256") != _sha256(checkpoint)
            for fold, checkpoint in zip(folds, checkpoints, strict=True)
        )
    ):
        raise MedlensError(f"{manifest}: not an export of this run's checkpoints; {hint}")
    return where, record


def use_backend(predictor, backend: str, *, log=None) -> str:
    """Switch ``predictor``'s networks to ``backend`` (see the module's notes); returns the
    backend it predicts on."""
    from medlens.inference.onnx import OnnxNetwork, onnxruntime_available

    if backend not in BACKENDS:
        raise MedlensError(f"--backend {backend}: choose {', '.join(BACKENDS)}")
    predictor.backend = "torch"
    if backend == "torch":
        return "torch"
    if backend == "auto" and not (
        onnxruntime_available() and (predictor.run.path / "onnx" / "export.json").is_file()
    ):
        return "torch"
    where, record = _valid_export(predictor.run)
    sessions = [OnnxNetwork(where / fold["file"]) for fold in record["folds"]]
    if backend == "auto":
        example = torch.randn(record["example_shape"], generator=torch.Generator().manual_seed(0))
        torch_s = _time(predictor.networks[0], example)
        onnx_s = _time(sessions[0], example)
        predictor.backend_timing = {"torch_s": torch_s, "onnx_s": onnx_s}
        if log is not None:
            log(f"backend auto: torch {torch_s * 1e3:.1f} ms, ONNX Runtime {onnx_s * 1e3:.1f} ms "
                "per example input")  # fmt: skip
        if onnx_s >= torch_s:
            return "torch"
    predictor.networks = sessions
    predictor.backend = "onnx"
    return "onnx"


def _time(network, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of ``repeats`` forward passes after one warm-up."""
    times = []
    with torch.no_grad():
        network(x)
        for _ in range(repeats):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times))
