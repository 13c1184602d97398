"""``medlens explain`` for any run: the task hands explain its job, explain does the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

__all__ = ["class_index", "explain_run"]


def class_index(target: str | int, names: list[str]) -> int:
    """The class ``--target`` names, by name or index; one line listing the classes if none."""
    text = str(target)
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise MedlensError(f"--target {target}: not a class of the run ({', '.join(names)})")


def explain_run(
    run_dir: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    split: str | None = None,
    target: str | int | None = None,
    limit: int | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Explain ``run_dir``'s predictions on ``input_path``; write ``output``.

    Args:
        run_dir: a run folder of any registered task.
        input_path: images as ``medlens predict`` takes them (``.npz`` with ``split``, folder,
            file, DICOM series).
        target: classification: the class (name or index) to explain instead of the prediction;
            segmentation: the label value to explain instead of every predicted class.
        limit: explain only the first ``limit`` images.
        options: ``methods``, ``faithfulness``, ``layer``, ``seed``, ``log``, ... as
            :func:`medlens.explain.explain_job` takes them.

    Returns:
        ``faithfulness.json``'s content plus ``files``.
    """
    from medlens._atomic import ensure_outside
    from medlens.explain import explain_job, parse_methods
    from medlens.tasks.registry import task_for_run

    run_dir, input_path, output = Path(run_dir), Path(input_path), Path(output)
    options["methods"] = parse_methods(options.get("methods", ("gradcam",)))
    task, folder = task_for_run(run_dir)  # first: a missing run is named as such
    if not input_path.exists():
        raise MedlensError("does not exist", input_path)
    ensure_outside(output, input_path)
    ensure_outside(output, run_dir)
    predictor = task.load_predictor(folder)
    job = task.explain_job(predictor, input_path, split=split,
                           target=None if target is None else str(target), limit=limit,
                           progress=progress)  # fmt: skip
    return explain_job(job, output, progress=progress, run_dir=run_dir, input_path=input_path,
                       **options)  # fmt: skip
