"""``medlens explain``: explain a trained run's predictions, image by image, and check the maps.

For a classification run the target is each image's predicted class (or ``target``); for a
segmentation run, each foreground class the network predicts in the image, scored as the mean
logit inside its predicted region (:class:`~medlens.explain.methods.RegionScore`), on the plan's
grid. Output folder::

    <id>.<method>.png     the image and the map over it (3D: three planes through the maximum)
    <id>.<method>.npy     the map on the model's input grid (2D; 3D from a .npz)
    <id>.<method>.nii.gz  3D inputs read from NIfTI/DICOM: the map on the input's own grid
    <id>.png              every method side by side (when several)
    faithfulness.json     deletion/insertion AUC per method, randomisation correlations
    explain.html          the methods side by side with the faithfulness figures

Several cross-validation folds: the first fold's network is explained (an ensemble has no single
layer for Grad-CAM); the page says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.explain.methods import METHOD_NAMES, METHODS, SLOW, attribute

__all__ = ["ExplainJob", "explain_job", "find_layer", "parse_methods"]

#: Non-negative maps by construction (drawn with a sequential colour map).
UNSIGNED = ("gradcam", "gradcam++", "smoothgrad")


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"all"``, one method or a comma-separated list -> method keys (checked)."""
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part == "all":
                names.extend(METHODS)
            elif part in METHODS:
                names.append(part)
            else:
                raise MedlensError(f"--method {part}: use one of {', '.join(METHODS)} or all")
    if not names:
        raise MedlensError("--method: no method given")
    return list(dict.fromkeys(names))


@dataclass
class ExplainJob:
    """What to explain, as a task hands it over: model-ready inputs, a scalar scorer per image
    (the classifier itself, or a :class:`~medlens.explain.methods.RegionScore` of a
    segmentation), the target of each, what to draw under the maps and how to write 3D maps
    on the inputs' own grids. Explain knows no task: each task builds its job
    (:meth:`medlens.tasks.base.Task.explain_job`)."""

    ids: list[str]
    inputs: Any  # (N, C, *spatial) tensor, or a list of (C, *spatial) tensors of varying size
    models: list[torch.nn.Module]  # one scorer per image (a RegionScore) or the same classifier
    targets: torch.Tensor
    target_names: list[str]
    display: Any  # per image (C, *spatial), to draw under the maps
    write_volume: Callable[[int, np.ndarray, Path], Path | None] | None
    notes: list[str]
    kind: str
    multilabel: bool = False


def explain_job(
    job: ExplainJob,
    output: str | Path,
    *,
    methods: Sequence[str] = ("gradcam",),
    faithfulness: bool = True,
    randomisation_images: int = 8,
    layer: str | None = None,
    progress: bool = True,
    seed: int = 0,
    log: Callable[[str], Any] = print,
    run_dir: str | Path | None = None,
    input_path: str | Path | None = None,
) -> dict[str, Any]:
    """Explain ``job`` with ``methods`` and write ``output`` (see the module's notes).

    Args:
        job: what to explain (a task's :meth:`~medlens.tasks.base.Task.explain_job`).
        output: folder to write (created).
        methods: method keys (:func:`parse_methods`).
        faithfulness: compute deletion/insertion curves and the randomisation check.
        randomisation_images: images used for the randomisation check (it explains them once
            per re-initialisation step).
        layer: Grad-CAM(++)'s layer by module name (``blocks.2``, ``decoder.3``; see
            ``model.named_modules()``); default the backbone's last stage, a U-Net's decoder
            stage at 1/8 resolution.
        run_dir, input_path: recorded in ``faithfulness.json``.

    Returns:
        ``faithfulness.json``'s content plus ``files``.
    """
    from medlens._atomic import atomic_write_bytes, atomic_write_json, safe_name

    output = Path(output)
    methods = parse_methods(methods)
    if not job.ids:
        raise MedlensError(f"{input_path or 'the input'}: nothing to explain")
    find_layer(job.models[0], layer)  # a misspelt --layer fails before anything is written
    output.mkdir(parents=True, exist_ok=True)
    log(f"explaining {len(job.ids)} image(s) with {', '.join(methods)} ({job.kind})")
    maps: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        maps[method], seconds[method] = _explain_all(
            job, method, progress and method in SLOW, seed, layer
        )
        log(f"  {METHOD_NAMES[method]}: {1000 * seconds[method] / len(job.ids):.0f} ms per image")
    files: list[Path] = []
    for i, item in enumerate(job.ids):
        stem = safe_name(item, max_length=120, default="image")
        per_image = {}
        for method in methods:
            amap = maps[method][i]
            per_image[METHOD_NAMES[method]] = amap
            png = _figure(
                job.display[i],
                {METHOD_NAMES[method]: amap},
                f"{item}: {job.target_names[i]}",
                method,
            )
            atomic_write_bytes(output / f"{stem}.{method}.png", png)
            files.append(output / f"{stem}.{method}.png")
            written = (
                job.write_volume(i, amap, output / f"{stem}.{method}.nii.gz")
                if job.write_volume
                else None
            )
            if written is None:
                buffer = _npy(amap)
                atomic_write_bytes(output / f"{stem}.{method}.npy", buffer)
                files.append(output / f"{stem}.{method}.npy")
            else:
                files.append(written)
        if len(methods) > 1:
            signed = {METHOD_NAMES[m]: m not in UNSIGNED for m in methods}
            from medlens.explain.render import attribution_figure

            png = attribution_figure(
                job.display[i], per_image, title=f"{item}: {job.target_names[i]}", signed=signed
            )
            atomic_write_bytes(output / f"{stem}.png", png)
            files.append(output / f"{stem}.png")
    figures: dict[str, Any] = {
        "run": None if run_dir is None else str(run_dir),
        "input": None if input_path is None else str(input_path),
        "kind": job.kind,
        "n_images": len(job.ids),
        "methods": {
            m: {"name": METHOD_NAMES[m], "ms_per_image": 1000 * seconds[m] / len(job.ids)}
            for m in methods
        },
        "notes": job.notes,
    }
    if faithfulness:
        _faithfulness(job, methods, maps, figures, randomisation_images, seed, log, layer)
    atomic_write_json(output / "faithfulness.json", figures)
    files.append(output / "faithfulness.json")
    from medlens.explain.report import write_explain_html

    files.append(write_explain_html(output / "explain.html", job, methods, maps, figures))
    log(f"explanations: {output} ({len(files)} files); page: {output / 'explain.html'}")
    return {**figures, "files": [str(p) for p in files]}


