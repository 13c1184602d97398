"""``medlens evaluate`` of a reconstruction run: every file reconstructed with its stored mask
and scored as fastMRI scores (per volume: PSNR and SSIM against the reference's maximum, NMSE),
beside the classical reconstructions of the same measurements (zero-filled, CG-SENSE for
multi-coil data, L1-wavelet and total-variation compressed sensing with the weights chosen on the
run's validation files: :mod:`.tuning`), with 95% bootstrap intervals over files, the paired gain
over each, and seconds per slice of each.

When ``data`` is the run's own training data, only its validation files (``splits.json``) are
scored unless ``split="all"``. Files without a stored mask (fully sampled) are undersampled with
the plan's first acceleration and a mask seeded by the slice index, as validation does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["evaluate_reconstruction", "evaluate_superres_run", "format_table"]

FIGURES = ("psnr", "ssim", "nmse", "seconds_per_slice")


def _files(trained, data: Path, split: str | None):
    from medlens.tasks.reconstruction.data import open_kspace

    if split not in (None, "val", "all"):
        raise MedlensError(f"--split {split}: use val (the run's validation files) or all")
    source = open_kspace(data)
    own = Path(str(trained.info.get("data", {}).get("source", ""))).resolve() == data.resolve()
    files = list(range(len(source.files)))
    if own and split != "all":
        folds = json.loads((trained.path / "splits.json").read_text())["folds"][0]
        files = [int(i) for i in folds["val_indices"]]
    return source, files


def chosen_baselines(names: str | list[str] | None, allowed: list[str]) -> list[str]:
    """``names`` (a list, or a comma-separated string) checked against ``allowed``; all of them
    when None."""
    if names is None:
        return list(allowed)
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in allowed]
    if unknown or not wanted:
        raise MedlensError(f"--baselines {','.join(wanted)}: choose from {', '.join(allowed)}")
    return [n for n in allowed if n in wanted]


def score_file(trained, data, baselines: list[str]
               ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """One file's figures (the network's and each baseline's, ``{baseline}_psnr`` ...) and the
    arrays the report shows (middle slice)."""
    from medlens.metrics.reconstruction import nmse, psnr, ssim
    from medlens.reconstruction.baselines import reconstruct_volume
    from medlens.tasks.reconstruction.data import evaluation_mask, reference, slice_maps
    from medlens.tasks.reconstruction.predict import reconstruct, scored_pair
    from medlens.tasks.reconstruction.tuning import baseline_params

    plan = trained.plan
    mask = evaluation_mask(data, plan)
    image, seconds = reconstruct(trained, data, mask=mask)
    maps = np.stack([slice_maps(data, s, plan) for s in range(data.kspace.shape[0])])
    target = np.stack([reference(data, s, maps[s]) for s in range(len(maps))])
    out, ref = scored_pair(data, image, target)
    peak = float(ref.max())
    n = out.shape[0]
    row = {"file": data.path.name, "slices": int(n), "psnr": psnr(ref, out, peak),
           "ssim": ssim(ref, out, peak), "nmse": nmse(ref, out),
           "seconds_per_slice": seconds / n}  # fmt: skip
    mid = n // 2
    shown: dict[str, Any] = {"reference": ref[mid], "output": out[mid], "mask": mask,
                             "baselines": {}}  # fmt: skip
    for name in baselines:
        started = time.perf_counter()
        got = reconstruct_volume(name, data.kspace, mask, maps,
                                 **baseline_params(trained.path, name, mask))  # fmt: skip
        took = time.perf_counter() - started
        got, _ = scored_pair(data, got, target)
        figures = {"psnr": psnr(ref, got, peak), "ssim": ssim(ref, got, peak),
                   "nmse": nmse(ref, got), "seconds_per_slice": took / n}  # fmt: skip
        row.update({f"{name}_{k}": v for k, v in figures.items()})
        shown["baselines"][name] = got[mid]
    return row, shown


def gains(rows: list[dict[str, Any]], baselines: list[str], n_boot: int) -> dict[str, Any]:
    """``psnr_gain_vs_{baseline}`` and ``ssim_gain_vs_{baseline}``: paired per file."""
    from medlens.metrics.reconstruction import paired_difference

    found = {}
    for name in baselines:
        for key in ("psnr", "ssim"):
            if f"{name}_{key}" in rows[0]:
                theirs = [{**r, key: r[f"{name}_{key}"]} for r in rows]
                found[f"{key}_gain_vs_{name}"] = paired_difference(rows, theirs, key,
                                                                   n_boot=n_boot)  # fmt: skip
    return found


def evaluate_reconstruction(trained, data: Path, *, split: str | None = None,
                            n_boot: int = 1000, output: Path | None = None,
                            baselines: str | list[str] | None = None,
                            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Reconstruct and score the files of ``data`` beside ``baselines`` (all that apply by
    default: see :func:`~.tuning.mri_baselines`); see the module's notes."""
    from medlens._progress import progress as shown
    from medlens.metrics import mean_summary
    from medlens.tasks.reconstruction.tuning import FILE, mri_baselines

    data = Path(data)
    source, files = _files(trained, data, split)
    coils = int(source.load(files[0]).kspace.shape[1]) if files else 1
    methods = chosen_baselines(baselines, mri_baselines(coils))
    rows, pictures = [], []
    for i in shown(files, "reconstructing", enabled=progress):
        row, picture = score_file(trained, source.load(i), methods)
        row["id"] = row["file"]
        rows.append(row)
        pictures.append(picture)
    if not rows:
        raise MedlensError(f"{data}: no files to evaluate")
    keys = [*FIGURES, *(f"{b}_{k}" for b in methods for k in FIGURES)]
    summary = {k: mean_summary([r[k] for r in rows], n_boot) for k in keys}
    simulated = bool(source.fingerprint().get("simulated"))
    tuned = trained.path / FILE
    result: dict[str, Any] = {
        "n_files": len(rows), "n_slices": sum(r["slices"] for r in rows), "metrics": summary,
        **gains(rows, methods, n_boot), "baselines": methods,
        "baseline_weights": (json.loads(tuned.read_text()) if tuned.exists()
                             else "defaults: the run has no baselines.json"),
        "data": str(data), "simulated": simulated, "split": split or "val",
    }  # fmt: skip
    if output is not None:
        result["files"] = _write(Path(output), result, rows, pictures, methods)
    return result


