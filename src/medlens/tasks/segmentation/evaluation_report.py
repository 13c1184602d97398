"""``report.html`` of a segmentation evaluation: summary, metrics, examples, curves, cases.

Also the Grad-CAM figures of the example cases (the report's "explained examples" section).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medlens.tasks.segmentation.evaluation_cases import _fold_run, _mean_dice
from medlens.tasks.segmentation.evaluation_tables import _COLUMNS, _HEADINGS, _text_interval

_MEANINGS = {
    "dice": "Overlap: twice the shared area over the sum of both areas (1 = identical).",
    "iou": "Overlap: shared area over the union (Jaccard); always at most Dice.",
    "hd95": "95th percentile of the boundary distances, the larger of both directions: how far "
    "the boundaries stray, ignoring the worst 5%.",
    "assd": "Mean distance between the two boundaries, both directions pooled.",
    "nsd": "Share of both boundaries within the tolerance of the other (normalised surface Dice).",
}


# ---------------------------------------------------------------------------------- report
def _explained(run, dataset, selected, ranked, max_voxels: int = 2**22) -> list[tuple[str, bytes]]:
    """Grad-CAM of each example case's predicted regions (the report's explained examples):
    ``(caption, PNG)``; cases too large to explain whole on a CPU, or failures, leave a note."""
    from medlens.explain import attribute
    from medlens.explain.render import attribution_figure
    from medlens.tasks.segmentation.explaining import segmentation_job
    from medlens.tasks.segmentation.predict import _squeeze_2d

    out: list[tuple[str, bytes]] = []
    for role, i in ranked:
        index, fold = selected[i]
        sample = dataset[index]
        image = _squeeze_2d(sample.image, run.plan.spatial_dims)
        target = np.prod(image.spatial_shape) * np.prod(
            np.asarray(image.spacing) / np.asarray(run.plan.grid_spacing(image.spacing))
        )
        if target > max_voxels:
            out.append((f"{role} case {sample.id}: too large to explain whole here", b""))
            continue
        try:
            job = segmentation_job(_fold_run(run, fold), [(str(sample.id), image)])
            for k, name in enumerate(job.ids):
                amap = attribute(job.models[k], job.inputs[k][None], "gradcam", 0)[0].numpy()
                png = attribution_figure(
                    job.display[k],
                    {"Grad-CAM": amap},
                    title=f"{role}: {name}",
                    signed={"Grad-CAM": False},
                )
                out.append((f"{role} case {name}: {job.target_names[k]}", png))
        except Exception as exc:  # the report must not fail for want of a picture
            out.append(
                (f"{role} case {sample.id}: not explained ({type(exc).__name__}: {exc})", b"")
            )
    return out


def _write_report(path: Path, run, result: Mapping[str, Any], overlays, explained=()) -> Path:
    from medlens._atomic import atomic_write_text
    from medlens.report.page import figure, html_page, section

    info = run.info
    sections = [
        section("summary", "Summary", _summary_table(run, result)),
        section("metrics", "Metrics", _metrics_table(result)),
    ]
    figures = "".join(
        figure(
            png,
            f"Overlay of the {role} case {case_id}",
            f"The {role} case by mean foreground Dice: {case_id}. Reference contour in amber, "
            "prediction in blue.",
        )
        for role, case_id, png in overlays
    )
    explain = (
        "<p>The cases with the highest, the median and the lowest mean foreground Dice, on their "
        "own grid. 3D volumes show the axial, coronal and sagittal slices with the most "
        "reference foreground.</p>"
    )
    sections.append(
        section(
            "examples",
            "Best, median and worst cases",
            f'{explain}<div class="figs">{figures}</div>',
        )
    )
    if explained:
        body = "".join(
            figure(png, caption, caption) if png else f'<p class="note">{_esc(caption)}</p>'
            for caption, png in explained
        )
        intro = (
            "<p>Where the network looked when it drew each class: Grad-CAM of the mean logit of "
            "the class inside its predicted region, on the plan's grid (first fold's network for "
            "an ensemble). <code>medlens explain</code> gives every method with faithfulness "
            "checks.</p>"
        )
        sections.append(
            section(
                "explained",
                "Explained examples (Grad-CAM)",
                f'{intro}<div class="figs">{body}</div>',
            )
        )
    history = _history(run.path)
    if history:
        curves = _learning_curves(history)
        if curves:
            sections.append(section("training", "Training", curves))
    sections.append(section("cases", "Per case", _cases_table(result)))
    notes = [
        f"Scored cases: {result.get('cases_description')}.",
        "Metrics are computed on each case's original grid with its own spacing (mm). When "
        "reference and prediction are both empty for a class the case scores perfectly; when only "
        "one is empty Dice, IoU and NSD are 0 and the distances are undefined (left out of their "
        "means and counted), as Metrics Reloaded recommends.",
        *result.get("notes", []),
    ]
    items = "".join(f"<li>{_esc(n)}</li>" for n in notes if n)
    sections.append(section("notes", "Notes", f"<ul>{items}</ul>"))
    config = {"run": info, "plan": json.loads(_plan_json(run)), "settings": result.get("settings")}
    text = json.dumps(config, indent=2, default=str)
    sections.append(
        section(
            "config",
            "Configuration",
            f"<details><summary>Run and plan (JSON)</summary><pre>{_esc(text)}</pre></details>",
        )
    )
    name = info.get("data", {}).get("name") or run.path.name
    page = html_page(f"{name}: segmentation evaluation", sections, "Segmentation report")
    atomic_write_text(path, page)
    return path


def _esc(text: Any) -> str:
    """:func:`medlens.report.page.escape`, imported on first use like every report import here,
    so that importing this module does not load the report package (and matplotlib)."""
    from medlens.report.page import escape

    return escape(text)


def _plan_json(run) -> str:
    try:
        return (run.path / "plan.json").read_text()
    except OSError:
        return "{}"


def _summary_table(run, result: Mapping[str, Any]) -> str:
    plan = run.plan
    mean = result["aggregate"]["mean"]
    rows = [
        ("Run", str(run.path)),
        ("Dataset", result.get("data")),
        ("Cases evaluated", f"{result['n_cases']}: {result.get('cases_description')}"),
        ("Classes", ", ".join(result["aggregate"]["per_class"])),
        (
            "Model",
            f"{plan.spatial_dims}D U-Net, {len(plan.network.get('features', []))} stages, "
            f"{len(run.networks)} fold(s)",
        ),
        ("Test-time mirroring", "on" if result.get("mirror") else "off"),
        ("Postprocessing", _describe_postprocessing(result.get("postprocessing"))),
        ("NSD tolerance", f"{float(result.get('tolerance_mm', 1.0)):g} mm"),
    ]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    for metric in ("dice", "hd95"):
        body += (
            f"<tr><th>Mean {_esc(_HEADINGS[metric])}</th>"
            f'<td class="num">{_html_interval(mean.get(metric), metric)}</td></tr>'
        )
    return f"<table>{body}</table>"


def _describe_postprocessing(rules: Mapping[str, Any] | None) -> str:
    """The run's postprocessing rules in words (as ``medlens predict`` applies them)."""
    parts = []
    names = (("largest_component", "largest component"), ("fill_holes", "holes filled"),
             ("ellipse", "fitted ellipse"))  # fmt: skip
    classes = (rules or {}).get("classes", {})
    for value, rule in sorted(classes.items(), key=lambda kv: int(kv[0])):
        steps = [text for key, text in names if rule.get(key)]
        if steps:
            parts.append(f"label {value}: {' + '.join(steps)}")
    return "; ".join(parts) if parts else "none"


