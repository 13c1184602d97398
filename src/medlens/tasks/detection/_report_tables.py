"""The tables and figures of a detection ``report.html`` (:mod:`medlens.tasks.detection.report`
puts them in sections): summary, metrics, FROC, localisation, counting, per image, training."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

F1_SCORE = 0.5  # detections scoring at least this are counted and ranked


def froc_plot(froc: Mapping[str, Any]) -> bytes:
    """The FROC curve (log-scaled false positives per image) with the sensitivities at the
    LUNA16 rates and their intervals, the CPM in the title."""
    from medlens.report.figures import new_figure, to_png

    x = np.asarray(froc["curve"]["fp_per_scan"], float)
    y = np.asarray(froc["curve"]["sensitivity"], float)
    if not froc.get("n_findings"):
        raise ValueError("no finding in these images, so there is no FROC curve")
    fig = new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    ax.plot(np.maximum(x, 1 / 32), y, color="#08519c", label="FROC")  # LUNA16 interpolates
    rates = [float(r) for r in froc["fp_rates"]]
    keys = [f"{r:g}" for r in rates]
    sens = np.asarray([froc["sensitivity_at"][k] for k in keys], float)
    cis = [froc.get("sensitivity_ci", {}).get(k) for k in keys]
    err = [[s - c[0], c[1] - s] if c else [0, 0] for s, c in zip(sens, cis, strict=True)]
    bars = np.maximum(np.asarray(err, float).T, 0.0)
    label = "at 1/8 ... 8 FP per image (95% CI)"
    ax.errorbar(rates, sens, yerr=bars, fmt="o", color="k", ms=4, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 32, max(16.0, float(x.max())))
    ticks = [2.0**e for e in range(-4, 5)]
    ax.set_xticks(ticks, [f"1/{round(1 / t)}" if t < 1 else f"{t:g}" for t in ticks])
    ax.set_ylim(-0.01, 1.02)
    ax.set_xlabel("False positives per image")
    ax.set_ylabel("Sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"FROC (CPM {float(froc['cpm']):.3f})")
    return to_png(fig)


# ---------------------------------------------------------------------------------- page


def _esc(text: Any) -> str:
    from medlens.report.page import escape

    return escape(text)


def _ci(value: Any, ci: Any) -> str:
    from medlens.report.page import interval

    low, high = ci if ci else (None, None)
    return interval({"value": value, "low": low, "high": high})


def _class(key: str, names: Sequence[str]) -> str:
    return names[int(key)] if key.isdigit() and int(key) < len(names) else key


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; ``head`` plain text, each row's first cell plain text and the others HTML."""
    top = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join(
        f"<tr><th>{_esc(r[0])}</th>" + "".join(f'<td class="num">{c}</td>' for c in r[1:]) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><tr>{top}</tr>{body}</table></div>'


def _summary(result: Mapping[str, Any], run: Any) -> str:
    plan = getattr(run, "plan", None)
    rows = [
        ("Run", result.get("run") or getattr(run, "path", "")),
        ("Dataset", result.get("data") or "n/a"),
        ("Split", result.get("split") or "the run's validation images on its own data, else all"),
        ("Images evaluated", result.get("n_cases", len(result.get("per_image", [])))),
        ("Classes", ", ".join(result.get("class_names") or [])),
    ]
    if plan is not None:
        folds = len(getattr(run, "networks", []) or [])
        model = f"{plan.spatial_dims}D FCOS on {plan.network.get('backbone')}, {folds} fold(s)"
        rows.append(("Model", model))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _metrics(result: Mapping[str, Any], names: Sequence[str]) -> str:
    from medlens.report.page import number

    ap, froc = result["ap"], result["froc"]
    head = [
        ("mAP@0.5", _ci(ap["map50"], ap.get("map50_ci"))),
        ("mAP@0.5:0.95", _ci(ap["map50_95"], ap.get("map50_95_ci"))),
        ("FROC CPM", _ci(froc["cpm"], froc.get("cpm_ci"))),
    ]
    boot = ap.get("n_boot") or 0
    note = (
        f"Brackets: 95% percentile bootstrap intervals over images ({boot} resamples)."
        if boot
        else "No bootstrap was run, so there are no intervals."
    )
    rows = [
        (
            _class(k, names),
            number(ap["n_gt_per_class"].get(k)),
            number(ap["n_det_per_class"].get(k)),
            number(v),
            number(ap["ap75_per_class"].get(k)),
            number(ap["ap50_95_per_class"].get(k)),
        )
        for k, v in ap["ap50_per_class"].items()
    ]
    return (
        f"<p>{_esc(note)}</p>"
        + _table(["Metric", "Value"], head)
        + "<p>Average precision per class (COCO's rules; n/a: no ground truth of the class).</p>"
        + _table(["Class", "Boxes", "Detections", "AP@0.5", "AP@0.75", "AP@0.5:0.95"], rows)
    )


def _froc(froc: Mapping[str, Any]) -> str:
    from medlens.report.page import try_figure

    cis = froc.get("sensitivity_ci") or {}
    rows = [(f"{k} FP per image", _ci(v, cis.get(k))) for k, v in froc["sensitivity_at"].items()]
    rows.append(("CPM (their mean)", _ci(froc["cpm"], froc.get("cpm_ci"))))
    caption = (
        "Sensitivity against false positives per image by LUNA16's rule: a detection hits a "
        "finding when its centre lies within the finding's radius (millimetres on the grid)."
    )
    plot = try_figure(lambda: froc_plot(froc), "FROC curve", caption)
    return plot + _table(["Operating point", "Sensitivity"], rows)


def _localisation(loc: Mapping[str, Any], names: Sequence[str]) -> str:
    from medlens.report.page import number

    rows = [
        (
            _class(k, names),
            number(v.get("detected")),
            *(_ci(v.get(m), v.get(f"{m}_ci")) for m in ("iou", "centre_mm", "wall_mm")),
        )
        for k, v in [*loc["per_class"].items(), ("all", loc["all"])]
    ]
    intro = (
        "<p>Each structure's best-scoring box against its true box, in millimetres: the share "
        "found, IoU, centre distance and mean wall (face) distance; means over images with 95% "
        "bootstrap intervals.</p>"
    )
    return intro + _table(["Structure", "Found", "IoU", "Centre (mm)", "Wall (mm)"], rows)


def _counts(result: Mapping[str, Any], names: Sequence[str]) -> str:
    from medlens.report.page import number

    per_class = result["counts"]["per_class"]
    rows = [
        (
            _class(k, names),
            number(e["mae"]),
            number(e["mean_error"]),
            number(e["relative_error"]),
            number(int(e["total_pred"])),
            number(int(e["total_true"])),
        )
        for k, e in per_class.items()
    ]
    threshold = float(result.get("count_threshold", F1_SCORE))
    intro = (
        f"<p>Objects counted per image (detections scoring at least {threshold:g}) against the "
        "ground truth; mean error above 0 means over-counting, relative error is the summed "
        "absolute error over the true total.</p>"
    )
    heads = ["Class", "MAE", "Mean error", "Relative error", "Counted", "True"]
    return intro + _table(heads, rows)


def _images(result, scores, roles, names) -> str:
    per_image = {row["id"]: row for row in result.get("per_image", [])}
    order = sorted(range(len(scores)), key=lambda i: (scores[i]["f1"], -i))  # worst first
    head = ["Image", "F1", "Hits", "False positives", "Missed"]
    head += [f"{what} {c}" for c in names for what in ("found", "true")]
    rows = []
    for i in order:
        s = scores[i]
        role = roles.get(s["id"])
        extra = per_image.get(s["id"], {})
        pairs = zip(extra.get("found", []), extra.get("true", []), strict=False)
        cells = [f"{s['f1']:.3f}", str(s["tp"]), str(s["fp"]), str(s["fn"])]
        cells += [str(v) for pair in pairs for v in pair]
        rows.append([s["id"] + (f" ({role})" if role else ""), *cells])
    intro = "<p>Every image, lowest F1 first (at IoU 0.5, detections scoring at least 0.5).</p>"
    return intro + _table(head, rows)


def _curves(run: Any) -> str:
    from medlens.report import plots
    from medlens.report.page import try_figure
    from medlens.tasks.segmentation.evaluation_report import _history

    path = getattr(run, "path", None)
    history = _history(Path(path)) if path is not None else []
    if not history:
        return ""
    train = getattr(getattr(run, "plan", None), "train", None)
    monitor = getattr(train, "monitor", "val_score")
    mode = getattr(train, "monitor_mode", "max")
    return try_figure(
        lambda: plots.learning_curves(history, monitor, mode),
        "Learning curves",
        "Training loss per epoch (left) and the validation score (right: mAP@0.5 in 2D, FROC CPM "
        "in 3D, the mean best-box IoU for boxes from label maps); the dashed line marks the "
        "epoch whose weights were kept.",
    )


def _plan(run: Any) -> Any:
    try:
        return json.loads((Path(run.path) / "plan.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}
