"""``medlens evaluate`` of a learned registration run: pairs registered on their own grids and
scored as ``medlens register`` scores one pair, with 95% bootstrap intervals over pairs.

The pairs: the listed pairs of a pairs CSV, or for a dataset of images every ordered pair of its
cases up to ``max_pairs`` (drawn with a fixed seed). When ``data`` is the run's own training
data, only its validation cases (``splits.json``) are paired unless ``split="all"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.metrics import mean_summary

__all__ = ["evaluate_registration"]

MAX_PAIRS = 50
FIGURES = ("dice_before", "dice", "hd95_mm", "folding_fraction", "sdlogj", "seconds")


def _pairs(trained, data: Path, split: str | None, max_pairs: int):
    from medlens.tasks.registration.data import open_source

    source = open_source(data)
    if split not in (None, "val", "all"):
        raise MedlensError(f"--split {split}: use val (the run's validation cases) or all")
    own = Path(str(trained.info.get("data", {}).get("source", ""))).resolve() == data.resolve()
    if source.pairs is not None:
        pairs = source.pairs
        if own and split != "all":
            folds = json.loads((trained.path / "splits.json").read_text())["folds"][0]
            pairs = [pairs[int(i)] for i in folds["val_indices"]]
        return source, pairs[:max_pairs] if len(pairs) > max_pairs else pairs
    ids = source.ids
    if own and split != "all":
        folds = json.loads((trained.path / "splits.json").read_text())["folds"][0]
        ids = [source.ids[int(i)] for i in folds["val_indices"]]
    everything = [(a, b) for a in ids for b in ids if a != b]
    if not everything:
        raise MedlensError("fewer than 2 images to pair", data)
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(everything), size=min(max_pairs, len(everything)),
                               replace=False))  # fmt: skip
    return source, [everything[int(i)] for i in chosen]


def evaluate_registration(
    trained,
    data: Path,
    *,
    split: str | None = None,
    n_boot: int = 1000,
    output: Path | None = None,
    refine: int | None = None,
    max_pairs: int = MAX_PAIRS,
    progress: bool = True,
) -> dict[str, Any]:
    """Register the pairs of ``data`` with the run and score them (see the module's notes)."""
    from medlens._atomic import atomic_write_json, atomic_write_text
    from medlens._progress import progress as shown
    from medlens.registration.outputs import registration_metrics
    from medlens.tasks.registration.predict import register_learned

    data = Path(data)
    source, pairs = _pairs(trained, data, split, max_pairs)
    rows = []
    for fixed_id, moving_id in shown(pairs, "registering pairs", enabled=progress):
        fixed, fixed_labels = source.load(fixed_id)
        moving, moving_labels = source.load(moving_id)
        result = register_learned(trained, fixed, moving, refine=refine)
        m = registration_metrics(result, fixed_labels=fixed_labels, moving_labels=moving_labels)
        row = {"fixed": Path(fixed_id).name, "moving": Path(moving_id).name,
               "seconds": m["seconds"], "folding_fraction": m["folding_fraction"],
               "sdlogj": m["sdlogj"]}  # fmt: skip
        if "labels" in m:
            row["dice_before"] = m["labels_before"]["dice_mean"]
            row["dice"] = m["labels"]["dice_mean"]
            hd = [
                v["hd95_mm"] for v in m["labels"]["per_label"].values() if v["hd95_mm"] is not None
            ]
            row["hd95_mm"] = float(np.mean(hd)) if hd else None
            for value, scores in m["labels"]["per_label"].items():
                row[f"dice_label{value}"] = scores["dice"]
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("fixed", "moving")]
    summary = {k: mean_summary([r.get(k) for r in rows], n_boot) for k in keys}
    result: dict[str, Any] = {"n_pairs": len(rows), "refine_steps": refine, "metrics": summary,
                              "data": str(data), "split": split or "val"}  # fmt: skip
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / "metrics.json", {**result, "pairs": rows})
        header = list(rows[0])
        lines = [",".join(header)] + [",".join("" if r.get(h) is None else str(r.get(h))
                                               for h in header) for r in rows]  # fmt: skip
        atomic_write_text(output / "per_pair.csv", "\n".join(lines) + "\n")
        result["files"] = {"metrics": str(output / "metrics.json"),
                           "per_pair": str(output / "per_pair.csv")}  # fmt: skip
    return result


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a few aligned lines."""
    lines = [f"{result['n_pairs']} pairs ({result['split']})"]
    for key, s in result["metrics"].items():
        if s["mean"] is None:
            continue
        ci = f" [{s['low']:.4f}, {s['high']:.4f}]" if s.get("low") is not None else ""
        lines.append(f"  {key:<18} {s['mean']:.4f}{ci}")
    return "\n".join(lines)
