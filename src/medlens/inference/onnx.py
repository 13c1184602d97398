"""ONNX Runtime sessions that stand in for a run's torch networks.

:class:`OnnxNetwork` is a ``torch.nn.Module`` whose forward pass runs an exported graph in ONNX
Runtime: the code that predicts (sliding windows, mirroring, fold ensembles, calibration) calls
it as it calls the torch network, so a task needs nothing of its own to predict on ONNX
Runtime. It only infers; there are no parameters to train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medlens.errors import MedlensError

__all__ = ["OnnxNetwork", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxNetwork(torch.nn.Module):
    """``forward(x)`` runs the ONNX graph at ``path`` on ``x`` (float32, on the CPU) and returns
    its first output as a tensor. Threads: as many as torch uses."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise MedlensError(
                "the ONNX backend needs onnxruntime: pip install 'medlens[serve]'"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MedlensError(f"not a loadable ONNX model ({exc})", path) from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def extra_repr(self) -> str:
        return f"path={self.path}"
