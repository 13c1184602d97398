"""The classification report: one static, self-contained HTML page.

Every figure is a PNG embedded as a ``data:`` URI and the style sheet is inline, so the file
opens offline, can be mailed or archived with the run, and shows the same thing in ten years.
There is no script. Every piece of text (class names, notes, the configuration) is escaped.
The page is built from the blocks of :mod:`medlens.report.page`, shared with every other report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlens._atomic import atomic_write_text
from medlens.metrics import HEADLINE
from medlens.metrics._inputs import prepare
from medlens.report import plots
from medlens.report.page import (
    escape,
    figure,
    html_page,
    interval,
    number,
    section,
    try_figure,
)

__all__ = ["THRESHOLD_YOUDEN", "html_page", "write_classification_report"]

#: ``threshold_source`` for a threshold from :func:`medlens.metrics.choose_thresholds`.
THRESHOLD_YOUDEN = (
    "on the validation data, by Youden's J (the point of the ROC curve where sensitivity + "
    "specificity - 1 is largest), then kept fixed for the data in this report"
)

_LABELS = {
    "auc": (
        "AUC (ROC)",
        "Chance that a random case with the finding scores higher than a random "
        "case without it: 0.5 is a coin toss, 1 is perfect.",
    ),
    "auc_pr": (
        "AUC-PR (average precision)",
        "Area under the precision-recall curve; compare it "
        "with the prevalence, which is what a useless model gets.",
    ),
    "accuracy": ("Accuracy", "Share of cases classified correctly."),
    "balanced_accuracy": (
        "Balanced accuracy",
        "Mean sensitivity over the classes; not inflated by a common class.",
    ),
    "sensitivity": ("Sensitivity (recall)", "Of the cases with the finding, the share detected."),
    "specificity": (
        "Specificity",
        "Of the cases without the finding, the share correctly ruled out.",
    ),
    "precision": (
        "Precision (PPV)",
        "Of the cases called positive, the share truly positive; depends on the prevalence.",
    ),
    "f1": ("F1 score", "Harmonic mean of precision and sensitivity."),
    "kappa": (
        "Cohen's kappa",
        "Agreement with the reference beyond chance (0 = chance, 1 = perfect).",
    ),
    "ece": (
        "ECE (calibration error)",
        "Average gap between the predicted probability and how "
        "often the prediction comes true; lower is better.",
    ),
}
_TASKS = {
    "binary": "binary (finding present or absent)",
    "multiclass": "multi-class (one class per case)",
    "multilabel": "multi-label (any number of findings per case)",
    "ordinal": "ordinal (ordered grades)",
}


def _confidence(evaluation: Mapping[str, Any]) -> str:
    boot = evaluation.get("bootstrap")
    if not boot:
        return "CI"
    return f"{100 * float(boot.get('confidence', 0.95)):g}% CI"


def _quoted(names: Sequence[Any]) -> str:
    """Class names quoted, so that a name with a comma ('normal, benign') reads as one class."""
    return ", ".join(f"'{name}'" for name in names)


def _positive(ev: Mapping[str, Any]) -> tuple[str, str] | None:
    """Binary: the names of the positive and the negative class (class 1 unless recorded)."""
    if ev.get("task") != "binary":
        return None
    names = [str(c) for c in ev["class_names"]]
    index = int(ev.get("positive_index", 1))
    return names[index], names[1 - index]


def _summary(ev: Mapping[str, Any], dataset: str | None, model: str | None, thr: str) -> str:
    rows = [("Dataset", dataset or "not recorded"), ("Model", model or "not recorded")]
    rows += [("Task", _TASKS.get(ev["task"], ev["task"])), ("Cases evaluated", ev["n"])]
    rows.append(("Classes", _quoted(ev["class_names"])))
    sides = _positive(ev)
    if sides:
        rows.append(
            (
                "Positive class",
                f"Sensitivity and specificity are for the positive class '{sides[0]}' "
                f"(specificity: the share of '{sides[1]}' cases called '{sides[1]}').",
            )
        )
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    for key in ("auc", "accuracy"):
        macro = " (macro)" if key == "auc" and ev["task"] != "binary" else ""
        label = _LABELS[key][0] + macro
        body += f"<tr><th>{escape(label)}</th><td>{interval(ev.get(key))}</td></tr>"
    body += f"<tr><th>Decision rule</th><td>{escape(thr)}</td></tr>"
    return f"<table>{body}</table>"


def _metrics_table(ev: Mapping[str, Any]) -> str:
    level = _confidence(ev)
    rows = "".join(
        f'<tr><th>{escape(_LABELS[k][0])}</th><td class="num">{interval(ev[k])}</td>'
        f"<td>{escape(_LABELS[k][1])}</td></tr>"
        for k in HEADLINE
        if k in ev
    )
    sides = _positive(ev) or ("positive", "negative")
    average = {
        "binary": f"Sensitivity, precision and F1 are those of the positive class '{sides[0]}'; "
        f"specificity is the sensitivity for '{sides[1]}'.",
        "multilabel": "Each metric is computed per class on its labelled cases and averaged "
        "over classes (macro average); accuracy is the mean per-class accuracy.",
    }.get(
        ev["task"],
        "Per-class values (one class against the rest) averaged over classes (macro average).",
    )
    if ev.get("task") == "ordinal":
        average += " Kappa uses quadratic weights: a grade off by two counts four times as much."
    brackets = (
        f"Brackets: {level}, percentile bootstrap over cases ({ev.get('n_boot')} resamples)."
        if ev.get("bootstrap")
        else "No bootstrap was run, so there are no confidence intervals."
    )
    head = f"<tr><th>Metric</th><th>Value [{escape(level)}]</th><th>What it means</th></tr>"
    return f"<p>{escape(average)} {escape(brackets)}</p><table>{head}{rows}</table>"


def _per_class_table(ev: Mapping[str, Any]) -> str:
    per_class = ev.get("per_class") or {}
    if not per_class:
        return ""
    first = next(iter(per_class.values()))
    counts = [k for k in ("n_positive", "n_negative", "threshold") if k in first]
    metrics = [k for k in first if k not in counts]
    head = "<th>Class</th>" + "".join(
        f"<th>{escape(k.replace('n_', 'cases ').replace('_', ' '))}</th>" for k in counts
    )
    head += "".join(f"<th>{escape(_LABELS.get(k, (k,))[0])}</th>" for k in metrics)
    body = ""
    for name, entry in per_class.items():
        cells = "".join(f'<td class="num">{escape(number(entry.get(k)))}</td>' for k in counts)
        cells += "".join(f'<td class="num">{interval(entry.get(k), "<br>")}</td>' for k in metrics)
        body += f"<tr><th>{escape(name)}</th>{cells}</tr>"
    return (
        "<h3>Per class</h3><p>Each class against all others; cases positive / negative for "
        f'that class.</p><div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
    )


def _decision_rule(ev: Mapping[str, Any], source: str | None) -> tuple[str, str]:
    """A one-line rule for the summary and a paragraph for the threshold section."""
    thr = ev.get("threshold")
    if ev["task"] in ("multiclass", "ordinal") or thr is None:
        rule = "the class with the highest probability (no threshold)"
        return rule, f"<p>The prediction is {escape(rule)}.</p>"
    values = [thr] if ev["task"] == "binary" else list(thr)
    if source:
        how = f"The threshold was chosen {source}."
    elif all(abs(float(t) - 0.5) < 1e-12 for t in values):
        how = "This is the default 0.5; it was not tuned."
    else:
        how = "How the threshold was chosen was not recorded."
    if ev["task"] == "binary":
        pos, neg = _positive(ev) or ("positive", "negative")
        rule = f"'{pos}' (positive) when P(positive) >= {float(thr):.3f}, else '{neg}'"
        sens, spec = ev.get("sensitivity") or {}, ev.get("specificity") or {}
        at = (
            f" At this threshold sensitivity is {number(sens.get('value'))} and specificity "
            f"{number(spec.get('value'))}; it is marked on the ROC and precision-recall curves."
        )
    else:
        rule = "per class: positive when P(class) >= that class's threshold"
        at = " The per-class thresholds are in the per-class table and marked on the curves."
    return rule, f"<p>A case is called {escape(rule)}. {escape(how)}{escape(at)}</p>"


def _extra(heading: str, content: str | bytes, index: int) -> tuple[str, str, str]:
    if isinstance(content, bytes):
        body = figure(content, heading, "")
    else:
        paragraphs = [p.strip() for p in str(content).split("\n\n") if p.strip()]
        body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return section(f"extra-{index}", heading, body)


def write_classification_report(
    path: str | Path,
    *,
    title: str,
    evaluation: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: Sequence[str] | None = None,
    images: Any = None,
    config: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    extra_sections: Sequence[tuple[str, str | bytes]] = (),
    dataset: str | None = None,
    model: str | None = None,
    threshold_source: str | None = None,
    n_examples: int = 16,
) -> Path:
    """Write ``report.html`` for a classification run; returns its path.

    Args:
        path: the HTML file to write (atomically; folders are created).
        title: the page heading, e.g. the run name.
        evaluation: :func:`medlens.metrics.evaluate_classification` of ``y_true``/``y_prob``;
            for binary, its ``positive_index`` (1 if absent) is the positive class of every
            curve, rule and sentence on the page.
        history: the ``history.jsonl`` records (may be empty: no learning curves).
        y_true, y_prob, task: the same data and task as ``evaluation``, for the curves.
        class_names: default ``evaluation["class_names"]``.
        images: optional ``(N, C, H, W)`` / ``(N, C, D, H, W)`` images in ``y_true``'s order,
            for the grid of right and wrong examples.
        config: shown as collapsible JSON; ``monitor`` / ``monitor_mode`` pick the best epoch,
            ``dataset`` / ``model`` fill the summary unless given here.
        notes: extra lines for the notes section (the evaluation's own notes are always shown).
        extra_sections: ``(heading, content)`` pairs: text (blank lines split paragraphs) or
            PNG bytes.
        threshold_source: how the threshold was chosen, completing "The threshold was chosen
            ..."; pass :data:`THRESHOLD_YOUDEN` after :func:`medlens.metrics.choose_thresholds`.
        n_examples: cases in the example grid.

    Raises:
        ValueError: ``evaluation`` does not describe ``y_true`` (another task or sample count).
    """
    config = dict(config or {})
    names = list(class_names) if class_names is not None else list(evaluation["class_names"])
    if evaluation.get("task") != task:
        raise ValueError(f"evaluation is for task {evaluation.get('task')!r}, not {task!r}")
    thr = None if task in ("multiclass", "ordinal") else evaluation.get("threshold")
    positive = evaluation.get("positive_index") if task == "binary" else None
    prep = prepare(y_true, y_prob, task, thr, names, positive)
    if evaluation.get("n") != prep.n:
        raise ValueError(f"evaluation has n={evaluation.get('n')} but y_true has {prep.n} cases")
    names = prep.class_names
    dataset = dataset or _text(config.get("dataset") or config.get("data"))
    model = model or _text(config.get("model") or config.get("arch"))
    rule, threshold_html = _decision_rule(evaluation, threshold_source)

    sections = [
        section("summary", "Summary", _summary(evaluation, dataset, model, rule)),
        section("metrics", "Metrics", _metrics_table(evaluation) + _per_class_table(evaluation)),
        section("threshold", "Decision threshold", threshold_html),
    ]
    if history:
        monitor = (config.get("monitor"), config.get("monitor_mode"))
        fig = try_figure(
            lambda: plots.learning_curves(list(history), *monitor),
            "Learning curves",
            _curves_caption(history, *monitor),
        )
        sections.append(section("training", "Training", fig))
    curve_args = (y_true, y_prob, task, names, thr, positive)
    roc = try_figure(
        lambda: plots.roc_curves(*curve_args),
        "ROC curve",
        "Sensitivity against false-positive rate over every possible threshold; the closer "
        "to the top-left corner the better, the dotted diagonal is guessing. The dot is the "
        "threshold actually used.",
    )
    pr = try_figure(
        lambda: plots.pr_curves(*curve_args),
        "Precision-recall curve",
        "Precision (how many positive calls are right) against sensitivity over every "
        "threshold. More telling than the ROC curve when the finding is rare.",
    )
    sections.append(
        section("curves", "ROC and precision-recall", f'<div class="figs">{roc}{pr}</div>')
    )
    calibration = try_figure(
        lambda: plots.calibration_plot(y_true, y_prob, task, positive=positive),
        "Calibration plot",
        "Do the probabilities mean what they say? Cases are grouped by predicted probability; "
        "bars on the dashed diagonal mean that, e.g., cases given 70% are right 70% of the "
        "time. Bars below the diagonal: over-confident. The grey bars underneath count the "
        "cases in each group (groups with few cases are noisy).",
    )
    matrix = try_figure(
        lambda: plots.confusion_matrix_plot(evaluation["confusion_matrix"], names),
        "Confusion matrix",
        "Rows are the reference (true) class, columns the prediction; each cell gives the "
        "number of cases and the share of its row. The diagonal holds the correct calls.",
    )
    sections.append(
        section(
            "calibration",
            "Calibration and errors",
            f'<div class="figs">{calibration}{matrix}</div>',
        )
    )
    if images is not None:
        grid = try_figure(
            lambda: plots.example_grid(
                images, prep.y, prep.predictions(), prep.prob, names, n=n_examples
            ),
            "Examples",
            "The cases the model was most sure about: correct calls in green, mistakes in red, "
            "each titled with the true and the predicted class and the probability the model "
            "gave each of them (a call at a tuned threshold can go to a class below 0.5). "
            "Confident mistakes are worth a look: they may be label errors or shortcuts the "
            "model learnt.",
        )
        sections.append(section("examples", "Examples", grid))
    sections += [_extra(h, c, i) for i, (h, c) in enumerate(extra_sections)]
    all_notes = [*evaluation.get("notes", []), *notes]
    all_notes.append(f"Calibration error: {evaluation.get('ece_kind', '')}")
    note_items = "".join(f"<li>{escape(n)}</li>" for n in all_notes if n)
    sections.append(section("notes", "Notes", f"<ul>{note_items}</ul>"))
    if config:
        text = json.dumps(config, indent=2, default=str, allow_nan=True)
        summary = "<summary>Configuration (JSON)</summary>"
        body = f"<details>{summary}<pre>{escape(text)}</pre></details>"
        sections.append(section("config", "Configuration", body))
    page = html_page(title, sections, "Classification report")
    path = Path(path)
    atomic_write_text(path, page)
    return path


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        value = value.get("name") or json.dumps(value, default=str)
    return str(value)


def _curves_caption(history: Sequence[Mapping[str, Any]], monitor: Any, mode: Any) -> str:
    """The learning-curve caption: exactly the series :func:`plots.learning_curves` draws."""
    try:
        losses, metrics, key, best = plots.curve_layout(list(history), monitor, mode)
    except ValueError:
        return ""
    named = {"train_loss": "the training loss", "val_loss": "the validation loss"}
    parts = []
    if losses:
        parts.append(" and ".join(named.get(k, f"the loss {k}") for k in losses))
    if metrics:
        parts.append(f"the validation metric{'s' if len(metrics) > 1 else ''} {', '.join(metrics)}")
    text = "Per epoch: " + " (left) and ".join(parts) + (" (right)." if len(parts) > 1 else ".")
    if "val_loss" in losses and "train_loss" in losses:
        text += " Validation loss rising while training loss falls means overfitting."
    elif "val_loss" not in losses:
        text += " No validation loss was recorded."
    if best is not None:
        text += f" The dashed line marks the epoch whose weights were kept as best (by {key})."
    return text
