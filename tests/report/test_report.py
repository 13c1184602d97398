"""The report figures and the static HTML page, down to rendering it in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.metrics import evaluate_classification
from medlens.report import (
    THRESHOLD_YOUDEN,
    calibration_plot,
    confusion_matrix_plot,
    example_grid,
    learning_curves,
    pr_curves,
    roc_curves,
    write_classification_report,
)
from medlens.report._examples import _names, select_examples

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
NASTY = "<b>&"  # a class name that breaks unescaped HTML


def check_png(data: bytes, min_width: int = 200, min_height: int = 150) -> Image.Image:
    """Valid PNG of a sensible size with more than a blank page in it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.width >= min_width and image.height >= min_height
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 5, "the figure is (nearly) a single colour"
    packed = (pixels.astype(np.int32) * [65536, 256, 1]).sum(axis=2)
    assert len(np.unique(packed)) > 20
    return image


def make_data(task: str, n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels and informative but imperfect probabilities for ``task``."""
    rng = np.random.default_rng(seed)
    if task == "binary":
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.normal(0, 1.2, n))))
        return y, p, ["benign", NASTY]
    if task == "multilabel":
        k = 4
        y = rng.integers(0, 2, (n, k)).astype(float)
        p = 1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.normal(0, 1.2, (n, k)))))
        y[rng.random((n, k)) < 0.1] = np.nan  # blank
        y[rng.random((n, k)) < 0.1] = -1  # uncertain
        return y, p, ["effusion", "edema", NASTY, "nodule"]
    k = 5
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 2.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p, [f"grade {i}" for i in range(k - 1)] + [NASTY]


def make_history(epochs: int = 12) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 0.7 * np.exp(-e / 4) + 0.1,
            "lr": 1e-3,
            "val_loss": 0.6 * np.exp(-e / 4) + 0.2 + 0.002 * max(0, e - 7) ** 2,
            "val_accuracy": 0.6 + 0.3 * (1 - np.exp(-e / 3)),
            "time": 1.0,
        }
        for e in range(1, epochs + 1)
    ]


def make_images(n: int, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (n, *shape))
    images[..., 6:14, 6:14] += 3  # a bright square, so the pictures are not pure noise
    if dtype == "uint8":
        return np.clip(images * 40 + 100, 0, 255).astype(np.uint8)
    return images.astype(dtype)


# ---------------------------------------------------------------------- figures
def test_learning_curves():
    check_png(learning_curves(make_history()), min_width=500)
    only_train = [{"epoch": e, "train_loss": 1 / e, "time": 1.0} for e in range(1, 4)]
    check_png(learning_curves(only_train))
    gaps = make_history(3)
    gaps[1]["val_loss"] = None  # JSON null from a NaN
    check_png(learning_curves(gaps, monitor="val_accuracy"))
    with pytest.raises(ValueError, match="no training history"):
        learning_curves([])
    with pytest.raises(ValueError, match="no loss"):
        learning_curves([{"epoch": 1, "time": 2.0}])


def test_calibration_plot_other_bins():
    y, p, _ = make_data("multilabel")  # NaN / -1 entries are left out of the bins
    check_png(calibration_plot(y, p, "multilabel", n_bins=8), min_height=300)


def test_confusion_matrix_counts():
    for task in ("multiclass", "multilabel"):
        y, p, names = make_data(task)
        ev = evaluate_classification(y, p, task, class_names=names, n_boot=0)
        check_png(confusion_matrix_plot(ev["confusion_matrix"], names, normalize=False))


def test_curves_many_classes_and_undrawable_class():
    rng = np.random.default_rng(2)
    k = 14
    y = rng.integers(0, k, 300)
    p = rng.dirichlet(np.ones(k), 300)
    p[np.arange(300), y] += 1.0
    p /= p.sum(axis=1, keepdims=True)
    check_png(roc_curves(y, p, "multiclass"))
    ev = evaluate_classification(y, p, "multiclass", n_boot=0)
    check_png(confusion_matrix_plot(ev["confusion_matrix"], [str(i) for i in range(k)]))
    # a multi-label class whose every entry is ignored cannot have a curve; the rest still do
    y, p, names = make_data("multilabel")
    y[:, 1] = -1
    check_png(roc_curves(y, p, "multilabel", names))
    check_png(pr_curves(y, p, "multilabel", names))


def test_confusion_matrix_shape_checked():
    with pytest.raises(ValueError, match="for 3 classes"):
        confusion_matrix_plot([[1, 2], [3, 4]], ["a", "b", "c"])


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((1, 28, 28), "float32"),
        ((3, 28, 28), "uint8"),
        ((3, 28, 28), "float64"),
        ((1, 9, 24, 20), "float32"),
    ],
    ids=["2d-gray", "2d-rgb-uint8", "2d-rgb-float", "3d"],
)
def test_example_grid_images(shape, dtype):
    y, p, names = make_data("multiclass", n=40)
    images = make_images(40, shape, dtype)
    image = check_png(example_grid(images, y, p.argmax(1), p, names, n=8), min_width=400)
    assert image.height > 300


def test_example_grid_binary_multilabel_and_lists():
    y, p, names = make_data("binary", n=30)
    images = list(make_images(30, (1, 20, 20)))  # a list of per-sample arrays works too
    check_png(example_grid(images, y, (p >= 0.5).astype(int), p, names, n=6))
    y, p, names = make_data("multilabel", n=30)
    pred = (p >= 0.5).astype(int)
    check_png(example_grid(make_images(30, (1, 20, 20)), y, pred, p, names, n=4))
    with pytest.raises(ValueError, match="differ in length"):
        example_grid(images[:5], y, pred, p, names)


def test_select_examples_balanced():
    confidence = np.array([0.9, 0.8, 0.99, 0.6, 0.7, 0.95])
    correct = np.array([True, False, True, False, True, False])
    assert select_examples(confidence, correct, 4) == [2, 0, 5, 1]
    # too few mistakes: the correct ones fill the grid
    assert select_examples(confidence, np.array([True] * 5 + [False]), 4) == [2, 0, 1, 5]
    assert len(select_examples(confidence, correct, 100)) == 6


def test_example_titles_show_unlabelled_positive_calls():
    names = ["a", "b", "c", "d"]
    row = np.array([1.0, np.nan, 0.0, -1.0])
    assert _names(row, names, np.array([1, 1, 0, 0])) == "a, b?"
    assert _names(np.array([0.0, 0.0, 0.0, 0.0]), names) == "none"
    assert _names(np.asarray(2), names) == "c"


# ---------------------------------------------------------------------- the page
def gradient_png() -> bytes:
    """A small non-blank PNG, standing in for a figure of the caller's own."""
    ramp = np.linspace(0, 255, 240, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128), axis=-1)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


