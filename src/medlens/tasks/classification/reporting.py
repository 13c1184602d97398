"""The run's ``report.html``: what was trained, how it did on held-out images, and examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens.tasks.classification.data import ImageSet

__all__ = ["read_history", "write_run_report"]


def read_history(run: Path) -> list[dict[str, Any]]:
    """Per-epoch records of the first fold (the learning curves)."""
    path = run / "fold-0" / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_run_report(
    run: Path, info: dict[str, Any], data: ImageSet, evaluation: dict[str, Any], probs: np.ndarray
) -> Path:
    """Write ``run/report.html`` for ``data`` (the held-out images) and their ``probs``."""
    from medlens.report import write_classification_report

    plan = info["plan"]
    threshold_source = None
    if info["metric_task"] in ("binary", "multilabel"):
        threshold_source = (
            "on tuning images split off the training data (never on the images of this report), "
            "by Youden's J (the point of the ROC curve where sensitivity + specificity - 1 is "
            "largest), then kept fixed"
        )
    folds = int(info["folds"])
    notes = [
        f"Evaluated on {evaluation.get('split', 'held-out images')} ({len(data)} images); "
        "the best epoch and the threshold were chosen on tuning images split off the training "
        "data, never on these.",
        f"Model: {plan['model']} ({plan['reason']}); {plan['train']['epochs']} epochs"
        + (f"; an ensemble of {folds} cross-validation folds." if folds > 1 else "."),
        f"Training took {info.get('train_seconds', 0):.0f} s.",
    ]
    labels = data.labels
    if info["metric_task"] != "multilabel":
        labels = np.asarray(labels).reshape(-1).astype(int)
    return write_classification_report(
        run / "report.html",
        extra_sections=_explained(run, info, data, probs, labels),
        title=f"{info['data']['name']}: {info['task']} with {plan['model']}",
        evaluation=evaluation,
        history=read_history(run),
        y_true=labels,
        y_prob=probs,
        task=info["metric_task"],
        class_names=info["class_names"],
        images=data.images,
        config={
            "dataset": info["data"]["source"],
            "model": plan["model"],
            "monitor": plan["train"].get("monitor"),
            "monitor_mode": plan["train"].get("monitor_mode"),
            "plan": plan,
            "input": info["input"],
            "folds": folds,
            "seed": info["seed"],
            "overrides": info.get("overrides", []),
        },
        notes=notes,
        threshold_source=threshold_source,
    )


def _explained(run: Path, info: dict[str, Any], data: ImageSet, probs: np.ndarray, labels):
    """The report's "Explained examples" section: Grad-CAM of the first fold's network on the
    most confident held-out predictions (mistakes first). A failure leaves a note, not a crash."""
    heading = "Explained examples (Grad-CAM)"
    if info["metric_task"] == "multilabel" or len(data) == 0:
        return []
    try:
        from medlens.engine import load_weights, reported_checkpoint
        from medlens.explain.render import explained_examples
        from medlens.tasks.classification.bundle import predicted_labels, recorded_positive
        from medlens.tasks.classification.data import InputSpec
        from medlens.tasks.classification.plan import Plan, build_network

        norm = info["normalisation"]
        network = build_network(
            Plan.from_dict(info["plan"]),
            InputSpec.from_dict(info["input"]),
            int(info["num_outputs"]),
            norm["mean"],
            norm["std"],
        )
        load_weights(network, reported_checkpoint(run / "fold-0"))
        predicted = predicted_labels(
            probs, info["metric_task"], info.get("threshold"), recorded_positive(info)
        )  # the report's own calls: a binary threshold and positive class, not the argmax
        png = explained_examples(
            network.eval(), data.images, probs, info["class_names"], labels, predicted=predicted
        )
    except Exception as exc:  # the report must not fail for want of a picture
        return [(heading, f"Not drawn: {type(exc).__name__}: {exc}")]
    text = (
        "Where the network looked: Grad-CAM of the predicted class on the most confident "
        "held-out predictions, mistakes first (the first fold's network). Each image is titled "
        "with the predicted class, the probability the model gave it, and the true class. Run "
        "`medlens explain` for every method with faithfulness checks."
    )
    return [(heading, text), ("Grad-CAM overlays", png)]
