"""Evaluating a sequence run on a labelled cine folder: metrics with intervals, per-case rows, a
report.

* classification: :func:`medlens.metrics.evaluate_classification` (AUC, accuracy, sensitivity,
  specificity, F1 with bootstrap intervals) of the cines' classes;
* regression: :func:`medlens.metrics.regression_metrics` (MAE, RMSE, Bland-Altman bias and
  limits of agreement, r, R^2) of the cines' values;
* segmentation: Dice of the labelled frames per cine (frames whose label maps show the label in
  some slice), and where a reference EF exists (the ``ef_percent`` column, or label maps on every
  frame) the EF, EDV and ESV measured from the predicted maps against it.

``split``: ``val`` or ``train`` evaluates the cases of the run's own split of this folder (its
``splits.json``); None every case of the folder. Writes ``cases.csv``, ``metrics.json`` and
``report.html`` (scatter and Bland-Altman plots, per-case table) into ``output``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_json, atomic_write_rows, atomic_write_text
from medlens.errors import MedlensError
from medlens.report.page import escape, html_page, interval, section, try_figure
from medlens.tasks.sequences.data import CineSet, check_length

__all__ = ["evaluate_sequences", "format_lines"]


def _cases(run_path: Path, cines: CineSet, split: str | None) -> list[int]:
    if split is None:
        return list(range(len(cines)))
    if split not in ("train", "val"):
        raise MedlensError(f"--split {split}: a sequence run's splits are train and val")
    folds = json.loads((run_path / "splits.json").read_text())["folds"][0]
    cases = [int(i) for i in folds[f"{split}_indices"]]
    ids = folds.get(split)
    if max(cases, default=-1) >= len(cines) or (ids and [cines.ids[i] for i in cases] != ids):
        raise MedlensError(f"{cines.root}: not the folder this run was split on; give no --split "
                           "to evaluate every case of it")  # fmt: skip
    return cases


def _seg_row(cine, labels, spacing, masks, value, label: int) -> dict[str, Any]:
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    row: dict[str, Any] = {}
    if labels is not None:
        frames = (labels == label).any(axis=(1, 2, 3))
        truth, got = labels[frames] == label, masks[frames] == 1
        total = truth.sum() + got.sum()
        row["dice"] = float(2 * (truth & got).sum() / total) if total else None
        row["labelled_frames"] = int(frames.sum())
    volumes = volume_curve(cavity_areas(masks, spacing[:2]), float(spacing[2]))
    if volumes.max() > 0:
        got_ef = cardiac_indices(volumes)
        row.update(ef_percent=got_ef["ef_percent"], edv_ml=got_ef["edv_ml"],
                   esv_ml=got_ef["esv_ml"])  # fmt: skip
    if value is not None:
        row["ef_reference"] = value
    elif labels is not None and (labels == label).any(axis=(1, 2, 3)).all():
        ref = cardiac_indices(volume_curve(cavity_areas(labels, spacing[:2], label),
                                           float(spacing[2])))  # fmt: skip
        row.update(ef_reference=ref["ef_percent"], edv_reference=ref["edv_ml"],
                   esv_reference=ref["esv_ml"])  # fmt: skip
    return row


def evaluate_sequences(networks, spec: dict[str, Any], run_path: Path, data: Path, *,
                       split: str | None = None, n_boot: int = 1000, output: Path | None = None,
                       progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Evaluate (module notes); returns the metrics (JSON-ready) with ``files``."""
    from medlens._progress import progress as progress_bar
    from medlens.metrics import evaluate_classification, mean_summary, regression_metrics
    from medlens.tasks.sequences.predict import predict_ensemble

    cines = CineSet(data)
    cases = _cases(run_path, cines, split)
    kind = spec["kind"]
    rows: list[dict[str, Any]] = []
    outputs = []
    for i in progress_bar(cases, "evaluating", enabled=progress):
        cine, labels, spacing = cines.load(i)
        check_length(cine, spec, cines.paths[i])
        out = predict_ensemble(networks, spec, cine)
        row: dict[str, Any] = {"id": cines.ids[i]}
        if kind == "classification":
            truth = cines.class_index(i, spec["column"], spec["classes"])
            probs = {f"p_{c}": float(p) for c, p in zip(spec["classes"], out, strict=True)}
            row.update(truth=spec["classes"][truth],
                       predicted=spec["classes"][int(out.argmax())], **probs)  # fmt: skip
            outputs.append((truth, out))
        elif kind == "regression":
            row.update(truth=cines.value(i, spec["column"]), predicted=float(out[0]))
            row["error"] = row["predicted"] - row["truth"]
        else:
            value = cines.value(i, "ef_percent") if "ef_percent" in cines.rows[i] else None
            row.update(_seg_row(cine, labels, spacing, out, value, spec.get("label", 1)))
        rows.append(row)
    result: dict[str, Any] = {
        "task": f"sequence-{kind}", "data": str(data), "cases": len(rows),
        "split": split or "all cases", "simulated": cines.simulated,
    }  # fmt: skip
    if kind == "classification":
        task = "binary" if len(spec["classes"]) == 2 else "multiclass"
        result["metrics"] = evaluate_classification(
            np.array([t for t, _ in outputs]), np.stack([p for _, p in outputs]), task,
            class_names=list(spec["classes"]), n_boot=n_boot)  # fmt: skip
    elif kind == "regression":
        result["column"] = spec["column"]
        truths, predicted = [r["truth"] for r in rows], [r["predicted"] for r in rows]
        result["metrics"] = regression_metrics(truths, predicted, n_boot=n_boot)
    else:
        result["metrics"] = {"dice": mean_summary([r.get("dice") for r in rows], n_boot)}
        scored = [r for r in rows if "ef_reference" in r and "ef_percent" in r]
        if scored:
            result["metrics"]["ef"] = regression_metrics([r["ef_reference"] for r in scored],
                                                         [r["ef_percent"] for r in scored],
                                                         n_boot=n_boot)  # fmt: skip
    files = {}
    if output is not None:
        output = Path(output)
        files["cases"] = atomic_write_rows(output / "cases.csv", rows, floats="{:.6g}")
        atomic_write_json(output / "metrics.json", result)
        files["metrics"] = output / "metrics.json"
        files["report"] = write_report(output, result, rows)
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def _pairs(result: dict[str, Any], rows: list[dict[str, Any]]):
    """``(truth, predicted, what)`` of the values a plot compares, or None."""
    if result["task"] == "sequence-regression":
        return [r["truth"] for r in rows], [r["predicted"] for r in rows], result["column"]
    scored = [r for r in rows if "ef_reference" in r and "ef_percent" in r]
    if result["task"] == "sequence-segmentation" and scored:
        return ([r["ef_reference"] for r in scored], [r["ef_percent"] for r in scored],
                "EF (%)")  # fmt: skip
    return None


