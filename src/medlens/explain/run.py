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

__all__ = ["explain_run", "parse_methods"]

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
class _Job:
    """What to explain: model-ready inputs, a scorer per image, and how to write results."""

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


def explain_run(
    run_dir: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    methods: Sequence[str] = ("gradcam",),
    split: str | None = None,
    target: str | int | None = None,
    limit: int | None = None,
    faithfulness: bool = True,
    randomisation_images: int = 8,
    layer: str | None = None,
    progress: bool = True,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Explain ``run_dir``'s predictions on ``input_path`` with ``methods``; write ``output``.

    Args:
        run_dir: a classification or segmentation run folder.
        input_path: images as ``medlens predict`` takes them (``.npz`` with ``split``, folder,
            file, DICOM series).
        output: folder to write (created; must not be inside the input).
        methods: method keys (:func:`parse_methods`).
        target: classification: the class (name or index) to explain instead of the prediction;
            segmentation: the label value to explain instead of every predicted class.
        limit: explain only the first ``limit`` images.
        faithfulness: compute deletion/insertion curves and the randomisation check.
        randomisation_images: images used for the randomisation check (it explains them once
            per re-initialisation step).
        layer: Grad-CAM(++)'s layer by module name (``blocks.2``, ``decoder.3``; see
            ``model.named_modules()``); default the backbone's last stage, a U-Net's decoder
            stage at 1/8 resolution.

    Returns:
        ``faithfulness.json``'s content plus ``files``.
    """
    from medlens._atomic import atomic_write_bytes, atomic_write_json, ensure_outside, safe_name

    run_dir, input_path, output = Path(run_dir), Path(input_path), Path(output)
    methods = parse_methods(methods)
    from medlens.tasks.classification.bundle import read_run_info

    info = read_run_info(run_dir, run_format=None)  # first: a missing run is named as such
    if not input_path.exists():
        raise MedlensError("does not exist", input_path)
    ensure_outside(output, input_path)
    ensure_outside(output, run_dir)
    if info.get("task") == "segmentation":
        job = _segmentation_job(run_dir, input_path, target, limit, progress)
    else:
        job = _classification_job(run_dir, input_path, split, target, limit)
    if not job.ids:
        raise MedlensError(f"{input_path}: nothing to explain")
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
        "run": str(run_dir),
        "input": str(input_path),
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
    job: _Job, method: str, progress: bool, seed: int, layer: str | None = None
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


def _shared_model(job: _Job) -> bool:
    return len({id(m) for m in job.models}) == 1 and isinstance(job.inputs, torch.Tensor)


def _one(job: _Job, i: int) -> torch.Tensor:
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


def _classification_job(run_dir, input_path, split, target, limit) -> _Job:
    from medlens.tasks.classification import load_run, read_inputs

    run = load_run(run_dir)
    images = read_inputs(input_path, run.spec, split=split)
    n = len(images) if limit is None else min(int(limit), len(images))
    array = np.array(images.images[:n])
    x = torch.from_numpy(array)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    network = run.networks[0].eval()
    names = run.class_names
    if target is None:
        from medlens.tasks.classification.bundle import predict_probs, predicted_labels

        probs = predict_probs([network], array, run.task)
        if run.metric_task == "multilabel":
            chosen = probs.argmax(axis=1)
        else:
            chosen = predicted_labels(probs, run.metric_task, run.threshold, run.positive)
        targets = torch.as_tensor(np.asarray(chosen), dtype=torch.long)
        label = [
            f"predicted {names[int(t)]} ({probs[i, int(t)]:.2f})" for i, t in enumerate(targets)
        ]
    else:
        index = _class_index(target, names)
        targets = torch.full((n,), index, dtype=torch.long)
        label = [f"class {names[index]}"] * n
    notes = []
    if len(run.networks) > 1:
        notes.append(
            f"The run has {len(run.networks)} cross-validation folds; the first fold's "
            "network is explained."
        )
    volume_writer = None
    if images.spatial_dims == 3:
        volume_writer = _volume_writer(input_path, images.ids[:n], tuple(array.shape[2:]))
    return _Job(
        list(images.ids[:n]),
        x,
        [network] * n,
        targets,
        label,
        array,
        volume_writer,
        notes,
        "classification",
        multilabel=run.metric_task == "multilabel",
    )


def _class_index(target: str | int, names: list[str]) -> int:
    text = str(target)
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise MedlensError(f"--target {target}: not a class of the run ({', '.join(names)})")


def _segmentation_job(run_dir, input_path, target, limit, progress) -> _Job:
    from medlens import load_image
    from medlens.tasks.segmentation.predict import _inputs, load_segmentation_run

    run = load_segmentation_run(run_dir)
    items = _inputs(Path(input_path), run.plan.spatial_dims)
    if limit is not None:
        items = items[: int(limit)]
    job = segmentation_job(run, ((name, load_image(path)) for name, path in items), target)
    if not job.ids:
        raise MedlensError(f"{input_path}: the network predicts no foreground to explain")
    return job


def segmentation_job(run: Any, images: Any, target: int | str | None = None) -> _Job:
    """What to explain for a loaded segmentation run and ``(name, Image)`` pairs: per image and
    foreground class the network predicts there (or only ``target``), a :class:`RegionScore`
    of its predicted region, on the plan's grid (padded to the network's divisor)."""
    from medlens.data.dataset import Sample
    from medlens.explain.methods import RegionScore
    from medlens.tasks.segmentation.data import preprocess_case
    from medlens.tasks.segmentation.predict import _squeeze_2d
    from medlens.tasks.segmentation.train import predict_case

    plan = run.plan
    network = run.networks[0].eval()
    foreground = [v for v in plan.label_values if v not in (0, plan.ignore_label)]
    if target is not None:
        if str(target).lstrip("-").isdigit() and int(target) in plan.label_values:
            foreground = [int(target)]
        else:
            raise MedlensError(f"--target {target}: not a label of the run {plan.label_values}")
    divisor = np.asarray(plan.divisor)
    ids, inputs, models, names, display = [], [], [], [], []
    for name, image in images:
        image = _squeeze_2d(image, plan.spatial_dims)
        case = preprocess_case(Sample(image=image, id=name), plan)
        probs = predict_case([network], case.image, plan)
        labels = np.asarray(plan.label_values)[probs.argmax(0)]
        shape = np.asarray(case.image.shape[1:])
        padded = (np.ceil(shape / divisor) * divisor).astype(int)
        pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(padded, shape, strict=True)]
        x = np.pad(case.image, pad)
        for value in foreground:
            region = np.pad(labels == value, pad[1:])
            if not region.any():
                continue
            channel = list(plan.label_values).index(value)
            ids.append(name if len(foreground) == 1 else f"{name}.label{value}")
            inputs.append(torch.from_numpy(x).float())
            models.append(RegionScore(network, channel, torch.from_numpy(region[None])).eval())
            names.append(f"label {value} in its predicted region")
            display.append(x)
    notes = [
        "Segmentation: the score explained is the mean logit of the class inside the region "
        "the network predicts for it, on the plan's grid (resampled, normalised)."
    ]
    if len(run.networks) > 1:
        notes.append(
            f"The run has {len(run.networks)} folds; the first fold's network is explained."
        )
    return _Job(
        ids,
        inputs,  # images differ in size: one tensor per image
        models,
        torch.zeros(len(ids), dtype=torch.long),
        names,
        display,
        None,
        notes,
        "segmentation",
    )


def _volume_writer(input_path: Path, ids: list[str], shape: tuple[int, ...]):
    """For 3D inputs read from image files: write the map on each input's own grid (NIfTI)."""
    if Path(input_path).suffix.lower() == ".npz":
        return None
    from medlens.tasks.classification.data import input_items

    sources = dict(input_items(Path(input_path), 3))

    def write(i: int, amap: np.ndarray, target: Path) -> Path | None:
        from medlens import load_image, save_image
        from medlens.geometry import resample
        from medlens.image import Image

        source = sources.get(ids[i])
        if source is None:
            return None
        original = load_image(source)
        if original.spatial_dims != 3:
            return None
        # the model grid covers the input's extent (align_corners=False resizing): scale the
        # spacing and move the origin to the first new voxel's centre
        size = np.asarray(original.spatial_shape[::-1], dtype=float)  # index order (x, y, z)
        scale = size / np.asarray(amap.shape[::-1], dtype=float)
        spacing = np.asarray(original.spacing, dtype=float) * scale
        shift = np.asarray(original.spacing, dtype=float) * (0.5 * scale - 0.5)
        origin = np.asarray(original.origin, dtype=float) + np.asarray(original.direction) @ shift
        grid = Image(
            amap.astype(np.float32),
            spacing=tuple(spacing),
            origin=tuple(origin),
            direction=original.direction,
        )
        like = original.with_array(np.zeros(original.spatial_shape, np.float32), leading=())
        back = resample(grid, like=like)
        save_image(back, target)
        return target

    return write


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
