"""Cine MRI to ejection fraction on the Sunnybrook patients, leave-one-patient-out; video decoding.

For each of the three patients, what ``medlens train --task segmentation --data sunnybrook
--folds 3 --fold k`` runs (the Sunnybrook layout read as it is; subject-grouped folds of three
patients leave one patient out), with nothing chosen on the held-out patient: the network is
validated only after its last epoch (``train.val_every`` = the epochs, so the last checkpoint is
the model), and the postprocessing rules (largest component, hole filling) are decided again on
the training patients' contoured frames before anything is scored. Then, on the held-out patient:

1. Dice of the left-ventricular cavity on each contoured frame (end-diastole and end-systole of
   every contoured slice) against the filled expert contour, on the original 256x256 grid, and
   the area found on the frames beyond the contoured slices (where there is no ventricle);
2. ``medlens measure cardiac`` on the patient's whole cine (20 phases x 10-12 slices): EDV, ESV
   and EF from the predicted volume curve (its own end-diastole and end-systole), against the
   values from the expert contours (:func:`medlens.data.sunnybrook.contour_volumes`), and the
   same at the expert's phases; seconds per cine, end to end (reading the DICOM series to the
   files written, the MP4 included);
3. video decoding: frames per second of ``medlens.io.video.read_video`` and imageio's (its pyav
   plugin, the default for MP4) on one MP4 written from the real cine, in interleaved rounds.

On SIMULATED beating hearts (``medlens datasets simulate-cine``: an ellipsoidal ventricle of
known EF painted over real cines), training phantoms over two patients' cines and test phantoms
over the third's (a background no training case has; the test set chose nothing): the EF mean
absolute error of

* the per-frame model: the temporal U-Net without its temporal layer (``temporal="none"``),
  each frame segmented alone, volumes summed over slices;
* the same network with a bidirectional ConvGRU at its deepest level (``temporal="gru"``);
* the CNN + GRU regression (``cnn-gru``), EF straight from the frames, the slices as channels;

each trained with the same schedule, the epoch chosen by the validation phantoms' EF error.

Goals (issue 24): LV Dice >= 0.90 on the contoured frames; EF within 5 points of the contour
value per patient; a whole cine measured in under 10 s; on the phantom EF MAE <= 2 points with
the temporal model beating the per-frame model.

    python benchmarks/sequences.py --workdir /work/seq [--epochs 40] [--phantoms 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    configure_threads,
    emit_json,
    environment,
    log,
    print_table,
    require_data,
    round_robin,
)

GOALS = {"lv_dice": 0.90, "ef_abs_error_max": 5.0, "seconds_per_cine": 10.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="Keep (and reuse) the runs here.")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batches", type=int, default=50, help="Batches per epoch.")
    parser.add_argument("--phantoms", type=int, default=60, help="Training phantoms.")
    parser.add_argument("--phantom-epochs", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="A plan setting of the Sunnybrook segmenters (augmentation.rotate="
                        "180); repeatable.")  # fmt: skip
    parser.add_argument("--skip-sunnybrook", action="store_true")
    parser.add_argument("--skip-phantom", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Tiny schedules: a smoke run.")
    args = parser.parse_args(argv)
    root = require_data("sequences", "sunnybrook")
    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        patients = ([] if args.skip_sunnybrook else
                    [lopo(root / "sunnybrook", work, k, args) for k in range(3)])  # fmt: skip
        video = decoding(root / "sunnybrook", work)
        phantom = None if args.skip_phantom else phantoms(root / "sunnybrook", work, args)
    figures = summarise(patients, video, phantom)
    figures["schedule"] = {
        "sunnybrook_epochs": args.epochs,
        "sunnybrook_batches": args.batches,
        "sunnybrook_settings": args.overrides,
        "phantom_epochs": args.phantom_epochs,
        "phantoms": args.phantoms,
    }
    figures.update(threads=threads, environment=environment(["medlens", "torch", "av",
                                                             "imageio"]))  # fmt: skip
    report(figures)
    emit_json(figures)
    return 0


# ----------------------------------------------------------------------------- one patient out
def train_fold(data: Path, run: Path, k: int, args) -> None:
    from medlens._json import read_json
    from medlens.tasks.segmentation.train import train_segmentation

    if (run / "run.json").exists() and read_json(run / "run.json")["status"] == "complete":
        return
    epochs, batches = (1, 2) if args.quick else (args.epochs, args.batches)
    log(f"fold {k}: training {epochs} epochs of {batches} batches into {run} ...")
    settings = [f"train.val_every={epochs}", f"train.batches_per_epoch={batches}",
                *args.overrides]  # fmt: skip
    train_segmentation(data, run, folds=3, fold=k, epochs=epochs, overrides=settings,
                       resume=(run / "fold-0" / "last.pt").exists(), log=log)  # fmt: skip


def redecide_postprocessing(run: Path, dataset, train_indices) -> dict:
    """The postprocessing rules decided on the training patients' frames (never the held-out
    patient's), written over the run's own."""
    from medlens._atomic import atomic_write_json
    from medlens.tasks.segmentation.postprocess import decide_postprocessing
    from medlens.tasks.segmentation.predict import load_segmentation_run, predict_image

    trained = load_segmentation_run(run)
    predictions, references = [], []
    for i in train_indices:
        sample = dataset[int(i)]
        predictions.append(predict_image(trained, sample.image, postprocess=False).array)
        references.append(sample.mask.array)
    rules = decide_postprocessing(predictions, references, trained.plan.label_values)
    rules["decided_on"] = "the training patients' frames (benchmarks/sequences.py)"
    atomic_write_json(run / "postprocessing.json", rules)
    return rules


def lopo(data: Path, work: Path, k: int, args) -> dict:
    from medlens.data.sunnybrook import SunnybrookDataset, contour_volumes
    from medlens.io import load_image
    from medlens.metrics import dice
    from medlens.tasks.segmentation.cardiac import measure_cardiac
    from medlens.tasks.segmentation.predict import load_segmentation_run, predict_image

    run = work / f"fold_{k}"
    train_fold(data, run, k, args)
    split = json.loads((run / "splits.json").read_text())["folds"][0]
    dataset = SunnybrookDataset(data)
    held = sorted({dataset.subjects()[int(i)] for i in split["val_indices"]})
    assert len(held) == 1, held
    patient = held[0]
    rules = redecide_postprocessing(run, dataset, split["train_indices"])
    trained = load_segmentation_run(run)
    scores = []
    empty = []  # the frames beyond the contoured slices: what is found there is false
    for i in split["val_indices"]:
        sample = dataset[int(i)]
        predicted = predict_image(trained, sample.image).array
        if sample.meta.get("negative"):
            empty.append(float((predicted == 1).sum() * np.prod(sample.image.spacing)))
            continue
        scores.append(float(dice(predicted == 1, sample.mask.array == 1)))
    expert = contour_volumes(data, patient)
    started = time.perf_counter()
    out = work / f"measure_{k}"
    row = measure_cardiac(run, data / "dicoms" / expert["series"], out, progress=False,
                          log=log)[0]  # fmt: skip
    seconds = time.perf_counter() - started
    table = [line.split(",") for line in (out / "volumes.csv").read_text().splitlines()[1:]]
    volumes = [float(r[3]) for r in table]
    edv, esv = volumes[expert["ed_phase"]], volumes[expert["es_phase"]]
    at_expert = {"edv_ml": edv, "esv_ml": esv, "ef_percent": 100 * (edv - esv) / edv}
    dz = float(load_image(data / "dicoms" / expert["series"]).spacing[2])

    def on_slices(phase: int) -> float:  # the expert's contoured slices only
        return sum(float(table[phase][4 + k]) for k in expert["slices"][phase]) * dz / 1000

    edv, esv = on_slices(expert["ed_phase"]), on_slices(expert["es_phase"])
    on_expert_slices = {"edv_ml": edv, "esv_ml": esv, "ef_percent": 100 * (edv - esv) / edv}
    train_minutes = json.loads((run / "run.json").read_text())["train_seconds"] / 60
    log(
        f"{patient}: Dice {np.mean(scores):.3f} over {len(scores)} frames; EF "
        f"{row['ef_percent']:.1f} (expert {expert['ef_percent']:.1f}); {seconds:.1f} s per cine"
    )
    return {"patient": patient, "series": expert["series"], "frames": len(scores),
            "dice": scores, "predicted": {k2: row[k2] for k2 in ("edv_ml", "esv_ml", "sv_ml",
                                                                 "ef_percent", "ed_phase",
                                                                 "es_phase")},
            "at_expert_phases": at_expert,
            "on_expert_slices": on_expert_slices,
            "expert": {k2: expert[k2] for k2 in ("edv_ml", "esv_ml", "sv_ml", "ef_percent",
                                                 "ed_phase", "es_phase")},
            "seconds_per_cine": round(seconds, 2),
            "false_area_mm2_beyond_contoured_slices": empty,
            "train_minutes": round(train_minutes, 1), "postprocessing": {
                c: [n for n in ("largest_component", "fill_holes", "ellipse") if r.get(n)]
                for c, r in rules["classes"].items()}}  # fmt: skip


# ------------------------------------------------------------------------------------- phantom
PHANTOM_MODELS = {"per-frame": ("segmentation", "none"), "convgru": ("segmentation", "gru"),
                  "cnn-gru": ("regression", None)}  # fmt: skip


def phantoms(data: Path, work: Path, args) -> dict:
    """Train the three models on phantoms over two patients; EF errors on the third's."""
    from medlens.data.cine_phantom import simulate_cine_dataset
    from medlens.metrics import mean_summary
    from medlens.metrics.reconstruction import paired_difference
    from medlens.tasks.sequences.data import CineSet
    from medlens.tasks.sequences.train import (
        load_sequence_run,
        measure_ef,
        train_cine_regression,
        train_temporal_segmentation,
    )

    count = 6 if args.quick else args.phantoms
    train_set, test_set = work / "phantom_train", work / "phantom_test"
    if not (train_set / "cases.csv").exists():
        simulate_cine_dataset(data, train_set, count=count, seed=0,
                              subjects=["SC-HF-I-1", "SC-HF-I-4"])  # fmt: skip
    if not (test_set / "cases.csv").exists():
        simulate_cine_dataset(data, test_set, count=max(4, count // 3), seed=1,
                              subjects=["SC-HF-I-5"])  # fmt: skip
    epochs, batches = (1, 2) if args.quick else (args.phantom_epochs, 40)
    tests = CineSet(test_set)
    rows: dict[str, list[dict]] = {}
    minutes = {}
    for name, (kind, temporal) in PHANTOM_MODELS.items():
        run = work / f"phantom_{name}"
        if not (run / "run.json").exists() or json.loads((run / "run.json").read_text())[
                "status"] != "complete":  # fmt: skip
            resume = (run / "fold-0" / "last.pt").exists()
            log(f"phantom: training {name} ({epochs} epochs of {batches} batches) ...")
            if kind == "segmentation":
                train_temporal_segmentation(train_set, run, temporal=temporal, epochs=epochs,
                                            batches=batches, resume=resume, log=log)  # fmt: skip
            else:
                train_cine_regression(train_set, run, epochs=epochs, batches=batches,
                                      resume=resume, log=log)  # fmt: skip
        minutes[name] = round(json.loads((run / "run.json").read_text())["train_seconds"] / 60, 1)
        networks, spec = load_sequence_run(run)
        network = networks[0]
        rows[name] = []
        for i in range(len(tests)):
            cine, _, spacing = tests.load(i)
            started = time.perf_counter()
            ef, _ = measure_ef(network, spec, cine, spacing)
            truth = tests.value(i, "ef_percent")
            rows[name].append({"id": tests.ids[i], "ef": ef, "truth": truth,
                               "error": abs(ef - truth),
                               "seconds": time.perf_counter() - started})  # fmt: skip
        log(f"phantom {name}: EF MAE {np.mean([r['error'] for r in rows[name]]):.2f} points")
    summary = {name: {"ef_mae": mean_summary([r["error"] for r in found], 1000),
                      "seconds_per_cine": float(np.mean([r["seconds"] for r in found])),
                      "train_minutes": minutes[name]}
               for name, found in rows.items()}  # fmt: skip
    gain = paired_difference([{**r, "e": -r["error"]} for r in rows["convgru"]],
                             [{**r, "e": -r["error"]} for r in rows["per-frame"]], "e",
                             n_boot=1000)  # fmt: skip
    return {
        "models": summary,
        "train_cases": count,
        "test_cases": len(tests),
        "temporal_gain_points": gain,
        "cases": rows,
    }


# ------------------------------------------------------------------------------------ decoding
def decoding(data: Path, work: Path) -> dict:
    """Frames per second decoding one MP4 (the real cine, 50 cycles: 1,000 frames of 256x256)."""
    from medlens.io import load_image
    from medlens.io.video import read_video, write_video

    path = work / "cine_1000.mp4"
    if not path.exists():
        cine = load_image(data / "dicoms" / "SCD0000101").array[:, 6]
        frames = np.clip(cine / np.percentile(cine, 99.5) * 255, 0, 255).astype(np.uint8)
        write_video(np.concatenate([frames] * 50), path, fps=25)
    cases = {"medlens": lambda: read_video(path).array.shape[0]}
    try:
        import imageio.v3 as iio

        iio.imread(path, plugin="pyav", index=0)
        cases["imageio (pyav)"] = lambda: len(iio.imread(path, plugin="pyav"))
    except Exception as error:  # the peer is optional; say why it is absent
        log(f"imageio not measured: {error}")
    counts = {name: fn() for name, fn in cases.items()}
    timings, rounds = round_robin(cases, repeats=5, warmed_up=True)
    fps = {name: counts[name] / float(np.median(t.times)) for name, t in timings.items()}
    return {"frames": counts, "fps": fps, "rounds": rounds}


# ------------------------------------------------------------------------------------- figures
def summarise(patients: list[dict], video: dict, phantom: dict | None) -> dict:
    from medlens.metrics import mean_summary

    pooled = [d for p in patients for d in p["dice"]] or [float("nan")]
    errors = [abs(p["predicted"]["ef_percent"] - p["expert"]["ef_percent"]) for p in patients]
    mae = {} if phantom is None else {k: v["ef_mae"]["mean"] for k, v in phantom["models"].items()}
    fps = video["fps"]
    peer = fps.get("imageio (pyav)")
    return {
        "benchmark": "sequences",
        "lv_dice": round(float(np.mean(pooled)), 4),
        "lv_dice_ci": mean_summary(pooled, 1000),
        "lv_dice_per_patient": {
            p["patient"]: round(float(np.mean(p["dice"])), 4) for p in patients
        },
        "ef_abs_error_max": round(max(errors), 2) if errors else None,
        "ef_abs_error_per_patient": {
            p["patient"]: round(e, 2) for p, e in zip(patients, errors, strict=True)
        },
        "seconds_per_cine": (
            round(max(p["seconds_per_cine"] for p in patients), 2) if patients else None
        ),
        "phantom_ef_mae_temporal": mae.get("convgru"),
        "phantom_ef_mae_per_frame": mae.get("per-frame"),
        "phantom_ef_mae_cnn_gru": mae.get("cnn-gru"),
        "phantom": phantom,
        "video_fps_medlens": round(fps["medlens"], 1),
        "video_fps_imageio": None if peer is None else round(peer, 1),
        "video_fps_ratio_vs_imageio": None if peer is None else round(fps["medlens"] / peer, 2),
        "patients": patients,
        "video": video,
        "goals": GOALS,
        "data": "Sunnybrook Cardiac Data, 3 patients, leave-one-patient-out (nothing chosen on "
        "the held-out patient: last epoch, postprocessing decided on the training patients)",
    }


def report(figures: dict) -> None:
    rows = []
    for p in figures["patients"]:
        pred, ref, phase = p["predicted"], p["expert"], p["on_expert_slices"]
        rows.append([p["patient"], p["frames"], f"{np.mean(p['dice']):.3f}",
                     f"{pred['edv_ml']:.0f} / {ref['edv_ml']:.0f}",
                     f"{pred['esv_ml']:.0f} / {ref['esv_ml']:.0f}",
                     f"{pred['ef_percent']:.1f} / {ref['ef_percent']:.1f}",
                     f"{phase['ef_percent']:.1f}", f"{p['seconds_per_cine']:.1f}"])  # fmt: skip
    print_table("Sunnybrook, leave-one-patient-out (medlens / expert contours)",
                ["patient", "frames", "LV Dice", "EDV ml", "ESV ml", "EF %",
                 "EF on expert slices", "s per cine"], rows)  # fmt: skip
    phantom = figures.get("phantom")
    if phantom:
        print_table(f"SIMULATED phantoms: {phantom['test_cases']} test cines over a patient no "
                    f"training phantom uses ({phantom['train_cases']} trained)",
                    ["model", "EF MAE (points)", "95% CI", "s per cine", "training min"],
                    [[name, f"{m['ef_mae']['mean']:.2f}",
                      f"[{m['ef_mae']['low']:.2f}, {m['ef_mae']['high']:.2f}]",
                      f"{m['seconds_per_cine']:.2f}", m["train_minutes"]]
                     for name, m in phantom["models"].items()])  # fmt: skip
    v = figures["video"]
    print_table("Video decoding (MP4, 1,000 frames of 256x256)", ["reader", "frames", "fps"],
                [[k, v["frames"][k], f"{f:.0f}"] for k, f in v["fps"].items()])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