def _agreement_figure(truth, pred, what: str) -> bytes:
    from medlens.report.figures import new_figure, plain, to_png

    t, p = np.asarray(truth, float), np.asarray(pred, float)
    if t.size < 2:
        raise ValueError("fewer than two cases")
    fig = new_figure(9, 4)
    a, b = fig.subplots(1, 2)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    a.scatter(t, p, s=18)
    a.plot([lo, hi], [lo, hi], color="grey", lw=1)
    a.set(xlabel=f"reference {plain(what)}", ylabel=f"predicted {plain(what)}",
          title="prediction against reference")  # fmt: skip
    mean, diff = (t + p) / 2, p - t
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    b.scatter(mean, diff, s=18)
    for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
        b.axhline(y, color="grey", ls=style, lw=1)
    b.set(xlabel="mean of the two", ylabel="predicted - reference",
          title="Bland-Altman: bias and 95% limits")  # fmt: skip
    return to_png(fig)


def write_report(folder: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """``folder/report.html``: the metrics, agreement plots and the per-case table."""
    banner = ""
    if result["simulated"]:
        banner = ("<p><strong>SIMULATED</strong> cines (phantoms rendered into real backgrounds): "
                  "the figures are figures on simulated data.</p>")  # fmt: skip
    intro = (f"<p>{result['cases']} cines of {escape(result['data'])} "
             f"({escape(result['split'])}).</p>")  # fmt: skip
    table = "<table><tr><th>metric</th><th>value (95% CI)</th></tr>" + "".join(
        f"<tr><td>{escape(k)}</td><td class='num'>{interval(v)}</td></tr>"
        for k, v in _metric_lines(result)) + "</table>"  # fmt: skip
    sections = [section("summary", "Summary", banner + intro + table)]
    pairs = _pairs(result, rows)
    if pairs is not None:
        sections.append(section("agreement", "Agreement", try_figure(
            lambda: _agreement_figure(*pairs), "agreement plots",
            "Left: each cine's prediction against its reference (grey: identity). Right: "
            "Bland-Altman plot, the difference against the mean, with the bias and the 95% "
            "limits of agreement.")))  # fmt: skip
    header = list(dict.fromkeys(k for r in rows for k in r))
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(r.get(h)))}</td>" for h in header)
                   + "</tr>" for r in rows)  # fmt: skip
    cells = "".join(f"<th>{escape(h)}</th>" for h in header)
    sections.append(
        section(
            "cases", "Cases", f"<div class='scroll'><table><tr>{cells}</tr>{body}</table></div>"
        )
    )
    path = Path(folder) / "report.html"
    atomic_write_text(path, html_page(f"Evaluation of a {result['task']} run", sections,
                                      kind="Evaluation report"))  # fmt: skip
    return path


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _entry(value: Any) -> dict[str, Any]:
    """A metric as ``{"value", "low", "high"}`` (a mean summary's ``mean`` as its value)."""
    return {"value": value.get("value", value.get("mean")), "low": value.get("low"),
            "high": value.get("high")}  # fmt: skip


def _metric_lines(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    from medlens.metrics import HEADLINE

    metrics = result["metrics"]
    if result["task"] == "sequence-classification":
        return [(k, _entry(metrics[k])) for k in HEADLINE if k in metrics]
    if result["task"] == "sequence-regression":
        return [(f"{k} ({result['column']})", _entry(v)) for k, v in metrics.items()
                if isinstance(v, dict)]  # fmt: skip
    lines = [("Dice of the labelled frames", _entry(metrics["dice"]))]
    lines += [(f"EF {k}", _entry(v)) for k, v in metrics.get("ef", {}).items()
              if isinstance(v, dict)]  # fmt: skip
    return lines


def _text(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    if entry["low"] is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f}  (95% CI {entry['low']:.3f} to {entry['high']:.3f})"


def format_lines(result: dict[str, Any]) -> list[str]:
    """What ``medlens evaluate`` prints."""
    head = f"{result['task']}: {result['cases']} cines ({result['split']})"
    if result["simulated"]:
        head += ", SIMULATED"
    lines = [head] + [f"{name:<28} {_text(e)}" for name, e in _metric_lines(result)]
    return lines + [f"{k}: {v}" for k, v in result.get("files", {}).items()]