def _write(output: Path, result, rows, pictures, baselines: list[str]) -> dict[str, str]:
    """``metrics.json``, ``per_file.csv`` and ``report.html`` into ``output``."""
    from medlens._atomic import atomic_write_json, atomic_write_text
    from medlens.tasks.reconstruction.report import write_reconstruction_report

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "metrics.json", {**result, "files": rows})
    header = [k for k in rows[0] if k != "id"] if "file" in rows[0] else list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]
    atomic_write_text(output / "per_file.csv", "\n".join(lines) + "\n")
    report = write_reconstruction_report(output, result, rows, pictures, baselines)
    return {"metrics": str(output / "metrics.json"), "per_file": str(output / "per_file.csv"),
            "report": str(report)}  # fmt: skip


def evaluate_superres_run(trained, data: Path, *, n_boot: int = 1000, output: Path | None = None,
                          baselines: str | list[str] | None = None,
                          progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Super-resolution: each image of ``data`` degraded, predicted back and scored
    (:func:`~medlens.tasks.reconstruction.superres.evaluate_superres`), with the report."""
    from medlens.tasks.reconstruction.superres import evaluate_superres

    shown = chosen_baselines(baselines, ["nearest", "cubic"])  # both are scored; these shown
    result, rows, pictures = evaluate_superres(trained, Path(data), n_boot=n_boot,
                                               progress=progress)  # fmt: skip
    result.update(split="all", simulated=False, n_slices=len(rows), baselines=shown)
    if output is not None:
        result["files"] = _write(Path(output), result, rows, pictures, shown)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a few aligned lines."""
    sim = " (SIMULATED k-space)" if result.get("simulated") else ""
    lines = [f"{result['n_files']} files, {result['n_slices']} slices ({result['split']}){sim}"]
    for key, s in result["metrics"].items():
        if s["mean"] is None:
            continue
        ci = f" [{s['low']:.4f}, {s['high']:.4f}]" if s.get("low") is not None else ""
        lines.append(f"  {key:<30} {s['mean']:.4f}{ci}")
    for key, gain in result.items():
        if key.startswith("psnr_gain_vs_") and isinstance(gain, dict):
            ci = f" [{gain['low']:.2f}, {gain['high']:.2f}]" if gain.get("low") is not None else ""
            lines.append(
                f"  PSNR gain over {key[13:].replace('_', '-')} {gain['mean']:+.2f} dB{ci}"
            )
    return "\n".join(lines)