def _explain_all(
    job: ExplainJob, method: str, progress: bool, seed: int, layer: str | None = None
) -> tuple[list, float]:
    """Maps per image (``(*spatial)`` float32 arrays) and the seconds they took."""
    import time

    start = time.perf_counter()
    if _shared_model(job):  # one classifier: batch the images
        maps = []
        for s in range(0, len(job.ids), 32):
            part = attribute(
                job.models[0],
                job.inputs[s : s + 32],
                method,
                job.targets[s : s + 32],
                progress=progress,
                seed=seed,
                layer=find_layer(job.models[0], layer),
            )
            maps.extend(part.numpy())
    else:  # segmentation: one region scorer per (image, class)
        maps = [
            attribute(
                model,
                _one(job, i),
                method,
                0,
                progress=progress,
                seed=seed,
                layer=find_layer(model, layer),
            )[0].numpy()
            for i, model in enumerate(job.models)
        ]
    return [m.astype(np.float32) for m in maps], time.perf_counter() - start


def _shared_model(job: ExplainJob) -> bool:
    return len({id(m) for m in job.models}) == 1 and isinstance(job.inputs, torch.Tensor)


def _one(job: ExplainJob, i: int) -> torch.Tensor:
    return job.inputs[i][None]


def find_layer(model: torch.nn.Module, name: str | None) -> torch.nn.Module | None:
    """The submodule ``name`` of ``model`` (also under its ``backbone`` or ``network``)."""
    if name is None:
        return None
    for prefix in ("", "backbone.", "network."):
        try:
            return model.get_submodule(prefix + name)
        except AttributeError:
            continue
    inner = getattr(model, "backbone", None) or getattr(model, "network", None) or model
    known = [n for n, m in inner.named_modules() if n and list(m.children())][:12]
    raise MedlensError(f"--layer {name}: no such layer (for example: {', '.join(known)})")


def _faithfulness(job, methods, maps, figures, n_random, seed, log, layer=None) -> None:
    from functools import partial

    from medlens.explain.faithfulness import (
        deletion_insertion,
        randomisation_check,
        target_probability,
    )

    probability = partial(target_probability, multilabel=job.multilabel)
    for method in methods:
        entry = figures["methods"][method]
        dels, ins = [], []
        for i, model in enumerate(job.models):
            amap = torch.from_numpy(maps[method][i][None])
            curves = deletion_insertion(
                model,
                _one(job, i),
                amap,
                job.targets[i : i + 1],
                seed=seed,
                probability=probability,
            )
            dels.append(float(curves["deletion_auc"][0]))
            ins.append(float(curves["insertion_auc"][0]))
        entry["deletion_auc"] = float(np.mean(dels))
        entry["insertion_auc"] = float(np.mean(ins))
        entry["per_image"] = {"deletion_auc": dels, "insertion_auc": ins}
        # classification: the first k images together; segmentation: the first image's scorer
        k = min(n_random, len(job.ids)) if _shared_model(job) else min(1, len(job.ids))
        if k == 0:
            continue
        inputs = job.inputs[:k] if _shared_model(job) else _one(job, 0)
        reference = torch.from_numpy(np.stack(maps[method][:k]))
        check = randomisation_check(
            job.models[0],
            inputs,
            lambda model, x, t, _m=method: attribute(
                model, x, _m, t, seed=seed, layer=find_layer(model, layer)
            ),
            job.targets[:k],
            seed=seed,
            reference=reference,
        )
        entry["randomisation"] = check
        flag = "  FLAGGED: barely changes when the model is randomised" if check["flagged"] else ""
        log(
            f"  {METHOD_NAMES[method]}: deletion AUC {entry['deletion_auc']:.3f}, insertion AUC "
            f"{entry['insertion_auc']:.3f}, randomisation Spearman {check['final']:.2f}{flag}"
        )


def _figure(image: np.ndarray, maps: dict[str, np.ndarray], title: str, method: str) -> bytes:
    from medlens.explain.render import attribution_figure

    return attribution_figure(
        image, maps, title=title, signed={k: method not in UNSIGNED for k in maps}
    )


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()
