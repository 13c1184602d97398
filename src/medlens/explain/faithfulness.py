"""Is an explanation faithful to the model? Three checks that do not take it on trust.

* :func:`deletion_insertion` (Petsiuk et al., 2018): remove the most important pixels first and
  watch the target's probability fall (deletion: a low area under the curve is good), or add them
  first to a featureless image and watch it rise (insertion: a high area is good). Removed pixels
  take the value of the image blurred (sigma 1/8 of the smallest side), not black: a black hole
  is itself a strong, out-of-distribution signal.
* :func:`randomisation_check` (Adebayo et al., 2018): re-initialise the model's layers from the
  output backwards, cumulatively, and compare each attribution with the trained model's by
  Spearman rank correlation. A map that barely changes when the weights it should explain are
  destroyed shows the image, not the model: it is flagged.
* :func:`pointing_hits` (Zhang et al., 2018): where the truth is known (simulated lesions, see
  :mod:`medlens.explain.lesions`), does the map's maximum fall inside it?
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FLAG_CORRELATION",
    "deletion_insertion",
    "pointing_hits",
    "randomisation_check",
    "target_probability",
]

#: Spearman correlation with the trained model's map, after every layer is re-initialised, at or
#: above which an explanation is flagged as insensitive to the model.
FLAG_CORRELATION = 0.5


def target_probability(
    outputs: torch.Tensor, targets: torch.Tensor, *, multilabel: bool = False
) -> torch.Tensor:
    """Probability of each row's target: softmax over several outputs, sigmoid of a single one
    (a :class:`~medlens.explain.methods.RegionScore` or a one-logit model) or of the target's
    logit for a multi-label model."""
    if multilabel:
        return torch.sigmoid(outputs.gather(1, targets[:, None].long())[:, 0])
    if outputs.shape[1] == 1:
        return torch.sigmoid(outputs[:, 0])
    return outputs.softmax(dim=1).gather(1, targets[:, None].long())[:, 0]


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 20,
    batch_size: int = 64,
    seed: int = 0,
    probability: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = target_probability,
) -> dict[str, Any]:
    """Deletion and insertion curves of ``attributions`` ``(B, *spatial)`` for ``inputs``.

    Pixels are ranked by attribution (highest first; ties in random order, seeded) and moved in
    ``steps`` equal shares. Returns ``fractions`` ``(steps + 1,)``, ``deletion`` and
    ``insertion`` curves ``(B, steps + 1)`` of the target's probability, and their areas
    ``deletion_auc`` and ``insertion_auc`` ``(B,)`` (trapezoids over the fraction, in [0, 1]).
    """
    from medlens.explain.methods import VOXEL_BUDGET, baseline_like, fit_batch

    model.eval()
    inputs = inputs.float()
    batch_size = fit_batch(inputs, batch_size, budget=4 * VOXEL_BUDGET)  # no backward pass here
    n, spatial = inputs.shape[0], inputs.shape[2:]
    blurred = baseline_like(inputs, "blur")
    size = int(np.prod(spatial))
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * size).astype(int)
    deletion = np.zeros((n, steps + 1))
    insertion = np.zeros((n, steps + 1))
    for i in range(n):
        scores = attributions[i].detach().float().reshape(-1).numpy()
        jitter = rng.random(size)
        order = np.lexsort((jitter, -scores))  # highest first, ties shuffled
        rank = np.empty(size, dtype=np.int64)
        rank[order] = np.arange(size)
        rank_t = torch.from_numpy(rank).view(1, 1, *spatial)
        keep = torch.stack([rank_t < k for k in counts])[:, 0]  # (steps+1, 1, *spatial)
        image, soft = inputs[i : i + 1], blurred[i : i + 1]
        deleted = torch.where(keep, soft, image)
        inserted = torch.where(keep, image, soft)
        target = targets[i : i + 1]
        deletion[i] = _probabilities(model, deleted, target, batch_size, probability)
        insertion[i] = _probabilities(model, inserted, target, batch_size, probability)
    area = np.trapezoid if hasattr(np, "trapezoid") else np.trapz  # numpy < 2
    return {
        "fractions": fractions,
        "deletion": deletion,
        "insertion": insertion,
        "deletion_auc": area(deletion, fractions, axis=1),
        "insertion_auc": area(insertion, fractions, axis=1),
    }


def _probabilities(model, images, target, batch_size, probability) -> np.ndarray:
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        out.append(probability(model(chunk).float(), target.expand(chunk.shape[0])))
    return torch.cat(out).double().numpy()


def _cascade(model: nn.Module, groups: int) -> list[tuple[str, list[nn.Module]]]:
    """Parameterised leaf modules from the output backwards, in at most ``groups`` groups."""
    leaves = [
        (name, m)
        for name, m in model.named_modules()
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
    leaves = leaves[::-1]  # registration order is forward order in the zoo's models
    if not leaves:
        return []
    chunks = np.array_split(np.arange(len(leaves)), min(groups, len(leaves)))
    out = []
    for chunk in chunks:
        names = [leaves[j][0] for j in chunk]
        label = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        out.append((label, [leaves[j][1] for j in chunk]))
    return out


def randomisation_check(
    model: nn.Module,
    inputs: torch.Tensor,
    explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    groups: int = 4,
    seed: int = 0,
    reference: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Cascading model-randomisation test of an attribution method.

    ``explain(model, inputs, targets) -> (B, *spatial)`` is called on the trained model (unless
    ``reference`` holds its maps) and after re-initialising, cumulatively from the output
    backwards, each of ``groups`` groups of layers (``reset_parameters``, seeded; batch-norm
    statistics reset too). The model given is not changed.

    Returns ``steps`` (what was re-initialised so far, per step), ``spearman`` (mean over images
    of the rank correlation with the trained model's map, per step; a constant map counts as 0),
    ``final`` (after every layer) and ``flagged`` (``final >= FLAG_CORRELATION``).
    """
    from scipy.stats import spearmanr

    if reference is None:
        reference = explain(model, inputs, targets)
    ref = reference.detach().reshape(reference.shape[0], -1).double().numpy()
    randomised = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    steps, correlations = [], []
    for label, modules in _cascade(randomised, groups):
        for module in modules:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
        maps = explain(randomised, inputs, targets).detach()
        maps = maps.reshape(maps.shape[0], -1).double().numpy()
        values = []
        for a, b in zip(ref, maps, strict=True):
            if np.ptp(a) == 0 or np.ptp(b) == 0:
                values.append(0.0)
            else:
                values.append(float(spearmanr(a, b).statistic))
        steps.append(label)
        correlations.append(float(np.mean(values)))
    final = correlations[-1] if correlations else float("nan")
    return {
        "steps": steps,
        "spearman": correlations,
        "final": final,
        "flagged": bool(final >= FLAG_CORRELATION),
    }


def pointing_hits(
    attributions: torch.Tensor | np.ndarray, masks: Any, tolerance: int = 0
) -> np.ndarray:
    """Per image, whether the attribution's maximum lies inside its mask or within ``tolerance``
    pixels (Euclidean) of it. ``attributions`` and ``masks`` are ``(B, *spatial)``; images with
    an empty mask give False."""
    from scipy.ndimage import distance_transform_edt

    maps = np.asarray(attributions.detach() if hasattr(attributions, "detach") else attributions)
    masks = np.asarray(masks).astype(bool)
    hits = np.zeros(maps.shape[0], dtype=bool)
    for i in range(maps.shape[0]):
        mask = masks[i]
        if not mask.any():
            continue
        if tolerance > 0:  # within ``tolerance`` pixels (Euclidean) of the mask
            mask = distance_transform_edt(~mask) <= tolerance
        where = np.unravel_index(int(np.argmax(maps[i])), maps[i].shape)
        hits[i] = bool(mask[where])
    return hits
