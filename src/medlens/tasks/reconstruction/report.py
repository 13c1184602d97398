"""``report.html`` of a reconstruction evaluation: the figures, and what the network changed.

For the best, median and worst files by PSNR, the middle slice: the reference, the zero-filled
reconstruction of the measurements, the network's output (all on the reference's grey scale),
the absolute error of each against the reference (one scale per row: the zero-filled error's
99th percentile), and the sampling mask (measured phase-encode lines white). Data simulated from
magnitude images is named so at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_text
from medlens.report.figures import new_figure, to_png
from medlens.report.page import escape, html_page, interval, section, try_figure

__all__ = ["write_reconstruction_report"]

LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nmse": "NMSE"}


def _rows_figure(chosen: list[tuple[str, dict[str, Any], dict[str, np.ndarray]]],
                 baseline: str) -> bytes:  # fmt: skip
    label = baseline.replace("_", "-")
    fig = new_figure(13.0 if baseline == "zero_filled" else 11.0, 2.4 * len(chosen))
    for r, (name, row, shown) in enumerate(chosen):
        ref = shown["reference"]
        top = float(ref.max()) or 1.0
        err_base = np.abs(shown["baseline"] - ref)
        err_out = np.abs(shown["output"] - ref)
        scale = float(np.percentile(err_base, 99)) or 1.0
        panels = [
            ("reference", ref, "gray", top),
            (f"{label} {row[f'{baseline}_psnr']:.1f} dB", shown["baseline"], "gray", top),
            (f"medlens {row['psnr']:.1f} dB", shown["output"], "gray", top),
            (f"|error| {label}", err_base, "magma", scale),
            ("|error| medlens", err_out, "magma", scale),
        ]
        if "mask" in shown:
            rows = max(8, ref.shape[0] // 8)
            mask = np.repeat(shown["mask"][None].astype(float), rows, axis=0)
            panels.append(("mask", mask, "gray", 1.0))
        for c, (title, array, cmap, vmax) in enumerate(panels):
            ax = fig.add_subplot(len(chosen), len(panels), r * len(panels) + c + 1)
            ax.imshow(array, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name}: {title}" if c == 0 else title, fontsize=7)
            ax.set_axis_off()
    return to_png(fig)


def _ci(summary: dict[str, Any]) -> str:
    return interval({"value": summary.get("mean"), "low": summary.get("low"),
                     "high": summary.get("high")})  # fmt: skip


def _table(result: dict[str, Any], baseline: str) -> str:
    metrics = result["metrics"]
    label = baseline.replace("_", "-")
    cells = []
    for key, name in LABELS.items():
        if key in metrics and f"{baseline}_{key}" in metrics:
            ours, base = metrics[key], metrics[f"{baseline}_{key}"]
            cells.append(f"<tr><td>{name}</td><td>{_ci(ours)}</td><td>{_ci(base)}</td></tr>")
    gain = result[f"psnr_gain_vs_{baseline}"]
    seconds = metrics.get("seconds_per_slice", metrics.get("seconds"))
    head = f"<tr><th>figure</th><th>medlens</th><th>{label}</th></tr>"
    return (f"<table>{head}{''.join(cells)}</table><p>PSNR gain over {label}, paired per "
            f"file: {_ci(gain)} dB; {seconds['mean']:.3f} s per "
            f"{'slice' if 'seconds_per_slice' in metrics else 'image'}.</p>")  # fmt: skip


def write_reconstruction_report(folder, result: dict[str, Any], rows: list[dict[str, Any]],
                                pictures: list[dict[str, np.ndarray]],
                                baseline: str = "zero_filled") -> Path:  # fmt: skip
    """Write ``folder/report.html``; returns its path."""
    order = np.argsort([r["psnr"] for r in rows])[::-1]
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    seen: set[int] = set()
    chosen = []
    for name, k in picks:
        if int(k) not in seen:
            seen.add(int(k))
            chosen.append((f"{name} ({rows[k].get('file', rows[k]['id'])})", rows[k], pictures[k]))
    banner = ("<p><strong>SIMULATED k-space</strong>: made from real magnitude images (synthetic "
              "phase, coils and noise); the figures are figures on simulated data.</p>"
              if result.get("simulated") else "")  # fmt: skip
    intro = (f"<p>{result['n_files']} files of {escape(result['data'])} "
             f"({escape(result['split'])}).</p>")  # fmt: skip
    sections = [
        section("summary", "Summary", banner + intro + _table(result, baseline)),
        section("images", "Best, median and worst files (middle slice)", try_figure(
            lambda: _rows_figure(chosen, baseline), "reference, baseline, output and errors",
            f"Reference, {baseline.replace('_', '-')} and medlens on the reference's grey scale; "
            "absolute errors on one scale per row (the baseline error's 99th percentile); a "
            "mask's white columns are the measured phase-encode lines.")),
    ]  # fmt: skip
    path = Path(folder) / "report.html"
    atomic_write_text(path, html_page("Reconstruction", sections, kind="Reconstruction report"))
    return path
