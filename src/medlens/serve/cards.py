"""Model cards: what a served run is, what it takes, what it was trained on and how it scored.

A card is built from the run folder alone (``run.json``, the fold checkpoints), so ``GET
/v1/models`` says exactly what answers: the task, the input the model takes, its classes, a
summary of its training data (never the training machine's paths), the held-out metrics with
their 95% intervals as training recorded them (and on which cases), the medlens versions that
trained and serve it, and the SHA-256 of every checkpoint it predicts with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["model_card"]


def model_card(name: str, predictor: Any) -> dict[str, Any]:
    """The card of ``predictor`` (a :class:`~medlens.tasks.base.Predictor`) served as ``name``."""
    import medlens

    info = predictor.info
    run = predictor.run
    data = dict(info.get("data") or {})
    if "source" in data:  # the training machine's path: its name only
        data["source"] = Path(str(data["source"])).name
    weights = run.weights()
    return {
        "name": name,
        # what DICOM results record as the algorithm's version
        "version": run.algorithm_version(weights),
        "task": info.get("task"),
        "format": info.get("format"),
        "input": predictor.input_spec(),
        "input_fields": list(predictor.input_fields),
        "classes": info.get("class_names"),
        "positive_class": info.get("positive_class"),
        "decision": info.get("metric_task"),
        "threshold": info.get("threshold"),
        "training_data": data,
        "held_out_metrics": info.get("evaluation"),
        "held_out_from": data.get("held_out_from") or _held_out(info),
        "folds": info.get("folds"),
        "train_seconds": info.get("train_seconds"),
        "trained_with": {"medlens": info.get("medlens")},
        "served_by": {"medlens": medlens.__version__},
        "backend": getattr(predictor, "backend", "torch"),
        "weights": weights,
        "answers": ["json", *predictor.answer_formats],
    }


def _held_out(info: dict[str, Any]) -> str | None:
    if info.get("cv_fold"):
        fold, folds = info["cv_fold"]
        return f"fold {fold} of {folds} (subject-grouped), which chose the best epoch only"
    return None
