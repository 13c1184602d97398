"""``report.html`` of a reconstruction evaluation: the figures, and what the network changed.

For the best, median and worst files by PSNR, the middle slice: the reference, each baseline's
reconstruction of the same measurements (zero-filled, SENSE, compressed sensing; nearest and
cubic for super-resolution), the network's output (all on the reference's grey scale), the
absolute error of each against the reference under it (one scale per file: the first baseline's
99th percentile), and the sampling mask (measured phase-encode lines white). The summary table
holds every method's figures with intervals, seconds per slice, and the compressed-sensing
weights with what they were chosen on. Data simulated from
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


def _label(name: str) -> str:
    names = {"cs_wavelet": "CS wavelet", "cs_tv": "CS TV", "sense": "SENSE"}
    return names.get(name, name.replace("_", "-"))


def _rows_figure(chosen: list[tuple[str, dict[str, Any], dict[str, Any]]],
                 baselines: list[str]) -> bytes:  # fmt: skip
    """Two rows per file: the images (reference, each baseline, medlens, the mask) and under
    each its absolute error."""
    columns = len(baselines) + 2  # the reference, the baselines, medlens
    fig = new_figure(1.9 * columns, 3.8 * len(chosen))
    for r, (name, row, shown) in enumerate(chosen):
        ref = shown["reference"]
        top = float(ref.max()) or 1.0
        images = [(_label(b), f"{row[f'{b}_psnr']:.1f} dB", shown["baselines"][b])
                  for b in baselines]  # fmt: skip
        images.append(("medlens", f"{row['psnr']:.1f} dB", shown["output"]))
        errors = [np.abs(image - ref) for _, _, image in images]
        scale = float(np.percentile(errors[0], 99)) or 1.0  # the first baseline's scale
        base = 2 * r * columns
        ax = fig.add_subplot(2 * len(chosen), columns, base + 1)
        ax.imshow(ref, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
        ax.set_title(f"{name}\nreference", fontsize=7)
        ax.set_axis_off()
        for c, ((label, score, image), error) in enumerate(zip(images, errors, strict=True)):
            ax = fig.add_subplot(2 * len(chosen), columns, base + c + 2)
            ax.imshow(image, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            ax.set_title(f"{label} {score}", fontsize=7)
            ax.set_axis_off()
            ax = fig.add_subplot(2 * len(chosen), columns, base + columns + c + 2)
            ax.imshow(error, cmap="magma", vmin=0, vmax=scale, interpolation="nearest")
            ax.set_title(f"|error| {label}", fontsize=7)
            ax.set_axis_off()
        if "mask" in shown:
            rows = max(8, ref.shape[0] // 8)
            ax = fig.add_subplot(2 * len(chosen), columns, base + columns + 1)
            ax.imshow(np.repeat(shown["mask"][None].astype(float), rows, axis=0), cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")  # fmt: skip
            ax.set_title("mask", fontsize=7)
            ax.set_axis_off()
    return to_png(fig)


def _ci(summary: dict[str, Any]) -> str:
    return interval({"value": summary.get("mean"), "low": summary.get("low"),
                     "high": summary.get("high")})  # fmt: skip


def _table(result: dict[str, Any], baselines: list[str]) -> str:
    metrics = result["metrics"]
    head = "".join(f"<th>{_label(b)}</th>" for b in baselines)
    cells = []
    for key, name in LABELS.items():
        if key in metrics:
            theirs = "".join(f"<td>{_ci(metrics[f'{b}_{key}'])}</td>" if f"{b}_{key}" in metrics
                             else "<td></td>" for b in baselines)  # fmt: skip
            cells.append(f"<tr><td>{name}</td><td>{_ci(metrics[key])}</td>{theirs}</tr>")
    per = "slice" if "seconds_per_slice" in metrics else "image"
    timing = f"_seconds_per_{per}" if per == "slice" else "_seconds"
    seconds = [f"{metrics[f'seconds_per_{per}' if per == 'slice' else 'seconds']['mean']:.3f}"]
    seconds += [f"{metrics[b + timing]['mean']:.3f}" if b + timing in metrics else ""
                for b in baselines]  # fmt: skip
    cells.append(f"<tr><td>seconds per {per}</td>{''.join(f'<td>{v}</td>' for v in seconds)}</tr>")
    gains = "; ".join(f"{_label(b)} {_ci(result[f'psnr_gain_vs_{b}'])} dB" for b in baselines
                      if f"psnr_gain_vs_{b}" in result)  # fmt: skip
    return (f"<table><tr><th>figure</th><th>medlens</th>{head}</tr>{''.join(cells)}</table>"
            f"<p>PSNR gain of medlens over each, paired per file: {gains}.</p>")  # fmt: skip


def write_reconstruction_report(folder, result: dict[str, Any], rows: list[dict[str, Any]],
                                pictures: list[dict[str, np.ndarray]],
                                baselines: list[str] | None = None) -> Path:  # fmt: skip
    """Write ``folder/report.html``; returns its path."""
    baselines = list(baselines or result.get("baselines") or ["zero_filled"])
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
    tuned = result.get("baseline_weights")
    weights = ""
    if isinstance(tuned, dict) and tuned.get("lamda"):
        chosen_weights = "; ".join(f"{_label(m)} " + ", ".join(f"{a}x {v:g}" for a, v in by.items())
                                   for m, by in tuned["lamda"].items())  # fmt: skip
        weights = (f"<p>Compressed-sensing weights chosen on {escape(tuned['chosen_on'])}: "
                   f"{escape(chosen_weights)}.</p>")  # fmt: skip
    elif isinstance(tuned, str):
        weights = f"<p>Compressed-sensing weights: {escape(tuned)}.</p>"
    intro = (f"<p>{result['n_files']} files of {escape(result['data'])} "
             f"({escape(result['split'])}).</p>")  # fmt: skip
    sections = [
        section("summary", "Summary", banner + intro + weights + _table(result, baselines)),
        section("images", "Best, median and worst files (middle slice)", try_figure(
            lambda: _rows_figure(chosen, baselines), "reference, baselines, output and errors",
            "Reference, each baseline and medlens on the reference's grey scale; under each, its "
            f"absolute error, all on one scale per file ({_label(baselines[0])}'s 99th "
            "percentile); the mask's white columns are the measured phase-encode lines.")),
    ]  # fmt: skip
    path = Path(folder) / "report.html"
    atomic_write_text(path, html_page("Reconstruction", sections, kind="Reconstruction report"))
    return path