def _html_interval(entry: Any, metric: str) -> str:
    text = _text_interval(entry, metric)
    if " [" not in text:
        return _esc(text)
    value, ci = text.split(" [", 1)
    return f'{_esc(value)} <span class="ci">[{_esc(ci)}</span>'


def _metrics_table(result: Mapping[str, Any]) -> str:
    per_class = dict(result["aggregate"]["per_class"])
    rows = list(per_class.items())
    if len(rows) > 1:
        rows.append(("mean of classes", result["aggregate"]["mean"]))
    tol = float(result.get("tolerance_mm", 1.0))
    headings = {**_HEADINGS, "nsd": f"NSD ({tol:g} mm)"}
    head = "<th>Class</th>" + "".join(f"<th>{_esc(headings[m])}</th>" for m, _ in _COLUMNS)
    body = ""
    for name, entry in rows:
        cells = "".join(
            f'<td class="num">{_html_interval(entry.get(m), m)}</td>' for m, _ in _COLUMNS
        )
        body += f"<tr><th>{_esc(name)}</th>{cells}</tr>"
    boot = result.get("bootstrap")
    interval = (
        f"Mean over cases; brackets: {100 * float(boot.get('confidence', 0.95)):g}% percentile "
        f"bootstrap interval over cases ({boot.get('n_boot')} resamples)."
        if boot
        else "Mean over cases; no bootstrap was run, so there are no confidence intervals."
    )
    meanings = "".join(
        f"<li><b>{_esc(headings[m])}</b>: {_esc(_MEANINGS[m])}</li>" for m, _ in _COLUMNS
    )
    return (
        f'<p>{_esc(interval)}</p><div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
        f"<ul>{meanings}</ul>"
    )


def _cases_table(result: Mapping[str, Any]) -> str:
    classes = list(result["aggregate"]["per_class"])
    examples = {case_id: role for role, case_id in result.get("examples", {}).items()}
    head = "<th>Case</th><th>Mean Dice</th>"
    for name in classes:
        prefix = f"{name}: " if len(classes) > 1 else ""
        head += "".join(f"<th>{_esc(prefix + _HEADINGS[m])}</th>" for m, _ in _COLUMNS)
    cases = sorted(result["cases"], key=_mean_dice)  # worst first
    body = ""
    for case in cases:
        role = examples.get(case["case_id"])
        label = case["case_id"] + (f" ({role})" if role else "")
        cells = f'<td class="num">{_esc(_fmt(case["mean"].get("dice"), "dice"))}</td>'
        for name in classes:
            entry = case["per_class"].get(name, {})
            cells += "".join(
                f'<td class="num">{_esc(_fmt(entry.get(m), m))}</td>' for m, _ in _COLUMNS
            )
        body += f"<tr><th>{_esc(label)}</th>{cells}</tr>"
    return (
        "<p>Every case, lowest mean foreground Dice first; n/a: undefined (one mask empty).</p>"
        f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
    )


def _fmt(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{2 if metric in ('hd95', 'assd') else 3}f}"


def _history(run: Path) -> list[dict[str, Any]]:
    for fold in sorted(run.glob("fold-*")):
        path = fold / "history.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            try:
                return [json.loads(line) for line in lines if line.strip()]
            except ValueError:
                return []
    return []


def _learning_curves(history: list[dict[str, Any]]) -> str:
    from medlens.report import plots
    from medlens.report.page import try_figure

    return try_figure(
        lambda: plots.learning_curves(history, "val_dice", "max"),
        "Learning curves",
        "Training loss per epoch (left) and the validation cases' mean foreground Dice (right); "
        "the dashed line marks the epoch whose weights were kept.",
    )
