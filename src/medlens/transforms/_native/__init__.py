"""Hand-written C resampling kernels, compiled on first use and called through ctypes.

Affine resampling is most of the time an augmentation chain spends, and the generic paths are
slow on a CPU: ``affine_grid`` + ``grid_sample`` write and read a whole sampling grid, and the
``torch.compile`` kernel gathers each of the eight neighbours separately. ``warp.c`` computes the
source position of eight voxels of a row at once (AVX2), fetches the two x-neighbours of each as one
64-bit load, and splits the rows over ``torch.get_num_threads()`` threads: about twice as fast as
the compiled kernel on a 96^3 volume (``benchmarks/augment.py``).

The library is built with the system C compiler (``$CC`` or ``cc``; ``-march=native`` where the
compiler takes it) into ``$MEDLENS_CACHE`` (default ``~/.cache/medlens``), keyed by the source, the
compiler and the CPU, in well under a second. Without a compiler, or with ``MEDLENS_NATIVE=0``,
:func:`warp` returns ``None`` and the caller falls back to torch, which gives the same values.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["STATE", "available", "warp"]

STATE = {"disabled": os.environ.get("MEDLENS_NATIVE", "1") == "0"}
_SOURCE = Path(__file__).with_name("warp.c")
_LOCK = threading.Lock()
_LIB: dict[str, ctypes.CDLL | None] = {}
_INT32_LIMIT = 1 << 31
_FLOAT_EXACT = 1 << 24  # coordinates and clamped indices are exact in float32 below this


def available() -> bool:
    """Whether the native kernels can be used in this process (builds them on first call)."""
    return _library() is not None


def warp(
    x: torch.Tensor, matrix: torch.Tensor, out_shape: tuple[int, ...], mode: str
) -> torch.Tensor | None:
    """Resample ``x`` ``(B, C, *S)`` through pull-back ``matrix`` ``(B, n+1, n+1)``, zero padding.

    ``mode`` is ``"linear"`` (float32 only) or ``"nearest"`` (any dtype: values are copied, never
    blended). Returns ``None`` when the native path does not apply (not on the CPU, gradients
    needed, another dtype, sizes beyond 32-bit offsets, no compiler), for the caller to fall back.
    """
    n = len(out_shape)
    if n not in (2, 3) or x.ndim != n + 2 or x.device.type != "cpu" or x.requires_grad:
        return None
    if mode == "linear" and x.dtype != torch.float32:
        return None
    if mode not in ("linear", "nearest") or x.element_size() not in (1, 2, 4, 8):
        return None
    if x[0, 0].numel() >= _INT32_LIMIT or max(*x.shape[2:], *out_shape) >= _FLOAT_EXACT:
        return None
    if x.shape[0] == 0 or x.shape[1] == 0 or 0 in out_shape or 0 in x.shape[2:]:
        return None
    lib = _library()
    if lib is None:
        return None
    source = x.contiguous()
    rows = matrix[:, :n, :].detach().to(device="cpu", dtype=torch.float32).contiguous()
    if rows.shape[0] != source.shape[0]:
        rows = rows.expand(source.shape[0], n, n + 1).contiguous()
    out = torch.empty((*source.shape[:2], *out_shape), dtype=source.dtype)
    b, c = source.shape[:2]
    threads = max(1, torch.get_num_threads())
    if mode == "linear" and n == 3:
        lib.medlens_warp_linear_3d(
            source.data_ptr(), out.data_ptr(), rows.data_ptr(), b, c, *source.shape[2:],
            *out_shape, threads,
        )  # fmt: skip
    elif mode == "linear":
        lib.medlens_warp_linear_2d(
            source.data_ptr(), out.data_ptr(), rows.data_ptr(), b, c, *source.shape[2:],
            *out_shape, threads,
        )  # fmt: skip
    else:
        depth, out_depth = (source.shape[2], out_shape[0]) if n == 3 else (0, 0)
        lib.medlens_warp_nearest(
            source.data_ptr(), out.data_ptr(), rows.data_ptr(), source.element_size(), b, c,
            depth, *source.shape[-2:], out_depth, *out_shape[-2:], threads,
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------------- building
def _library() -> ctypes.CDLL | None:
    if STATE["disabled"]:
        return None
    with _LOCK:
        if "lib" not in _LIB:
            try:
                _LIB["lib"] = _declare(ctypes.CDLL(str(_build())))
            except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                _LIB["lib"] = None
                warnings.warn(
                    f"medlens: native resampling kernels unavailable ({exc}); using torch",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return _LIB["lib"]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, long, cint = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.medlens_warp_linear_3d.argtypes = [ptr] * 3 + [long] * 8 + [cint]
    lib.medlens_warp_linear_2d.argtypes = [ptr] * 3 + [long] * 6 + [cint]
    lib.medlens_warp_nearest.argtypes = [ptr] * 3 + [long] * 9 + [cint]
    for name in ("medlens_warp_linear_3d", "medlens_warp_linear_2d", "medlens_warp_nearest"):
        getattr(lib, name).restype = None
    lib.medlens_has_avx2.restype = cint
    return lib


def _compiler() -> str:
    names = [os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc"]
    for name in names:
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no C compiler found (set CC)")


def _cache_dir() -> Path:
    root = os.environ.get("MEDLENS_CACHE")
    if root:
        return Path(root) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medlens" / "native"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build() -> Path:
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(s.encode() if isinstance(s, str) else s for s in
                   (source, compiler, version, platform.machine(), _cpu_id()))
    ).hexdigest()[:16]  # fmt: skip
    target = _cache_dir() / f"warp-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    base = ["-O3", "-fPIC", "-shared", "-pthread", "-fno-math-errno"]
    errors = []
    for extra in (["-march=native"], []):  # -march=native is not known to every compiler
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
        command = [compiler, *base, *extra, str(_SOURCE), "-o", temporary, "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            os.replace(temporary, target)  # atomic: a concurrent build finds a whole library
            return target
        os.unlink(temporary)
        errors.append(result.stderr.strip().splitlines()[-1:] or ["failed"])
    raise RuntimeError(f"{compiler} could not build {_SOURCE.name}: {errors[-1][0]}")
