"""Pictures of attributions: an image beside its map laid over it; 3D as three planes.

Non-negative maps (Grad-CAM, SmoothGrad) are drawn with a sequential colour map whose opacity
grows with the value; signed maps (Integrated Gradients, occlusion, LIME, SHAP) with red for
evidence for the target and blue against it. Each map is scaled by its own 99.5th percentile of
absolute values, so one extreme pixel does not wash the rest out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["attribution_figure", "explained_grid", "planes_through_max"]

_CAPTION_CHARS = 52  # a caption line of explained_grid at 7 pt fits the width of its pair


def planes_through_max(volume: np.ndarray, attribution: np.ndarray) -> list[tuple[str, Any, Any]]:
    """The axial, coronal and sagittal planes (array axes 0, 1, 2) through the attribution's
    maximum: ``(name, image plane, attribution plane)``."""
    centre = np.unravel_index(int(np.argmax(attribution)), attribution.shape)
    names = ("axial", "coronal", "sagittal")
    out = []
    for axis, name in enumerate(names):
        index = [slice(None)] * 3
        index[axis] = centre[axis]
        out.append((f"{name} {centre[axis]}", volume[tuple(index)], attribution[tuple(index)]))
    return out


def _display(image: np.ndarray) -> np.ndarray:
    """A 2D picture in [0, 1] (first channel, or RGB for 3 channels), as the reports draw them."""
    from medlens.report.figures import display_image as report_display

    return report_display(image)[0]


def _draw(ax, picture: np.ndarray, amap: np.ndarray, signed: bool, scale: float) -> Any:
    from matplotlib import colormaps

    ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", interpolation="bilinear")
    value = np.clip(amap / scale, -1 if signed else 0, 1)
    if signed:
        rgba = colormaps["RdBu_r"]((value + 1) / 2)
        rgba[..., 3] = np.abs(value) * 0.85
    else:
        rgba = colormaps["inferno"](value)
        rgba[..., 3] = value * 0.8
    handle = ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def _scale(amap: np.ndarray) -> float:
    s = float(np.percentile(np.abs(amap), 99.5))
    return s if s > 0 else 1.0


def attribution_figure(
    image: np.ndarray,
    attributions: dict[str, np.ndarray],
    *,
    title: str = "",
    signed: dict[str, bool] | None = None,
) -> bytes:
    """PNG: the image, then one overlay per method, side by side.

    ``image`` is ``(C, H, W)`` or ``(C, D, H, W)``; each attribution ``(H, W)`` / ``(D, H, W)``.
    3D images get one row per plane (axial, coronal, sagittal) through the first method's
    maximum.
    """
    from medlens.report.figures import new_figure, plain, to_png

    signed = signed or {}
    names = list(attributions)
    if np.asarray(image).ndim == 4:
        first = attributions[names[0]]
        rows = [
            (label, plane, [planes_through_max_slice(attributions[m], first, i) for m in names])
            for i, (label, plane, _) in enumerate(planes_through_max(image[0], first))
        ]
    else:
        rows = [("", image, [attributions[m] for m in names])]
    cols = 1 + len(names)
    fig = new_figure(1.9 * cols, 2.0 * len(rows) + (0.3 if title else 0))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, plane, maps) in enumerate(rows):
        picture = _display(plane)
        axes[r][0].imshow(picture, cmap=None if picture.ndim == 3 else "gray")
        axes[r][0].set_xticks([])
        axes[r][0].set_yticks([])
        axes[r][0].set_title(plain(label or "image", 24), fontsize=8)
        for c, (method, amap) in enumerate(zip(names, maps, strict=True), start=1):
            full = attributions[method]
            _draw(axes[r][c], picture, np.asarray(amap), signed.get(method, True), _scale(full))
            if r == 0:
                axes[r][c].set_title(plain(method, 24), fontsize=8)
    if title:
        fig.suptitle(plain(title, 80), fontsize=9)
    return to_png(fig)


def planes_through_max_slice(amap: np.ndarray, reference: np.ndarray, axis: int) -> np.ndarray:
    """The plane of ``amap`` along ``axis`` through ``reference``'s maximum."""
    centre = np.unravel_index(int(np.argmax(reference)), reference.shape)
    index: list[Any] = [slice(None)] * 3
    index[axis] = centre[axis]
    return np.asarray(amap)[tuple(index)]


def explained_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    signed: bool = False,
    columns: int = 4,
) -> bytes:
    """PNG grid of image + overlay pairs (3D: the axial plane through each map's maximum), for
    the reports' explained examples. A caption may have several lines; each is titled over its
    pair, left-aligned, and cut to the pair's width."""
    from medlens.report.figures import new_figure, plain, to_png

    n = len(images)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    lines = max((len(str(c).splitlines()) for c in captions), default=1)
    fig = new_figure(3.6 * columns, 1.75 * rows + 0.15 * lines * rows)
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, amap, caption) in enumerate(zip(images, maps, captions, strict=True)):
        r, c = divmod(i, columns)
        image, amap = np.asarray(image), np.asarray(amap)
        if image.ndim == 4:
            _, plane, amap2 = planes_through_max(image[0], amap)[0]
            picture, amap = _display(plane), amap2
        else:
            picture = _display(image)
        axes[r][2 * c].imshow(picture, cmap=None if picture.ndim == 3 else "gray")
        title = "\n".join(plain(line, _CAPTION_CHARS) for line in str(caption).splitlines())
        axes[r][2 * c].set_title(title, fontsize=7, loc="left")
        _draw(axes[r][2 * c + 1], picture, amap, signed, _scale(amap))
        axes[r][2 * c + 1].axis("off")
    return to_png(fig)


def explained_examples(
    network: Any,
    images: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    predicted: np.ndarray | None = None,
    n: int = 8,
    method: str = "gradcam",
) -> bytes:
    """PNG grid for a classification report: ``method`` maps of the ``n`` most confident
    predictions, the mistakes among them first when ``labels`` are known.

    ``images`` ``(N, C, *spatial)`` as the network's loader gives them (8-bit scaled to [0, 1]);
    ``probs`` ``(N, K)``; the explained class is ``predicted`` (the report's calls, e.g. at a
    binary threshold), by default the top one. Each pair is titled with the predicted class and
    its probability, then the true class.
    """
    import torch

    from medlens.explain.methods import attribute
    from medlens.report.figures import cut

    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=int)
    confidence = probs[np.arange(len(predicted)), predicted]
    order = np.argsort(-confidence, kind="stable")
    if labels is not None and labels.ndim == 1:
        wrong = [i for i in order if predicted[i] != labels[i]]
        right = [i for i in order if predicted[i] == labels[i]]
        chosen = wrong[: n // 2] + right[: n - min(len(wrong), n // 2)]
    else:
        chosen = list(order[:n])
    x = torch.from_numpy(np.array(images[chosen]))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    target = torch.as_tensor(predicted[chosen], dtype=torch.long)
    maps = attribute(network, x, method, target).numpy()
    names = [cut(name, 34) for name in class_names]  # so the probability stays in the line
    captions = []
    for i in chosen:
        text = f"pred: {names[predicted[i]]} (p={confidence[i]:.2f})"
        if labels is not None and labels.ndim == 1:
            mark = "✓" if predicted[i] == labels[i] else "✗"
            text = f"{mark} {text}\ntrue: {names[int(labels[i])]}"
        captions.append(text)
    return explained_grid(
        list(x.numpy()),
        list(maps),
        captions,
        signed=method not in ("gradcam", "gradcam++", "smoothgrad"),
    )
