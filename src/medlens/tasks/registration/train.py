"""``medlens train --task registration``: plan, bring the images to the canonical grid, train.

The job: open ``--data`` (a dataset of images, or a pairs CSV: :mod:`.data`), split it by
subject (80/20, or fold ``k`` of ``K``), plan the canonical grid from the training images (or
take ``plan.json``), bring every image to it once, and train the U-Net on random pairs
(:class:`~.data.PairBatches`) with the registration loss. Each epoch validates on a fixed set of
validation pairs (``plan.val_pairs``): the mean Dice of the warped labels where the data has
labels (else the negated similarity loss) picks the best epoch. ``metrics.json`` holds the
validation pairs' Dice before (the centres aligned) and after, and the folding of the fields.
Checkpoints are written every epoch; ``resume=True`` continues a killed run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens import __version__
from medlens._atomic import atomic_write_json, ensure_outside
from medlens.errors import DatasetError, MedlensError
from medlens.tasks.registration.data import PairBatches, canonical_case, onehot, open_source
from medlens.tasks.registration.network import (
    RegistrationLoss,
    build_network,
    displacement,
    warp_labels,
)
from medlens.tasks.registration.plan import RegistrationPlan, make_plan
from medlens.tasks.run_folder import RunFolder, failed_cleanly, run_format

__all__ = ["RUN_FORMAT", "score_pairs", "train_registration", "validation_pairs"]

RUN_FORMAT = run_format("registration")
VAL_FRACTION = 0.2


def train_registration(data: str | Path, output: str | Path, *, plan: str | Path | None = None,
                       epochs: int | None = None, folds: int | None = None,
                       fold: int | None = None, seed: int = 0, resume: bool = False,
                       overrides: Sequence[str] = (), progress: bool = True,
                       log: Callable[[str], Any] = print) -> dict[str, Any]:  # fmt: skip
    """Plan (unless ``plan`` is given), train and validate; returns ``run.json``'s content.
    ``fold=k`` with ``folds=K`` validates on the k-th of K subject-grouped folds."""
    if folds is not None and folds > 1 and fold is None:
        raise MedlensError("registration trains one model: give --fold k with --folds K")
    if fold is not None and not (folds and folds > 1 and 0 <= fold < folds):
        raise MedlensError(f"fold {fold}: needs folds=K > 1 and 0 <= fold < K")
    with failed_cleanly(output, resume=resume):
        return _job(Path(data), Path(output), plan, epochs, (folds, fold), seed, resume,
                    overrides, progress, log)  # fmt: skip


def _items(source) -> tuple[list[str], list[str]]:
    """The units a split divides: cases (random pairs) or listed pairs, and their subjects."""
    if source.pairs is None:
        return source.ids, [source.subjects[i] for i in source.ids]
    names = [f"pair-{k}" for k in range(len(source.pairs))]
    return names, [source.subjects[f] for f, _ in source.pairs]


def _job(data, output, plan, epochs, cv, seed, resume, overrides, progress, log):
    from medlens.data import kfold_splits, save_splits, train_val_split

    if not data.exists():
        raise DatasetError("does not exist", data)
    ensure_outside(output, data)
    source = open_source(data)
    started = time.perf_counter()
    names, groups = _items(source)
    if resume:
        the_plan = RegistrationPlan.load(output / "plan.json")
        split = json.loads((output / "splits.json").read_text())["folds"][0]
    else:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        folds, fold = cv
        if folds is not None and folds > 1:
            split = kfold_splits(names, folds, groups=groups, stratify=False, seed=seed,
                                 ids=names)[fold]  # fmt: skip
        else:
            fraction = VAL_FRACTION
            if source.pairs is None:  # random pairs: two images on each side at least
                if len(names) < 4:
                    raise DatasetError(f"{len(names)} images: training on random pairs needs "
                                       "at least 4 (2 to train, 2 to validate)", data)  # fmt: skip
                fraction = max(fraction, 2 / len(names))
            split = train_val_split(names, fraction, groups=groups, stratify=False, seed=seed,
                                    ids=names)  # fmt: skip
        if plan is not None:
            the_plan = RegistrationPlan.load(plan)
        else:
            train_ids = _case_ids(source, split["train_indices"])
            headers = [source.load(i)[0] for i in train_ids[:50]]
            the_plan = make_plan(headers, labelled=source.labelled, pairs="random"
                                 if source.pairs is None else "csv",
                                 label_values=source.label_values)  # fmt: skip
        the_plan = the_plan.with_overrides(overrides) if overrides else the_plan
        if epochs is not None:
            the_plan.train = the_plan.train.replace(epochs=int(epochs))
        output.mkdir(parents=True, exist_ok=True)
        the_plan.save(output / "plan.json")
        _normaliser().save(output / "preprocessing.json")  # as every image is scaled
        save_splits(output / "splits.json", split)
        RunFolder(output).write(_info(the_plan, source, seed, "training"))
        log(_describe(the_plan, source, split))
    train_ids = _case_ids(source, split["train_indices"])
    val_ids = _case_ids(source, split["val_indices"])
    reference = _reference(source, the_plan, train_ids, output, resume)
    cases = _prepare(source, the_plan, sorted(set(train_ids) | set(val_ids)), reference,
                     progress)  # fmt: skip
    use_labels = source.labelled and the_plan.num_labels > 0
    val = validation_pairs(source, val_ids, split["val_indices"], the_plan.val_pairs, seed)
    _fit(the_plan, cases, source, train_ids, split["train_indices"], val, output / "fold-0",
         seed, progress, resume, use_labels)  # fmt: skip
    info = _info(the_plan, source, seed, "complete")
    info["folds"] = 1
    if cv[1] is not None:
        info["cv_fold"] = [cv[1], cv[0]]
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    networks = RunFolder(output).load_networks(lambda: build_network(the_plan))
    metrics = score_pairs(networks[0], cases, val, the_plan, labels=source.labelled)
    metrics["pairs"] = [list(p) for p in val]
    atomic_write_json(output / "metrics.json", metrics)
    info["evaluation"] = {k: v for k, v in metrics.items() if k != "pairs"}
    RunFolder(output).write(info)
    if "dice_mean" in metrics:
        log(f"validation pairs: Dice {metrics['dice_before']:.3f} ({the_plan.prealign} "
            f"pre-alignment) -> {metrics['dice_mean']:.3f}; folding "
            f"{metrics['folding_fraction']:.3%}")  # fmt: skip
    return info


def _normaliser():
    """The intensity scaling of every image (after the mean of its channels), as a
    :class:`~medlens.preprocessing.Preprocessor` a run saves."""
    from medlens.preprocessing import Preprocessor
    from medlens.registration.register import GREY_SCALING

    return Preprocessor([GREY_SCALING])


def _case_ids(source, indices) -> list[str]:
    if source.pairs is None:
        return [source.ids[int(i)] for i in indices]
    return sorted({c for i in indices for c in source.pairs[int(i)]})


def validation_pairs(source, val_ids: list[str], val_indices, count: int,
                     seed: int) -> list[tuple[str, str]]:  # fmt: skip
    """The fixed validation pairs: the listed pairs of the validation rows, or ``count``
    distinct ordered pairs of validation cases drawn with ``seed``."""
    if source.pairs is not None:
        return [source.pairs[int(i)] for i in val_indices]
    if len(val_ids) < 2:
        raise DatasetError(f"{len(val_ids)} validation case(s): need at least 2", source.path)
    rng = np.random.default_rng(seed + 7919)
    everything = [(a, b) for a in val_ids for b in val_ids if a != b]
    chosen = rng.choice(len(everything), size=min(count, len(everything)), replace=False)
    return [everything[int(i)] for i in sorted(chosen)]


def _reference(source, plan, train_ids: list[str], output: Path, resume: bool):
    """The atlas image of the affine pre-alignment (``reference.nii.gz`` of the run), or None."""
    from medlens.io import load_image, save_image
    from medlens.tasks.registration.prealign import REFERENCE, choose_reference

    if plan.prealign != "affine":
        return None
    if resume and (output / REFERENCE).is_file():
        return load_image(output / REFERENCE)
    chosen = choose_reference({i: source.load(i)[0] for i in train_ids})
    reference = source.load(chosen)[0]
    save_image(reference, output / REFERENCE)
    return reference


def _prepare(source, plan, ids: list[str], reference, progress: bool) -> dict[str, Any]:
    from medlens._progress import progress as shown
    from medlens.tasks.registration.prealign import world_for

    out = {}
    what = "aligning images to the reference on" if reference is not None else "bringing images to"
    for case in shown(ids, f"{what} the canonical grid", enabled=progress):
        image, labels = source.load(case)
        world = world_for(plan, reference, image)
        out[case] = canonical_case(plan, case, image, labels, world)
    return out


def _fit(plan, cases, source, train_ids, train_indices, val, fold_dir, seed, progress, resume,
         use_labels) -> None:  # fmt: skip
    from medlens.engine import Trainer

    torch.manual_seed(seed)
    network = build_network(plan)
    pairs = None if source.pairs is None else [source.pairs[int(i)] for i in train_indices]
    batches = PairBatches({i: cases[i] for i in train_ids}, pairs, plan.batch_size,
                          int(plan.train.batches_per_epoch or 50), label_values=plan.label_values,
                          use_labels=use_labels, seed=seed)  # fmt: skip

    def evaluate(model, _):
        scored = score_pairs(model, cases, val, plan, labels=source.labelled)
        return {"score": scored.get("dice_mean", -scored["loss"])}

    config = plan.train.replace(seed=seed, progress=progress)
    trainer = Trainer(network, config, batches, val_data=val, output_dir=fold_dir,
                      evaluate_fn=evaluate, loss_fn=RegistrationLoss(plan),
                      task="registration")  # fmt: skip
    trainer.fit(resume=resume and (fold_dir / "last.pt").exists())


@torch.no_grad()
def score_pairs(network, cases, pairs, plan, *, labels: bool) -> dict[str, Any]:
    """Validation figures of ``network`` on ``pairs`` on the canonical grid: the loss, and with
    labels the mean Dice of the warped labels (each foreground label, then the pairs) before
    and after, and the fraction of folded voxels."""
    from medlens.metrics.registration import folding_fraction, sdlogj
    from medlens.tasks.registration.data import pair_batch

    network.eval()
    loss = RegistrationLoss(plan)
    losses, before, after, folding, spread = [], [], [], [], []
    foreground = [v for v in plan.label_values if v != 0]
    for pair in pairs:
        x, targets = pair_batch(cases, [pair], plan.label_values, labels and bool(foreground))
        velocity = network(x).float()
        losses.append(float(loss(velocity, {"fixed": targets["fixed"],
                                            "moving": targets["moving"]})))  # fmt: skip
        field = displacement(velocity, plan.integration_steps, plan.smooth)
        folding.append(folding_fraction(field[0].numpy()))
        spread.append(sdlogj(field[0].numpy()))
        if labels and foreground:
            fixed, moving = targets["fixed_labels"], targets["moving_labels"]
            warped = warp_labels(moving, field)
            before.append(_dice(moving, fixed))
            after.append(_dice(warped, fixed))
    out: dict[str, Any] = {"loss": float(np.mean(losses)), "n_pairs": len(pairs),
                           "folding_fraction": float(np.mean(folding)),
                           "sdlogj": float(np.mean(spread))}  # fmt: skip
    if after:
        out["dice_before"] = float(np.mean(before))
        out["dice_mean"] = float(np.mean(after))
    return out


def _dice(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean hard Dice over the foreground labels (the most likely label per voxel)."""
    background = (1 - probs.sum(dim=1, keepdim=True)).clamp(min=0)
    hard = onehot(
        torch.cat([background, probs], dim=1).argmax(dim=1), list(range(1 + probs.shape[1]))
    )
    scores = []
    for k in range(target.shape[1]):
        a, b = hard[:, k], target[:, k]
        total = float(a.sum() + b.sum())
        scores.append(2 * float((a * b).sum()) / total if total else 1.0)
    return float(np.mean(scores))


def _info(plan, source, seed, status) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "medlens": __version__,
        "status": status,
        "task": "registration",
        "data": {
            "source": str(source.path),
            "images": len(source.ids),
            "pairs": "random" if source.pairs is None else len(source.pairs),
        },
        "label_values": list(plan.label_values),
        "seed": seed,
    }


def _describe(plan, source, split) -> str:
    return (f"plan: {plan.describe()[0]}; {len(split['train'])} training and "
            f"{len(split['val'])} validation items")  # fmt: skip
