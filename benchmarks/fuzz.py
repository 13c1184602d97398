"""Fuzz the command line with mutated real inputs: every reader, every case in a sandbox.

Run from the repository root (the package's own environment is enough; no peers)::

    .venv/bin/python benchmarks/fuzz.py                  # 20,000 inputs
    .venv/bin/python benchmarks/fuzz.py --inputs 2000    # a shorter run
    .venv/bin/python benchmarks/fuzz.py --seconds 600    # stop after 10 minutes, whatever is left

Seeds come from the real data folder (:mod:`medlens.testing.corpus`: DICOM file, series,
DICOMDIR and multi-frame; NIfTI ``.nii.gz`` and ``.nii``; PNG, JPEG, TIFF, BMP; ``.npy`` and
medlens ``.npz``; MedMNIST, CSV, HC18 and Decathlon datasets; Pascal VOC XML; contours), with
markers planted in the identifying attributes of the DICOM and NIfTI ones. Each input is one seed
with one to three mutations (:mod:`medlens.testing.mutate`: byte flips, inserts, deletions,
truncation, splices of other seeds; numbers, lines, XML elements and JSON values swapped for NaN,
-1, huge, empty or ``../../x``; structured DICOM, NIfTI, PNG, TIFF, BMP and NumPy header fields),
chosen by a seeded random generator: the same ``--seed`` gives the same inputs. The readers take
turns. Each input runs in a fresh sandbox through ``medlens info`` (and ``anonymize`` for DICOM
and NIfTI) in this process, and :mod:`medlens.testing.fuzz` checks the outcome: exit code 0 or 1,
no traceback or unexpected exception, no Python warning on stderr, a failure said in one line,
nothing written outside the output and its audit log, inputs unchanged, no planted identifier in
the output.

Prints a table per reader and, as the last line of stdout, one JSON object. Progress on stderr.
``--save DIR`` keeps the inputs of every case that showed a problem, with its description.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import emit_json, environment, log, print_table, require_data

BENCHMARK = "fuzz"
PACKAGES = ("medlens", "pydicom", "nibabel", "Pillow", "tifffile", "numpy", "defusedxml")
SEED_STRIDE = 1_000_000_000  # case numbers of different --seed values never meet
COLUMNS = (  # JSON key, table heading, problem kind of medlens.testing.fuzz
    ("tracebacks", "crashes", "traceback"),
    ("bad_exit_codes", "exit 2+", "bad-exit"),
    ("hangs", "hangs", "hang"),
    ("writes_outside_output", "outside", "outside"),
    ("inputs_modified", "modified", "modified"),
    ("identifiers_leaked", "leaked", "leak"),
    ("unclear_failures", "unclear", "message"),
    ("warnings_shown", "warnings", "warning"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=20000, help="mutated inputs to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--readers", default=None, help="comma-separated readers (default all)")
    parser.add_argument("--save", type=Path, default=None, help="keep failing inputs here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument(
        "--memory-gb", type=float, default=8.0, help="address-space cap (0: none), so a case "
        "that allocates without bound fails with MemoryError instead of stopping the run",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.memory_gb > 0:
        import resource

        cap = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    root = require_data(BENCHMARK, "dicom/mr_t1_brain", "msd_hippocampus", "bccd", "sunnybrook")
    from medlens.testing.corpus import build_corpus
    from medlens.testing.fuzz import Fuzzer, ReaderStats

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medlens-fuzz-") as scratch:
        corpus = build_corpus(root, Path(scratch) / "corpus")
        readers = args.readers.split(",") if args.readers else list(corpus)
        unknown = [name for name in readers if name not in corpus]
        if unknown:
            parser.error(f"unknown readers {unknown}; known: {', '.join(corpus)}")
        fuzzer = Fuzzer(corpus, Path(scratch) / "cases", timeout=args.timeout)
        log(
            f"fuzz: corpus of {sum(len(corpus[r]) for r in readers)} seeds for {len(readers)} "
            f"readers built in {time.perf_counter() - started:.1f} s"
        )
        stats = {name: ReaderStats() for name in readers}
        fuzz_start = time.perf_counter()
        last_report = fuzz_start
        tried = 0
        for tried in range(1, args.inputs + 1):
            reader = readers[(tried - 1) % len(readers)]
            number = args.seed * SEED_STRIDE + (tried - 1) // len(readers)
            case = fuzzer.case(reader, number)
            stats[reader].add(case)
            if case.problems:
                log(case.describe())
                if args.save is not None:
                    _save(case, fuzzer, args.save)
            now = time.perf_counter()
            if now - last_report >= 15 or tried == args.inputs:
                bad = sum(sum(s.problems.values()) for s in stats.values())
                log(f"fuzz: {tried}/{args.inputs} inputs, {now - fuzz_start:.0f} s, {bad} problems")
                last_report = now
            if args.seconds is not None and now - fuzz_start >= args.seconds:
                log(f"fuzz: stopping after {now - fuzz_start:.0f} s (--seconds)")
                break
        seconds = time.perf_counter() - fuzz_start

    rows, per_reader = [], {}
    for name, s in stats.items():
        if not s.tried:
            continue
        figures = {"inputs": s.tried, "successes": s.successes, "clean_failures": s.clean_failures}
        figures.update({key: s.problems[kind] for key, _, kind in COLUMNS})
        per_reader[name] = figures
        rows.append(
            [
                name,
                s.tried,
                s.successes,
                s.clean_failures,
                *(s.problems[kind] for _, _, kind in COLUMNS),
            ]
        )
    keys = ("inputs", "successes", "clean_failures", *(key for key, _, _ in COLUMNS))
    totals = {key: sum(figures[key] for figures in per_reader.values()) for key in keys}
    rows.append(
        [
            "all",
            *(totals[key] for key in ("inputs", "successes", "clean_failures")),
            *(totals[key] for key, _, _ in COLUMNS),
        ]
    )
    print_table(
        f"medlens fuzz: {totals['inputs']} mutated inputs, seed {args.seed}, {seconds:.0f} s "
        f"({totals['inputs'] / max(seconds, 1e-9):.1f} inputs/s); cases showing each problem",
        ["reader", "inputs", "succeeded", "failed cleanly", *(h for _, h, _ in COLUMNS)],
        rows,
    )
    examples = [text for s in stats.values() for text in s.examples][:20]
    for text in examples:
        print(text)
    emit_json(
        {
            "benchmark": BENCHMARK,
            "inputs_tried": totals["inputs"],
            **{key: totals[key] for key, _, _ in COLUMNS},
            "successes": totals["successes"],
            "clean_failures": totals["clean_failures"],
            "seconds": round(seconds, 1),
            "inputs_per_s": round(totals["inputs"] / max(seconds, 1e-9), 2),
            "seed": args.seed,
            "readers": per_reader,
            "examples": [text.splitlines()[0] for text in examples],
            "environment": environment(PACKAGES),
        }
    )
    return 0


def _save(case, fuzzer, folder: Path) -> None:
    """Run the case again with its sandbox kept, and copy the inputs and the description."""
    fuzzer.keep = True
    try:
        again = fuzzer.case(case.reader, case.number)
    finally:
        fuzzer.keep = False
    target = folder / f"{case.reader}-{case.number}"
    shutil.rmtree(target, ignore_errors=True)
    boxes = sorted(fuzzer.workdir.glob("case-*"))
    if boxes:
        shutil.copytree(boxes[-1], target)
        for box in boxes:
            shutil.rmtree(box, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    (target / "problem.txt").write_text(again.describe() + "\n")


if __name__ == "__main__":
    sys.exit(main())
