"""``medlens evaluate`` of a reconstruction run: every file reconstructed with its stored mask
and scored as fastMRI scores (per volume: PSNR and SSIM against the reference's maximum, NMSE),
beside the zero-filled reconstruction of the same measurements, with 95% bootstrap intervals
over files and the paired gain over zero-filled.

When ``data`` is the run's own training data, only its validation files (``splits.json``) are
scored unless ``split="all"``. Files without a stored mask (fully sampled) are undersampled with
the plan's first acceleration and a mask seeded by the slice index, as validation does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["evaluate_reconstruction", "evaluate_superres_run", "format_table"]

FIGURES = ("psnr", "ssim", "nmse", "zero_filled_psnr", "zero_filled_ssim", "zero_filled_nmse",
           "seconds_per_slice")  # fmt: skip


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


def score_file(trained, data) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One file's figures and the arrays the report shows (middle slice)."""
    from medlens.metrics.reconstruction import nmse, psnr, ssim
    from medlens.reconstruction.baselines import reconstruct_volume
    from medlens.tasks.reconstruction.data import evaluation_mask, reference, slice_maps
    from medlens.tasks.reconstruction.predict import reconstruct, scored_pair

    plan = trained.plan
    mask = evaluation_mask(data, plan)
    image, seconds = reconstruct(trained, data, mask=mask)
    maps = [slice_maps(data, s, plan) for s in range(data.kspace.shape[0])]
    target = np.stack([reference(data, s, maps[s]) for s in range(len(maps))])
    zf = reconstruct_volume("zero_filled", data.kspace, mask, np.stack(maps))
    out, ref = scored_pair(data, image, target)
    zero, _ = scored_pair(data, zf, target)
    peak = float(ref.max())
    row = {"file": data.path.name, "slices": int(out.shape[0]),
           "psnr": psnr(ref, out, peak), "ssim": ssim(ref, out, peak), "nmse": nmse(ref, out),
           "zero_filled_psnr": psnr(ref, zero, peak), "zero_filled_ssim": ssim(ref, zero, peak),
           "zero_filled_nmse": nmse(ref, zero),
           "seconds_per_slice": seconds / out.shape[0]}  # fmt: skip
    mid = out.shape[0] // 2
    shown = {"reference": ref[mid], "baseline": zero[mid], "output": out[mid], "mask": mask}
    return row, shown


def evaluate_reconstruction(trained, data: Path, *, split: str | None = None,
                            n_boot: int = 1000, output: Path | None = None,
                            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Reconstruct and score the files of ``data`` (see the module's notes)."""
    from medlens._progress import progress as shown
    from medlens.metrics import mean_summary
    from medlens.metrics.reconstruction import paired_difference

    data = Path(data)
    source, files = _files(trained, data, split)
    rows, pictures = [], []
    for i in shown(files, "reconstructing", enabled=progress):
        row, picture = score_file(trained, source.load(i))
        row["id"] = row["file"]
        rows.append(row)
        pictures.append(picture)
    summary = {k: mean_summary([r[k] for r in rows], n_boot) for k in FIGURES}
    gains = {
        "psnr_gain_vs_zero_filled": paired_difference(
            rows, [{**r, "psnr": r["zero_filled_psnr"]} for r in rows], "psnr", n_boot=n_boot),
        "ssim_gain_vs_zero_filled": paired_difference(
            rows, [{**r, "ssim": r["zero_filled_ssim"]} for r in rows], "ssim", n_boot=n_boot),
    }  # fmt: skip
    simulated = bool(source.fingerprint().get("simulated"))
    result: dict[str, Any] = {"n_files": len(rows), "n_slices": sum(r["slices"] for r in rows),
                              "metrics": summary, **gains, "data": str(data),
                              "simulated": simulated, "split": split or "val"}  # fmt: skip
    if output is not None:
        result["files"] = _write(Path(output), result, rows, pictures, "zero_filled")
    return result


def _write(output: Path, result, rows, pictures, baseline: str) -> dict[str, str]:
    """``metrics.json``, ``per_file.csv`` and ``report.html`` into ``output``."""
    from medlens._atomic import atomic_write_json, atomic_write_text
    from medlens.tasks.reconstruction.report import write_reconstruction_report

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "metrics.json", {**result, "files": rows})
    header = [k for k in rows[0] if k != "id"] if "file" in rows[0] else list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]
    atomic_write_text(output / "per_file.csv", "\n".join(lines) + "\n")
    report = write_reconstruction_report(output, result, rows, pictures, baseline)
    return {"metrics": str(output / "metrics.json"), "per_file": str(output / "per_file.csv"),
            "report": str(report)}  # fmt: skip


def evaluate_superres_run(trained, data: Path, *, n_boot: int = 1000, output: Path | None = None,
                          progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Super-resolution: each image of ``data`` degraded, predicted back and scored
    (:func:`~medlens.tasks.reconstruction.superres.evaluate_superres`), with the report."""
    from medlens.tasks.reconstruction.superres import evaluate_superres

    result, rows, pictures = evaluate_superres(trained, Path(data), n_boot=n_boot,
                                               progress=progress)  # fmt: skip
    result.update(split="all", simulated=False, n_slices=len(rows))
    if output is not None:
        result["files"] = _write(Path(output), result, rows, pictures, "cubic")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a few aligned lines."""
    sim = " (SIMULATED k-space)" if result.get("simulated") else ""
    lines = [f"{result['n_files']} files, {result['n_slices']} slices ({result['split']}){sim}"]
    for key, s in result["metrics"].items():
        if s["mean"] is None:
            continue
        ci = f" [{s['low']:.4f}, {s['high']:.4f}]" if s.get("low") is not None else ""
        lines.append(f"  {key:<20} {s['mean']:.4f}{ci}")
    for key in ("psnr_gain_vs_zero_filled", "psnr_gain_vs_cubic", "psnr_gain_vs_nearest"):
        gain = result.get(key)
        if gain is not None:
            ci = f" [{gain['low']:.2f}, {gain['high']:.2f}]" if gain.get("low") is not None else ""
            lines.append(
                f"  PSNR gain over {key[13:].replace('_', '-')} {gain['mean']:+.2f} dB{ci}"
            )
    return "\n".join(lines)
