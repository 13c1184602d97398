"""Plain-text outputs of a segmentation evaluation: ``per_case.csv`` and the terminal table.

The metric columns (:data:`_COLUMNS`) and their headings are shared with the HTML report.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["format_table"]

_COLUMNS = (
    ("dice", "dice"),
    ("iou", "iou"),
    ("hd95", "hd95_mm"),
    ("assd", "assd_mm"),
    ("nsd", "nsd"),
)
_HEADINGS = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "nsd": "NSD",
}


# ---------------------------------------------------------------------------------- files
def _write_per_case(path: Path, result: Mapping[str, Any]) -> None:
    from medlens._atomic import atomic_write_text

    classes = list(result["aggregate"]["per_class"])
    header = ["case_id"]
    for name in classes:
        header += [f"{name}_{column}" for _, column in _COLUMNS] + [f"{name}_empty"]
    header.append("mean_dice")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for case in result["cases"]:
        row = [case["case_id"]]
        for name in classes:
            entry = case["per_class"].get(name, {})
            row += [_csv_number(entry.get(metric)) for metric, _ in _COLUMNS]
            row.append(entry.get("empty", ""))
        row.append(_csv_number(case["mean"].get("dice")))
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def _csv_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value))


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class means with their intervals, as plain text for the terminal."""
    per_class = dict(result["aggregate"]["per_class"])
    rows = list(per_class.items())
    if len(rows) > 1:
        rows.append(("mean of classes", result["aggregate"]["mean"]))
    tolerance = result.get("tolerance_mm", result.get("settings", {}).get("tolerance_mm"))
    headings = {**_HEADINGS, "nsd": f"NSD ({float(tolerance):g} mm)"}
    width = max(12, *(len(name) for name, _ in rows))
    cells = [
        [_text_interval(entry.get(metric), metric) for metric, _ in _COLUMNS] for _, entry in rows
    ]
    widths = [
        max(len(headings[m]), *(len(row[j]) for row in cells)) for j, (m, _) in enumerate(_COLUMNS)
    ]
    lines = [
        f"{result['n_cases']} cases: {result.get('cases_description', '')}",
        (
            f"{'class':<{width}}  "
            + "  ".join(f"{headings[m]:<{w}}" for (m, _), w in zip(_COLUMNS, widths, strict=True))
        ).rstrip(),
    ]
    for (name, _), row in zip(rows, cells, strict=True):
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip()
        )
    if result.get("bootstrap"):
        lines.append("mean over cases [95% bootstrap interval]")
    return "\n".join(lines)


def _text_interval(entry: Any, metric: str) -> str:
    if not isinstance(entry, Mapping) or entry.get("mean") is None:
        return "n/a"
    digits = 2 if metric in ("hd95", "assd") else 3
    text = f"{entry['mean']:.{digits}f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    return text
