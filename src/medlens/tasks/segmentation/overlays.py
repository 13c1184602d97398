"""Overlay figures of a segmentation evaluation: reference and predicted contours on the image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.tasks.segmentation.evaluation_cases import _fold_run, _predict_case

__all__ = ["PREDICTION_COLOUR", "REFERENCE_COLOUR", "overlay_figure"]

REFERENCE_COLOUR = "#ffc400"  # amber and azure: distinct on grey and for colour-blind readers
PREDICTION_COLOUR = "#00a8ff"


# ---------------------------------------------------------------------------------- figures
def _overlays(run, dataset, selected, ranked, cases, mirror) -> list[tuple[str, str, bytes]]:
    """``(role, case id, PNG)`` per example case; the cases are predicted again (same result)."""
    out = []
    for role, i in ranked:
        index, fold = selected[i]
        case = _predict_case(_fold_run(run, fold), dataset, index, mirror)
        labels = [v for v in run.plan.label_values if v not in (0, run.plan.ignore_label)]
        dice = cases[i]["mean"].get("dice")
        title = f"{role}: {case['id']}" + ("" if dice is None else f" (mean Dice {dice:.3f})")
        image = case["image"]
        png = overlay_figure(
            image.array,
            case["ref"],
            case["pred"],
            spacing=tuple(image.spacing[::-1]),
            labels=labels,
            title=title,
            channels="channel" in image.leading,
        )
        out.append((role, case["id"], png))
    return out


def overlay_figure(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    title: str = "",
    channels: bool = False,
) -> bytes:
    """PNG of the image in grey with the reference and predicted contours in two colours.

    Args:
        image: ``([C,] H, W)`` or ``([C,] D, H, W)``; with ``channels`` the first axis is the
            channel (three channels of a 2D image show in colour, otherwise the first one).
        reference, prediction: label maps on the image's spatial grid.
        spacing: mm per array axis (``(z, y, x)``), for the aspect ratio; default 1 mm.
        labels: the foreground labels to outline; default every non-zero value of either map.
        title: the figure's title.

    2D images show whole; 3D volumes show the axial, coronal and sagittal slices holding the
    most reference foreground (else prediction foreground, else the middle ones).
    """

    from medlens.report.figures import new_figure

    ref, pred = np.asarray(reference), np.asarray(prediction)
    array = np.asarray(image)
    rgb = channels and array.ndim == 3 and array.shape[0] == 3
    if channels and not rgb:
        array = array[0]
    shape = ref.shape
    if pred.shape != shape or (array.shape[1:] if rgb else array.shape) != shape:
        raise ValueError(
            f"image, reference and prediction differ in shape: {array.shape}, {shape}, {pred.shape}"
        )
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)
    sp = tuple(float(s) for s in (spacing or (1.0,) * len(shape)))
    fore = np.isin(ref, labels) if np.isin(ref, labels).any() else np.isin(pred, labels)
    if len(shape) == 2:
        panels = [("", (slice(None), slice(None)), sp[0] / sp[1], "upper")]
    else:
        panels = []
        for axis, name in ((0, "axial"), (1, "coronal"), (2, "sagittal")):
            others = tuple(a for a in range(3) if a != axis)
            counts = fore.sum(axis=others)
            k = int(np.argmax(counts)) if counts.any() else shape[axis] // 2
            index = [slice(None)] * 3
            index[axis] = k  # type: ignore[call-overload]
            rows, cols = (a for a in range(3) if a != axis)
            origin = "upper" if axis == 0 else "lower"  # z upwards in the coronal and sagittal
            panels.append((f"{name} slice {k}", tuple(index), sp[rows] / sp[cols], origin))
    low, high = np.percentile(array, (0.5, 99.5)) if array.size else (0.0, 1.0)
    height = 4.2
    widths = []
    for _, index, aspect, _ in panels:
        r, c = ref[index].shape
        widths.append(max(1.5, height * c / max(r * aspect, 1e-6)))
    fig = new_figure(min(sum(widths) + 0.4, 14.0), height + 0.7)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, (name, index, aspect, origin) in zip(axes, panels, strict=True):
        if rgb:
            shown = np.moveaxis(array[(slice(None), *index)], 0, -1).astype(np.float64)
            shown = np.clip((shown - low) / max(high - low, 1e-12), 0.0, 1.0)
            ax.imshow(shown, aspect=aspect, origin=origin, interpolation="nearest")
        else:
            ax.imshow(
                array[index],
                cmap="gray",
                vmin=low,
                vmax=high,
                aspect=aspect,
                origin=origin,
                interpolation="nearest",
            )
        # the reference drawn wider beneath the prediction: where they agree, both show
        outlines = ((ref[index], REFERENCE_COLOUR, 2.4), (pred[index], PREDICTION_COLOUR, 1.1))
        for mask, colour, width in outlines:
            for label in labels:
                inside = (mask == label).astype(np.float32)
                if inside.any() and not inside.all():
                    # no origin= here: contour's coordinates are then the array indices,
                    # which is where imshow puts the pixel centres (either origin)
                    ax.contour(inside, levels=[0.5], colors=[colour], linewidths=width)
        ax.set_xticks([])
        ax.set_yticks([])
        if name:
            ax.set_title(name, fontsize="small")
    return finish_overlay(fig, title, "reference", "prediction")


def finish_overlay(fig: Any, title: str | None, reference: str, prediction: str) -> bytes:
    """An overlay figure's legend (reference and prediction in their colours) and title, as
    PNG bytes; every task's overlays end this way."""
    from matplotlib.lines import Line2D

    from medlens.report.figures import plain, to_png

    handles = [
        Line2D([], [], color=REFERENCE_COLOUR, linewidth=2.4, label=reference),
        Line2D([], [], color=PREDICTION_COLOUR, linewidth=1.6, label=prediction),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize="small")
    if title:
        fig.suptitle(plain(title, 80), fontsize="medium")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    try:
        return to_png(fig)
    finally:
        fig.clear()
