"""``explain.html``: the methods side by side, and how far each can be trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_explain_html"]

_ABOUT = {
    "gradcam": "gradient-weighted activations of the last convolutional stage (coarse, class "
    "specific)",
    "gradcam++": "Grad-CAM with per-location weights: several instances of the evidence show",
    "ig": "gradients integrated along the path from a baseline image (signed, pixel level)",
    "smoothgrad": "absolute gradients averaged over noisy copies of the image",
    "occlusion": "drop of the score when a patch is replaced by the baseline (signed)",
    "lime": "a linear surrogate fitted to the scores of images with superpixels switched off",
    "shap": "Shapley values of the superpixels, estimated by KernelSHAP",
    "gradshap": "expected gradients times input difference over random baselines",
}


def write_explain_html(
    path: Path, job: Any, methods: list[str], maps: dict[str, np.ndarray], figures: dict[str, Any]
) -> Path:
    """Write the page: a table of faithfulness figures and, per image, the methods' overlays."""
    from medlens._atomic import atomic_write_text
    from medlens.explain.methods import METHOD_NAMES
    from medlens.explain.render import attribution_figure
    from medlens.explain.run import UNSIGNED
    from medlens.report.page import escape, figure, html_page, section

    rows = []
    for m in methods:
        entry = figures["methods"][m]
        rand = entry.get("randomisation")
        rand_text = "n/a"
        if rand:
            rand_text = f"{rand['final']:.2f}" + (" (flagged)" if rand["flagged"] else "")
        rows.append(
            "<tr>"
            f"<td>{escape(METHOD_NAMES[m])}</td><td>{escape(_ABOUT.get(m, ''))}</td>"
            f"<td>{entry['ms_per_image']:.0f}</td>"
            f"<td>{_fmt(entry.get('deletion_auc'))}</td><td>{_fmt(entry.get('insertion_auc'))}</td>"
            f"<td>{escape(rand_text)}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>Method</th><th>What it shows</th><th>ms / image</th>"
        "<th>Deletion AUC (lower is better)</th><th>Insertion AUC (higher is better)</th>"
        "<th>Randomisation Spearman (lower is better)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        "<p>Deletion: the most important pixels are replaced by a blurred copy of the image, "
        "most important first, and the probability of the explained output is recorded; "
        "insertion does the reverse from the blurred image. Randomisation: the network's layers "
        "are re-initialised from the output backwards and the map is recomputed; the Spearman "
        "rank correlation with the trained network's map after all layers are re-initialised "
        "is shown. At or above 0.5 the method is flagged: its map shows the image more than "
        "the model (Adebayo et al., 2018).</p>"
    )
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in figures.get("notes", []))
    sections = [section("faithfulness", "Methods and faithfulness", table + notes)]
    signed = {METHOD_NAMES[m]: m not in UNSIGNED for m in methods}
    body = []
    for i, item in enumerate(job.ids[:32]):
        per = {METHOD_NAMES[m]: maps[m][i] for m in methods}
        png = attribution_figure(
            job.display[i], per, title=f"{item}: {job.target_names[i]}", signed=signed
        )
        body.append(figure(png, f"{item} explained", f"{item}: {job.target_names[i]}"))
    more = len(job.ids) - 32
    if more > 0:
        body.append(f"<p>{more} more image(s) in the folder's PNG files.</p>")
    sections.append(section("images", "Explained images", "".join(body)))
    page = html_page(f"Explanations: {figures['run']}", sections, kind="Explanations")
    atomic_write_text(path, page)
    return path


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
