"""Sliding-window inference: medlens against MONAI's ``sliding_window_inference``, in one process.

Run from the repository root in the benchmark environment (see benchmarks/README.md)::

    .venv-bench/bin/python benchmarks/sliding_window.py            # full run, about 3 minutes
    .venv-bench/bin/python benchmarks/sliding_window.py --quick    # smoke run, under 1 minute

Two workloads, each with one network instance shared by both libraries (a small U-Net-like net in
plain torch, defined here: conv + InstanceNorm + LeakyReLU, one strided down-sampling and one
transposed-conv up-sampling step with an additive skip, 3 output channels, random weights, eval
mode):

* ``3d``: one 1-channel volume of 192x192x128, windows of 96^3, 8/16 channels in the net;
* ``2d``: one 1-channel image of 2048x2048, windows of 512x512, 8/16 channels.

Both libraries get the same network, window size, overlap 0.5, Gaussian weighting with sigma
0.125 of the window, windows per predictor call (``--sw-batch``, default 2) and
``torch.inference_mode()``. The sizes are chosen so that the two libraries place their windows
identically (``size - roi`` a multiple of the step, or two windows along an axis), and their
outputs are compared once before timing (``max_abs_diff``).

Three cases per workload, timed in interleaved rounds: medlens ``sliding_window``, MONAI
``sliding_window_inference`` and the pure forward passes (the network alone on the same window
batches, extracted beforehand): the floor any sliding-window implementation sits on. Figures:
the ratio MONAI time / medlens time (above 1: medlens faster) and each library's overhead
``(time - pure) / pure``, from median times. A second pair of cases replaces the network by a
trivial predictor, the window repeated into 3 channels (``blend only``): then the libraries' own
work (extracting, weighting, blending) is most of the time, and their ratio shows it on its own.
A column gives each case's minor page faults (median per run).

Memory: by default the process keeps the memory it frees (glibc ``mallopt``: no ``munmap``, no
heap trimming), for every case alike. Otherwise glibc hands large freed blocks back to the OS and
the network's intermediate tensors land on fresh pages in some forward passes and not in others,
depending on what else was allocated in between: on 2 cores that made every case 2-2.5 times
slower in 3D (about 1.8 million page faults per run) and moved the cases by +-15 % against each
other from run to run, which drowns what the libraries do. ``--glibc-default`` measures that
default instead. The last line of stdout is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Timing,
    configure_threads,
    emit_json,
    environment,
    limit_threads,
    log,
    print_table,
    round_robin,
)

BENCHMARK = "sliding_window"
PACKAGES = ("medlens", "torch", "monai")
OVERLAP, SIGMA_SCALE, CLASSES = 0.5, 0.125, 3
# name -> (image size, window size, first-level channels)
WORKLOADS = {
    "3d": ((192, 192, 128), (96, 96, 96), 8),
    "2d": ((2048, 2048), (512, 512), 8),
}
QUICK = {
    "3d": ((96, 96, 64), (48, 48, 48), 8),
    "2d": ((1024, 1024), (256, 256), 8),
}


class SmallUNet(nn.Module):
    """Conv + InstanceNorm + LeakyReLU, one level down and up with an additive skip connection."""

    def __init__(self, ndim: int, in_channels: int, channels: int, classes: int) -> None:
        super().__init__()
        conv = nn.Conv3d if ndim == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
        up = nn.ConvTranspose3d if ndim == 3 else nn.ConvTranspose2d

        def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                conv(i, o, 3, stride=stride, padding=1, bias=False),
                norm(o, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            )

        self.encode = block(in_channels, channels)
        self.down = nn.Sequential(
            block(channels, 2 * channels, 2), block(2 * channels, 2 * channels)
        )
        self.up = up(2 * channels, channels, 2, stride=2)
        self.decode = block(channels, channels)
        self.head = conv(channels, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.encode(x)
        return self.head(self.decode(self.up(self.down(skip)) + skip))


def window_batches(image: Tensor, roi: tuple[int, ...], batch: int) -> list[Tensor]:
    """The windows both libraries extract (same placement here), stacked as they batch them."""
    from medlens.inference import window_starts

    starts = [window_starts(s, r, OVERLAP) for s, r in zip(image.shape[2:], roi, strict=True)]
    windows = [
        image[(0, slice(None), *(slice(a, a + r) for a, r in zip(corner, roi, strict=True)))]
        for corner in itertools.product(*starts)
    ]
    return [torch.stack(windows[i : i + batch]) for i in range(0, len(windows), batch)]


def make_cases(
    image: Tensor,
    roi: tuple[int, ...],
    net: Callable[[Tensor], Tensor],
    batch: int,
    monai_swi: Callable | None,
) -> dict[str, Callable[[], Any]]:
    from medlens.inference import sliding_window

    cases: dict[str, Callable[[], Any]] = {
        "medlens": lambda: sliding_window(
            image, net, roi, overlap=OVERLAP, batch_size=batch, sigma_scale=SIGMA_SCALE
        ),
    }
    if monai_swi is not None:

        def monai() -> Tensor:
            with torch.inference_mode():
                return monai_swi(
                    image,
                    roi,
                    batch,
                    net,
                    overlap=OVERLAP,
                    mode="gaussian",
                    sigma_scale=SIGMA_SCALE,
                )

        cases["MONAI"] = monai
    return cases


def run_workload(name: str, args: argparse.Namespace, monai_swi: Callable | None) -> dict[str, Any]:
    size, roi, channels = (QUICK if args.quick else WORKLOADS)[name]
    ndim = len(size)
    torch.manual_seed(0)
    image = torch.randn(1, 1, *size)
    net = SmallUNet(ndim, 1, channels, CLASSES).eval()

    def trivial(batch: Tensor) -> Tensor:
        return batch.repeat(1, CLASSES, *(1,) * ndim)

    batches = window_batches(image, roi, args.sw_batch)
    windows = sum(len(b) for b in batches)
    label = f"{'x'.join(map(str, size))}, roi {'x'.join(map(str, roi))}"
    log(f"[{name}] {label}: {windows} windows in batches of {args.sw_batch}")

    def pure() -> None:
        with torch.inference_mode():
            for b in batches:
                net(b)

    cases = {
        f"net: {k}": v for k, v in make_cases(image, roi, net, args.sw_batch, monai_swi).items()
    }
    cases["net: pure forward"] = pure
    blend = make_cases(image, roi, trivial, args.sw_batch, monai_swi)
    cases.update({f"blend only: {k}": v for k, v in blend.items()})

    # Warm-up (untimed) and the one check that both libraries compute the same thing.
    outputs = {k: fn() for k, fn in cases.items() if not k.endswith("pure forward")}
    diffs = {}
    for prefix in ("net", "blend only"):
        if f"{prefix}: MONAI" in outputs:
            diff = (outputs[f"{prefix}: medlens"] - outputs[f"{prefix}: MONAI"]).abs().max()
            diffs[prefix] = float(diff)
            log(f"[{name}] {prefix}: max |medlens - MONAI| = {float(diff):.2e}")
    del outputs
    pure()
    load_before = os.getloadavg()[0]
    faults: dict[str, list[int]] = {k: [] for k in cases}
    timed = {k: counting_faults(fn, faults[k]) for k, fn in cases.items()}
    timings, rounds = round_robin(timed, repeats=args.repeats, warmed_up=True)
    return summarise(name, label, windows, timings, rounds, diffs, faults, load_before)


def counting_faults(fn: Callable[[], Any], into: list[int]) -> Callable[[], Any]:
    """``fn`` that appends its minor page faults to ``into``: fresh pages cost time too."""

    def run() -> Any:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result = fn()
        into.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return result

    return run


def summarise(
    name: str,
    label: str,
    windows: int,
    timings: dict[str, Timing],
    rounds: int,
    diffs: dict[str, float],
    faults: dict[str, list[int]],
    load_before: float,
) -> dict[str, Any]:
    med = {k: t.median for k, t in timings.items()}
    best = {k: t.min for k, t in timings.items()}
    pure = med["net: pure forward"]
    result: dict[str, Any] = {
        "input": label,
        "windows": windows,
        "rounds": rounds,
        "times": {k: t.as_dict() for k, t in timings.items()},
        "overhead": med["net: medlens"] / pure - 1,
        "overhead_min_time": best["net: medlens"] / best["net: pure forward"] - 1,
        "max_abs_diff": diffs,
        "page_faults_median": {k: statistics.median(v) for k, v in faults.items()},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    rows = []
    for case, t in timings.items():
        over = f"{t.median / pure - 1:+.1%}" if case.startswith("net:") else "-"
        pages = f"{statistics.median(faults[case]):.0f}"
        rows.append([case, f"{t.median:.3f}", f"{t.min:.3f}", over, pages])
    if "net: MONAI" in med:
        result["ratio_vs_monai"] = med["net: MONAI"] / med["net: medlens"]
        result["ratio_vs_monai_min_time"] = best["net: MONAI"] / best["net: medlens"]
        result["monai_overhead"] = med["net: MONAI"] / pure - 1
        result["blend_ratio_vs_monai"] = med["blend only: MONAI"] / med["blend only: medlens"]
    title = f"{name}: {label}, overlap {OVERLAP}, gaussian, {windows} windows, {rounds} rounds"
    print_table(title, ["case", "median s", "min s", "over pure", "page faults"], rows)
    if "ratio_vs_monai" in result:
        print(
            f"MONAI / medlens time: {result['ratio_vs_monai']:.3f}x with the network, "
            f"{result['blend_ratio_vs_monai']:.2f}x blending only; overhead over the pure forward "
            f"passes: medlens {result['overhead']:.1%}, MONAI {result['monai_overhead']:.1%}"
        )
    return result


def keep_freed_memory() -> str:
    """glibc: keep freed memory in the process instead of handing it back to the OS.

    By default glibc returns large freed blocks to the OS (``munmap``, heap trimming), so the
    network's intermediate tensors land on fresh pages, and page faults, in some forward passes
    and not others: that, not the libraries' own work, is most of the spread between the cases.
    With this every case runs on warm pages, as a process with jemalloc or tcmalloc preloaded
    mostly does. It is process-wide, so it applies to all cases alike.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return "no C library found"
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
    if not hasattr(libc, "mallopt"):
        return "not glibc (no mallopt)"
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "on" if ok else "mallopt refused"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: smaller inputs, 2 rounds")
    parser.add_argument("--only", choices=list(WORKLOADS), action="append", help="one workload")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    parser.add_argument("--sw-batch", type=int, default=2, help="windows per predictor call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's default of handing freed memory back to the OS (page faults)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 9
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = configure_threads()
    keep_memory = "off" if args.glibc_default else keep_freed_memory()
    log(f"keep freed memory (glibc mallopt): {keep_memory}")
    load_start = os.getloadavg()[0]
    log(f"load average (1 min) at start: {load_start:.2f} on {os.cpu_count()} cores")
    try:
        from monai.inferers import sliding_window_inference as monai_swi
    except ImportError as exc:
        log(f"MONAI left out: {exc}")
        monai_swi = None
    payload: dict[str, Any] = {"benchmark": BENCHMARK, **settings}
    workloads = {}
    with limit_threads(args.threads):
        payload["torch_threads"] = torch.get_num_threads()
        for name in args.only or list(WORKLOADS):
            workloads[name] = run_workload(name, args, monai_swi)
    for name, result in workloads.items():
        for key in ("ratio_vs_monai", "overhead", "monai_overhead", "blend_ratio_vs_monai"):
            if key in result:
                payload[f"{key}_{name}"] = result[key]
        for case, timing in result["times"].items():
            payload[f"time_{name}_{case.replace(': ', '_').replace(' ', '_')}_s"] = timing[
                "median_s"
            ]
    payload.update(
        {
            "quick": args.quick,
            "overlap": OVERLAP,
            "sigma_scale": SIGMA_SCALE,
            "sw_batch": args.sw_batch,
            "keep_memory": keep_memory,
            "workloads": workloads,
            "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
            **environment(PACKAGES),
        }
    )
    if load_start > 0.75 * (os.cpu_count() or 1):
        print(f"NOTE: load average {load_start:.2f} at start: other jobs share the cores.")
    emit_json(payload)


if __name__ == "__main__":
    main()