THRESHOLDS = {"binary": 0.45, "multilabel": [0.3, 0.5, 0.6, 0.5]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """One full report per task (written once: each takes a second or two)."""
    root = tmp_path_factory.mktemp("reports")
    out = {}
    for task in TASKS:
        y, p, names = make_data(task)
        threshold = THRESHOLDS.get(task)
        ev = evaluate_classification(y, p, task, class_names=names, threshold=threshold, n_boot=50)
        extra = [("Reader study", "First paragraph.\n\nSecond <i>."), ("Own plot", gradient_png())]
        out[task] = write_classification_report(
            root / task / "report.html",
            title=f"{task} run {NASTY}",
            evaluation=ev,
            history=make_history(),
            y_true=y,
            y_prob=p,
            task=task,
            class_names=names,
            images=make_images(len(y), (1, 24, 24)),
            config={"dataset": "synthetic", "model": "resnet18", "lr": 1e-3, "note": "</pre><x>"},
            notes=["a note with <script>alert(1)</script>"],
            extra_sections=extra if task == "binary" else (),
            threshold_source=THRESHOLD_YOUDEN if task == "binary" else None,
        )
    return out


def img_sources(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", text)


@pytest.mark.parametrize("task", TASKS)
def test_report_self_contained_and_escaped(reports, task):
    text = reports[task].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower()  # static page: the note's script is escaped
    assert "<b>" not in text and "<x>" not in text
    assert "&lt;b&gt;&amp;" in text
    sources = img_sources(text)
    # learning curves, ROC, PR, calibration, confusion matrix, examples (+ the extra plot)
    assert len(sources) == text.count("<img") == (7 if task == "binary" else 6)
    for src in sources:  # every figure, drawn for this task, is a real picture
        assert src.startswith("data:image/png;base64,")
        check_png(base64.b64decode(src.split(",", 1)[1]))
    assert "not drawn" not in text
    for anchor in ("summary", "metrics", "threshold", "training", "curves", "examples", "config"):
        assert f'id="{anchor}"' in text
    assert "<details>" in text and "resnet18" in text
    assert "95% CI" in text and '<span class="ci">[' in text  # intervals from the bootstrap


def test_report_threshold_text_and_extras(reports):
    text = reports["binary"].read_text(encoding="utf-8")
    assert "P(positive) &gt;= 0.450" in text and "Youden" in text
    assert "<p>Second &lt;i&gt;.</p>" in text and "Own plot" in text
    text = reports["multilabel"].read_text(encoding="utf-8")
    assert "that class&#x27;s threshold" in text and "not recorded" in text
    assert "(no threshold)" in reports["ordinal"].read_text(encoding="utf-8")


def test_report_default_threshold_and_no_history(tmp_path):
    y, p, names = make_data("binary")
    ev = evaluate_classification(y, p, "binary", class_names=names, n_boot=0)
    path = write_classification_report(
        tmp_path / "r.html",
        title="t",
        evaluation=ev,
        history=[],
        y_true=y,
        y_prob=p,
        task="binary",
    )
    text = path.read_text(encoding="utf-8")
    assert "default 0.5; it was not tuned" in text
    assert "No bootstrap was run" in text
    assert 'id="training"' not in text and 'id="config"' not in text
    assert 'id="examples"' not in text


def test_report_refuses_mismatched_evaluation(tmp_path):
    y, p, _ = make_data("binary")
    ev = evaluate_classification(y, p, "binary", n_boot=0)
    with pytest.raises(ValueError, match="n=160"):
        write_classification_report(
            tmp_path / "r.html",
            title="t",
            evaluation=ev,
            history=[],
            y_true=y[:50],
            y_prob=p[:50],
            task="binary",
        )
    with pytest.raises(ValueError, match="task"):
        write_classification_report(
            tmp_path / "r.html",
            title="t",
            evaluation=ev,
            history=[],
            y_true=y,
            y_prob=p,
            task="multilabel",
        )
    assert not (tmp_path / "r.html").exists()


def test_report_single_class_data_still_renders(tmp_path):
    """A test set with one class has no ROC curve; the page says so instead of failing."""
    y = np.ones(20, dtype=int)
    p = np.linspace(0.2, 0.9, 20)
    ev = evaluate_classification(y, p, "binary", n_boot=0)
    path = write_classification_report(
        tmp_path / "r.html",
        title="t",
        evaluation=ev,
        history=[],
        y_true=y,
        y_prob=p,
        task="binary",
    )
    text = path.read_text(encoding="utf-8")
    assert "ROC curve not drawn" in text and "Precision-recall curve not drawn" in text
    assert "no curve" in text and text.count("<img") == 2  # calibration and confusion matrix


# ---------------------------------------------------------------------- in a real browser
_WINDOW = (1200, 3000)
_PROBE = """<script>
window.addEventListener("load", function () {
  var found = Array.prototype.map.call(document.images, function (img) {
    var r = img.getBoundingClientRect();
    return [img.complete ? img.naturalWidth : -1, r.left, r.top, r.width, r.height];
  });
  document.body.setAttribute("data-images", JSON.stringify(found));
});
</script>"""


def test_report_renders_in_chromium(tmp_path, reports):
    """Every image decodes in a real browser, and the screenshot shows it where it was laid out."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium)")
    report = reports["multiclass"]
    n_images = report.read_text(encoding="utf-8").count("<img")
    # the page itself has no script; a copy gets a probe that records each image's decoded
    # width and place on the page
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
        encoding="utf-8",
    )
    base = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={_WINDOW[0]},{_WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]

    def run(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [*base, *args], capture_output=True, text=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail("chromium did not finish within 60 s")

    dom = run("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    match = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert match, f"the load probe did not run (rc {dom.returncode}): {dom.stderr[-2000:]}"
    found = json.loads(html.unescape(match.group(1)))
    assert len(found) == n_images >= 6
    widths = [int(item[0]) for item in found]
    assert all(w > 0 for w in widths), f"images that did not decode: {widths}"

    shot = tmp_path / "shot.png"
    run(f"--screenshot={shot}", probe.as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(check_png(shot.read_bytes(), min_width=1000).convert("RGB"))
    visible = 0
    for _, left, top, width, height in found:
        box = [round(v) for v in (left, top, left + width, top + height)]
        if box[2] > pixels.shape[1] or box[3] > pixels.shape[0] or width < 100:
            continue  # below the fold of the screenshot
        visible += 1
        crop = pixels[box[1] + 2 : box[3] - 2, box[0] + 2 : box[2] - 2]
        assert crop.std() > 20, f"the image at {box} is blank in the screenshot"
        assert (crop.min(axis=2) < 200).mean() > 0.01, f"nothing drawn at {box}"
    assert visible >= 2  # the learning curves and the ROC curve lie in the first 3000 pixels


# ---------------------------------------------------------------------- the positive class
BREAST = ["malignant", "normal, benign"]  # BreastMNIST: class 0 is the finding


def breast_report(tmp_path: Path, history: list[dict] | None = None) -> tuple[str, dict]:
    """A binary report whose positive class is class 0, as ``medlens train`` writes it."""
    y, p, _ = make_data("binary")
    prob = np.stack([1 - p, p], axis=1)
    ev = evaluate_classification(
        y, prob, "binary", class_names=BREAST, threshold=0.4, n_boot=0, positive=0
    )
    path = write_classification_report(
        tmp_path / "r.html",
        title="t",
        evaluation=ev,
        history=make_history() if history is None else history,
        y_true=y,
        y_prob=prob,
        task="binary",
        class_names=BREAST,
        threshold_source=THRESHOLD_YOUDEN,
    )
    return html.unescape(path.read_text(encoding="utf-8")), ev


def test_report_names_the_positive_class_and_quotes_class_names(tmp_path):
    from sklearn.metrics import recall_score

    text, ev = breast_report(tmp_path)
    assert "'malignant', 'normal, benign'" in text  # two classes, not three
    assert "Sensitivity and specificity are for the positive class 'malignant'" in text
    assert "'malignant' (positive) when P(positive) >= 0.400, else 'normal, benign'" in text
    y, p, _ = make_data("binary")
    pred = np.where(1 - p >= 0.4, 0, 1)  # malignant when P(malignant) >= 0.4
    sensitivity = recall_score(y, pred, pos_label=0)
    assert ev["sensitivity"]["value"] == pytest.approx(sensitivity)
    assert f"At this threshold sensitivity is {sensitivity:.3f}" in text
    assert "ROC curve not drawn" not in text and "Calibration plot not drawn" not in text


def test_learning_curve_caption_says_what_is_plotted(tmp_path):
    no_val_loss = [
        {"epoch": e, "train_loss": 1 / e, "val_auc": 0.8, "val_accuracy": 0.7} for e in (1, 2, 3)
    ]
    text, _ = breast_report(tmp_path, no_val_loss)
    assert "validation loss" not in text.replace("No validation loss was recorded", "")
    assert "the training loss (left)" in text and "val_auc, val_accuracy (right)" in text
    text, _ = breast_report(tmp_path)  # make_history records a validation loss
    assert "the training loss and the validation loss (left)" in text
    assert "Validation loss rising while training loss falls" in text


def test_example_titles_carry_the_probability_of_each_named_class(monkeypatch):
    from matplotlib.axes import Axes

    titles: list[str] = []
    original = Axes.set_title

    def record(self, label, *args, **kwargs):
        titles.append(str(label))
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", record)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    prob = rng.dirichlet([1, 1], 40)
    pred = np.where(prob[:, 0] >= 0.3, 0, 1)  # a tuned threshold: calls below 0.5 happen
    example_grid(make_images(40, (1, 20, 20)), y, pred, prob, BREAST, n=12)
    tiles = [t for t in titles if "pred:" in t]
    assert len(tiles) == 12
    wrong = [t for t in tiles if t.startswith("✗")]
    assert wrong
    for title in tiles:
        match = re.fullmatch(r".+true: (.+) \(p=([\d.]+)\)\npred: (.+) \(p=([\d.]+)\)", title)
        assert match, title
        rows = np.flatnonzero(
            (y == BREAST.index(match[1])) & (pred == BREAST.index(match[3]))
            & np.isclose(prob[np.arange(40), pred], float(match[4]), atol=0.006)
        )  # fmt: skip
        assert rows.size, title  # the predicted class carries its own probability
        assert np.isclose(prob[rows, y[rows]], float(match[2]), atol=0.006).any(), title


def test_explained_example_titles_fit_their_tiles(monkeypatch):
    import medlens.report.figures as figure
    from medlens.explain.render import explained_grid

    drawn = []
    to_png = figure.to_png
    monkeypatch.setattr(figure, "to_png", lambda fig: drawn.append(fig) or to_png(fig))
    images = list(make_images(8, (1, 24, 24)))
    maps = [np.abs(image[0]) for image in images]
    captions = [
        "✗ pred: normal, benign (p=0.53)\ntrue: malignant",
        "✓ pred: choroidal neovascularization (p=0.91)\ntrue: choroidal neovascularization",
    ] * 4
    check_png(explained_grid(images, maps, captions))
    (fig,) = drawn
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    titles = [t for t in fig.findobj(Text) if t.get_text() in captions]
    assert sorted(t.get_text() for t in titles) == sorted(captions)  # whole, not cut
    for title in titles:
        extent = title.get_window_extent(renderer)
        overlay = fig.axes[fig.axes.index(title.axes) + 1]  # the image's pair: its overlay
        assert extent.x0 >= 0 and extent.x1 <= overlay.get_position().x1 * width, title
